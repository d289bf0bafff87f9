"""Optimizers as data: one :class:`OptimizerRecord` per optimizer -- its slots, its
hyperparameters in the order a kernel reads them, its update as scalar math -- and what is
rendered from it: the NumPy update (:mod:`bngraph.optim.render_numpy`, a few ``out=`` passes over a stretch
of the flat buffers with two scratch arrays), the hyperparameter vector (:meth:`OptimizerRecord.vector`)
and, in a target, its kernel (the CUDA target: ``bngraph/backends/cuda_target/optimizers.py``).
Nothing about an optimizer's order or arithmetic is kept by hand in two places.

The scalar math is a tiny expression language over the param ``p``, its gradient ``g``, the
slots (arrays), locals (``Let``) and hyperparameters (``H.lr``): ``+ - * /``, ``sqrt``,
``maximum`` (NaN-propagating, as ``np.maximum``), ``pow``. A sub-expression of hyperparameters
only is computed once per launch in double precision and then used in the params' dtype, as
NumPy does with a Python float. ``If`` branches on a hyperparameter (``H.amsgrad``,
``H.weight_decay != 0``) or on a slot being created by this step (``Fresh("momentum_buffer")``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# ---- the expression language ------------------------------------------------------------------


class Expr:
    def _wrap(self, x):
        return x if isinstance(x, Expr) else Num(float(x))

    def __add__(self, o): return Bin("+", self, self._wrap(o))
    def __radd__(self, o): return Bin("+", self._wrap(o), self)
    def __sub__(self, o): return Bin("-", self, self._wrap(o))
    def __rsub__(self, o): return Bin("-", self._wrap(o), self)
    def __mul__(self, o): return Bin("*", self, self._wrap(o))
    def __rmul__(self, o): return Bin("*", self._wrap(o), self)
    def __truediv__(self, o): return Bin("/", self, self._wrap(o))
    def __rtruediv__(self, o): return Bin("/", self._wrap(o), self)
    def __pow__(self, o): return Fn("pow", (self, self._wrap(o)))


@dataclass(frozen=True, eq=False)
class Ref(Expr):
    """An array (``p``, ``g``, a slot), a local, or a hyperparameter (``kind``: array, local, hyper)."""

    name: str
    kind: str

    def __ne__(self, o): return Cond("!=", self.name, float(o))
    def __eq__(self, o): return Cond("==", self.name, float(o))
    def __gt__(self, o): return Cond(">", self.name, float(o))
    __hash__ = object.__hash__


@dataclass(frozen=True, eq=False)
class Num(Expr):
    value: float


@dataclass(frozen=True, eq=False)
class Bin(Expr):
    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class Fn(Expr):
    fn: str  # sqrt, maximum, pow
    args: tuple


@dataclass(frozen=True)
class Cond:
    """A branch condition on one entry of the hyperparameter vector: ``op`` is !=, ==, > (with
    ``value``) or ``flag`` (true when nonzero)."""

    op: str
    name: str
    value: float = 0.0


def sqrt(x): return Fn("sqrt", (x,))
def maximum(a, b): return Fn("maximum", (a, b))
def Fresh(slot: str) -> Cond: return Cond("flag", f"fresh:{slot}")  # noqa: E302,N802


class _Hyper:
    """``H.name``: a hyperparameter (an entry of the vector); ``H.flag("amsgrad")`` as a condition."""

    def __getattr__(self, name): return Ref(name, "hyper")
    def flag(self, name): return Cond("flag", name)


H = _Hyper()
P, G = Ref("p", "array"), Ref("g", "array")


def slot(name): return Ref(name, "array")
def local(name): return Ref(name, "local")


@dataclass(frozen=True)
class Set:
    """Write ``expr`` into the array ``target`` (``p`` or a slot)."""

    target: str
    expr: Expr


@dataclass(frozen=True)
class Let:
    """Name a value: an array (an alias, nothing computed) or an expression (into a scratch array)."""

    name: str
    expr: Expr


@dataclass(frozen=True)
class If:
    cond: Cond
    then: tuple
    orelse: tuple = ()


@dataclass(frozen=True)
class Slot:
    """A per-param state array: kept when ``when`` holds for the group's hyperparameters (None: always)."""

    name: str
    when: Cond | None = None


@dataclass(frozen=True)
class OptimizerRecord:
    """One optimizer as data. ``hyper``: the entries of the vector ``h`` a kernel reads, in order
    (hyperparameters, ``t`` the step count, ``fresh:<slot>``, and ``fixed`` entries that belong to
    the class, such as AdamW's ``decoupled``); ``slots`` in the order a kernel takes them;
    ``counter``: a per-param step counter (slot ``step``); ``body``: the update."""

    name: str
    hyper: tuple
    slots: tuple
    body: tuple
    counter: bool = False
    fixed: dict = field(default_factory=dict)

    def slot_keys(self, hp: dict) -> tuple:
        """The slots a group with hyperparameters ``hp`` keeps (the step counter first)."""
        return (("step",) if self.counter else ()) + tuple(s.name for s in self.slots
                                                           if s.when is None or holds(s.when, hp))

    def values(self, hp: dict, t, fresh) -> dict:
        """Every entry of the vector by name, as Python values."""
        v = {**hp, **self.fixed, "t": t}
        for key, name in self._fresh_keys:
            v[key] = name in fresh
        return v

    @cached_property
    def _fresh_keys(self) -> tuple:
        """``(("fresh:<slot>", slot), ...)``: made once (``values`` runs every step)."""
        return tuple((f"fresh:{s.name}", s.name) for s in self.slots)

    def vector(self, hp: dict, t, fresh) -> np.ndarray:
        """The hyperparameter vector ``h`` of one launch (float64, in ``hyper``'s order)."""
        v = self.values(hp, t, fresh)
        return np.array([float(v[k]) for k in self.hyper], np.float64)


def holds(cond: Cond, values: dict) -> bool:
    x = float(values[cond.name])
    return {"!=": x != cond.value, "==": x == cond.value, ">": x > cond.value, "flag": x != 0}[cond.op]


def walk(body):
    """The statements of ``body`` in text order, branches included."""
    for s in body:
        yield s
        if isinstance(s, If):
            yield from walk(s.then)
            yield from walk(s.orelse)


def refs(e: Expr, kind: str) -> set:
    """The names of kind ``kind`` that ``e`` reads."""
    if isinstance(e, Ref):
        return {e.name} if e.kind == kind else set()
    if isinstance(e, Bin):
        return refs(e.a, kind) | refs(e.b, kind)
    if isinstance(e, Fn):
        return set().union(*(refs(a, kind) for a in e.args))
    return set()


def is_scalar(e: Expr) -> bool:
    """Hyperparameters and numbers only: computed once per launch, in double precision."""
    return not refs(e, "array") and not refs(e, "local")


# ---- the built-in optimizers (PyTorch's formulas; docs/optimizers.md) --------------------------

d, buf, vv = local("d"), slot("momentum_buffer"), local("v")

SGD_RECORD = OptimizerRecord(
    "sgd", ("lr", "momentum", "dampening", "weight_decay", "nesterov", "fresh:momentum_buffer"),
    (Slot("momentum_buffer", H.momentum != 0),),
    (Let("d", G),
     If(H.weight_decay != 0, (Let("d", P * H.weight_decay + d),)),
     If(H.momentum != 0, (
         If(Fresh("momentum_buffer"), (Set("momentum_buffer", d),),  # PyTorch: the first, undampened, d
            (If(H.dampening == 0, (Set("momentum_buffer", buf * H.momentum + d),),
                (Set("momentum_buffer", buf * H.momentum + d * (1 - H.dampening)),)),)),
         If(H.flag("nesterov"), (Let("d", buf * H.momentum + d),), (Let("d", buf),)))),
     Set("p", P - d * H.lr)))

sq, ga = slot("square_avg"), slot("grad_avg")
RMSPROP_RECORD = OptimizerRecord(
    "rmsprop", ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    (Slot("square_avg"), Slot("grad_avg", H.flag("centered")), Slot("momentum_buffer", H.momentum > 0)),
    (Let("d", G),
     If(H.weight_decay != 0, (Let("d", P * H.weight_decay + d),)),
     Set("square_avg", sq * H.alpha + d * d * (1 - H.alpha)),
     If(H.flag("centered"),
        (Set("grad_avg", ga + (d - ga) * (1 - H.alpha)),   # a lerp, as PyTorch
         Let("denom", sqrt(sq - ga * ga) + H.eps)),
        (Let("denom", sqrt(sq) + H.eps),)),
     Let("step", d / local("denom")),
     If(H.momentum > 0, (Set("momentum_buffer", buf * H.momentum + local("step")), Let("step", buf))),
     Set("p", P - local("step") * H.lr)))

m1, m2, vmax = slot("exp_avg"), slot("exp_avg_sq"), slot("max_exp_avg_sq")
ADAM_RECORD = OptimizerRecord(
    "adam", ("lr", "t", "beta1", "beta2", "eps", "weight_decay", "decoupled", "amsgrad"),
    (Slot("exp_avg"), Slot("exp_avg_sq"), Slot("max_exp_avg_sq", H.flag("amsgrad"))),
    (Let("d", G),
     If(H.weight_decay != 0,
        (If(H.flag("decoupled"), (Set("p", P * (1 - H.lr * H.weight_decay)),),   # AdamW
            (Let("d", P * H.weight_decay + d),)),)),                            # L2, coupled
     Set("exp_avg", m1 + (d - m1) * (1 - H.beta1)),                            # a lerp, as PyTorch
     Set("exp_avg_sq", m2 * H.beta2 + d * d * (1 - H.beta2)),
     Let("v", m2),
     If(H.flag("amsgrad"), (Set("max_exp_avg_sq", maximum(vmax, m2)), Let("v", vmax))),
     Set("p", P - m1 / (sqrt(vv) / sqrt(1 - H.beta2 ** H.t) + H.eps) * (H.lr / (1 - H.beta1 ** H.t)))),
    counter=True, fixed={"decoupled": False})

ADAMW_RECORD = OptimizerRecord(ADAM_RECORD.name, ADAM_RECORD.hyper, ADAM_RECORD.slots, ADAM_RECORD.body,
                               counter=True, fixed={"decoupled": True})

__all__ = ["OptimizerRecord", "Slot", "Set", "Let", "If", "H", "P", "G", "slot", "local", "sqrt", "maximum",
           "Fresh", "SGD_RECORD", "RMSPROP_RECORD", "ADAM_RECORD", "ADAMW_RECORD"]
