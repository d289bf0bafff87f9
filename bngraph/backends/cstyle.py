"""Elementwise math for C-like targets, written once: activations, arithmetic and pointwise losses.

The model is tinygrad's ``renderer/cstyle.py``: a base class holds the tables keyed by op, and a
dialect (the CUDA target's :class:`~bngraph.backends.cuda_target.lowerings.CudaLanguage`, which the
CPU emulator compiles too) overrides only what differs: the names of its types and its intrinsics.
A new activation is one row of :attr:`CStyleLanguage.activations`, and every C-like target has it.

* ``activations``: ``act -> (g(x), g'(x) from the output y)``, ``s`` the negative slope. The
  derivative reads the output, as every fused backward op does. The keys are the op table's
  activations (tested: ``tests/test_arch_tables.py``).
* ``code_for_op``: ``op -> expression`` of the operands (C expressions), for the elementwise
  arithmetic ops; an activation op is its ``activations`` row (:meth:`CStyleLanguage.code`).
* ``losses``: ``pointwise loss -> (per-element loss, per-element gradient before 1/numel*dL)`` of
  ``p`` (prediction) and ``t`` (target), both accumulators.

Every expression propagates NaN (``x < 0 ? 0 : x`` keeps a NaN, where ``fmax(x, 0)`` would hide
it), so a diverged step is still caught by the finite checks; division is IEEE (no fast math).
Literals are cast to the element type (``(real)0``) where they meet element values, and written
bare where they meet accumulators (``acc_t`` is double: the intrinsics' double overloads).
"""
from __future__ import annotations

from typing import Callable

from .lowering import LoweringError


def _sigmoid(L: "CStyleLanguage", x: str, lit: Callable[[object], str]) -> str:
    """1/(1 + exp(-x)), stable in both tails: the one sigmoid of every C-like target (the
    activation, and the gradient of sigmoid_bce)."""
    return (f"({x} >= {lit(0)} ? {lit(1)} / ({lit(1)} + {L.call('exp', f'-{x}')}) : "
            f"{L.call('exp', x)} / ({lit(1)} + {L.call('exp', x)}))")


class CStyleLanguage:
    """The math of C-like targets. A dialect subclass overrides ``types`` (the element type of
    each IR dtype) and ``intrinsics`` (the name of each math function); the tables stay shared."""

    real = "real"  # the element type's name inside kernels (a typedef of types[dtype])
    acc = "acc_t"  # the accumulator type (double)
    types = {"f32": "float", "f64": "double"}
    intrinsics = {"exp": "exp", "log": "log", "log1p": "log1p", "tanh": "tanh", "fabs": "fabs", "fmax": "fmax",
                  "sqrt": "sqrt"}

    def lit(self, v) -> str:
        """A literal of the element type: ``(real)0``."""
        return f"({self.real}){v}"

    @staticmethod
    def acc_lit(v) -> str:
        """A literal among accumulators: bare (``1``), promoted by the double it meets."""
        return str(v)

    def call(self, fn: str, *args: str) -> str:
        """An intrinsic applied to ``args``: ``exp(x)`` (a dialect may spell it ``__expf``)."""
        return f"{self.intrinsics[fn]}({', '.join(args)})"

    # act -> (g(x), g'(x) from the output y); s: repr of the negative slope
    activations = {
        "identity": (lambda L, x, s: x,  # g(x) = x
                     lambda L, y, s: L.lit(1)),
        "relu": (lambda L, x, s: f"({x} < {L.lit(0)} ? {L.lit(0)} : {x})",  # max(x, 0), NaN kept
                 lambda L, y, s: f"({y} > {L.lit(0)} ? {L.lit(1)} : {L.lit(0)})"),
        "leaky_relu": (lambda L, x, s: f"({x} < {L.lit(0)} ? {x} * {L.lit(s)} : {x})",  # x if x > 0 else s*x
                       lambda L, y, s: f"({y} > {L.lit(0)} ? {L.lit(1)} : {L.lit(s)})"),
        "tanh": (lambda L, x, s: L.call("tanh", x),  # tanh' = 1 - y^2
                 lambda L, y, s: f"({L.lit(1)} - {y} * {y})"),
        "sigmoid": (lambda L, x, s: _sigmoid(L, x, L.lit),  # sigmoid' = y(1 - y)
                    lambda L, y, s: f"({y} * ({L.lit(1)} - {y}))"),
    }

    # elementwise arithmetic: op -> C expression of the operands (IEEE: b = 0 gives inf or nan)
    code_for_op = {
        "add": lambda L, a, b: f"{a} + {b}",
        "sub": lambda L, a, b: f"{a} - {b}",
        "mul": lambda L, a, b: f"{a} * {b}",
        "div": lambda L, a, b: f"{a} / {b}",
        "neg": lambda L, a: f"-{a}",
    }

    # pointwise losses: op -> (per-element loss, per-element gradient before /numel*dL), p and t acc_t
    losses = {
        "mse": (lambda L, p, t: f"({p} - {t}) * ({p} - {t})",  # (p - t)^2
                lambda L, p, t: f"2 * ({p} - {t})"),
        # max(p, 0) - p*t + log(1 + exp(-|p|)): BCE of sigmoid(p), stable for large |p|
        "sigmoid_bce": (lambda L, p, t: (f"{L.call('fmax', p, '0.0')} - {p} * {t} + "
                                         f"{L.call('log1p', L.call('exp', '-' + L.call('fabs', p)))}"),
                        lambda L, p, t: f"{_sigmoid(L, p, L.acc_lit)} - {t}"),  # sigmoid(p) - t
    }

    # ---- lookups: one error naming the op when a row is missing ------------------------------
    def code(self, op: str, *operands: str, slope: float = 0.0) -> str:
        """The expression of elementwise op ``op`` (an activation op or an arithmetic op)."""
        if op in self.activations:
            return self.activation(op, operands[0], slope)
        return self._row(self.code_for_op, op, "code_for_op")(self, *operands)

    def activation(self, act: str, x: str, slope: float = 0.0) -> str:
        """g(x) for activation ``act``."""
        return self._row(self.activations, act, "activations")[0](self, x, repr(float(slope)))

    def derivative(self, act: str, y: str, slope: float = 0.0) -> str:
        """g'(x) for activation ``act``, from the output y = g(x)."""
        return self._row(self.activations, act, "activations")[1](self, y, repr(float(slope)))

    def loss(self, op: str, p: str = "p", t: str = "t") -> tuple:
        """(per-element loss, per-element gradient) of pointwise loss ``op``."""
        lo, gr = self._row(self.losses, op, "losses")
        return lo(self, p, t), gr(self, p, t)

    def _row(self, table: dict, op: str, name: str):
        try:
            return table[op]
        except KeyError:
            raise LoweringError(f"{type(self).__name__}.{name} has no row for op {op}") from None
