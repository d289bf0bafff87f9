"""The op table: every rule for one op in one place.

Each op is an :class:`OpDef` registered in ``OPS`` with

* ``attrs``: the attribute names with their type and default (the IR text shows them in ``[k=v]``);
* ``infer``: the shape/dtype rule, ``(where, input types, attrs) -> output types``;
  ``where`` names the node for error messages;
* ``ref``: the reference NumPy semantics, ``(input arrays, attrs) -> output arrays``; the
  reference interpreter (:mod:`bngraph.interpreter`) is nothing but these functions, and it is the
  oracle for every backend;
* ``grad``: the gradient rule used by autodiff, ``(emit, node, output cotangents) -> input
  cotangents`` (value names or None). ``emit(op, inputs, attrs, names)`` adds a node to the
  backward graph and returns its output names. Backward ops and ops on state are not
  differentiated: ``differentiable=False``.
* ``check_values``: checks that need the input *values*, not only their types (the logits rows
  against the labels' ``classes``), ``(where, input Values, attrs)``; run before ``infer`` by
  :meth:`OpDef.check`, which the DSL and the verifier both call;
* ``init_roles``: how params read by this op start (``bngraph.init``): input index -> ``weight``,
  ``bias``, ``ones`` or ``zeros``;
* ``name_prefix``: the prefix of names the DSL makes up (``fc1``, ``bn1``; default the op's name);
* ``batch_statistics``: the op normalizes with the mini-batch's own statistics in ``mode=train``
  (so training needs at least two examples per batch): :func:`needs_batch_statistics`;
* losses: ``class_labels`` (the target is integer labels), ``predict(out)`` and
  ``accuracy(out, y)`` (None for a regression loss) on host arrays, rows = examples, and
  ``target_range``: the closed interval a float target must lie in (``sigmoid_bce``: [0, 1],
  probabilities; None: any finite number), checked on the data before a step;
* ``nonnegative_inputs``: input indices whose values must be >= 0 (a running variance), checked
  when params or state are set or restored;
* state ops (``kind='state'``): ``state_updates``, output index -> the input index whose next value
  it is (``running_update``: the new running mean and variance); the verifier uses it to check
  that a training graph returns the next value of every state value;
* the NumPy code template ``templates/numpy/<op>.j2`` (and, later, ``templates/cuda/<op>.j2``),
  found by the op's name.

``tests/test_ops.py`` walks this table and fails on an incomplete op.

Layout: activations are ``(features, batch)``; per-unit vectors are ``(n,)`` and broadcast as
``(n, 1)``. Losses are means: over the batch (cross-entropy) or over all elements (mse, bce), as
PyTorch's default ``reduction='mean'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# the activation table lives in its own module; ops re-exports it (bngraph.ops.ACTIVATIONS)
from .activations import ACTIVATIONS, act_derivative, act_fn, sigmoid as _sigmoid
from .ir import BATCH, DTYPES, FLOAT_DTYPES, IRError, TensorType

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

    def normalize_attrs(self, where: str, attrs: dict) -> dict:
        """Check names, fill defaults and coerce types (so 1 and 1.0 print the same)."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"{where}: op {self.name} has no attribute(s) {sorted(unknown)}; "
                          f"expected {sorted(self.attrs) or 'none'}")
        out = {}
        for k, (typ, default) in self.attrs.items():
            v = attrs.get(k, default)
            if v is None:
                raise IRError(f"{where}: op {self.name} needs attribute {k}")
            try:
                if typ is bool and not isinstance(v, (bool, np.bool_)):
                    raise TypeError
                v = typ(v)
            except (TypeError, ValueError):
                raise IRError(f"{where}: attribute {k} of {self.name} must be {typ.__name__}, got {v!r}") from None
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


def _per_unit(where, what, t: TensorType, n):
    _expect_float(where, what, t)
    _expect_shape(where, what, t, (n,))


def _scalar(dtype):
    return TensorType(dtype, ())


# --------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------


def _matmul_infer(where, types, attrs):
    _expect_arity(where, "matmul", types, 2)
    a, b = types
    _expect_float(where, "matmul operand a", a)
    _expect_float(where, "matmul operand b", b)
    _expect_same_dtype(where, types)
    if a.rank != 2 or b.rank != 2:
        raise IRError(f"{where}: matmul expects 2-D operands, got {a} and {b}")
    ar, ac = a.shape[::-1] if attrs["ta"] else a.shape
    br, bc = b.shape[::-1] if attrs["tb"] else b.shape
    if ac != br:
        raise IRError(
            f"{where}: matmul inner dimensions differ: {'a^T' if attrs['ta'] else 'a'} is {a} "
            f"(inner {ac}) but {'b^T' if attrs['tb'] else 'b'} is {b} (inner {br})"
        )
    return (TensorType(a.dtype, (ar, bc)),)


def _matmul_ref(ins, attrs):
    a, b = ins
    a = a.T if attrs["ta"] else a
    b = b.T if attrs["tb"] else b
    return (a @ b,)


def _matmul_grad(emit, node, cts):
    # C = A' B' with A' = A^T if ta else A (likewise B'):  dA' = dC B'^T,  dB' = A'^T dC
    (dc,) = cts
    a, b = node.inputs
    ta, tb = node.attr["ta"], node.attr["tb"]
    if ta:
        da = emit("matmul", [b, dc], dict(ta=tb, tb=True))[0]  # dA = B' dC^T
    else:
        da = emit("matmul", [dc, b], dict(ta=False, tb=not tb))[0]  # dA = dC B'^T
    if tb:
        db = emit("matmul", [dc, a], dict(ta=True, tb=ta))[0]  # dB = dC^T A'
    else:
        db = emit("matmul", [a, dc], dict(ta=not ta, tb=False))[0]  # dB = A'^T dC
    return [da, db]


register(OpDef(
    "matmul", "C = op(a) @ op(b), op = transpose when ta/tb; z[l] = W[l] a[l-1] is matmul W, a",
    _matmul_infer, _matmul_ref, _matmul_grad, attrs={"ta": (bool, False), "tb": (bool, False)},
    init_roles={0: "weight"}, name_prefix="fc",
))

# --------------------------------------------------------------------------------------------
# bias_add and the fused bias_add_act (produced by fold_bn_into_weights / fuse_bias_act)
# --------------------------------------------------------------------------------------------


def _bias_add_infer(where, types, attrs):
    _expect_arity(where, "bias_add", types, 2)
    z, b = types
    _expect_activation(where, "bias_add input", z)
    _expect_same_dtype(where, types)
    _per_unit(where, "bias", b, z.shape[0])
    return (z,)


register(OpDef(
    "bias_add", "y = z + b[:, None]  (one bias per unit)",
    _bias_add_infer,
    lambda ins, attrs: (ins[0] + ins[1][:, None],),
    lambda emit, node, cts: [cts[0], emit("sum_batch", [cts[0]], {})[0]],
    init_roles={1: "bias"}, name_prefix="bias",
))


def _bias_add_act_grad(emit, node, cts):
    dy = emit("act_grad", [cts[0], node.out.name], _act_attrs(node))[0]
    return [dy, emit("sum_batch", [dy], {})[0]]


def _act_attrs(node):
    a = node.attr
    return {"act": a["act"], "negative_slope": a["negative_slope"]}


ACT_ATTRS = {"act": (str, None), "negative_slope": (float, 0.0)}

register(OpDef(
    "bias_add_act", "a = g(z + b[:, None])  (bias and activation in one pass)",
    _bias_add_infer,
    lambda ins, attrs: (act_fn(attrs)(ins[0] + ins[1][:, None]),),
    _bias_add_act_grad, attrs=dict(ACT_ATTRS), init_roles={1: "bias"}, name_prefix="bias",
))

# --------------------------------------------------------------------------------------------
# Activations as ops (one op per activation so the IR reads `relu %h`)
# --------------------------------------------------------------------------------------------


def _unary_infer(opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, 1)
        _expect_float(where, f"{opname} input", types[0])
        return (types[0],)

    return infer


def _make_activation_op(name):
    slope_attr = {"negative_slope": (float, 0.01)} if name == "leaky_relu" else {}

    def ref(ins, attrs):
        return (ACTIVATIONS[name].forward(ins[0], attrs.get("negative_slope", 0.0)),)

    def grad(emit, node, cts):
        if name == "identity":
            return [cts[0]]
        attrs = {"act": name, "negative_slope": node.attr.get("negative_slope", 0.0)}
        return [emit("act_grad", [cts[0], node.out.name], attrs)[0]]

    register(OpDef(name, ACTIVATIONS[name].formula, _unary_infer(name), ref, grad, attrs=slope_attr))


for _name in ACTIVATIONS:
    _make_activation_op(_name)

# --------------------------------------------------------------------------------------------
# Batch normalization
#   train: mu = mean(z), var = mean((z-mu)^2) over the batch; outputs (y, mu, var)
#   eval:  mu, var = running_mean, running_var;              outputs (y,)
#   y = gamma * (z - mu) / sqrt(var + eps) + beta
# The running statistics are updated by the separate `running_update` node, so the graph stays a
# pure function and the update is visible in the IR.
# --------------------------------------------------------------------------------------------

BN_ATTRS = {"eps": (float, 1e-5), "momentum": (float, 0.1), "mode": (str, "train")}
# PyTorch's initial values: gamma = 1, beta = 0, running_mean = 0, running_var = 1
BN_INIT = {1: "ones", 2: "zeros", 3: "zeros", 4: "ones"}


def _bn_infer(opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, 5)
        z, gamma, beta, rm, rv = types
        _expect_activation(where, f"{opname} input", z)
        _expect_same_dtype(where, types)
        n = z.shape[0]
        for what, t in (("gamma", gamma), ("beta", beta), ("running_mean", rm), ("running_var", rv)):
            _per_unit(where, what, t, n)
        if attrs["mode"] == "train":
            return (z, gamma, gamma)  # y, batch mean, batch variance (biased)
        return (z,)

    return infer


def bn_statistics(z, rm, rv, attrs):
    """(mean, var) used to normalize: the batch's own in training, the running ones in eval."""
    if attrs["mode"] == "train":
        mu = z.mean(axis=1)
        var = ((z - mu[:, None]) ** 2).mean(axis=1)
        return mu, var
    return rm, rv


def bn_scale_shift(gamma, beta, mu, var, eps):
    """s = gamma / sqrt(var + eps),  t = beta - mu * s   (so that BN(z) = z*s + t)."""
    s = gamma / np.sqrt(var + eps)
    return s, beta - mu * s


def _bn_ref(ins, attrs):
    # The textbook form: normalize, then scale and shift (three passes over z).
    z, gamma, beta, rm, rv = ins
    mu, var = bn_statistics(z, rm, rv, attrs)
    z_hat = (z - mu[:, None]) / np.sqrt(var[:, None] + attrs["eps"])
    y = gamma[:, None] * z_hat + beta[:, None]
    return (y, mu, var) if attrs["mode"] == "train" else (y,)


def _bn_act_ref(ins, attrs):
    # The fused form: per-unit s, t once, then a = g(z*s + t) in one pass.
    z, gamma, beta, rm, rv = ins
    mu, var = bn_statistics(z, rm, rv, attrs)
    s, t = bn_scale_shift(gamma, beta, mu, var, attrs["eps"])
    a = act_fn(attrs)(z * s[:, None] + t[:, None])
    return (a, mu, var) if attrs["mode"] == "train" else (a,)


def _check_no_stat_cotangents(node, cts):
    if any(c is not None for c in cts[1:]):
        raise IRError(f"{node.name}: cannot differentiate through the batch statistics outputs of {node.op}")


def _bn_grad(emit, node, cts):
    _check_no_stat_cotangents(node, cts)
    z, gamma, beta, rm, rv = node.inputs
    mode = node.attr["mode"]
    mu, var = (node.outputs[1].name, node.outputs[2].name) if mode == "train" else (rm, rv)
    attrs = {"eps": node.attr["eps"], "mode": mode}
    dz, dgamma, dbeta = emit("batchnorm_grad", [cts[0], z, gamma, mu, var], attrs)
    return [dz, dgamma, dbeta, None, None]


def _bn_act_grad(emit, node, cts):
    _check_no_stat_cotangents(node, cts)
    z, gamma, beta, rm, rv = node.inputs
    mode = node.attr["mode"]
    mu, var = (node.outputs[1].name, node.outputs[2].name) if mode == "train" else (rm, rv)
    attrs = {"eps": node.attr["eps"], "mode": mode, **_act_attrs(node)}
    dz, dgamma, dbeta = emit("batchnorm_act_grad", [cts[0], node.out.name, z, gamma, mu, var], attrs)
    return [dz, dgamma, dbeta, None, None]


register(OpDef(
    "batchnorm",
    "y = gamma*(z - mu)/sqrt(var + eps) + beta; train: batch mu/var (also returned), eval: running stats",
    _bn_infer("batchnorm"), _bn_ref, _bn_grad, attrs=dict(BN_ATTRS),
    init_roles=BN_INIT, name_prefix="bn", batch_statistics=True, nonnegative_inputs=(4,),
))

register(OpDef(
    "batchnorm_act",
    "a = g(z*s + t), s = gamma/sqrt(var + eps), t = beta - mu*s  (normalize, scale, shift, activate: one pass)",
    _bn_infer("batchnorm_act"), _bn_act_ref, _bn_act_grad, attrs={**BN_ATTRS, **ACT_ATTRS},
    init_roles=BN_INIT, name_prefix="bn", batch_statistics=True, nonnegative_inputs=(4,),
))


def _running_update_infer(where, types, attrs):
    _expect_arity(where, "running_update", types, 5)
    rm, rv, mu, var, z = types
    _expect_activation(where, "running_update batch input", z)
    for what, t in (("running_mean", rm), ("running_var", rv), ("batch mean", mu), ("batch var", var)):
        _per_unit(where, what, t, z.shape[0])
    return (rm, rv)


def _running_update_ref(ins, attrs):
    rm, rv, mu, var, z = ins
    m = z.shape[1]
    mom = attrs["momentum"]
    unbiased = var * (m / (m - 1)) if m > 1 else np.full_like(var, np.nan)
    return ((1 - mom) * rm + mom * mu, (1 - mom) * rv + mom * unbiased)


register(OpDef(
    "running_update",
    "running = (1 - momentum)*running + momentum*batch_stat; the variance uses the unbiased var*m/(m-1)",
    _running_update_infer, _running_update_ref, None, attrs={"momentum": (float, 0.1)}, kind="state",
    nonnegative_inputs=(1,), state_updates={0: 0, 1: 1},  # (rm, rv) -> (rm.next, rv.next)
))

# --------------------------------------------------------------------------------------------
# Losses (scalar, mean reduction)
# --------------------------------------------------------------------------------------------


def _log_softmax(logits):
    shifted = logits - logits.max(axis=0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))


def _sce_infer(where, types, attrs):
    _expect_arity(where, "softmax_cross_entropy", types, 2)
    logits, labels = types
    _expect_activation(where, "softmax_cross_entropy logits", logits)
    if labels.dtype != "i64" or labels.shape != (BATCH,):
        raise IRError(f"{where}: softmax_cross_entropy expects integer class labels i64[{BATCH}], got {labels}")
    return (_scalar(logits.dtype),)


def _sce_check(where, values, attrs):
    """Labels come from g.labels(...) (they know their classes): one logits row per class."""
    if len(values) != 2:
        return  # the shape rule reports the arity
    logits, labels = values
    if labels.classes is None and labels.type.dtype != "i64":
        raise IRError(f"{where}: softmax_cross_entropy expects integer class labels made with g.labels(...), "
                      f"got %{labels.name}: {labels.type}")
    if labels.classes is not None and logits.type.rank == 2 and logits.type.shape[0] != labels.classes:
        want = TensorType(logits.type.dtype, (labels.classes, BATCH))
        raise IRError(f"{where}: logits %{logits.name} expected shape {want} for labels %{labels.name} "
                      f"(classes={labels.classes}), got {logits.type}")


def _sce_ref(ins, attrs):
    logits, labels = ins
    m = logits.shape[1]
    return (-_log_softmax(logits)[labels, np.arange(m)].mean(),)


def _pair_infer(opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, 2)
        pred, target = types
        _expect_activation(where, f"{opname} prediction", pred)
        if not target.is_float:
            raise IRError(f"{where}: {opname} expects a float target shaped like its input {pred}, got {target}")
        _expect_same_dtype(where, types)
        _expect_shape(where, f"{opname} target", target, pred.shape)
        return (_scalar(pred.dtype),)

    return infer


def _float_target_check(opname):
    def check(where, values, attrs):
        """Class labels are for softmax_cross_entropy: say so, naming both values."""
        if len(values) == 2 and values[1].classes is not None:
            pred, target = values
            raise IRError(f"{where}: {opname} expects a float target shaped like %{pred.name}: {pred.type}, "
                          f"got integer class labels %{target.name}; use softmax_cross_entropy for class labels")

    return check


def _bce_ref(ins, attrs):
    z, t = ins
    # log(1 + exp(-|z|)) + max(z, 0) - z*t : stable for large |z| (as BCEWithLogitsLoss)
    return ((np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).mean(),)


def _loss_rule(grad_op):
    """dpred = grad_op(pred, target, dL): the loss's cotangent dL is the backward pass's seed."""

    def rule(emit, node, cts):
        if cts[0] is None:
            raise IRError(f"{node.name}: the gradient rule of {node.op} needs the incoming gradient dL "
                          f"(autodiff seeds the loss with fill[value=1.0])")
        return [emit(grad_op, [*node.inputs, cts[0]], {})[0], None]

    return rule


# Predictions and accuracy at the public API: ``out`` is the loss's input on the host, rows are
# examples, shape (m, outputs).
def _argmax_accuracy(out, y):
    return float((out.argmax(axis=1) == y).mean())


def _bce_accuracy(out, y):
    return float(((out > 0) == (y > 0.5)).mean())


def _no_accuracy(out, y):
    return None  # regression: no fraction of right answers


register(OpDef(
    "softmax_cross_entropy", "L = mean over the batch of -log softmax(logits)[y]  (integer labels)",
    _sce_infer, _sce_ref, _loss_rule("softmax_cross_entropy_grad"), kind="loss", check_values=_sce_check,
    name_prefix="loss", class_labels=True, predict=lambda out: out.argmax(axis=1), accuracy=_argmax_accuracy,
))
register(OpDef(
    "mse", "L = mean over all elements of (pred - target)^2",
    _pair_infer("mse"), lambda ins, attrs: (((ins[0] - ins[1]) ** 2).mean(),), _loss_rule("mse_grad"),
    kind="loss", check_values=_float_target_check("mse"), name_prefix="loss", predict=lambda out: out,
    accuracy=_no_accuracy,
))
register(OpDef(
    "sigmoid_bce", "L = mean over all elements of BCE(sigmoid(logits), target)  (binary, with logits)",
    _pair_infer("sigmoid_bce"), _bce_ref, _loss_rule("sigmoid_bce_grad"), kind="loss",
    check_values=_float_target_check("sigmoid_bce"), name_prefix="loss",
    predict=lambda out: (out > 0).astype(np.int64), accuracy=_bce_accuracy,
    target_range=(0.0, 1.0),  # probabilities: outside [0, 1] the loss can go negative
))

# --------------------------------------------------------------------------------------------
# Backward ops (made by the gradient rules above; not differentiated again)
# --------------------------------------------------------------------------------------------


def _same_as_input(index, arity, opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, arity)
        return (types[index],)

    return infer


def _sum_batch_infer(where, types, attrs):
    _expect_arity(where, "sum_batch", types, 1)
    _expect_activation(where, "sum_batch input", types[0])
    return (TensorType(types[0].dtype, (types[0].shape[0],)),)


register(OpDef("sum_batch", "s = sum(x, axis=batch)", _sum_batch_infer,
               lambda ins, attrs: (ins[0].sum(axis=1),), kind="backward"))

def _add_infer(where, types, attrs):
    _expect_arity(where, "add", types, 2)
    a, b = types
    _expect_float(where, "add operand a", a)
    _expect_shape(where, "add operand b", b, a.shape)
    _expect_same_dtype(where, types)
    return (a,)


register(OpDef("add", "c = a + b  (elementwise; autodiff uses it to sum the gradients of a value with several users)",
               _add_infer, lambda ins, attrs: (ins[0] + ins[1],),
               lambda emit, node, cts: [cts[0], cts[0]]))

register(OpDef("act_grad", "dx = dy * g'(x), g' computed from the output y",
               _same_as_input(0, 2, "act_grad"),
               lambda ins, attrs: (ins[0] * act_derivative(attrs)(ins[1]),),
               attrs=dict(ACT_ATTRS), kind="backward"))


def _bn_grad_infer(opname, arity):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, arity)
        dy, gamma = types[0], types[-3]
        return (dy, gamma, gamma)

    return infer


def bn_backward(dy, z, gamma, mu, var, eps, mode):
    """The compact formula (docs/ir.md, from the project's math notes): dz = (gamma*inv_std/m) * (m*dy - dbeta - z_hat*dgamma).

    In eval mode the statistics are constants: dz = dy * gamma * inv_std.
    """
    inv_std = 1 / np.sqrt(var + eps)
    z_hat = (z - mu[:, None]) * inv_std[:, None]
    dbeta = dy.sum(axis=1)
    dgamma = (dy * z_hat).sum(axis=1)
    if mode == "train":
        m = z.shape[1]
        dz = (gamma * inv_std / m)[:, None] * (m * dy - dbeta[:, None] - z_hat * dgamma[:, None])
    else:
        dz = dy * (gamma * inv_std)[:, None]
    return dz, dgamma, dbeta


register(OpDef(
    "batchnorm_grad",
    "dbeta = sum(dy), dgamma = sum(dy*z_hat); train: dz = (gamma*inv_std/m)*(m*dy - dbeta - z_hat*dgamma), "
    "eval: dz = dy*gamma*inv_std",
    _bn_grad_infer("batchnorm_grad", 5),
    lambda ins, attrs: bn_backward(*ins, attrs["eps"], attrs["mode"]),
    attrs={"eps": (float, 1e-5), "mode": (str, "train")}, kind="backward",
))
register(OpDef(
    "batchnorm_act_grad", "dy = da*g'(a), then batchnorm_grad: one fused backward pass",
    _bn_grad_infer("batchnorm_act_grad", 6),
    lambda ins, attrs: bn_backward(ins[0] * act_derivative(attrs)(ins[1]), *ins[2:], attrs["eps"], attrs["mode"]),
    attrs={"eps": (float, 1e-5), "mode": (str, "train"), **ACT_ATTRS}, kind="backward",
))


def _loss_grad_infer(opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, 3)
        pred, _, dl = types
        _expect_float(where, f"{opname} incoming gradient dL", dl)
        _expect_shape(where, f"{opname} incoming gradient dL", dl, ())
        _expect_same_dtype(where, (pred, dl))
        return (pred,)

    return infer


def _sce_grad_ref(ins, attrs):
    logits, labels, dl = ins
    m = logits.shape[1]
    p = np.exp(_log_softmax(logits))
    p[labels, np.arange(m)] -= 1
    return (p / m * dl,)


register(OpDef("softmax_cross_entropy_grad", "dlogits = (softmax(logits) - onehot(y)) / m * dL",
               _loss_grad_infer("softmax_cross_entropy_grad"), _sce_grad_ref, kind="backward"))
register(OpDef("mse_grad", "dpred = 2*(pred - target) / numel * dL",
               _loss_grad_infer("mse_grad"),
               lambda ins, attrs: (2 * (ins[0] - ins[1]) / ins[0].size * ins[2],), kind="backward"))
register(OpDef("sigmoid_bce_grad", "dlogits = (sigmoid(logits) - target) / numel * dL",
               _loss_grad_infer("sigmoid_bce_grad"),
               lambda ins, attrs: ((_sigmoid(ins[0]) - ins[1]) / ins[0].size * ins[2],), kind="backward"))


def _fill_infer(where, types, attrs):
    _expect_arity(where, "fill", types, 0)
    return (_scalar(attrs["dtype"]),)


register(OpDef("fill", "c = value, a scalar of dtype; autodiff seeds the backward pass with dL/dL = fill[value=1.0]",
               _fill_infer, lambda ins, attrs: (np.array(attrs["value"], dtype=DTYPES[attrs["dtype"]]),),
               attrs={"value": (float, None), "dtype": (str, None)}, kind="backward"))

LOSS_OPS = tuple(n for n, o in OPS.items() if o.kind == "loss")
BN_OPS = tuple(n for n, o in OPS.items() if o.batch_statistics)  # the batch-norm family


def uses_batch_statistics(node) -> bool:
    """True when ``node`` normalizes with its mini-batch's own statistics (a batchnorm in mode=train)."""
    return get_op(node.op).batch_statistics and node.attr.get("mode") == "train"


def needs_batch_statistics(graph) -> bool:
    """True when some node of ``graph`` normalizes with batch statistics: training it needs at least
    two examples per batch (one example has zero variance)."""
    return any(uses_batch_statistics(n) for n in graph.nodes)
