"""The op table: every rule for one op in one place.

Each op is an :class:`OpDef` registered in ``OPS`` with

* ``attrs``: the attribute names with their type and default (the IR text shows them in ``[k=v]``);
* ``optional_attrs``: attributes a node carries only when they differ from their default (None: no
  value), so that the text and the code of every graph that does not use them stay as they were
  (a class loss's ``reduction`` and ``ignore_index``);
* ``infer``: the shape/dtype rule, ``(where, input types, attrs) -> output types``;
  ``where`` names the node for error messages;
* ``ref``: the reference NumPy semantics, ``(input arrays, attrs) -> output arrays``; the
  reference interpreter (:mod:`bngraph.interpreter`) is nothing but these functions, and it is the
  oracle for every backend;
* ``grad``: the gradient rule used by autodiff, ``(emit, node, output cotangents) -> input
  cotangents`` (value names or None). ``emit(op, inputs, attrs, names)`` adds a node to the
  backward graph and returns its output names; ``emit.types[name]`` is a value's TensorType (the
  conv and pooling rules read the input sizes their backward ops carry). Backward ops and ops on
  state are not differentiated: ``differentiable=False``.
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
* not here: how a target writes the op; each target's lowering table
  (``bngraph/backends/<target>/lowerings.py``) names its template under ``templates/<target>/``.

``tests/test_ops.py`` walks this table and fails on an incomplete op.

Layout: activations are ``(features, batch)``; per-unit vectors are ``(n,)`` and broadcast as
``(n, 1)``. Spatial values are ``(channels, batch, d1[, d2])``; the per-unit ops (batch norm, bias,
their gradients) act per channel over the batch and the positions. The spatial ops (conv,
pooling, flatten) are registered from :mod:`bngraph.ops_spatial`.

Losses are means: over the batch (cross-entropy) or over all elements (mse, bce), as PyTorch's
default ``reduction='mean'``.
"""
from __future__ import annotations

import numpy as np

# the activation table lives in its own module; ops re-exports it (bngraph.ops.ACTIVATIONS)
from .activations import ACTIVATIONS, act_derivative, act_fn, sigmoid as _sigmoid
from .bn_math import bn_scale_shift, running_blend  # noqa: F401  (bn_scale_shift: bngraph.ops' public name)
from .ir import BATCH, DTYPES, IRError, TensorType
from .opdef import (OPS, REDUCTIONS, OpDef, _expect_activation, _expect_arity, _expect_float,  # noqa: F401
                    _expect_same_dtype, _expect_shape, _expect_units, _per_unit, _scalar, get_op, register, unit_rows)

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
    _expect_units(where, "bias_add input", z)
    _expect_same_dtype(where, types)
    _per_unit(where, "bias", b, z.shape[0])
    return (z,)


register(OpDef(
    "bias_add", "y = z + b[:, None]  (one bias per unit; per channel on a spatial value)",
    _bias_add_infer,
    lambda ins, attrs: (ins[0] + _per_row(ins[1], ins[0]),),
    lambda emit, node, cts: [cts[0], emit("sum_batch", [cts[0]], {})[0]],
    init_roles={1: "bias"}, name_prefix="bias",
))


def _per_row(v, x):
    """A per-unit vector shaped to broadcast against x: (n, 1) or (n, 1, 1, ...)."""
    return v.reshape(-1, *(1,) * (x.ndim - 1))


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
    lambda ins, attrs: (act_fn(attrs)(ins[0] + _per_row(ins[1], ins[0])),),
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
        _expect_units(where, f"{opname} input", z)
        _expect_same_dtype(where, types)
        n = z.shape[0]
        for what, t in (("gamma", gamma), ("beta", beta), ("running_mean", rm), ("running_var", rv)):
            _per_unit(where, what, t, n)
        if attrs["mode"] == "train":
            return (z, gamma, gamma)  # y, batch mean, batch variance (biased)
        return (z,)

    return infer


def bn_statistics(z, rm, rv, attrs):
    """(mean, var) used to normalize: the batch's own in training, the running ones in eval
    (per unit over the batch, per channel over the batch and the positions)."""
    z = unit_rows(z)
    if attrs["mode"] == "train":
        mu = z.mean(axis=1)
        var = ((z - mu[:, None]) ** 2).mean(axis=1)
        return mu, var
    return rm, rv


def _bn_ref(ins, attrs):
    # The textbook form: normalize, then scale and shift (three passes over z).
    z, gamma, beta, rm, rv = ins
    mu, var = bn_statistics(z, rm, rv, attrs)
    z_hat = (z - _per_row(mu, z)) / np.sqrt(_per_row(var, z) + attrs["eps"])
    y = _per_row(gamma, z) * z_hat + _per_row(beta, z)
    return (y, mu, var) if attrs["mode"] == "train" else (y,)


def _bn_act_ref(ins, attrs):
    # The fused form: per-unit s, t once, then a = g(z*s + t) in one pass.
    z, gamma, beta, rm, rv = ins
    mu, var = bn_statistics(z, rm, rv, attrs)
    s, t = bn_scale_shift(gamma, beta, mu, var, attrs["eps"])
    a = act_fn(attrs)(z * _per_row(s, z) + _per_row(t, z))
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
    _expect_units(where, "running_update batch input", z)
    for what, t in (("running_mean", rm), ("running_var", rv), ("batch mean", mu), ("batch var", var)):
        _per_unit(where, what, t, z.shape[0])
    return (rm, rv)


def _running_update_ref(ins, attrs):
    rm, rv, mu, var, z = ins
    m = z.size // z.shape[0]  # the count each statistic is over: the batch (times the positions)
    return running_blend(rm, rv, mu, var, m, attrs["momentum"])


register(OpDef(
    "running_update",
    "running = (1 - momentum)*running + momentum*batch_stat; the variance uses the unbiased var*n/(n-1), "
    "n = m (times the positions on a spatial value)",
    _running_update_infer, _running_update_ref, None, attrs={"momentum": (float, 0.1)}, kind="state",
    nonnegative_inputs=(1,), state_updates={0: 0, 1: 1},  # (rm, rv) -> (rm.next, rv.next)
))

# --------------------------------------------------------------------------------------------
# Losses. The regression losses are means (over all elements). The class losses over integer
# labels (softmax_cross_entropy on logits, nll on log-probabilities) have ONNX's and PyTorch's
# options (F.cross_entropy / F.nll_loss): class weights (an optional third input, (classes,)),
# ignore_index and reduction, with
#     w_i = weight[y_i] (1 without class weights), 0 where y_i == ignore_index
#     mean: L = sum_i w_i l_i / sum_i w_i,   sum: L = sum_i w_i l_i,   none: L_i = w_i l_i  (m,)
# --------------------------------------------------------------------------------------------

# optional attributes: the defaults (mean, nothing ignored) leave the node and its text unchanged
CLASS_LOSS_OPTIONS = {"reduction": (str, "mean"), "ignore_index": (int, None)}


def loss_options(attrs) -> tuple:
    """(reduction, ignore_index or None) of a class loss (or its gradient) node's attributes."""
    return attrs.get("reduction", "mean"), attrs.get("ignore_index")


def class_weights(labels, weight, ignore_index, dtype) -> tuple:
    """(labels safe to index, w): ``w_i = weight[y_i]`` (1 without class weights) and 0 where
    ``y_i == ignore_index``; an ignored label may lie outside [0, classes) and is never an index."""
    keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    y = np.where(keep, labels, 0)
    w = np.ones(labels.shape, dtype) if weight is None else weight[y].astype(dtype)
    return y, np.where(keep, w, 0).astype(dtype)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))


def _expect_class_loss_arity(where, opname, types, n):
    """n inputs, or n + 1 with the class weights (third)."""
    if len(types) not in (n, n + 1):
        raise IRError(f"{where}: {opname} takes {n} inputs, got {len(types)}; with class weights {n + 1}")


def _expect_labels_and_weights(where, opname, x, labels, weights):
    if labels.dtype != "i64" or labels.shape != (BATCH,):
        raise IRError(f"{where}: {opname} expects integer class labels i64[{BATCH}], got {labels}")
    for w in weights:  # (classes,): one weight per row of the scores
        _per_unit(where, f"{opname} class weights", w, x.shape[0])
        _expect_same_dtype(where, (x, w))


def _class_loss_infer(opname, scores):
    def infer(where, types, attrs):
        _expect_class_loss_arity(where, opname, types, 2)
        x, labels = types[:2]
        _expect_activation(where, f"{opname} {scores}", x)
        _expect_labels_and_weights(where, opname, x, labels, types[2:])
        per_example = loss_options(attrs)[0] == "none"
        return (TensorType(x.dtype, (BATCH,)) if per_example else _scalar(x.dtype),)

    return infer


def _labels_check(opname, scores):
    def check(where, values, attrs):
        """Labels come from g.labels(...) (they know their classes): one row of scores per class."""
        if len(values) not in (2, 3):
            return  # the shape rule reports the arity
        x, labels = values[:2]
        if labels.classes is None and labels.type.dtype != "i64":
            raise IRError(f"{where}: {opname} expects integer class labels made with g.labels(...), "
                          f"got %{labels.name}: {labels.type}")
        if labels.classes is not None and x.type.rank == 2 and x.type.shape[0] != labels.classes:
            want = TensorType(x.type.dtype, (labels.classes, BATCH))
            raise IRError(f"{where}: {scores} %{x.name} expected shape {want} for labels %{labels.name} "
                          f"(classes={labels.classes}), got {x.type}")

    return check


def _reduce(per_example, w, reduction):
    """The loss from the per-example losses (already times w_i): mean divides by sum_i w_i."""
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    return per_example.sum() / w.sum()


def _class_loss_ref(neg_log_prob):
    """l_i = neg_log_prob(x)[y_i, i], weighted and reduced."""

    def ref(ins, attrs):
        x, labels = ins[:2]
        reduction, ignore_index = loss_options(attrs)
        y, w = class_weights(labels, ins[2] if len(ins) > 2 else None, ignore_index, x.dtype)
        return (_reduce(w * neg_log_prob(x)[y, np.arange(x.shape[1])], w, reduction),)

    return ref


def _log_softmax_infer(where, types, attrs):
    _expect_arity(where, "log_softmax", types, 1)
    _expect_activation(where, "log_softmax input", types[0])
    return (types[0],)


register(OpDef(
    "log_softmax", "y = x - log(sum over classes of exp(x))  (log-probabilities over axis 0, per example)",
    _log_softmax_infer, lambda ins, attrs: (_log_softmax(ins[0]),),
    # dx = dy - softmax(x) * sum_c dy, and softmax(x) = exp(y): the output is at hand
    lambda emit, node, cts: [emit("log_softmax_grad", [cts[0], node.out.name], {})[0]],
))

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


def _incoming_dl(node, cts):
    if cts[0] is None:
        raise IRError(f"{node.name}: the gradient rule of {node.op} needs the incoming gradient dL "
                      f"(autodiff seeds the loss with fill[value=1.0])")
    return cts[0]


def _loss_rule(grad_op):
    """dpred = grad_op(pred, target, dL): the loss's cotangent dL is the backward pass's seed."""

    def rule(emit, node, cts):
        return [emit(grad_op, [*node.inputs, _incoming_dl(node, cts)], {})[0], None]

    return rule


def _class_loss_rule(grad_op):
    """dx = grad_op[options](x, labels[, weight], dL); the labels and the class weights are constants
    (PyTorch does not differentiate the weights either), so they get no cotangent."""

    def rule(emit, node, cts):
        dx = emit(grad_op, [*node.inputs, _incoming_dl(node, cts)], node.attr)[0]
        return [dx] + [None] * (len(node.inputs) - 1)

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
    "softmax_cross_entropy",
    "l_i = -log softmax(logits)[y_i]; L = mean over the batch (default), sum or none  (integer labels)",
    _class_loss_infer("softmax_cross_entropy", "logits"), _class_loss_ref(lambda x: -_log_softmax(x)),
    _class_loss_rule("softmax_cross_entropy_grad"), kind="loss",
    check_values=_labels_check("softmax_cross_entropy", "logits"), optional_attrs=dict(CLASS_LOSS_OPTIONS),
    init_roles={2: "ones"},  # class weights, when the node has them: 1 = unweighted
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
register(OpDef(
    "nll", "l_i = -x[y_i] (x: log-probabilities, e.g. log_softmax's); L = mean (default), sum or none",
    _class_loss_infer("nll", "log-probabilities"), _class_loss_ref(lambda x: -x), _class_loss_rule("nll_grad"),
    kind="loss", check_values=_labels_check("nll", "log-probabilities"), optional_attrs=dict(CLASS_LOSS_OPTIONS),
    init_roles={2: "ones"},
    name_prefix="loss", class_labels=True, predict=lambda out: out.argmax(axis=1), accuracy=_argmax_accuracy,
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
    _expect_units(where, "sum_batch input", types[0])
    return (TensorType(types[0].dtype, (types[0].shape[0],)),)


register(OpDef("sum_batch", "s = sum(x, axis=batch)  (and over the positions of a spatial value)", _sum_batch_infer,
               lambda ins, attrs: (unit_rows(ins[0]).sum(axis=1),), kind="backward"))

# ---- elementwise arithmetic on values of one shape (no broadcasting: the importer flattens) ----


def _elementwise_infer(opname, arity):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, arity)
        a = types[0]
        _expect_float(where, f"{opname} operand a", a)
        if arity == 2:
            _expect_shape(where, f"{opname} operand b", types[1], a.shape)
            _expect_same_dtype(where, types)
        return (a,)

    return infer


def _mul_grad(emit, node, cts):
    # c = a*b:  da = dc*b,  db = dc*a
    a, b = node.inputs
    return [emit("mul", [cts[0], b], {})[0], emit("mul", [cts[0], a], {})[0]]


def _div_grad(emit, node, cts):
    # c = a/b:  da = dc/b,  db = -dc*a/b^2 = -da*c  (c, the output, is at hand)
    da = emit("div", [cts[0], node.inputs[1]], {})[0]
    return [da, emit("neg", [emit("mul", [da, node.out.name], {})[0]], {})[0]]


register(OpDef("add", "c = a + b  (elementwise; autodiff uses it to sum the gradients of a value with several users)",
               _elementwise_infer("add", 2), lambda ins, attrs: (ins[0] + ins[1],),
               lambda emit, node, cts: [cts[0], cts[0]]))
register(OpDef("sub", "c = a - b  (elementwise)", _elementwise_infer("sub", 2),
               lambda ins, attrs: (ins[0] - ins[1],),
               lambda emit, node, cts: [cts[0], emit("neg", [cts[0]], {})[0]]))  # da = dc, db = -dc
register(OpDef("mul", "c = a * b  (elementwise)", _elementwise_infer("mul", 2),
               lambda ins, attrs: (ins[0] * ins[1],), _mul_grad))
register(OpDef("div", "c = a / b  (elementwise, IEEE: b = 0 gives inf or nan)", _elementwise_infer("div", 2),
               lambda ins, attrs: (ins[0] / ins[1],), _div_grad))
register(OpDef("neg", "y = -x  (elementwise; the gradient rules of sub and div use it)", _elementwise_infer("neg", 1),
               lambda ins, attrs: (-ins[0],),
               lambda emit, node, cts: [emit("neg", [cts[0]], {})[0]]))

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

    In eval mode the statistics are constants: dz = dy * gamma * inv_std. A spatial value is
    computed on its (channels, m*d1*...) view.
    """
    shape = dy.shape
    dy, z = unit_rows(dy), unit_rows(z)
    inv_std = 1 / np.sqrt(var + eps)
    z_hat = (z - mu[:, None]) * inv_std[:, None]
    dbeta = dy.sum(axis=1)
    dgamma = (dy * z_hat).sum(axis=1)
    if mode == "train":
        m = z.shape[1]
        dz = (gamma * inv_std / m)[:, None] * (m * dy - dbeta[:, None] - z_hat * dgamma[:, None])
    else:
        dz = dy * (gamma * inv_std)[:, None]
    return dz.reshape(shape), dgamma, dbeta


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


def _class_loss_grad_infer(opname):
    """(x, labels[, weight], dL) -> dx; dL is a scalar, or (m,) with reduction none."""

    def infer(where, types, attrs):
        _expect_class_loss_arity(where, opname, types, 3)
        x, labels, dl = types[0], types[1], types[-1]
        _expect_labels_and_weights(where, opname, x, labels, types[2:-1])
        _expect_float(where, f"{opname} incoming gradient dL", dl)
        _expect_shape(where, f"{opname} incoming gradient dL", dl, (BATCH,) if loss_options(attrs)[0] == "none" else ())
        _expect_same_dtype(where, (x, dl))
        return (x,)

    return infer


def class_loss_scale(ins, attrs) -> tuple:
    """(labels safe to index, s) for a class loss gradient with inputs (x, labels[, weight], dL):
    ``s_i = dL/dl_i`` = ``w_i dL / sum_j w_j`` (mean), ``w_i dL`` (sum), ``w_i dL_i`` (none)."""
    x, labels, dl = ins[0], ins[1], ins[-1]
    reduction, ignore_index = loss_options(attrs)
    y, w = class_weights(labels, ins[2] if len(ins) == 4 else None, ignore_index, x.dtype)
    return y, (w * (dl / w.sum()) if reduction == "mean" else w * dl)


def _sce_grad_ref(ins, attrs):
    # dl_i/dlogits[:, i] = softmax(logits[:, i]) - onehot(y_i)
    m = ins[0].shape[1]
    y, s = class_loss_scale(ins, attrs)
    p = np.exp(_log_softmax(ins[0]))
    p[y, np.arange(m)] -= 1
    return (p * s,)


def _nll_grad_ref(ins, attrs):
    # dl_i/dx[:, i] = -onehot(y_i)
    x = ins[0]
    y, s = class_loss_scale(ins, attrs)
    dx = np.zeros_like(x)
    dx[y, np.arange(x.shape[1])] = -s
    return (dx,)


register(OpDef("softmax_cross_entropy_grad",
               "dlogits[:, i] = (softmax(logits[:, i]) - onehot(y_i)) * s_i,  s_i = w_i*dL/sum(w) (mean: 1/m*dL)",
               _class_loss_grad_infer("softmax_cross_entropy_grad"), _sce_grad_ref, kind="backward",
               optional_attrs=dict(CLASS_LOSS_OPTIONS)))
register(OpDef("nll_grad", "dx[:, i] = -onehot(y_i) * s_i,  s_i = w_i*dL/sum(w) (mean), w_i*dL (sum), w_i*dL_i (none)",
               _class_loss_grad_infer("nll_grad"), _nll_grad_ref, kind="backward",
               optional_attrs=dict(CLASS_LOSS_OPTIONS)))
register(OpDef("log_softmax_grad", "dx = dy - exp(y) * sum over classes of dy  (y = log_softmax(x))",
               _same_as_input(0, 2, "log_softmax_grad"),
               lambda ins, attrs: (ins[0] - np.exp(ins[1]) * ins[0].sum(axis=0, keepdims=True),), kind="backward"))
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

# --------------------------------------------------------------------------------------------
# A loss and its gradient in one node, <loss>_and_grad: made by the pass fuse_loss_grad (which a
# target runs before it lowers, bngraph/passes/fuse_loss_grad.py), never by autodiff
# --------------------------------------------------------------------------------------------

# loss op -> (its gradient op, the fused op)
LOSS_AND_GRAD = {loss: (f"{loss}_grad", f"{loss}_and_grad") for loss in LOSS_OPS if f"{loss}_grad" in OPS}


def _loss_and_grad(loss: str) -> OpDef:
    """``(L, dx) = <loss>_and_grad(x, y[, w], dL)``: the loss's attributes; its shape rule and reference
    semantics are the two ops' own (the loss on the inputs but dL, the gradient on all of them), so it
    computes exactly what the pair does."""
    lo, (grad, name) = OPS[loss], LOSS_AND_GRAD[loss]
    gr = OPS[grad]

    def infer(where, types, attrs):
        return (*lo.infer(where, types[:-1], attrs), *gr.infer(where, types, attrs))

    def ref(ins, attrs):
        return (*lo.ref(ins[:-1], attrs), *gr.ref(ins, attrs))

    def check_values(where, values, attrs):
        if lo.check_values is not None:
            lo.check_values(where, values[:-1], attrs)

    return OpDef(name, f"(L, dx) = ({loss}, {grad}) of the same inputs in one node (fuse_loss_grad)", infer, ref,
                 attrs=dict(lo.attrs), optional_attrs=dict(lo.optional_attrs), kind="backward",
                 check_values=check_values)


for _loss in LOSS_AND_GRAD:
    register(_loss_and_grad(_loss))


def uses_batch_statistics(node) -> bool:
    """True when ``node`` normalizes with its mini-batch's own statistics (a batchnorm in mode=train)."""
    return get_op(node.op).batch_statistics and node.attr.get("mode") == "train"


def needs_batch_statistics(graph) -> bool:
    """True when some node of ``graph`` normalizes with batch statistics: training it needs at least
    two examples per batch (one example has zero variance)."""
    return any(uses_batch_statistics(n) for n in graph.nodes)


# the spatial ops (conv, pooling, flatten) register themselves into OPS; bngraph.ops_spatial
from . import ops_spatial  # noqa: E402,F401
# the collective ops (allreduce, synchronized batch norm) register themselves into OPS; bngraph.ops_collective
from . import ops_collective  # noqa: E402,F401
