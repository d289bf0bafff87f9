"""The op record and the registry: :class:`OpDef`, ``OPS``, :func:`register`, :func:`get_op`, and
the shape-rule helpers every op module uses (each raises IRError naming the node, what was
expected and what it got). The op table itself is :mod:`bngraph.ops` (what each field means is
documented there) and :mod:`bngraph.ops_spatial`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .activations import ACTIVATIONS
from .ir import BATCH, FLOAT_DTYPES, Ints, IRError, TensorType

REDUCTIONS = ("mean", "sum", "none")  # a class loss's reduction

# --------------------------------------------------------------------------------------------
# The OpDef record and the registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str  # one line: what it computes, in the project's notation
    infer: Callable
    ref: Callable
    grad: Callable | None = None
    attrs: dict = field(default_factory=dict)  # name -> (type, default); default None = required
    optional_attrs: dict = field(default_factory=dict)  # name -> (type, default): left out of the node at the default
    kind: str = "forward"  # 'forward', 'loss', 'state' (running-stat update) or 'backward'
    check_values: Callable | None = None  # (where, input Values, attrs) -> None, raises IRError
    init_roles: dict = field(default_factory=dict)  # input index -> 'weight', 'bias', 'ones' or 'zeros'
    name_prefix: str = ""  # the DSL's generated names: fc1, bn1... ('' = the op's name)
    batch_statistics: bool = False  # mode=train normalizes with the mini-batch's own mean and variance
    class_labels: bool = False  # losses: the target is integer class labels (g.labels), not a float array
    predict: Callable | None = None  # losses: out (m, outputs) host array -> predictions
    accuracy: Callable | None = None  # losses: (out, y) -> fraction right, or None where it means nothing (mse)
    target_range: tuple | None = None  # losses: (low, high) a float target must lie in; None = any finite number
    nonnegative_inputs: tuple = ()  # input indices whose values must be >= 0 (a running variance)
    state_updates: dict = field(default_factory=dict)  # state ops: output index -> the input it is the next value of

    @property
    def differentiable(self) -> bool:
        return self.kind in ("forward", "loss")

    @property
    def prefix(self) -> str:
        return self.name_prefix or self.name

    def check(self, where: str, values, attrs: dict) -> tuple:
        """The output types of a node reading ``values`` (Value objects): the value-level check,
        then the shape rule. The DSL and the verifier both call this, so they agree."""
        if self.check_values is not None:
            self.check_values(where, list(values), attrs)
        return tuple(self.infer(where, [v.type for v in values], attrs))

    def _coerce(self, where: str, k: str, typ, v):
        """``v`` as the attribute's type, or one clear error: what the IR text can spell, so that
        a graph built in the DSL prints as text the parser reads back (an int attribute takes an
        integral number, 2.0 but not 1.5 or True; a float attribute a finite number)."""
        bad = IRError(f"{where}: attribute {k} of {self.name} must be {typ.__name__}, got {v!r}")
        if typ is bool:
            if not isinstance(v, (bool, np.bool_)):
                raise bad
            return bool(v)
        if typ is str:
            if not isinstance(v, str):
                raise bad
            return v
        if typ is Ints:  # a tuple of naturals (an int is a tuple of one)
            items = (v,) if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) else v
            if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
                raise IRError(f"{where}: attribute {k} of {self.name} must be a tuple of ints >= 0, got {v!r}")
            items = tuple(items)
            if not items or not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0
                                    for d in items):
                raise IRError(f"{where}: attribute {k} of {self.name} must be a tuple of ints >= 0, got {v!r}")
            return Ints(int(d) for d in items)
        if typ in (int, float):
            if isinstance(v, (bool, np.bool_, str)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad
            if not np.isfinite(v):
                raise IRError(f"{where}: attribute {k} of {self.name} must be a finite number, got {v!r}")
            if typ is int and v != int(v):
                raise bad
            return typ(v)
        try:
            return typ(v)
        except (TypeError, ValueError):
            raise bad from None

    def normalize_attrs(self, where: str, attrs: dict) -> dict:
        """Check names, fill defaults and coerce types (so 1 and 1.0 print the same)."""
        known = {**self.attrs, **self.optional_attrs}
        unknown = set(attrs) - set(known)
        if unknown:
            raise IRError(f"{where}: op {self.name} has no attribute(s) {sorted(unknown)}; "
                          f"expected {sorted(known) or 'none'}")
        out = {}
        for k, (typ, default) in self.attrs.items():
            v = attrs.get(k, default)
            if v is None:
                raise IRError(f"{where}: op {self.name} needs attribute {k}")
            out[k] = self._coerce(where, k, typ, v)
        for k, (typ, default) in self.optional_attrs.items():
            v = attrs.get(k)
            if v is None:
                continue
            v = self._coerce(where, k, typ, v)
            if v != default:  # at the default the node does not carry it
                out[k] = v
        if "act" in out and out["act"] not in ACTIVATIONS:
            raise IRError(f"{where}: unknown activation {out['act']!r}; expected one of {', '.join(ACTIVATIONS)}")
        if "negative_slope" in out and not out["negative_slope"] >= 0:
            # g' is computed from the output y (y > 0 <=> x > 0), which needs a slope >= 0
            raise IRError(f"{where}: negative_slope must be >= 0, got {out['negative_slope']}")
        if "mode" in out and out["mode"] not in ("train", "eval"):
            raise IRError(f"{where}: mode must be 'train' or 'eval', got {out['mode']!r}")
        if "eps" in out and not out["eps"] > 0:
            raise IRError(f"{where}: eps must be > 0, got {out['eps']}")
        if "dtype" in out and out["dtype"] not in FLOAT_DTYPES:
            raise IRError(f"{where}: dtype must be one of {', '.join(FLOAT_DTYPES)}, got {out['dtype']!r}")
        if out.get("reduction", "mean") not in REDUCTIONS:
            raise IRError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}, got {out['reduction']!r}")
        if "momentum" in out and not 0 <= out["momentum"] <= 1:
            raise IRError(f"{where}: momentum (the weight of the new batch, as in PyTorch) must lie in [0, 1], "
                          f"got {out['momentum']}")
        return out


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise ValueError(f"op {op.name} registered twice")
    OPS[op.name] = op
    return op


def get_op(name: str, where: str = "") -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise IRError(f"{where + ': ' if where else ''}unknown op {name!r}") from None


# --------------------------------------------------------------------------------------------
# Shape-rule helpers: each raises IRError naming the node, what was expected and what it got.
# --------------------------------------------------------------------------------------------


def _expect_arity(where, op, types, n):
    if len(types) != n:
        raise IRError(f"{where}: {op} takes {n} inputs, got {len(types)}")


def _expect_float(where, what, t: TensorType):
    if not t.is_float:
        raise IRError(f"{where}: {what} must be a float tensor, got {t}")


def _expect_same_dtype(where, types):
    dts = {t.dtype for t in types if t.is_float}
    if len(dts) > 1:
        raise IRError(f"{where}: inputs mix dtypes {sorted(dts)}; expected one float dtype")


def _expect_shape(where, what, t: TensorType, shape):
    if tuple(t.shape) != tuple(shape):
        want = TensorType(t.dtype, tuple(shape))
        raise IRError(f"{where}: {what} expected shape {want}, got {t}")


def _expect_activation(where, what, t: TensorType):
    """(features, m) float activations."""
    _expect_float(where, what, t)
    if t.rank != 2 or t.shape[1] != BATCH:
        raise IRError(f"{where}: {what} expected a (features, {BATCH}) activation, got {t}")


def _expect_units(where, what, t: TensorType):
    """(features, m) activations or a spatial (channels, m, d1[, d2]) value: the ops that act per
    unit (per channel) over the batch and the positions (batch norm, bias, their gradients)."""
    _expect_float(where, what, t)
    if t.rank < 2 or t.rank > 4 or t.shape[1] != BATCH or BATCH in t.shape[2:]:
        raise IRError(f"{where}: {what} expected a (features, {BATCH}) activation or a (channels, {BATCH}, length) / "
                      f"(channels, {BATCH}, height, width) value, got {t}")


def unit_rows(x):
    """An array of a (units, m, d...) value as its (units, m*d1*...) view: each unit's (channel's)
    batch and positions as one row. A view for the contiguous arrays the targets make."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def _per_unit(where, what, t: TensorType, n):
    _expect_float(where, what, t)
    _expect_shape(where, what, t, (n,))


def _scalar(dtype):
    return TensorType(dtype, ())


