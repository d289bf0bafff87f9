"""The passes on convolutional graphs: golden IR text before and after, and numbers (the reference
interpreter in float64): outputs and gradients through bngraph.passcheck, parameters and running
statistics after optimizer steps, eval outputs of the inference folds, and the folded conv weights
against PyTorch's own conv+BN fusion.

Regenerate the golden files after an intended change, then read the diff:
    BNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_passes_spatial.py -k golden
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.interpreter import interpret
from bngraph.passcheck import check_preserves, check_roundtrip, loss_gradients, random_feeds, random_values
from bngraph.passes import INFERENCE_PIPELINE, PASSES, TRAINING_PIPELINE, run_pipeline, to_inference

GOLDEN = Path(__file__).parent / "golden" / "passes"
UPDATE = os.environ.get("BNGRAPH_UPDATE_GOLDEN") == "1"


def run(name, g):
    return PASSES[name].run(g)


def cnn(dtype="f32", *, bias=True, groups=1, act="relu", name="cnn"):
    """x (2, 6, 6) -> conv1 (3x3, pad 1) [+b] -> bn1 -> act -> maxpool 2 -> conv2 (groups) [+b] -> bn2
    -> relu -> global average -> flatten -> out (3 classes)."""
    g = bg.Graph(name, dtype)
    x, y = g.input("x", (2, 6, 6)), g.labels("y", 3)
    h = g.conv(x, 4, 3, padding=1, bias=bias, name="conv1")
    h = g.activation(g.batchnorm(h, name="bn1"), act, name="act1",
                     **({"negative_slope": 0.2} if act == "leaky_relu" else {}))
    h = g.maxpool(h, 2, name="pool1")
    h = g.conv(h, 4, 2, stride=1, groups=groups, bias=bias, name="conv2")
    h = g.relu(g.batchnorm(h, name="bn2"), name="act2")
    h = g.flatten(g.global_avgpool(h, name="gap"), name="flat")
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    return g


def cnn1d(dtype="f64"):
    """A 1-D net (Conv1d): x (3, 10) -> conv (k5, stride 2, pad 2) + b -> bn -> tanh -> avgpool -> out."""
    g = bg.Graph("cnn1d", dtype)
    x, y = g.input("x", (3, 10)), g.labels("y", 4)
    h = g.tanh(g.batchnorm(g.conv(x, 5, 5, stride=2, padding=2, name="conv1"), name="bn1"), name="act1")
    h = g.flatten(g.avgpool(h, 2, name="pool1"), name="flat")
    g.softmax_cross_entropy(g.matmul(h, 4, name="out"), y)
    return g


def _fuse_bn_case():
    # bn1 -> leaky_relu fuses; bn2's output is also a graph output, so it stays act=identity
    g = cnn(bias=False, act="leaky_relu")
    g.outputs.append(("features", "bn2"))
    return g


def _fold_bn_case():
    # conv biases kept (no fold_bias first): b' = (b - running_mean)*s + beta; conv2 has groups=2
    return run("fuse_bn", to_inference(cnn(groups=2))).graph


GOLDEN_CASES = {
    "fold_bias": (cnn, lambda g: run("fold_bias", g).graph),
    "fuse_bn": (_fuse_bn_case, lambda g: run("fuse_bn", g).graph),
    "fold_bn_into_weights": (_fold_bn_case, lambda g: run("fold_bn_into_weights", g).graph),
    "fuse_bias_act": (lambda: run("fold_bn_into_weights", to_inference(cnn())).graph,
                      lambda g: run("fuse_bias_act", g).graph),
}


def _compare_golden(path: Path, text: str):
    text += "\n"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with BNGRAPH_UPDATE_GOLDEN=1 and read it"
    assert text == path.read_text(), f"IR differs from {path} (BNGRAPH_UPDATE_GOLDEN=1 regenerates it)"


def _as_f64(g):
    return bg.parse(str(g).replace("f32[", "f64["))


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden(name):
    make_before, transform = GOLDEN_CASES[name]
    before = make_before()
    after = transform(before)
    _compare_golden(GOLDEN / f"spatial_{name}.before.ir", check_roundtrip(before))
    _compare_golden(GOLDEN / f"spatial_{name}.after.ir", check_roundtrip(after))
    assert after is not before
    assert bg.parse((GOLDEN / f"spatial_{name}.after.ir").read_text()) == after


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden_cases_preserve_numbers(name):
    before = _as_f64(GOLDEN_CASES[name][0]())
    res = run(name, before)
    check_preserves(before, res.graph, res.remap, batch=5)


# ------------------------------------------------------------------------------------------------
# What each pass says and does on spatial values
# ------------------------------------------------------------------------------------------------


def test_fold_bias_says_the_mean_is_over_the_batch_and_positions():
    res = run("fold_bias", cnn())
    assert res.changes == (
        "removed conv1.b (4 parameters): cancelled by bn1's mean subtraction over the batch and positions; "
        "bn1.running_mean absorbs it",
        "removed conv2.b (4 parameters): cancelled by bn2's mean subtraction over the batch and positions; "
        "bn2.running_mean absorbs it")
    # the BN and its running update read the conv itself now
    bn1 = next(n for n in res.graph.nodes if n.op == "batchnorm" and n.inputs[1] == "bn1.gamma")
    upd = next(n for n in res.graph.nodes if n.op == "running_update" and n.inputs[0] == "bn1.running_mean")
    assert bn1.inputs[0] == upd.inputs[4] == "conv1.conv"
    # an MLP's sentence is unchanged: its mean is over the batch only
    assert "over the batch and positions" not in run("fold_bias", bg.mlp([3, 4, 2])).changes[0]


def test_fold_bias_on_spatial_values_keeps_a_bias_with_another_user():
    g = cnn(dtype="f64")
    g.tanh("conv1", name="side")
    g.outputs.append(("side", "side"))
    res = run("fold_bias", g)
    assert res.notes == ("kept conv1.b: %conv1 is also used by %side (tanh)",)
    assert "conv1.b" in res.graph.param_names() and "conv2.b" not in res.graph.param_names()
    check_preserves(g, res.graph, res.remap, batch=4)


def test_spatial_bias_has_zero_gradient_before_batch_norm():
    """The reason fold_bias is exact in training: d loss / d conv1.b is 0 (up to rounding)."""
    g = cnn(dtype="f64").build()
    values, feeds = random_values(g, 1), random_feeds(g, 5, 1)
    grads = loss_gradients(g, values, feeds)
    for b in ("conv1.b", "conv2.b"):
        np.testing.assert_allclose(grads[b], 0, atol=1e-12)
    assert np.abs(grads["conv1.W"]).max() > 1e-3  # and the weights do learn


def test_fuse_bn_and_fuse_bias_act_on_spatial_values():
    res = run("fuse_bn", cnn(bias=False, act="leaky_relu"))
    fused = [n for n in res.graph.nodes if n.op == "batchnorm_act"]
    assert [(n.name, n.attr["act"], n.attr["negative_slope"]) for n in fused] == \
        [("act1", "leaky_relu", 0.2), ("act2", "relu", 0.0)]
    assert fused[0].out.type.shape == (4, "m", 6, 6)
    assert res.changes[0] == ("fused bn1 and act1 into one pass: act1 = leaky_relu[negative_slope=0.2](conv1*s + t), "
                              "s = gamma/sqrt(var+eps), t = beta - mean*s")
    # a conv's bias then an activation, no batch norm: bias_add_act on the (C, m, H, W) value
    g = bg.Graph("convrelu", "f64")
    x, y = g.input("x", (2, 5, 5)), g.labels("y", 3)
    h = g.relu(g.conv(x, 3, 3, name="conv1"), name="act1")
    g.softmax_cross_entropy(g.matmul(g.flatten(h, name="flat"), 3, name="out"), y)
    res = run("fuse_bias_act", g)
    assert res.changes == ("fused %conv1 (bias_add) and %act1 (relu) into one pass: act1 = relu(conv1.conv + conv1.b)",)
    node = next(n for n in res.graph.nodes if n.op == "bias_add_act")
    assert node.out.type.shape == (3, "m", 3, 3)
    check_preserves(g, res.graph, res.remap, batch=4)  # outputs and gradients (conv1.b's included)


def test_fold_bn_into_conv_weights_formula_and_torch():
    """W' = W*s per output channel (axis 0 of (F, C/groups, k...)), b' = (b - running_mean)*s + beta,
    as torch.nn.utils.fusion.fuse_conv_bn_weights computes them."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    g = run("fuse_bn", to_inference(cnn(dtype="f64", groups=2))).graph
    res = run("fold_bn_into_weights", g)
    assert res.changes[1].startswith("folded bn2 into conv2.W_folded and conv2.b_folded: W' = W*s per output channel "
                                     "(axis 0), b' = t + s*b, s = gamma/sqrt(running_var+eps), t = beta - running_mean*s; "
                                     "removed conv2.W, conv2.b, bn2.gamma, bn2.beta")
    values = random_values(g, 2)
    new = res.remap(values)
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        W, b = values[f"{conv}.W"], values[f"{conv}.b"]
        gamma, beta, rm, rv = (values[f"{bn}.{k}"] for k in ("gamma", "beta", "running_mean", "running_var"))
        s = gamma / np.sqrt(rv + 1e-5)
        np.testing.assert_allclose(new[f"{conv}.W_folded"], W * s[:, None, None, None], rtol=1e-14)
        np.testing.assert_allclose(new[f"{conv}.b_folded"], (b - rm) * s + beta, rtol=1e-12, atol=1e-14)
        tW, tb = fuse_conv_bn_weights(*(torch.from_numpy(a) for a in (W, b, rm, rv)), 1e-5,
                                      torch.from_numpy(gamma), torch.from_numpy(beta))
        np.testing.assert_allclose(new[f"{conv}.W_folded"], tW.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(new[f"{conv}.b_folded"], tb.detach().numpy(), rtol=1e-12, atol=1e-14)
    conv2 = next(n for n in res.graph.nodes if n.op == "conv" and n.inputs[0] == "conv2.W_folded")
    assert conv2.attr["groups"] == 2  # the conv keeps its attributes
    check_preserves(g, res.graph, res.remap, batch=4)  # eval outputs


def test_fold_bn_into_conv_weights_skips_a_shared_weight_and_refuses_training():
    inf = to_inference(cnn(dtype="f64"))
    g = inf.rebuild(outputs=[*inf.outputs, ("w", "conv1.W")])  # conv1's weight is also returned
    res = run("fold_bn_into_weights", g)
    assert "kept bn1: conv1.W is also used by graph output w" in res.notes
    assert {n.inputs[0] for n in res.graph.nodes if n.op == "conv"} == {"conv1.W", "conv2.W_folded"}
    check_preserves(g, res.graph, res.remap, batch=4)
    with pytest.raises(bg.passes.PassError, match="bn1.*training mode"):
        run("fold_bn_into_weights", cnn())


# ------------------------------------------------------------------------------------------------
# Whole pipelines: outputs and gradients, then parameters after optimizer steps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: cnn(dtype="f64"), lambda: cnn(dtype="f64", groups=2, act="tanh"), cnn1d],
                         ids=["cnn2d", "cnn2d-groups-tanh", "cnn1d"])
def test_pipelines_preserve_numbers(make):
    g = make()
    res = run_pipeline(g, TRAINING_PIPELINE)
    assert not any(n.op == "bias_add" and n.inputs[1].startswith("conv") for n in res.graph.nodes)
    assert any(n.op == "batchnorm_act" for n in res.graph.nodes)
    check_preserves(g, res.graph, res.remap, batch=5)
    inf = to_inference(g)
    res = run_pipeline(inf, INFERENCE_PIPELINE)
    assert not any(n.op in ("batchnorm", "batchnorm_act") for n in res.graph.nodes)  # folded into the convs
    check_preserves(inf, res.graph, res.remap, batch=5)  # eval outputs


def _step(g, values, feeds, opt):
    """One training step with the reference interpreter: (loss, params after opt.step and the new state)."""
    out = interpret(g, feeds, values)
    grads = loss_gradients(g, values, feeds)
    params = {p.name: np.array(values[p.name]) for p in g.params}
    opt.step(params, grads)
    return float(out["loss"]), {**params, **{k[len("state."):]: v for k, v in out.items() if k.startswith("state.")}}


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("passes", [["fold_bias", "dce"], ["fuse_bn", "dce"], list(TRAINING_PIPELINE)],
                         ids=["fold_bias", "fuse_bn", "pipeline"])
def test_training_steps_agree(passes, opt):
    """From values mapped by the passes' remap, two steps of the optimized graph give the losses of
    the original, and params and running statistics equal to the original's, mapped."""
    make_opt = {"sgd": lambda: bg.optim.SGD(lr=0.1, momentum=0.9), "adam": lambda: bg.optim.Adam(lr=1e-2)}[opt]
    g = cnn(dtype="f64").build()
    res = run_pipeline(g, passes)
    assert res.graph is not g
    a = random_values(g, 3)
    b = res.remap(a)
    oa, ob = make_opt(), make_opt()
    for step in range(2):
        feeds = random_feeds(g, 6, step)
        la, a = _step(g, a, feeds, oa)
        lb, b = _step(res.graph, b, feeds, ob)
        assert lb == pytest.approx(la, rel=1e-12)
    # an unfolded bias before BN has a rounding-noise gradient (~1e-17) that Adam turns into steps
    # of ~lr*1e-9 (docs/passes.md): the running mean tracks them, hence atol 1e-9
    mapped = res.remap(a)
    for k in b:
        np.testing.assert_allclose(b[k], mapped[k], rtol=1e-9, atol=1e-9, err_msg=k)
    inf_a, inf_b = to_inference(g), to_inference(res.graph)
    feeds = {"x": random_feeds(g, 4, 9)["x"]}
    np.testing.assert_allclose(interpret(inf_b, feeds, {k: b[k] for k in (*inf_b.param_names(),
                                                                          *(v.name for v in inf_b.state))})["out"],
                               interpret(inf_a, feeds, {k: a[k] for k in (*inf_a.param_names(),
                                                                          *(v.name for v in inf_a.state))})["out"],
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["fold_bias", "fuse_bn", "fuse_bias_act", "dce", "fold_bn_into_weights"])
def test_pass_contract_on_spatial_graphs(name):
    g = cnn(dtype="f64").build()
    if name == "fold_bn_into_weights":
        g = to_inference(g)
    text = str(g)
    res = run(name, g)
    assert str(g) == text, "the pass mutated its input"
    bg.verify(res.graph, after=name)
    check_roundtrip(res.graph)
    check_preserves(g, res.graph, res.remap, batch=4)
    again = run(name, res.graph)
    assert again.graph is res.graph and again.changes == () and again.remap is None, "not idempotent"
