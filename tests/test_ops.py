"""The op table (bngraph.ops.OPS): completeness, and every op's rules against oracles.

* Walk OPS and fail on an incomplete op (doc, infer, ref, grad, well-formed attrs, a test case here).
* The shape rule (infer) agrees with the reference semantics (ref) in float32 and float64.
* The reference semantics agree with PyTorch (float64; our layout is (features, batch), PyTorch's
  is (batch, features), so every comparison transposes).
* Every gradient *rule* is checked twice: against torch.autograd, and against central finite
  differences of the op's ref. A rule is run eagerly: ``emit(op, inputs, attrs)`` type-checks the
  backward op with its shape rule, evaluates its ref and returns the names of its outputs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bngraph as bg
from bngraph.ir import BATCH, Ints, Node, TensorType, Value
from bngraph.ops import ACTIVATIONS, OPS, get_op


M = 6  # batch size; no feature dimension below equals M
N = 4  # units
K = 3  # inputs / classes
REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Test cases: for every op, inputs (kind, shape) and attributes
#   kind: "x" standard normal, "pos" positive (variances), "prob" in (0, 1) (targets),
#         "labels" integer class labels i64[m] (shape = number of classes)
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)

    def __str__(self):
        attrs = ",".join(f"{k}={v}" for k, v in sorted(self.attrs.items()))
        return f"{self.op}[{attrs}]" if attrs else self.op


# the class losses' options (ignore_index=1 drops some of the labels in [0, K) the cases draw)
LOSS_VARIANTS = [{}, dict(reduction="sum"), dict(reduction="none"), dict(ignore_index=1),
                 dict(ignore_index=1, reduction="sum"), dict(ignore_index=-100, reduction="none")]
BN_IN = [("x", (N, BATCH)), ("x", (N,)), ("x", (N,)), ("x", (N,)), ("pos", (N,))]  # z, gamma, beta, rm, rv
BN_GRAD_IN = [("x", (N, BATCH)), ("x", (N, BATCH)), ("x", (N,)), ("x", (N,)), ("pos", (N,))]  # dy, z, gamma, mu, var
ACT_VARIANTS = [dict(act=a) for a in ACTIVATIONS] + [dict(act="leaky_relu", negative_slope=0.2)]
MODES = ("train", "eval")


def _cases() -> list:
    c = []
    c += [Case("matmul", [("x", (N, K)), ("x", (K, BATCH))]),
          Case("matmul", [("x", (K, N)), ("x", (K, BATCH))], dict(ta=True)),
          Case("matmul", [("x", (N, K)), ("x", (BATCH, K))], dict(tb=True)),
          Case("matmul", [("x", (K, N)), ("x", (BATCH, K))], dict(ta=True, tb=True)),
          Case("matmul", [("x", (N, BATCH)), ("x", (K, BATCH))], dict(tb=True)),  # dW = dz a^T
          Case("matmul", [("x", (N, K)), ("x", (N, BATCH))], dict(ta=True))]  # da = W^T dz
    c.append(Case("bias_add", [("x", (N, BATCH)), ("x", (N,))]))
    c += [Case("bias_add_act", [("x", (N, BATCH)), ("x", (N,))], a) for a in ACT_VARIANTS]
    c += [Case(a, [("x", (N, BATCH))]) for a in ACTIVATIONS]
    c.append(Case("leaky_relu", [("x", (N, BATCH))], dict(negative_slope=0.2)))
    c += [Case("batchnorm", BN_IN, dict(mode=mode)) for mode in MODES]
    c.append(Case("batchnorm", BN_IN, dict(mode="train", eps=1e-2, momentum=0.3)))
    c += [Case("batchnorm_act", BN_IN, dict(mode=mode, eps=1e-3, **a)) for mode in MODES for a in ACT_VARIANTS]
    c.append(Case("running_update", [("x", (N,)), ("pos", (N,)), ("x", (N,)), ("pos", (N,)), ("x", (N, BATCH))],
                  dict(momentum=0.3)))
    c.append(Case("softmax_cross_entropy", [("x", (K, BATCH)), ("labels", K)]))
    c.append(Case("log_softmax", [("x", (K, BATCH))]))
    c.append(Case("nll", [("x", (K, BATCH)), ("labels", K)]))
    for loss in ("softmax_cross_entropy", "nll"):  # class weights, ignore_index, reduction
        c += [Case(loss, [("x", (K, BATCH)), ("labels", K), ("pos", (K,))], at) for at in LOSS_VARIANTS]
        c += [Case(loss, [("x", (K, BATCH)), ("labels", K)], at) for at in LOSS_VARIANTS[1:]]
    c.append(Case("mse", [("x", (N, BATCH)), ("x", (N, BATCH))]))
    c.append(Case("sigmoid_bce", [("x", (N, BATCH)), ("prob", (N, BATCH))]))
    c.append(Case("sum_batch", [("x", (N, BATCH))]))
    c.append(Case("add", [("x", (N, BATCH)), ("x", (N, BATCH))]))
    c += [Case(op, [("x", (N, BATCH)), ("x", (N, BATCH))]) for op in ("sub", "mul")]
    c.append(Case("div", [("x", (N, BATCH)), ("pos", (N, BATCH))]))  # b away from 0
    c.append(Case("neg", [("x", (N, BATCH))]))
    c += [Case("act_grad", [("x", (N, BATCH)), ("prob", (N, BATCH))], a) for a in ACT_VARIANTS]
    c += [Case("batchnorm_grad", BN_GRAD_IN, dict(mode=mode)) for mode in MODES]
    c += [Case("batchnorm_act_grad", [("x", (N, BATCH))] + BN_GRAD_IN, dict(mode=mode, **a))
          for mode in MODES for a in ACT_VARIANTS]
    # the loss gradients take the loss's incoming gradient dL (a scalar) last
    c.append(Case("softmax_cross_entropy_grad", [("x", (K, BATCH)), ("labels", K), ("x", ())]))
    c.append(Case("nll_grad", [("x", (K, BATCH)), ("labels", K), ("x", ())]))
    for grad in ("softmax_cross_entropy_grad", "nll_grad"):  # dL is (m,) with reduction none
        c.append(Case(grad, [("x", (K, BATCH)), ("labels", K), ("pos", (K,)), ("x", (BATCH,))],
                      dict(reduction="none", ignore_index=1)))
        c.append(Case(grad, [("x", (K, BATCH)), ("labels", K), ("pos", (K,)), ("x", ())], dict(reduction="sum")))
    c.append(Case("log_softmax_grad", [("x", (K, BATCH)), ("x", (K, BATCH))]))
    c.append(Case("mse_grad", [("x", (N, BATCH)), ("x", (N, BATCH)), ("x", ())]))
    c.append(Case("sigmoid_bce_grad", [("x", (N, BATCH)), ("prob", (N, BATCH)), ("x", ())]))
    c += [Case("fill", [], dict(value=2.5, dtype=dt)) for dt in ("f32", "f64")]
    c += _spatial_cases()
    c += _collective_cases()
    # a loss and its gradient as one node (bngraph.passes.fuse_loss_grad): the gradient's inputs
    c += [Case(f"{case.op[:-len('_grad')]}_and_grad", case.inputs, case.attrs) for case in list(c)
          if case.op in ("softmax_cross_entropy_grad", "nll_grad", "mse_grad", "sigmoid_bce_grad")]
    return c


def _conv(stride, pads, dilation, groups=1):
    return dict(stride=stride, pads=pads, dilation=dilation, groups=groups)


def _spatial_cases() -> list:
    """Convolution (1-D, 2-D; stride, asymmetric pads, dilation, groups, depthwise), pooling,
    flatten, and the per-unit ops on spatial values (C, m, d...)."""
    c = [Case("conv", [("x", (N, K, 3)), ("x", (K, BATCH, 7))], _conv((1,), (1, 1), (1,))),
         Case("conv", [("x", (N, K, 2)), ("x", (K, BATCH, 8))], _conv((2,), (0, 2), (2,))),
         Case("conv", [("x", (N, K, 3, 2)), ("x", (K, BATCH, 5, 4))], _conv((2, 1), (1, 0, 0, 1), (1, 1))),
         Case("conv", [("x", (N, 2, 2, 2)), ("x", (N, BATCH, 4, 5))], _conv((1, 1), (1, 1, 1, 1), (2, 1), groups=2)),
         Case("conv", [("x", (N, 1, 3, 3)), ("x", (N, BATCH, 5, 5))], _conv((2, 2), (1, 1, 1, 1), (1, 1), groups=N)),
         Case("conv_grad_input", [("x", (N, K, 3)), ("x", (N, BATCH, 4))], dict(_conv((2,), (1, 1), (1,)), in_size=(7,))),
         Case("conv_grad_input", [("x", (N, 1, 3, 3)), ("x", (N, BATCH, 3, 3))],
              dict(_conv((2, 2), (1, 1, 1, 1), (1, 1), groups=N), in_size=(5, 5))),
         Case("conv_grad_weight", [("x", (N, BATCH, 4)), ("x", (K, BATCH, 7))], dict(_conv((2,), (1, 1), (1,)), kernel=(3,))),
         Case("conv_grad_weight", [("x", (N, BATCH, 4, 6)), ("x", (N, BATCH, 4, 5))],
              dict(_conv((1, 1), (1, 1, 1, 1), (2, 1), groups=2), kernel=(2, 2)))]
    mp1 = dict(kernel=(3,), stride=(2,), pads=(1, 1), dilation=(1,), ceil_mode=True)
    mp2 = dict(kernel=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0), dilation=(1, 1))
    mp3 = dict(kernel=(2, 3), stride=(1, 2), pads=(1, 1, 1, 1), dilation=(2, 1), ceil_mode=True)
    c += [Case("maxpool", [("x", (K, BATCH, 7))], mp1), Case("maxpool", [("x", (K, BATCH, 5, 4))], mp2),
          Case("maxpool", [("x", (K, BATCH, 5, 6))], mp3),
          Case("maxpool_grad", [("x", (K, BATCH, 4)), ("x", (K, BATCH, 7)), ("x", (K, BATCH, 4))], mp1),
          Case("maxpool_grad", [("x", (K, BATCH, 2, 2)), ("x", (K, BATCH, 5, 4)), ("x", (K, BATCH, 2, 2))], mp2)]
    for cip in (False, True):
        ap1 = dict(kernel=(3,), stride=(2,), pads=(1, 1), ceil_mode=True, count_include_pad=cip)
        ap2 = dict(kernel=(3, 2), stride=(2, 1), pads=(1, 1, 1, 1), count_include_pad=cip)
        c += [Case("avgpool", [("x", (K, BATCH, 8))], ap1), Case("avgpool", [("x", (K, BATCH, 5, 4))], ap2),
              Case("avgpool_grad", [("x", (K, BATCH, 5))], dict(ap1, in_size=(8,))),
              Case("avgpool_grad", [("x", (K, BATCH, 3, 5))], dict(ap2, in_size=(5, 4)))]
    c += [Case("global_avgpool", [("x", (K, BATCH, 7))]), Case("global_avgpool", [("x", (K, BATCH, 5, 4))]),
          Case("global_avgpool_grad", [("x", (K, BATCH, 1, 1))], dict(in_size=(5, 4))),
          Case("flatten", [("x", (K, BATCH, 7))]), Case("flatten", [("x", (K, BATCH, 5, 4))]),
          Case("unflatten", [("x", (K * 20, BATCH))], dict(shape=(K, 5, 4))),
          Case("unflatten", [("x", (K * 7, BATCH))], dict(shape=(K, 7)))]
    for shape in ((N, BATCH, 5), (N, BATCH, 3, 2)):  # per channel over the batch and the positions
        c += [Case("batchnorm", [("x", shape), *BN_IN[1:]], dict(mode=mode)) for mode in MODES]
        c.append(Case("batchnorm_act", [("x", shape), *BN_IN[1:]], dict(mode="train", act="relu")))
        c.append(Case("batchnorm_grad", [("x", shape), ("x", shape), *BN_GRAD_IN[2:]], dict(mode="train")))
        c.append(Case("batchnorm_act_grad", [("x", shape), ("x", shape), ("x", shape), *BN_GRAD_IN[2:]],
                      dict(mode="train", act="tanh")))
        c.append(Case("running_update", [("x", (N,)), ("pos", (N,)), ("x", (N,)), ("pos", (N,)), ("x", shape)]))
        c += [Case("bias_add", [("x", shape), ("x", (N,))]), Case("sum_batch", [("x", shape)]),
              Case("bias_add_act", [("x", shape), ("x", (N,))], dict(act="sigmoid"))]
    return c



def _collective_cases() -> list:
    """bngraph.ops_collective: allreduce (one replica: the identity) and synchronized batch norm's pieces."""
    z, u, n = ("x", (N, BATCH)), ("x", (N,)), ("pos", ())
    c = [Case("allreduce", [z]), Case("allreduce", [("x", (N, BATCH, 5))])]
    for shape in ((N, BATCH), (N, BATCH, 5)):
        zz = ("x", shape)
        c.append(Case("bn_partial_sum", [zz]))
        c.append(Case("bn_partial_m2", [zz, u, n]))
        c += [Case("batchnorm_sync", [zz, u, u, u, ("pos", (N,)), n], a) for a in ({}, dict(act="relu"))]
        for a in ({}, dict(act="tanh")):
            c.append(Case("batchnorm_sync_reduce", [zz, ("prob", shape), zz, u, ("pos", (N,))], a))
            c.append(Case("batchnorm_sync_grad", [zz, ("prob", shape), zz, u, u, ("pos", (N,)), u, u, n], a))
    c.append(Case("running_update_sync", [u, ("pos", (N,)), u, ("pos", (N,)), n], dict(momentum=0.2)))
    c += [Case("loss_count", [("x", (K, BATCH)), ("labels", K)]),
          Case("loss_count", [("x", (K, BATCH)), ("labels", K), ("pos", (K,))], dict(ignore_index=1)),
          Case("loss_count", [("x", (N, BATCH)), ("x", (N, BATCH))], dict(loss="mse"))]
    return c


CASES = _cases()
DIFF_CASES = [c for c in CASES if OPS[c.op].differentiable]

# inputs whose gradient rule returns None on purpose: class labels, loss targets (data), and the
# running statistics (state is never differentiated)
NO_GRAD = {
    "softmax_cross_entropy": {1, 2}, "nll": {1, 2}, "mse": {1}, "sigmoid_bce": {1},  # 2: class weights
    "batchnorm": {3, 4}, "batchnorm_act": {3, 4},
}


def input_type(spec, dtype="f64") -> TensorType:
    kind, shape = spec
    if kind == "labels":
        return TensorType("i64", (BATCH,))
    return TensorType(dtype, shape)


def make_inputs(case: Case, rng: np.random.Generator, dtype="f64") -> list:
    np_dtype = np.float32 if dtype == "f32" else np.float64
    arrays = []
    for kind, shape in case.inputs:
        if kind == "labels":
            arrays.append(rng.integers(0, shape, size=M))
            continue
        concrete = TensorType(dtype, shape).concrete_shape(M)
        a = {"x": lambda: rng.standard_normal(concrete),
             "pos": lambda: rng.uniform(0.5, 2.0, concrete),
             "prob": lambda: rng.uniform(0.05, 0.95, concrete)}[kind]()
        arrays.append(a.astype(np_dtype))
    return arrays


def attrs_of(case: Case) -> dict:
    return get_op(case.op).normalize_attrs(str(case), case.attrs)


# --------------------------------------------------------------------------------------------
# The op table is complete
# --------------------------------------------------------------------------------------------

ATTR_TYPES = (bool, int, float, str, Ints)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_complete(name):
    op = OPS[name]
    assert op.name == name
    assert isinstance(op.doc, str) and op.doc.strip() and "\n" not in op.doc, f"{name}: needs a one-line doc"
    assert callable(op.infer), f"{name}: no shape rule"
    assert callable(op.ref), f"{name}: no reference semantics"
    assert op.kind in ("forward", "loss", "state", "backward"), f"{name}: unknown kind {op.kind!r}"
    if op.kind in ("forward", "loss"):
        assert op.differentiable and callable(op.grad), f"{name}: a {op.kind} op needs a gradient rule"
    else:
        assert not op.differentiable and op.grad is None, f"{name}: {op.kind} ops are not differentiated"
    assert name.isidentifier() and name == name.lower()


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_attrs_are_well_formed(name):
    op = OPS[name]
    assert isinstance(op.attrs, dict)
    required = {}
    for k, spec in op.attrs.items():
        assert isinstance(k, str) and k.isidentifier(), f"{name}: bad attribute name {k!r}"
        assert isinstance(spec, tuple) and len(spec) == 2, f"{name}.{k}: expected (type, default)"
        typ, default = spec
        assert typ in ATTR_TYPES, f"{name}.{k}: attribute type {typ} is not one of {ATTR_TYPES}"
        if default is None:
            required[k] = {"act": "relu", "mode": "train", "dtype": "f32", "value": 1.0}.get(k)
            if typ is Ints:  # kernel, stride, pads, dilation, in_size, shape: any tuple of naturals
                required[k] = Ints((1, 1))
            assert required[k] is not None, f"{name}.{k}: required attribute without a known test value"
        else:
            assert type(default) is typ, f"{name}.{k}: default {default!r} is not a {typ.__name__}"
    # the defaults normalize to themselves, and normalizing is idempotent
    attrs = op.normalize_attrs(name, required)
    assert set(attrs) == set(op.attrs)
    assert op.normalize_attrs(name, attrs) == attrs
    with pytest.raises(bg.IRError, match=rf"{name}: op {name} has no attribute\(s\) \['bogus'\]"):
        op.normalize_attrs(name, {**required, "bogus": 1})


def test_loss_and_bn_tables():
    from bngraph.ops import BN_OPS, LOSS_OPS

    assert set(LOSS_OPS) == {n for n, o in OPS.items() if o.kind == "loss"} == {"softmax_cross_entropy", "nll", "mse",
                                                                                "sigmoid_bce"}
    assert set(BN_OPS) == {n for n, o in OPS.items() if o.batch_statistics}
    assert set(BN_OPS) == {"batchnorm", "batchnorm_act"}
    for a in ACTIVATIONS:
        assert a in OPS and OPS[a].kind == "forward", f"activation {a} has no op"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_fields_are_well_formed(name):
    """The per-op knowledge the DSL, the verifier, init and the model read from the table."""
    from bngraph.init import ROLES

    op = OPS[name]
    assert op.check_values is None or callable(op.check_values)
    assert isinstance(op.init_roles, dict) and set(op.init_roles.values()) <= set(ROLES)
    assert all(isinstance(i, int) and i >= 0 for i in op.init_roles), f"{name}: init_roles keys are input indices"
    assert op.prefix.isidentifier() and op.prefix == (op.name_prefix or name)
    assert isinstance(op.batch_statistics, bool) and isinstance(op.class_labels, bool)
    if op.batch_statistics:
        assert op.attrs.get("mode") == (str, "train"), f"{name}: batch statistics are chosen by mode=train"
    if op.kind == "loss":
        assert callable(op.predict) and callable(op.accuracy), f"{name}: a loss predicts and scores from its input"
    else:
        assert op.predict is None and op.accuracy is None and not op.class_labels


def test_roles_and_prefixes_of_the_ops():
    assert OPS["matmul"].init_roles == {0: "weight"} and OPS["matmul"].prefix == "fc"
    assert OPS["bias_add"].init_roles == OPS["bias_add_act"].init_roles == {1: "bias"}
    for bn in ("batchnorm", "batchnorm_act"):  # gamma = 1, beta = 0, running_mean = 0, running_var = 1
        assert OPS[bn].init_roles == {1: "ones", 2: "zeros", 3: "zeros", 4: "ones"} and OPS[bn].prefix == "bn"
    assert [OPS[n].prefix for n in ("relu", "bias_add", "mse")] == ["relu", "bias", "loss"]
    assert [n for n, o in OPS.items() if o.class_labels] == ["softmax_cross_entropy", "nll"]


def test_needs_batch_statistics():
    from bngraph.ops import needs_batch_statistics, uses_batch_statistics

    g = bg.mlp([4, 5, 3])
    assert needs_batch_statistics(g) and needs_batch_statistics(g.build()) and g.is_training
    assert [n.op for n in g.nodes if uses_batch_statistics(n)] == ["batchnorm"]
    fused = bg.run_pipeline(g, bg.TRAINING_PIPELINE).graph
    assert [n.op for n in fused.nodes if uses_batch_statistics(n)] == ["batchnorm_act"]
    assert not needs_batch_statistics(bg.to_inference(g))  # eval mode: running statistics
    assert not needs_batch_statistics(bg.mlp([4, 5, 3], batchnorm=False))


@pytest.mark.parametrize("loss, out, y, predicted, accuracy", [
    ("softmax_cross_entropy", [[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], [1, 2, 2], [1, 0, 2], 2 / 3),
    ("sigmoid_bce", [[0.5, -1.0], [-0.25, 0.0], [2.0, 3.0]], [[1.0, 0.0], [1.0, 0.2], [0.9, 0.4]],
     [[1, 0], [0, 0], [1, 1]], 4 / 6),
    ("mse", [[0.5, -1.0], [2.0, 3.0]], [[0.0, 0.0], [2.0, 3.0]], [[0.5, -1.0], [2.0, 3.0]], None),
])
def test_loss_predict_and_accuracy(loss, out, y, predicted, accuracy):
    """Host arrays, rows are examples: argmax / logits > 0 / the prediction itself."""
    op = OPS[loss]
    out, y = np.array(out), np.array(y)
    pred = op.predict(out)
    np.testing.assert_array_equal(pred, predicted)
    if loss != "mse":
        assert pred.dtype == np.int64
    if accuracy is None:
        assert op.accuracy(out, y) is None  # regression: no accuracy
    else:
        assert op.accuracy(out, y) == pytest.approx(accuracy) and isinstance(op.accuracy(out, y), float)


@pytest.mark.parametrize("loss, target, match", [
    ("softmax_cross_entropy", "t8", r"loss: softmax_cross_entropy expects integer class labels made with g.labels"),
    ("softmax_cross_entropy", "y", r"loss: logits %z expected shape f32\[10,m\] for labels %y \(classes=10\), "
                                   r"got f32\[8,m\]"),
    ("mse", "y", r"loss: mse expects a float target shaped like %z: f32\[8,m\], got integer class labels %y"),
    ("sigmoid_bce", "y", r"loss: sigmoid_bce expects a float target shaped like %z: f32\[8,m\], got integer"),
])
def test_the_dsl_and_the_verifier_share_the_value_checks(loss, target, match):
    """OpDef.check runs the op's check_values then its shape rule, for the DSL and the verifier alike:
    the same message, with the verifier's node prefix."""
    g = bg.Graph("t")
    g.labels("y", 10), g.input("t8", 8)  # the targets, by name below
    z = g.matmul(g.input("x", 4), 8, bias=False, name="z")
    with pytest.raises(bg.IRError, match=match):
        g.add_node(loss, [z, target], {}, ["loss"])
    bad = g.build().rebuild(nodes=[*g.nodes, Node.make(loss, ["z", target], [Value("loss", TensorType("f32", ()))])],
                            outputs=[("loss", "loss")])
    with pytest.raises(bg.VerifyError, match=rf"graph t: node %loss \({loss}\): " + match.replace("loss: ", "", 1)):
        bg.verify(bad)


def test_fill_is_a_scalar_of_its_dtype():
    (c,) = OPS["fill"].ref([], OPS["fill"].normalize_attrs("t", {"value": 2, "dtype": "f32"}))
    assert c.shape == () and c.dtype == np.float32 and c == 2.0
    with pytest.raises(bg.IRError, match="t: dtype must be one of f32, f64, got 'i64'"):
        OPS["fill"].normalize_attrs("t", {"value": 1.0, "dtype": "i64"})
    with pytest.raises(bg.IRError, match="t: fill takes 0 inputs, got 1"):
        OPS["fill"].infer("t", [TensorType("f32", ())], {"value": 1.0, "dtype": "f32"})


def test_loss_gradients_need_a_scalar_incoming_gradient():
    types = [TensorType("f32", (3, BATCH)), TensorType("i64", (BATCH,))]
    rule = OPS["softmax_cross_entropy_grad"].infer
    assert rule("t", [*types, TensorType("f32", ())], {}) == (types[0],)
    with pytest.raises(bg.IRError, match=r"t: softmax_cross_entropy_grad incoming gradient dL expected shape f32\[\]"):
        rule("t", [*types, TensorType("f32", (3, BATCH))], {})
    with pytest.raises(bg.IRError, match="t: inputs mix dtypes"):
        rule("t", [*types, TensorType("f64", ())], {})
    with pytest.raises(bg.IRError, match="t: softmax_cross_entropy_grad takes 3 inputs, got 2; with class weights 4"):
        rule("t", types, {})
    node = Node.make("mse", ["p", "t"], [Value("loss", TensorType("f32", ()))])
    with pytest.raises(bg.IRError, match=r"loss: the gradient rule of mse needs the incoming gradient dL"):
        OPS["mse"].grad(lambda *a: None, node, [None])


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_has_a_test_case(name):
    assert any(c.op == name for c in CASES), f"op {name} has no Case in tests/test_ops.py: add one"


@pytest.mark.parametrize("name", sorted(NO_GRAD))
def test_no_grad_table_names_real_ops(name):
    assert OPS[name].differentiable


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_lowers_to_a_numpy_template(name):
    """The NumPy target's lowering table has the op, and each template it picks (per variant: the
    attributes of the op's test cases) exists under templates/numpy/."""
    from bngraph.backends import get_target

    lowerings = get_target("numpy").renderer.lowerings
    assert name in lowerings, f"the numpy target has no lowering for op {name}"
    for case in (c for c in CASES if c.op == name):
        template = lowerings[name].template_for(attrs_of(case))
        assert (REPO / "templates" / "numpy" / template).is_file(), f"{case}: templates/numpy/{template} is missing"


def test_unknown_op_error():
    with pytest.raises(bg.IRError, match="fc9: unknown op 'conv2d'"):
        get_op("conv2d", "fc9")


# --------------------------------------------------------------------------------------------
# Shape rule vs reference semantics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_ref_agrees_with_shape_rule(case, dtype):
    op = OPS[case.op]
    attrs = attrs_of(case)
    types = op.infer(str(case), [input_type(s, dtype) for s in case.inputs], attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings from a reference
        outs = op.ref(make_inputs(case, np.random.default_rng(0), dtype), attrs)
    assert len(outs) == len(types)
    for out, t in zip(outs, types):
        out = np.asarray(out)
        assert out.shape == t.concrete_shape(M), f"{case}: ref gives {out.shape}, the shape rule says {t}"
        assert out.dtype == np.dtype(bg.ir.DTYPES[t.dtype]), f"{case}: ref gives {out.dtype}, the shape rule says {t}"
        assert np.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# Running a gradient rule eagerly
# --------------------------------------------------------------------------------------------


class Eager:
    """An env of named arrays and types; ``emit`` runs one backward op at once (type-checked)."""

    def __init__(self):
        self.env, self.types, self.emitted = {}, {}, []

    def bind(self, name, array, type_):
        self.env[name], self.types[name] = np.asarray(array), type_

    def emit(self, op, inputs, attrs, names=None):
        opdef = get_op(op, "emit")
        attrs = opdef.normalize_attrs(f"emit {op}", attrs)
        types = opdef.infer(f"emit {op}", [self.types[i] for i in inputs], attrs)  # rules emit well-typed nodes
        outs = opdef.ref([self.env[i] for i in inputs], attrs)
        names = list(names) if names else [f"%t{len(self.env)}.{j}" for j in range(len(types))]
        for n, t, a in zip(names, types, outs):
            assert np.shape(a) == t.concrete_shape(M), f"emitted {op}: ref shape {np.shape(a)} vs rule {t}"
            self.bind(n, a, t)
        self.emitted.append(op)
        return names

    def rule_emit(self):
        """``emit`` as autodiff hands it to a rule: a function with ``emit.types`` (name -> TensorType)."""
        def emit(*args, **kwargs):
            return self.emit(*args, **kwargs)

        emit.types = self.types
        return emit


def run_rule(case: Case, arrays: list, ct: np.ndarray):
    """Forward the op, then its gradient rule with cotangent ``ct`` on output 0 (None on the
    batch-statistics outputs). Returns (input cotangents or None, the Eager record)."""
    op = OPS[case.op]
    attrs = attrs_of(case)
    eager = Eager()
    in_types = [input_type(s) for s in case.inputs]
    in_names = [f"in{i}" for i in range(len(arrays))]
    for n, a, t in zip(in_names, arrays, in_types):
        eager.bind(n, a, t)
    out_types = op.infer(str(case), in_types, attrs)
    outs = op.ref(arrays, attrs)
    out_vals = [Value(f"out{j}", t) for j, t in enumerate(out_types)]
    for v, a in zip(out_vals, outs):
        eager.bind(v.name, a, v.type)
    eager.bind("ct", ct, out_types[0])
    node = Node.make(case.op, in_names, out_vals, attrs)
    cts = ["ct"] + [None] * (len(out_vals) - 1)
    result = op.grad(eager.rule_emit(), node, cts)
    assert len(result) == len(arrays), f"{case}: the rule returns {len(result)} cotangents for {len(arrays)} inputs"
    return [None if r is None else eager.env[r] for r in result], eager


def cotangent(case: Case, rng) -> np.ndarray:
    # losses too: their rules multiply by the incoming dL like every other rule (autodiff seeds 1)
    t = OPS[case.op].infer(str(case), [input_type(s) for s in case.inputs], attrs_of(case))[0]
    return rng.standard_normal(t.concrete_shape(M))


def scalar_objective(case: Case, arrays: list, ct: np.ndarray) -> float:
    return float((ct * OPS[case.op].ref(arrays, attrs_of(case))[0]).sum())


def finite_difference(case: Case, arrays: list, ct: np.ndarray, i: int, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(arrays[i])
    for idx in np.ndindex(arrays[i].shape):
        plus = [a.copy() for a in arrays]
        minus = [a.copy() for a in arrays]
        plus[i][idx] += h
        minus[i][idx] -= h
        grad[idx] = (scalar_objective(case, plus, ct) - scalar_objective(case, minus, ct)) / (2 * h)
    return grad


@pytest.mark.parametrize("case", DIFF_CASES, ids=str)
def test_gradient_rule_vs_finite_differences(case):
    rng = np.random.default_rng(1)
    arrays = make_inputs(case, rng)
    ct = cotangent(case, rng)
    grads, eager = run_rule(case, arrays, ct)
    assert all(OPS[op].kind in ("forward", "backward") for op in eager.emitted), eager.emitted
    for i, (spec, g) in enumerate(zip(case.inputs, grads)):
        if i in NO_GRAD.get(case.op, ()):
            assert g is None, f"{case}: input {i} ({spec}) should have no gradient"
            continue
        assert g is not None, f"{case}: the rule gives no gradient for input {i}"
        assert g.shape == arrays[i].shape
        fd = finite_difference(case, arrays, ct, i)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7, err_msg=f"{case}: d/d input {i}")


# --------------------------------------------------------------------------------------------
# PyTorch as the oracle: forward ops, then their gradient rules vs torch.autograd
# --------------------------------------------------------------------------------------------

T_ACT = {
    "identity": lambda x, s: x,
    "relu": lambda x, s: torch.relu(x),
    "leaky_relu": lambda x, s: F.leaky_relu(x, s),
    "tanh": lambda x, s: torch.tanh(x),
    "sigmoid": lambda x, s: torch.sigmoid(x),
}


def t_class_loss(ins, at):
    """PyTorch's weight, ignore_index (its default -100 never matches labels in [0, K)) and reduction."""
    return dict(weight=ins[2] if len(ins) > 2 else None, ignore_index=at.get("ignore_index", -100),
                reduction=at.get("reduction", "mean"))


def t_batchnorm(ins, at):
    z, gamma, beta, rm, rv = ins  # (C, m, d...) -> PyTorch's (m, C, d...) and back
    train = at["mode"] == "train"
    y = F.batch_norm(z.movedim(1, 0), rm.detach().clone(), rv.detach().clone(), gamma, beta, training=train,
                     momentum=at["momentum"], eps=at["eps"]).movedim(0, 1)
    rows = z.reshape(z.shape[0], -1)
    return [y, rows.mean(dim=1), rows.var(dim=1, unbiased=False)] if train else [y]


def t_per_unit(v, x):
    return v.reshape(-1, *(1,) * (x.dim() - 1))


def _t_spatial(fn):
    """A torch.nn.functional op on our (C, m, d...) layout: to (m, C, d...), apply, back."""
    return lambda ins, at: [fn(ins[0].movedim(1, 0), ins, at).movedim(0, 1)]


def _t_pads(at, k):
    """Symmetric pads as PyTorch's padding, or the input padded explicitly (asymmetric)."""
    p = at["pads"]
    return tuple(p[:k]) if tuple(p[:k]) == tuple(p[k:]) else None


def _t_conv(ins, at):
    W, x = ins
    k = W.dim() - 2
    xt = x.movedim(1, 0)
    pad = _t_pads(at, k)
    if pad is None:  # F.pad takes the last dimension first: (left_w, right_w, top_h, bottom_h)
        p = at["pads"]
        xt, pad = F.pad(xt, [v for i in reversed(range(k)) for v in (p[i], p[k + i])]), (0,) * k
    conv = F.conv1d if k == 1 else F.conv2d
    return [conv(xt, W, stride=at["stride"], padding=pad, dilation=at["dilation"], groups=at["groups"]).movedim(0, 1)]


def _t_pool(kind):
    def fn(ins, at):
        x = ins[0].movedim(1, 0)
        k = x.dim() - 2
        pad = _t_pads(at, k)
        assert pad is not None, "the pooling cases use symmetric padding (PyTorch's pools take no other)"
        if kind == "max":
            f = F.max_pool1d if k == 1 else F.max_pool2d
            y = f(x, at["kernel"], at["stride"], pad, at["dilation"], ceil_mode=at["ceil_mode"])
        else:
            f = F.avg_pool1d if k == 1 else F.avg_pool2d
            y = f(x, at["kernel"], at["stride"], pad, ceil_mode=at["ceil_mode"], count_include_pad=at["count_include_pad"])
        return [y.movedim(0, 1)]

    return fn


def t_batchnorm_act(ins, at):
    y, *stats = t_batchnorm(ins, at)
    return [T_ACT[at["act"]](y, at["negative_slope"]), *stats]


TORCH = {
    "matmul": lambda ins, at: [(ins[0].T if at["ta"] else ins[0]) @ (ins[1].T if at["tb"] else ins[1])],
    "bias_add": lambda ins, at: [ins[0] + t_per_unit(ins[1], ins[0])],
    "bias_add_act": lambda ins, at: [T_ACT[at["act"]](ins[0] + t_per_unit(ins[1], ins[0]), at["negative_slope"])],
    "conv": _t_conv,
    "maxpool": _t_pool("max"),
    "avgpool": _t_pool("avg"),
    "global_avgpool": _t_spatial(lambda x, ins, at: F.adaptive_avg_pool2d(x, 1) if x.dim() == 4 else F.adaptive_avg_pool1d(x, 1)),
    "flatten": lambda ins, at: [torch.flatten(ins[0].movedim(1, 0), 1).T],  # nn.Flatten, then (features, m)
    "unflatten": lambda ins, at: [ins[0].T.reshape(-1, *at["shape"]).movedim(0, 1)],
    **{a: (lambda ins, at, a=a: [T_ACT[a](ins[0], at.get("negative_slope", 0.0))]) for a in ACTIVATIONS},
    "batchnorm": t_batchnorm,
    "batchnorm_act": t_batchnorm_act,
    "softmax_cross_entropy": lambda ins, at: [F.cross_entropy(ins[0].T, ins[1], **t_class_loss(ins, at))],
    "nll": lambda ins, at: [F.nll_loss(ins[0].T, ins[1], **t_class_loss(ins, at))],
    "log_softmax": lambda ins, at: [F.log_softmax(ins[0], dim=0)],
    "mse": lambda ins, at: [F.mse_loss(ins[0], ins[1])],
    "sigmoid_bce": lambda ins, at: [F.binary_cross_entropy_with_logits(ins[0], ins[1])],
    "add": lambda ins, at: [ins[0] + ins[1]],
    "sub": lambda ins, at: [ins[0] - ins[1]],
    "mul": lambda ins, at: [ins[0] * ins[1]],
    "div": lambda ins, at: [ins[0] / ins[1]],
    "neg": lambda ins, at: [-ins[0]],
    "allreduce": lambda ins, at: [x.clone() for x in ins],  # one replica: the sum over replicas is the identity
}


def test_every_differentiable_op_has_a_torch_oracle():
    assert {n for n, o in OPS.items() if o.differentiable} == set(TORCH)


@pytest.mark.parametrize("case", DIFF_CASES, ids=str)
def test_forward_and_gradient_rule_vs_torch(case):
    rng = np.random.default_rng(2)
    arrays = make_inputs(case, rng)
    ct = cotangent(case, rng)
    attrs = attrs_of(case)
    no_grad = NO_GRAD.get(case.op, set())
    tins = [torch.tensor(a, requires_grad=(a.dtype.kind == "f" and i not in no_grad)) for i, a in enumerate(arrays)]
    touts = TORCH[case.op](tins, attrs)
    outs = OPS[case.op].ref(arrays, attrs)
    assert len(outs) == len(touts)
    for o, t in zip(outs, touts):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{case}: forward")
    (touts[0] * torch.tensor(ct)).sum().backward()
    grads, _ = run_rule(case, arrays, ct)
    for i, (g, t) in enumerate(zip(grads, tins)):
        if g is None:
            continue
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=f"{case}: d/d input {i}")


# --------------------------------------------------------------------------------------------
# Batch norm vs PyTorch, spelled out
# --------------------------------------------------------------------------------------------


def _bn_inputs(rng, n=5, m=8):
    z = rng.standard_normal((n, m)) * 3 + 1
    gamma, beta = rng.standard_normal(n), rng.standard_normal(n)
    rm, rv = rng.standard_normal(n), rng.uniform(0.5, 2, n)
    return z, gamma, beta, rm, rv


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
@pytest.mark.parametrize("m", [2, 3, 16])
def test_batchnorm_train_vs_torch(eps, m):
    z, gamma, beta, rm, rv = _bn_inputs(np.random.default_rng(m), m=m)
    y, mu, var = OPS["batchnorm"].ref([z, gamma, beta, rm, rv], dict(eps=eps, momentum=0.1, mode="train"))
    zt = torch.tensor(z.T)  # torch is (batch, features)
    yt = F.batch_norm(zt, None, None, torch.tensor(gamma), torch.tensor(beta), training=True, eps=eps)
    np.testing.assert_allclose(y, yt.numpy().T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mu, zt.mean(dim=0).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(var, zt.var(dim=0, unbiased=False).numpy(), rtol=1e-12)  # biased


def test_batchnorm_eval_vs_torch():
    z, gamma, beta, rm, rv = _bn_inputs(np.random.default_rng(3))
    (y,) = OPS["batchnorm"].ref([z, gamma, beta, rm, rv], dict(eps=1e-5, momentum=0.1, mode="eval"))
    yt = F.batch_norm(torch.tensor(z.T), torch.tensor(rm), torch.tensor(rv), torch.tensor(gamma), torch.tensor(beta),
                      training=False, eps=1e-5)
    np.testing.assert_allclose(y, yt.numpy().T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, gamma[:, None] * (z - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5) + beta[:, None])


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.5, 0.9, 1.0, 0.0])
@pytest.mark.parametrize("m", [2, 5, 32])
def test_running_update_vs_batchnorm1d(momentum, m):
    """One train-mode forward of nn.BatchNorm1d updates its running stats exactly like
    batchnorm (batch mean, biased var) followed by running_update (unbiased var, PyTorch momentum)."""
    n = 5
    rng = np.random.default_rng(int(momentum * 100) + m)
    z, gamma, beta, rm, rv = _bn_inputs(rng, n=n, m=m)
    module = torch.nn.BatchNorm1d(n, eps=1e-5, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(gamma))
        module.bias.copy_(torch.tensor(beta))
        module.running_mean.copy_(torch.tensor(rm))
        module.running_var.copy_(torch.tensor(rv))
    module.train()
    yt = module(torch.tensor(z.T)).detach().numpy().T
    y, mu, var = OPS["batchnorm"].ref([z, gamma, beta, rm, rv], dict(eps=1e-5, momentum=momentum, mode="train"))
    rm_next, rv_next = OPS["running_update"].ref([rm, rv, mu, var, z], dict(momentum=momentum))
    np.testing.assert_allclose(y, yt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm_next, module.running_mean.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rv_next, module.running_var.numpy(), rtol=1e-12, atol=1e-15)


def test_running_update_defaults_follow_pytorch():
    module = torch.nn.BatchNorm1d(3)
    assert OPS["running_update"].attrs["momentum"] == (float, module.momentum)
    assert OPS["batchnorm"].attrs["eps"] == (float, module.eps)
    # momentum is the weight of the NEW batch: momentum=1 forgets the old value entirely
    rm, rv, mu, var = np.zeros(3), np.ones(3), np.full(3, 2.0), np.full(3, 4.0)
    rm1, rv1 = OPS["running_update"].ref([rm, rv, mu, var, np.zeros((3, 5))], dict(momentum=1.0))
    np.testing.assert_allclose(rm1, mu)
    np.testing.assert_allclose(rv1, var * 5 / 4)  # unbiased


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACT_VARIANTS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_batchnorm_act_is_act_of_batchnorm(mode, act):
    ins = list(_bn_inputs(np.random.default_rng(4)))
    bn_attrs = dict(eps=1e-3, momentum=0.1, mode=mode)
    fused_attrs = OPS["batchnorm_act"].normalize_attrs("t", {**bn_attrs, **act})
    plain = OPS["batchnorm"].ref(ins, bn_attrs)
    fused = OPS["batchnorm_act"].ref(ins, fused_attrs)
    a = ACTIVATIONS[act["act"]].forward(plain[0], fused_attrs["negative_slope"])
    np.testing.assert_allclose(fused[0], a, rtol=1e-12, atol=1e-12)
    for p, f in zip(plain[1:], fused[1:]):  # the same batch statistics
        np.testing.assert_allclose(f, p, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Activations and losses vs PyTorch, including large inputs
# --------------------------------------------------------------------------------------------

LARGE = np.array([[-1000.0, -50.0, -1e-3, 0.0, 1e-3, 50.0, 1000.0]])
DL = 0.75  # the loss's incoming gradient: the loss gradients scale by it (torch: loss.backward(DL))


@pytest.mark.parametrize("act", ACT_VARIANTS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_activation_vs_torch(act):
    name, slope = act["act"], act.get("negative_slope", 0.01 if act["act"] == "leaky_relu" else 0.0)
    x = np.concatenate([np.random.default_rng(5).standard_normal((3, 7)) * 4, LARGE])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (y,) = OPS[name].ref([x], OPS[name].normalize_attrs(name, {"negative_slope": slope} if name == "leaky_relu" else {}))
    np.testing.assert_allclose(y, T_ACT[name](torch.tensor(x), slope).numpy(), rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_softmax_cross_entropy_vs_torch(scale):
    rng = np.random.default_rng(6)
    logits, labels = rng.standard_normal((5, 9)) * scale, rng.integers(0, 5, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (loss,) = OPS["softmax_cross_entropy"].ref([logits, labels], {})
        (grad,) = OPS["softmax_cross_entropy_grad"].ref([logits, labels, np.array(DL)], {})
    lt = torch.tensor(logits.T, requires_grad=True)
    ref = F.cross_entropy(lt, torch.tensor(labels))
    ref.backward(torch.tensor(DL))
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, lt.grad.numpy().T, rtol=1e-10, atol=1e-15)


def test_mse_vs_torch():
    rng = np.random.default_rng(7)
    pred, target = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    (loss,) = OPS["mse"].ref([pred, target], {})
    (grad,) = OPS["mse_grad"].ref([pred, target, np.array(DL)], {})
    pt = torch.tensor(pred, requires_grad=True)
    ref = F.mse_loss(pt, torch.tensor(target))  # reduction='mean' over all elements
    ref.backward(torch.tensor(DL))
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_sigmoid_bce_vs_torch(scale):
    rng = np.random.default_rng(8)
    logits = np.concatenate([rng.standard_normal((3, 7)) * scale, LARGE])
    target = np.concatenate([rng.uniform(0, 1, (3, 7)), (LARGE > 0).astype(float)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (loss,) = OPS["sigmoid_bce"].ref([logits, target], {})
        (grad,) = OPS["sigmoid_bce_grad"].ref([logits, target, np.array(DL)], {})
    lt = torch.tensor(logits, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(lt, torch.tensor(target))
    ref.backward(torch.tensor(DL))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, lt.grad.numpy(), rtol=1e-10, atol=1e-300)


# --------------------------------------------------------------------------------------------
# Backward ops vs torch.autograd on the same inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_grad_vs_torch(mode):
    rng = np.random.default_rng(9)
    z, gamma, beta, rm, rv = _bn_inputs(rng, m=7)
    dy = rng.standard_normal(z.shape)
    attrs = dict(eps=1e-5, momentum=0.1, mode=mode)
    fwd = OPS["batchnorm"].ref([z, gamma, beta, rm, rv], attrs)
    mu, var = (fwd[1], fwd[2]) if mode == "train" else (rm, rv)
    dz, dgamma, dbeta = OPS["batchnorm_grad"].ref([dy, z, gamma, mu, var], dict(eps=1e-5, mode=mode))
    zt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (z, gamma, beta))
    yt = F.batch_norm(zt.T, torch.tensor(rm), torch.tensor(rv), gt, bt, training=mode == "train", eps=1e-5).T
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-12)


def test_bias_before_batchnorm_gets_zero_gradient():
    """NOTES.md: with a bias before a training-mode BN, db = sum(dz) = 0 exactly (up to rounding)."""
    rng = np.random.default_rng(10)
    z, gamma, beta, rm, rv = _bn_inputs(rng)
    dy = rng.standard_normal(z.shape)
    y, mu, var = OPS["batchnorm"].ref([z, gamma, beta, rm, rv], dict(eps=1e-5, momentum=0.1, mode="train"))
    dz, _, _ = OPS["batchnorm_grad"].ref([dy, z, gamma, mu, var], dict(eps=1e-5, mode="train"))
    (db,) = OPS["sum_batch"].ref([dz], {})
    np.testing.assert_allclose(db, 0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACT_VARIANTS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_batchnorm_act_grad_vs_torch(mode, act):
    rng = np.random.default_rng(11)
    z, gamma, beta, rm, rv = _bn_inputs(rng, m=7)
    da = rng.standard_normal(z.shape)
    attrs = OPS["batchnorm_act"].normalize_attrs("t", dict(eps=1e-5, mode=mode, **act))
    fwd = OPS["batchnorm_act"].ref([z, gamma, beta, rm, rv], attrs)
    a = fwd[0]
    mu, var = (fwd[1], fwd[2]) if mode == "train" else (rm, rv)
    grad_attrs = OPS["batchnorm_act_grad"].normalize_attrs("t", dict(eps=1e-5, mode=mode, **act))
    dz, dgamma, dbeta = OPS["batchnorm_act_grad"].ref([da, a, z, gamma, mu, var], grad_attrs)
    zt, gt, bt = (torch.tensor(v, requires_grad=True) for v in (z, gamma, beta))
    yt = F.batch_norm(zt.T, torch.tensor(rm), torch.tensor(rv), gt, bt, training=mode == "train", eps=1e-5).T
    T_ACT[act["act"]](yt, attrs["negative_slope"]).backward(torch.tensor(da))
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ACT_VARIANTS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_act_grad_vs_torch(act):
    rng = np.random.default_rng(12)
    x, dy = rng.standard_normal((4, 9)) * 3, rng.standard_normal((4, 9))
    attrs = OPS["act_grad"].normalize_attrs("t", act)
    y = ACTIVATIONS[act["act"]].forward(x, attrs["negative_slope"])
    (dx,) = OPS["act_grad"].ref([dy, y], attrs)  # g' from the output y
    xt = torch.tensor(x, requires_grad=True)
    T_ACT[act["act"]](xt, attrs["negative_slope"]).backward(torch.tensor(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_sum_batch_is_the_bias_gradient():
    rng = np.random.default_rng(13)
    z, b, dy = rng.standard_normal((4, 6)), rng.standard_normal(4), rng.standard_normal((4, 6))
    bt = torch.tensor(b, requires_grad=True)
    (torch.tensor(z) + bt[:, None]).backward(torch.tensor(dy))
    np.testing.assert_allclose(OPS["sum_batch"].ref([dy], {})[0], bt.grad.numpy(), rtol=1e-14)


def test_add_accumulates():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    np.testing.assert_array_equal(OPS["add"].ref([a, b], {})[0], a + b)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_and_its_rule_vs_torch(ta, tb):
    rng = np.random.default_rng(14)
    a = rng.standard_normal((3, 4) if ta else (4, 3))
    b = rng.standard_normal((M, 3) if tb else (3, M))
    case = Case("matmul", [("x", a.shape), ("x", tuple(BATCH if d == M else d for d in b.shape))], dict(ta=ta, tb=tb))
    (c,) = OPS["matmul"].ref([a, b], attrs_of(case))
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ct = (at.T if ta else at) @ (bt.T if tb else bt)
    np.testing.assert_allclose(c, ct.detach().numpy(), rtol=1e-13)
    dc = rng.standard_normal(c.shape)
    ct.backward(torch.tensor(dc))
    (da, db), eager = run_rule(case, [a, b], dc)
    assert eager.emitted == ["matmul", "matmul"]
    np.testing.assert_allclose(da, at.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# A whole graph through the interpreter vs the same network in PyTorch
# --------------------------------------------------------------------------------------------


def test_interpreted_mlp_matches_torch_module():
    g = bg.mlp([6, 5, 4, 3], activation="tanh", dtype="f64", momentum=0.2)
    rng = np.random.default_rng(15)
    m = 10
    X, y = rng.standard_normal((m, 6)), rng.integers(0, 3, m)  # samples by rows, as at the public API
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5, momentum=0.2), torch.nn.Tanh(),
        torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4, momentum=0.2), torch.nn.Tanh(),
        torch.nn.Linear(4, 3),
    ).double().train()
    sd = net.state_dict()
    values = {
        "fc1.W": sd["0.weight"], "fc1.b": sd["0.bias"], "bn1.gamma": sd["1.weight"], "bn1.beta": sd["1.bias"],
        "bn1.running_mean": sd["1.running_mean"], "bn1.running_var": sd["1.running_var"],
        "fc2.W": sd["3.weight"], "fc2.b": sd["3.bias"], "bn2.gamma": sd["4.weight"], "bn2.beta": sd["4.bias"],
        "bn2.running_mean": sd["4.running_mean"], "bn2.running_var": sd["4.running_var"],
        "out.W": sd["6.weight"], "out.b": sd["6.bias"],
    }
    values = {k: v.detach().numpy().copy() for k, v in values.items()}
    out = bg.interpret(g, {"x": X.T, "y": y}, values)  # transposed once, at the boundary
    loss = F.cross_entropy(net(torch.tensor(X)), torch.tensor(y))
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-12)
    for k in ("bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"):
        layer, stat = k.split(".")
        idx = {"bn1": "1", "bn2": "4"}[layer]
        np.testing.assert_allclose(out[f"state.{k}"], net.state_dict()[f"{idx}.{stat}"].numpy(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# docs/ir.md carries the op table generated from OPS (BNGRAPH_UPDATE_GOLDEN=1 rewrites it)
# --------------------------------------------------------------------------------------------

TABLE_BEGIN, TABLE_END = "<!-- op-table:begin (generated from bngraph.ops.OPS) -->", "<!-- op-table:end -->"


def op_table_markdown() -> str:
    def attrs(op):
        parts = [f"`{k}`: {t.__name__}" + (" (required)" if d is None else f" = `{d!r}`")
                 for k, (t, d) in op.attrs.items()]
        parts += [f"`{k}`: {t.__name__}, optional" + ("" if d is None else f" = `{d!r}`")
                  for k, (t, d) in op.optional_attrs.items()]
        return ", ".join(parts) or "—"

    rows = ["| op | kind | attributes | what it computes |", "|---|---|---|---|"]
    for name, op in OPS.items():
        doc = op.doc.replace("|", "\\|")
        rows.append(f"| `{name}` | {op.kind} | {attrs(op)} | {doc} |")
    return "\n".join(rows)


def test_docs_op_table_is_current():
    import os

    path = REPO / "docs" / "ir.md"
    text = path.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text, f"{path}: the op table markers are missing"
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    fresh = f"{head}{TABLE_BEGIN}\n{op_table_markdown()}\n{TABLE_END}{tail}"
    if os.environ.get("BNGRAPH_UPDATE_GOLDEN"):
        path.write_text(fresh)
        text = fresh
    assert text == fresh, "docs/ir.md's op table is stale: rerun with BNGRAPH_UPDATE_GOLDEN=1 and review the diff"
