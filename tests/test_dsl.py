"""The Python DSL: the contract example, every builder method, the mlp sugar, and build-time errors
that name the node and say what was expected and what was given."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bngraph as bg
from bngraph.ir import BATCH, IRError, TensorType

from conftest import check_golden

# --------------------------------------------------------------------------------------------
# The contract example
# --------------------------------------------------------------------------------------------


def test_contract_example_builds_prints_and_round_trips(capsys):
    g = bg.Graph("mlp"); x = g.input("x", 64); y = g.labels("y", 10)  # noqa: E702 (the contract, verbatim)
    h = g.matmul(x, 128, bias=True, name="fc1"); h = g.batchnorm(h, name="bn1", eps=1e-5, momentum=0.1)  # noqa: E702
    h = g.relu(h); logits = g.matmul(h, 10, name="out"); g.softmax_cross_entropy(logits, y); print(g)  # noqa: E702
    printed = capsys.readouterr().out
    assert printed == str(g) + "\n"
    check_golden("dsl_example.ir", str(g))
    assert bg.parse(printed) == g
    frozen = bg.verify(g)  # every compiler stage takes the builder and works on g.build()
    assert isinstance(frozen, bg.FrozenGraph) and frozen == g and str(frozen) == printed.rstrip("\n")


def test_contract_example_values_and_names(dsl_example):
    g = dsl_example
    assert g.value("x").type == TensorType("f32", (64, BATCH))
    assert g.value("y").type == TensorType("i64", (BATCH,)) and g.value("y").classes == 10
    assert g.value("fc1.W").type.shape == (128, 64)  # (out, in), like torch.nn.Linear.weight
    assert g.value("out.W").type.shape == (10, 128)
    names = set(g.values())
    for n in ("fc1.W", "fc1.b", "fc1.matmul", "fc1", "bn1.gamma", "bn1.beta", "bn1.running_mean",
              "bn1.running_var", "bn1", "bn1.mean", "bn1.var", "bn1.running_mean.next",
              "bn1.running_var.next", "relu1", "out.matmul", "out", "loss"):
        assert n in names, n
    assert g.outputs == [("loss", "loss"), ("state.bn1.running_mean", "bn1.running_mean.next"),
                         ("state.bn1.running_var", "bn1.running_var.next")]
    bn = g.producers()["bn1"]
    assert bn.attr == {"eps": 1e-5, "momentum": 0.1, "mode": "train"}
    assert [o.name for o in bn.outputs] == ["bn1", "bn1.mean", "bn1.var"]
    upd = g.producers()["bn1.running_mean.next"]
    assert upd.op == "running_update" and upd.attr == {"momentum": 0.1}
    assert upd.inputs == ("bn1.running_mean", "bn1.running_var", "bn1.mean", "bn1.var", "fc1")


# --------------------------------------------------------------------------------------------
# Builder methods
# --------------------------------------------------------------------------------------------


def _base(dtype="f32"):
    g = bg.Graph("t", dtype)
    x = g.input("x", 4)
    return g, x


@pytest.mark.parametrize("method, op", [
    ("relu", "relu"), ("tanh", "tanh"), ("sigmoid", "sigmoid"), ("identity", "identity"),
])
def test_plain_activations(method, op):
    g, x = _base()
    a = getattr(g, method)(x)
    assert a.name == f"{op}1" and a.type == x.type
    b = getattr(g, method)(a, name="second")
    assert b.name == "second"
    assert g.producers()["second"].op == op and g.producers()["second"].attr == {}


def test_leaky_relu_and_activation_by_name():
    g, x = _base()
    a = g.leaky_relu(x, negative_slope=0.01)
    assert g.producers()[a.name].attr == {"negative_slope": 0.01}
    assert "= leaky_relu[negative_slope=0.01] %x" in str(g.build().rebuild(outputs=[("out", a.name)]))
    b = g.leaky_relu(a)  # PyTorch's default slope
    assert g.producers()[b.name].attr == {"negative_slope": 0.01}
    c = g.activation(b, "relu")
    assert g.producers()[c.name].op == "relu"
    d = g.activation(c, "leaky_relu", name="lr", negative_slope=0.3)
    assert g.producers()["lr"].attr == {"negative_slope": 0.3}
    # an integer slope is stored as a float, so it prints and parses back the same
    e = g.leaky_relu(d, negative_slope=1)
    assert g.producers()[e.name].attr == {"negative_slope": 1.0}


def test_matmul_with_and_without_bias():
    g, x = _base()
    z = g.matmul(x, 3, bias=False, name="nob")
    assert z.name == "nob" and z.type == TensorType("f32", (3, BATCH))
    assert "nob.b" not in g.values() and g.producers()["nob"].op == "matmul"
    z2 = g.matmul(z, 5)  # auto name
    assert z2.name == "fc1" and g.producers()["fc1"].op == "bias_add"
    assert g.producers()["fc1.matmul"].inputs == ("fc1.W", "nob")
    assert g.value("fc1.W").type.shape == (5, 3) and g.value("fc1.b").type.shape == (5,)


def test_bias_add_and_generic_params():
    g, x = _base("f64")
    h = g.bias_add(x, name="shift")
    assert g.value("shift.b").type == TensorType("f64", (4,))
    W = g.param("W", (2, 4))
    s = g.state_value("count", (2,))
    assert W.kind == "param" and s.kind == "state" and W.type.dtype == "f64"
    z = g.add_node("matmul", [W, h], {}, ["z"]).out
    assert z.type == TensorType("f64", (2, BATCH))
    p = g.param(None, (3,))
    assert p.name == "p1"


def test_batchnorm_names_and_auto_names():
    g, x = _base()
    a = g.batchnorm(x)
    b = g.batchnorm(a, eps=1e-3, momentum=0.01)
    assert (a.name, b.name) == ("bn1", "bn2")
    assert g.producers()["bn2"].attr == {"eps": 1e-3, "momentum": 0.01, "mode": "train"}
    assert g.producers()["bn2.running_var.next"].attr == {"momentum": 0.01}
    assert g.state_names() == ["bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"]
    assert ("state.bn2.running_var", "bn2.running_var.next") in g.outputs


@pytest.mark.parametrize("loss, target", [("mse", "float"), ("sigmoid_bce", "float"), ("softmax_cross_entropy", "labels")])
def test_losses_are_scalars_and_output_first(loss, target):
    g, x = _base()
    t = g.labels("t", 3) if target == "labels" else g.input("t", 3)
    h = g.batchnorm(g.matmul(x, 3))
    out = getattr(g, loss)(h, t)
    assert out.name == "loss" and out.type == TensorType("f32", ())
    assert g.outputs[0] == ("loss", "loss") and g.loss_node.op == loss
    bg.verify(g)
    assert bg.parse(str(g)) == g
    g2, x2 = _base()
    t2 = g2.labels("t", 4) if target == "labels" else g2.input("t", 4)
    g2.loss(loss, x2, t2, name="objective")
    assert g2.output("loss") == "objective"


# --------------------------------------------------------------------------------------------
# mlp sugar
# --------------------------------------------------------------------------------------------


def test_mlp_layers_and_names():
    g = bg.mlp([4, 8, 6, 3])
    ops = [n.op for n in g.nodes]
    assert ops == ["matmul", "bias_add", "batchnorm", "running_update", "relu",
                   "matmul", "bias_add", "batchnorm", "running_update", "relu",
                   "matmul", "bias_add", "softmax_cross_entropy"]
    assert g.param_names() == ["fc1.W", "fc1.b", "bn1.gamma", "bn1.beta", "fc2.W", "fc2.b", "bn2.gamma",
                               "bn2.beta", "out.W", "out.b"]
    assert [n.name for n in g.nodes if n.op == "relu"] == ["act1", "act2"]
    assert g.value("y").classes == 3


def test_mlp_options():
    g = bg.mlp([4, 8, 3], activation="leaky_relu", negative_slope=0.2, batchnorm=False, bias=False,
               loss="mse", name="reg", dtype="f64")
    assert g.name == "reg" and all(v.type.dtype == "f64" for v in g.params)
    assert [n.op for n in g.nodes] == ["matmul", "leaky_relu", "matmul", "bias_add", "mse"]
    assert g.producers()["act1"].attr == {"negative_slope": 0.2}
    assert g.value("y").type == TensorType("f64", (3, BATCH)) and g.value("y").classes is None
    assert g.state == [] and not g.is_training
    g = bg.mlp([4, 8, 3], eps=1e-3, momentum=0.3, loss="sigmoid_bce")
    assert g.producers()["bn1"].attr == {"eps": 1e-3, "momentum": 0.3, "mode": "train"}
    assert g.loss_node.op == "sigmoid_bce"
    assert bg.mlp([4, 3]).param_names() == ["out.W", "out.b"]
    assert bg.mlp(np.array([4, 5, 3])) == bg.mlp([4, 5, 3])  # numpy integers are fine


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    activation=st.sampled_from(sorted(bg.ACTIVATIONS)),
    batchnorm=st.booleans(), bias=st.booleans(),
    loss=st.sampled_from(["softmax_cross_entropy", "mse", "sigmoid_bce"]),
    dtype=st.sampled_from(["f32", "f64"]),
    eps=st.floats(1e-8, 1.0), momentum=st.floats(0.0, 1.0),
    slope=st.floats(0.0, 1.0, allow_subnormal=False),
)
def test_mlp_round_trips_and_verifies(widths, activation, batchnorm, bias, loss, dtype, eps, momentum, slope):
    g = bg.mlp(widths, activation=activation, batchnorm=batchnorm, bias=bias, loss=loss, dtype=dtype,
               eps=eps, momentum=momentum, negative_slope=slope)
    bg.verify(g)
    assert bg.parse(str(g)) == g
    assert str(bg.parse(str(g))) == str(g)


# --------------------------------------------------------------------------------------------
# Build-time errors: each names the node, what it expected and what it got
# --------------------------------------------------------------------------------------------


@pytest.fixture
def g():
    g = bg.Graph("mlp")
    g.input("x", 64)
    g.labels("y", 10)
    g.input("t8", 8)
    g.input("t5", 5)
    g.matmul("x", 8, name="fc1")
    return g


@pytest.mark.parametrize("build, match", [
    # duplicate names
    (lambda g: g.input("x", 3), "duplicate name: %x is already defined in graph mlp"),
    (lambda g: g.labels("fc1", 3), "duplicate name: %fc1 is already defined in graph mlp"),
    (lambda g: g.matmul("x", 8, name="fc1"), r"duplicate name: %fc1.W is already defined"),
    (lambda g: g.relu("fc1", name="fc1.matmul"), r"duplicate name: %fc1.matmul is already defined"),
    (lambda g: g.batchnorm("fc1", name="fc1"), r"duplicate name: %fc1 is already defined"),
    (lambda g: g.add_node("relu", ["fc1"], {}, ["x"]), "duplicate name: %x is already defined"),
    (lambda g: g.input("bad name", 3), "bad name 'bad name': expected a letter or '_'"),
    (lambda g: g.relu("fc1", name="2fast"), "bad name '2fast'"),
    (lambda g: g.add_node("relu", ["fc1"], {}, ["a b"]), "bad name 'a b'"),
    # activations
    (lambda g: g.activation("fc1", "swish", name="a1"),
     "a1: unknown activation 'swish'; expected one of identity, relu, leaky_relu, tanh, sigmoid"),
    (lambda g: g.activation("fc1", "relu", name="a1", negative_slope=0.1),
     r"a1: op relu has no attribute\(s\) \['negative_slope'\]; expected none"),
    (lambda g: g.leaky_relu("fc1", negative_slope="steep", name="a1"),
     "a1: attribute negative_slope of leaky_relu must be float, got 'steep'"),
    (lambda g: g.relu("y", name="a1"), r"a1: relu input must be a float tensor, got i64\[m\]"),
    # the gradient is computed from the output, which needs y > 0 <=> x > 0
    (lambda g: g.leaky_relu("fc1", negative_slope=-0.1, name="a1"), "a1: negative_slope must be >= 0, got -0.1"),
    # matmul on incompatible shapes
    (lambda g: g.matmul("y", 8, name="fc2"), r"fc2: matmul expects a \(features, m\) float input, got %y: i64\[m\]"),
    (lambda g: g.matmul("fc1.W", 8, name="fc2"),
     r"fc2: matmul expects a \(features, m\) float input, got %fc1.W: f32\[8,64\]"),
    (lambda g: g.matmul("fc1", 0, name="fc2"), "fc2: units must be a positive integer, got 0"),
    (lambda g: g.add_node("matmul", [g.param("W", (8, 5)), "x"], {}, ["z"]),
     r"z: matmul inner dimensions differ: a is f32\[8,5\] \(inner 5\) but b is f32\[64,m\] \(inner 64\)"),
    (lambda g: g.add_node("matmul", [g.param("W", (64, 8)), "x"], {"ta": True, "tb": True}, ["z"]),
     r"z: matmul inner dimensions differ: a\^T is f32\[64,8\] \(inner 64\) but b\^T is f32\[64,m\] \(inner m\)"),
    (lambda g: g.add_node("matmul", ["fc1.W", "y"], {}, ["z"]), r"z: matmul operand b must be a float tensor, got i64\[m\]"),
    (lambda g: g.add_node("matmul", ["fc1.b", "x"], {}, ["z"]), r"z: matmul expects 2-D operands, got f32\[8\] and f32\[64,m\]"),
    (lambda g: g.add_node("matmul", ["fc1.W"], {}, ["z"]), "z: matmul takes 2 inputs, got 1"),
    (lambda g: g.add_node("matmul", ["fc1.W", "nope"], {}, ["z"]), "z: input 'nope' is not a value of graph mlp"),
    (lambda g: g.add_node("relu", ["fc1"], {}, ["z", "w"]), "z: relu has 1 outputs, 2 names given"),
    (lambda g: g.add_node("swish", ["fc1"], {}, ["z"]), "z: unknown op 'swish'"),
    (lambda g: g.add_node("bias_add", ["fc1", "t8"], {}, ["z"]), r"z: bias expected shape f32\[8\], got f32\[8,m\]"),
    (lambda g: g.add_node("batchnorm", ["fc1", "fc1.b", "fc1.b", "fc1.b", "fc1.W"], {}, ["z", "z.mean", "z.var"]),
     r"z: running_var expected shape f32\[8\], got f32\[8,64\]"),
    (lambda g: g.add_node("batchnorm", ["fc1", "fc1.b", "fc1.b", "fc1.b", "fc1.b"], {"mode": "fit"}, ["z"]),
     "z: mode must be 'train' or 'eval', got 'fit'"),
    (lambda g: g.add_node("batchnorm_act", ["fc1", "fc1.b", "fc1.b", "fc1.b", "fc1.b"], {"mode": "eval"}, ["z"]),
     "z: op batchnorm_act needs attribute act"),
    (lambda g: g.add_node("bias_add_act", ["fc1", "fc1.b"], {"act": "gelu"}, ["z"]), "z: unknown activation 'gelu'"),
    # batchnorm attributes and input
    (lambda g: g.batchnorm("fc1", name="bn1", eps=0), "bn1: eps must be > 0, got 0.0"),
    (lambda g: g.batchnorm("fc1", name="bn1", eps=-1e-5), "bn1: eps must be > 0, got -1e-05"),
    (lambda g: g.batchnorm("fc1", name="bn1", eps="tiny"), "bn1: attribute eps of batchnorm must be float, got 'tiny'"),
    (lambda g: g.batchnorm("fc1", name="bn1", momentum=1.5),
     r"bn1: momentum \(the weight of the new batch, as in PyTorch\) must lie in \[0, 1\], got 1.5"),
    (lambda g: g.batchnorm("fc1", name="bn1", momentum=-0.1), r"bn1: momentum .* must lie in \[0, 1\], got -0.1"),
    (lambda g: g.batchnorm("y", name="bn1"), r"bn1: batchnorm expects a \(features, m\) or \(channels, m, ...\) input, got %y: i64\[m\]"),
    # losses on the wrong kind of input
    (lambda g: g.softmax_cross_entropy("fc1", "t8"),
     r"loss: softmax_cross_entropy expects integer class labels made with g.labels\(...\), got %t8: f32\[8,m\]"),
    (lambda g: g.softmax_cross_entropy("fc1", "y"),
     r"loss: logits %fc1 expected shape f32\[10,m\] for labels %y \(classes=10\), got f32\[8,m\]"),
    (lambda g: g.mse("fc1", "y"),
     r"loss: mse expects a float target shaped like %fc1: f32\[8,m\], got integer class labels %y"),
    (lambda g: g.sigmoid_bce("fc1", "y", name="bce"),
     r"bce: sigmoid_bce expects a float target shaped like %fc1: f32\[8,m\], got integer class labels %y"),
    (lambda g: g.mse("fc1", "t5"), r"loss: mse target expected shape f32\[8,m\], got f32\[5,m\]"),
    (lambda g: g.sigmoid_bce("fc1", "t5"), r"loss: sigmoid_bce target expected shape f32\[8,m\], got f32\[5,m\]"),
    (lambda g: g.mse("fc1.b", "t8"), r"loss: mse prediction expected a \(features, m\) activation, got f32\[8\]"),
    (lambda g: g.loss("hinge", "fc1", "t8"), "unknown loss 'hinge'; expected one of softmax_cross_entropy, mse, sigmoid_bce"),
    # graph-level
    (lambda g: g.relu(bg.Graph("other").input("x", 3)),
     r"value %x is f32\[3,m\] here but f32\[64,m\] in graph mlp \(a value from another graph\?\)"),
    (lambda g: g.input("x2", 0), "x2: features must be a positive integer, got 0"),
    (lambda g: g.labels("y2", -3), "y2: classes must be a positive integer, got -3"),
])
def test_build_errors(g, build, match):
    before = str(g)
    with pytest.raises(IRError, match=match):
        build(g)
    if "param" not in build.__code__.co_names:  # those lambdas add a param on purpose
        assert str(g) == before, "a failed DSL call must leave the graph unchanged"


def test_second_loss_is_an_error(g):
    g.mse("fc1", "t8")
    before = str(g)
    with pytest.raises(IRError, match=r"loss1: graph mlp already has a loss \(%loss\); one loss per graph"):
        g.mse("fc1", "t8")
    with pytest.raises(IRError, match=r"bce: graph mlp already has a loss \(%loss\); one loss per graph"):
        g.sigmoid_bce("fc1", "t8", name="bce")
    assert str(g) == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=[4]), r"mlp: widths needs at least \[inputs, outputs\], got \[4\]"),
    (dict(widths=[]), r"mlp: widths needs at least \[inputs, outputs\], got \[\]"),
    (dict(widths=[4, 0, 3]), r"mlp: widths\[1\] must be a positive integer, got 0"),
    (dict(widths=[4, 8, -3]), r"mlp: widths\[2\] must be a positive integer, got -3"),
    (dict(widths=[4, 2.5, 3]), r"mlp: widths\[1\] must be a positive integer, got 2.5"),
    (dict(widths=["4", 3]), r"mlp: widths\[0\] must be a positive integer, got '4'"),
    (dict(widths=[True, 3]), r"mlp: widths\[0\] must be a positive integer, got True"),
    (dict(widths=[4, 3], loss="hinge"), "mlp: unknown loss 'hinge'; expected one of softmax_cross_entropy, mse, sigmoid_bce"),
    (dict(widths=[4, 3], activation="swish"), "mlp: unknown activation 'swish'; expected one of identity, relu"),
    (dict(widths=[4, 5, 3], eps=0.0), "bn1: eps must be > 0, got 0.0"),
    (dict(widths=[4, 5, 3], momentum=2), r"bn1: momentum .* must lie in \[0, 1\], got 2.0"),
    (dict(widths=[4, 5, 3], activation="leaky_relu", negative_slope=-0.5), "act1: negative_slope must be >= 0, got -0.5"),
    (dict(widths=[4, 3], dtype="i64"), "graph mlp: dtype must be float32 or float64, got 'i64'"),
    (dict(widths=[4, 3], dtype="f16"), r"unsupported dtype 'f16'"),
    (dict(widths=[4, 3], name="my mlp"), "graph name must be an identifier"),
])
def test_mlp_errors(kwargs, match):
    with pytest.raises(IRError, match=match):
        bg.mlp(**kwargs)
