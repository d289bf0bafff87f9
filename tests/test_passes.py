"""The compiler passes and the pass manager: structure (golden IR text) and numbers (the reference
interpreter in float64, through bngraph.passcheck).

Regenerate the golden files after an intended change, then read the diff:
    BNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_passes.py -k golden
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bngraph as bg
from bngraph.ops import ACTIVATIONS, BN_OPS, LOSS_OPS
from bngraph.passes import (INFERENCE_PIPELINE, PASSES, TRAINING_PIPELINE, Pass, PassError, PassResult,
                            run_pipeline, to_inference)
from bngraph.passcheck import Layer, build_graph, check_preserves, check_roundtrip, random_feeds, random_values

GOLDEN = Path(__file__).parent / "golden" / "passes"
UPDATE = os.environ.get("BNGRAPH_UPDATE_GOLDEN") == "1"


def ops(g) -> list:
    return [n.op for n in g.nodes]


def run(name, g) -> PassResult:
    return PASSES[name].run(g)


# ------------------------------------------------------------------------------------------------
# Golden before/after IR text, one pair per pass
# ------------------------------------------------------------------------------------------------


def _fuse_bn_case():
    # bn1 -> leaky_relu fuses; bn2's output is also a graph output, so it stays act=identity
    g = build_graph(3, [Layer(4, bias=False, act="leaky_relu", negative_slope=0.2), Layer(4, bias=False, act=None)],
                    2, dtype="f32", name="mlp")
    g.outputs.append(("features", "bn2"))
    return g


def _fold_bn_case():
    # layer 1: bias, BN, relu (fused by fuse_bn); layer 2: no bias, BN, no activation
    g = build_graph(3, [Layer(4), Layer(4, bias=False, act=None)], 2, dtype="f32", name="mlp")
    return run("fuse_bn", to_inference(g)).graph


def _dce_case():
    g = bg.mlp([3, 4, 2], name="mlp")
    g.tanh("act1", name="unused_tanh")
    g.param("unused.b", (5,))
    g.input("unused_x", 2)
    return g


GOLDEN_CASES = {
    "fold_bias": (lambda: bg.mlp([3, 4, 2], name="mlp"), lambda g: run("fold_bias", g).graph),
    "fuse_bn": (_fuse_bn_case, lambda g: run("fuse_bn", g).graph),
    "fold_bn_into_weights": (_fold_bn_case, lambda g: run("fold_bn_into_weights", g).graph),
    "fuse_bias_act": (lambda: run("fold_bn_into_weights", to_inference(bg.mlp([3, 4, 2], name="mlp"))).graph,
                      lambda g: run("fuse_bias_act", g).graph),
    "dce": (_dce_case, lambda g: run("dce", g).graph),
    "to_inference": (lambda: bg.mlp([3, 4, 2], name="mlp"), to_inference),
}


def _compare_golden(path: Path, text: str):
    text += "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with BNGRAPH_UPDATE_GOLDEN=1 and read it"
    assert text == path.read_text(), f"IR differs from {path} (BNGRAPH_UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden(name):
    make_before, transform = GOLDEN_CASES[name]
    before = make_before()
    after = transform(before)
    _compare_golden(GOLDEN / f"{name}.before.ir", check_roundtrip(before, allow_dead=name == "dce"))
    _compare_golden(GOLDEN / f"{name}.after.ir", check_roundtrip(after))
    assert after is not before
    # the golden files parse back to the graphs themselves
    assert bg.parse((GOLDEN / f"{name}.after.ir").read_text()) == after


@pytest.mark.parametrize("name", [n for n in GOLDEN_CASES if n != "to_inference"])
def test_golden_cases_preserve_numbers(name):
    before = GOLDEN_CASES[name][0]()
    before64 = _as_f64(before)
    res = run(name, before64)
    check_preserves(before64, res.graph, res.remap)


def _as_f64(g):
    return bg.parse(str(g).replace("f32[", "f64["))


# ------------------------------------------------------------------------------------------------
# Every pass: never mutates, returns the same object when nothing changes, preserves numbers
# ------------------------------------------------------------------------------------------------


def _train_graph():
    return bg.mlp([5, 7, 6, 3], dtype="f64")


@pytest.mark.parametrize("name,mode", [(name, mode) for name in PASSES for mode in ("train", "eval")
                                       if (name, mode) != ("fold_bn_into_weights", "train")])  # refused: below
def test_pass_contract(name, mode):
    g = _train_graph() if mode == "train" else to_inference(_train_graph())
    text = str(g)
    res = run(name, g)
    assert str(g) == text, "the pass mutated its input"
    assert isinstance(res.changes, tuple) and isinstance(res.notes, tuple)
    bg.verify(res.graph, after=name)
    check_roundtrip(res.graph)
    check_preserves(g, res.graph, res.remap)
    again = run(name, res.graph)
    assert again.graph is res.graph and again.changes == () and again.remap is None, "not idempotent"
    if res.graph is g:
        assert res.changes == () and res.remap is None


def test_passes_have_algebra_and_validity():
    for name, p in PASSES.items():
        assert p.name == name
        assert "->" in p.algebra and "\n" not in p.algebra
        assert p.valid_when


# ------------------------------------------------------------------------------------------------
# fold_bias
# ------------------------------------------------------------------------------------------------


def test_fold_bias_sentences_and_rewiring():
    g = bg.mlp([4, 128, 3])
    res = run("fold_bias", g)
    assert res.changes == ("removed fc1.b (128 parameters): cancelled by bn1's mean subtraction; "
                           "bn1.running_mean absorbs it",)
    new = res.graph
    assert "fc1.b" not in new.param_names() and "fc1.b" in g.param_names()
    bn = next(n for n in new.nodes if n.op == "batchnorm")
    upd = next(n for n in new.nodes if n.op == "running_update")
    assert bn.inputs[0] == "fc1.matmul" and upd.inputs[4] == "fc1.matmul"
    # the remap: running_mean -= b, b dropped
    values = random_values(g)
    out = res.remap(values)
    np.testing.assert_array_equal(out["bn1.running_mean"], values["bn1.running_mean"] - values["fc1.b"])
    assert "fc1.b" not in out and "fc1.b" in values


@pytest.mark.parametrize("how", ["node", "output"])
def test_fold_bias_kept_when_value_has_another_user(how):
    g = bg.mlp([3, 4, 2], dtype="f64")
    if how == "node":
        g.tanh("fc1", name="side")
        g.outputs.append(("side", "side"))
        why = "kept fc1.b: %fc1 is also used by %side (tanh)"
    else:
        g.outputs.append(("pre_bn", "fc1"))
        why = "kept fc1.b: %fc1 is also used by graph output pre_bn"
    g = g.build()  # passes take and return frozen graphs: "unchanged" is the same object
    res = run("fold_bias", g)
    assert res.graph is g and res.changes == () and res.notes == (why,)
    # the pipeline reports it
    report = run_pipeline(g, TRAINING_PIPELINE).format_report()
    assert why in report


def test_fold_bias_keeps_a_shared_bias_param():
    # one bias param added before two BNs, and once more elsewhere: both BN inputs are rewired, the
    # param stays because the third bias_add still reads it
    g = bg.Graph("shared", "f64")
    x = g.input("x", 3)
    W = g.param("fc.W", (4, 3))
    b = g.param("fc.b", (4,))
    z = g.add_node("matmul", [W, x], {}, ["z"]).out
    zb = g.add_node("bias_add", [z, b], {}, ["zb"]).out
    g.batchnorm(zb, name="bn1")
    other = g.add_node("bias_add", [z, b], {}, ["other"]).out
    g.outputs.insert(0, ("out", "bn1"))
    g.outputs.append(("other", other.name))
    res = run("fold_bias", g)
    assert res.changes == ("folded fc.b out of %zb (cancelled by bn1's mean subtraction; bn1.running_mean "
                           "absorbs it); fc.b is kept: also used by %other (bias_add)",)
    assert "fc.b" in res.graph.param_names()
    check_preserves(g, res.graph, res.remap)


def test_fold_bias_eval_mode_needs_the_running_mean_remap():
    inf = to_inference(bg.mlp([4, 6, 3], dtype="f64"))
    res = run("fold_bias", inf)
    check_preserves(inf, res.graph, res.remap)
    # without the remap the eval-mode outputs would differ (the bias is not cancelled there)
    values, feeds = random_values(inf), random_feeds(inf)
    plain = {k: v for k, v in values.items() if k != "fc1.b"}
    before = bg.interpret(inf, feeds, values)["out"]
    assert not np.allclose(bg.interpret(res.graph, feeds, plain)["out"], before)


# ------------------------------------------------------------------------------------------------
# fuse_bn
# ------------------------------------------------------------------------------------------------


def test_fuse_bn_fuses_the_lone_activation():
    g = run("fold_bias", bg.mlp([4, 8, 3])).graph
    res = run("fuse_bn", g)
    assert res.changes == ("fused bn1 and act1 into one pass: act1 = relu(fc1.matmul*s + t), "
                           "s = gamma/sqrt(var+eps), t = beta - mean*s",)
    fused = next(n for n in res.graph.nodes if n.op == "batchnorm_act")
    assert [o.name for o in fused.outputs] == ["act1", "bn1.mean", "bn1.var"]
    assert fused.attr == {"act": "relu", "eps": 1e-5, "momentum": 0.1, "mode": "train", "negative_slope": 0.0}
    assert "relu" not in ops(res.graph) and res.remap is None


def test_fuse_bn_leaky_relu_slope_and_eval_words():
    g = to_inference(bg.mlp([4, 8, 3], activation="leaky_relu", negative_slope=0.3, dtype="f64"))
    res = run("fuse_bn", g)
    fused = next(n for n in res.graph.nodes if n.op == "batchnorm_act")
    assert fused.attr["act"] == "leaky_relu" and fused.attr["negative_slope"] == 0.3
    assert res.changes == ("fused bn1 and act1 into one pass: act1 = leaky_relu[negative_slope=0.3](fc1*s + t), "
                           "s = gamma/sqrt(running_var+eps), t = beta - running_mean*s",)
    check_preserves(g, res.graph, res.remap)


def test_fuse_bn_without_activation_keeps_names():
    g = _fuse_bn_case()
    res = run("fuse_bn", g)
    bn2 = next(n for n in res.graph.nodes if n.name == "bn2")
    assert bn2.op == "batchnorm_act" and bn2.attr["act"] == "identity"
    assert res.changes[1] == ("bn2 as one pass: bn2 = fc2*s + t, s = gamma/sqrt(var+eps), t = beta - mean*s; "
                              "no activation fused: %bn2 is a graph output")


def test_fuse_bn_two_users():
    g = bg.mlp([3, 4, 2], dtype="f64")
    g.tanh("bn1", name="side")
    g.outputs.append(("side", "side"))
    res = run("fuse_bn", g)
    assert "no activation fused: %bn1 has 2 users (%act1 and %side)" in res.changes[0]
    assert ops(res.graph).count("relu") == 1
    check_preserves(g, res.graph, res.remap)


def test_fuse_bn_and_fuse_bias_act_are_one_rewrite_table():
    from bngraph.ops import OPS
    from bngraph.passes.fuse_act import FUSIONS, fuse_activations

    assert {(r.plain, r.fused) for r in FUSIONS.values()} == {("batchnorm", "batchnorm_act"), ("bias_add", "bias_add_act")}
    for plain, row in FUSIONS.items():
        # the fused op is the plain op plus the activation's attributes, on the same inputs
        assert row.plain == plain and set(OPS[row.fused].attrs) == set(OPS[plain].attrs) | {"act", "negative_slope"}
        assert OPS[row.fused].init_roles == OPS[plain].init_roles
        assert OPS[row.fused].batch_statistics == OPS[plain].batch_statistics
    # each pass is its row run by the one function
    folded = run("fold_bn_into_weights", to_inference(bg.mlp([3, 4, 5, 2], dtype="f64"))).graph
    for name, plain in (("fuse_bn", "batchnorm"), ("fuse_bias_act", "bias_add")):
        for graph in (folded, _fuse_bn_case().build(), bg.mlp([3, 4, 2], batchnorm=False).build()):
            assert PASSES[name].run(graph) == fuse_activations(graph, FUSIONS[plain])


# ------------------------------------------------------------------------------------------------
# fold_bn_into_weights
# ------------------------------------------------------------------------------------------------


def test_fold_bn_refused_in_training_mode():
    g = bg.mlp([4, 8, 3])
    with pytest.raises(PassError) as e:
        run("fold_bn_into_weights", g)
    msg = str(e.value)
    assert isinstance(e.value, bg.IRError)
    assert "%bn1 (batchnorm) is in training mode" in msg
    assert "each mini-batch's own mean and variance" in msg and "not known ahead of time" in msg
    assert "to_inference" in msg and "INFERENCE_PIPELINE" in msg
    with pytest.raises(PassError, match="training mode"):
        run_pipeline(g, INFERENCE_PIPELINE)


def test_fold_bn_remap_formula():
    inf = to_inference(bg.mlp([4, 6, 3], dtype="f64"))
    res = run("fold_bn_into_weights", inf)
    v = random_values(inf)
    out = res.remap(v)
    s = v["bn1.gamma"] / np.sqrt(v["bn1.running_var"] + 1e-5)
    t = v["bn1.beta"] - v["bn1.running_mean"] * s
    np.testing.assert_allclose(out["fc1.W_folded"], s[:, None] * v["fc1.W"])
    np.testing.assert_allclose(out["fc1.b_folded"], t + s * v["fc1.b"])
    gone = {"fc1.W", "fc1.b", "bn1.gamma", "bn1.beta", "bn1.running_mean", "bn1.running_var"}
    assert not gone & set(out) and not gone & set(res.graph.values())
    assert res.changes == ("folded bn1 into fc1.W_folded and fc1.b_folded: W' = s[:,None]*W, b' = t + s*b, "
                           "s = gamma/sqrt(running_var+eps), t = beta - running_mean*s; removed fc1.W, fc1.b, "
                           "bn1.gamma, bn1.beta (42 parameters) and the running statistics bn1.running_mean, "
                           "bn1.running_var, added 30 parameters",)
    assert ops(res.graph) == ["matmul", "bias_add", "relu", "matmul", "bias_add"]
    assert res.graph.nodes[1].name == "bn1"  # the BN output keeps its name
    check_preserves(inf, res.graph, res.remap)


def _shared_weight_graph():
    # fc1.W feeds the BN layer and a second matmul
    g = bg.Graph("shared", "f64")
    x = g.input("x", 3)
    W = g.param("fc1.W", (4, 3))
    z = g.add_node("matmul", [W, x], {}, ["fc1"]).out
    h = g.batchnorm(z, name="bn1")
    side = g.add_node("matmul", [W, x], {}, ["side"]).out
    g.outputs[:] = [("out", h.name), ("side", side.name)]
    return to_inference(g)


def test_fold_bn_skips_when_W_has_other_users():
    g = _shared_weight_graph()
    res = run("fold_bn_into_weights", g)
    assert res.graph is g
    assert res.notes == ("kept bn1: fc1.W is also used by %side (matmul)",)


def test_fold_bn_skips_when_an_intermediate_value_has_another_user():
    g = to_inference(bg.mlp([3, 4, 2], dtype="f64"))
    g = g.rebuild(outputs=[*g.outputs, ("pre_bn", "fc1")])
    res = run("fold_bn_into_weights", g)
    assert res.graph is g and res.notes == ("kept bn1: %fc1 is also used by graph output pre_bn",)
    g2 = to_inference(bg.mlp([3, 4, 2], dtype="f64"))
    g2 = g2.rebuild(outputs=[*g2.outputs, ("mm", "fc1.matmul")])
    res2 = run("fold_bn_into_weights", g2)
    assert res2.graph is g2 and res2.notes == ("kept bn1: %fc1.matmul is also used by graph output mm",)
    # the pipeline still folds what it can and preserves numbers
    pipe = run_pipeline(g, INFERENCE_PIPELINE)
    check_preserves(g, pipe.graph, pipe.remap)


def test_fold_bn_skips_transposed_matmul():
    g = bg.Graph("t", "f64")
    x = g.input("x", 3)
    W = g.param("fc1.W", (3, 4))  # used as W^T
    z = g.add_node("matmul", [W, x], {"ta": True}, ["fc1"]).out
    h = g.batchnorm(z, name="bn1")
    g.outputs.insert(0, ("out", h.name))
    g = to_inference(g)
    res = run("fold_bn_into_weights", g)
    assert res.graph is g and "transposed operands" in res.notes[0]


# ------------------------------------------------------------------------------------------------
# fuse_bias_act and dce
# ------------------------------------------------------------------------------------------------


def test_fuse_bias_act():
    g = run("fold_bn_into_weights", to_inference(bg.mlp([3, 4, 2], dtype="f64"))).graph
    res = run("fuse_bias_act", g)
    assert ops(res.graph) == ["matmul", "bias_add_act", "matmul", "bias_add"]
    assert res.changes == ("fused %bn1 (bias_add) and %act1 (relu) into one pass: act1 = relu(fc1.matmul + fc1.b_folded)",)
    check_preserves(g, res.graph, res.remap)


def test_dce_reports_and_remaps():
    g = _dce_case()
    res = run("dce", g)
    assert res.changes == ("removed dead node %unused_tanh (tanh): no graph output depends on it",
                           "removed unused input %unused_x",
                           "removed unused param unused.b (5 parameters)")
    assert "unused.b" not in res.remap({"unused.b": 1, "fc1.W": 2})


# ------------------------------------------------------------------------------------------------
# to_inference
# ------------------------------------------------------------------------------------------------


def test_to_inference_structure():
    g = bg.mlp([4, 8, 3])
    inf = to_inference(g)
    assert [k for k, _ in inf.outputs] == ["out"] and inf.output("out") == "out"
    assert not inf.is_training and "running_update" not in ops(inf) and "softmax_cross_entropy" not in ops(inf)
    assert [v.name for v in inf.inputs] == ["x"]
    assert to_inference(inf) is inf


def test_to_inference_refuses_gradients():
    g = bg.mlp([3, 4, 2])
    g.outputs.append(("grad.fc1.W", "fc1.W"))
    with pytest.raises(PassError, match=r"gradient outputs \(grad.fc1.W\).*before autodiff"):
        to_inference(g)


def test_to_inference_matches_torch_eval():
    import torch
    g = bg.mlp([5, 6, 3], dtype="f64", activation="tanh")
    inf = to_inference(g)
    values, feeds = random_values(inf), random_feeds(inf, batch=4)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    net = net.double().eval()
    t = {k: torch.from_numpy(v) for k, v in values.items()}
    with torch.no_grad():
        net[0].weight.copy_(t["fc1.W"]), net[0].bias.copy_(t["fc1.b"])
        net[1].weight.copy_(t["bn1.gamma"]), net[1].bias.copy_(t["bn1.beta"])
        net[1].running_mean.copy_(t["bn1.running_mean"]), net[1].running_var.copy_(t["bn1.running_var"])
        net[3].weight.copy_(t["out.W"]), net[3].bias.copy_(t["out.b"])
        want = net(torch.from_numpy(feeds["x"].T)).numpy().T
    np.testing.assert_allclose(bg.interpret(inf, feeds, values)["out"], want, rtol=1e-10, atol=1e-12)
    folded = run_pipeline(inf, INFERENCE_PIPELINE)
    np.testing.assert_allclose(bg.interpret(folded.graph, feeds, folded.remap(values))["out"], want,
                               rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The pass manager
# ------------------------------------------------------------------------------------------------


def test_print_after_and_snapshots():
    g = bg.mlp([4, 8, 3])
    buf = io.StringIO()
    res = run_pipeline(g, TRAINING_PIPELINE, print_after=True, file=buf)
    text = buf.getvalue()
    assert text.count("// IR after ") == len(TRAINING_PIPELINE) == 4
    assert text.startswith("// IR after fold_bias\ngraph mlp(")
    assert "// IR after fuse_bn\n" in text and "// IR after dce\n" in text
    assert [n for n, _ in res.snapshots] == list(TRAINING_PIPELINE)
    assert res.snapshots[-1][1] == str(res.graph) and text.endswith(str(res.graph) + "\n")
    assert text == "".join(f"// IR after {n}\n{t}\n" for n, t in res.snapshots)


def test_print_after_defaults_to_stdout(capsys):
    run_pipeline(bg.mlp([4, 8, 3]), ["dce"], print_after=True)
    assert capsys.readouterr().out.startswith("// IR after dce\ngraph mlp(")


def test_verify_names_the_broken_pass():
    def drop_last_node(g):
        return PassResult(g.rebuild(nodes=g.nodes[:-1]), ("dropped the last node",))

    broken = Pass("drop_last_node", "g -> g without its last node   # wrong on purpose", "never", drop_last_node)
    with pytest.raises(bg.VerifyError, match="after pass drop_last_node: output loss refers to %loss, which is not defined"):
        run_pipeline(bg.mlp([4, 8, 3]), ["fold_bias", broken, "dce"])
    # without verification the broken graph goes through
    assert run_pipeline(bg.mlp([4, 8, 3]), [broken], verify=False).graph.nodes[-1].op == "bias_add"


@pytest.mark.parametrize("how", ["pop a node", "assign nodes"])
def test_a_pass_cannot_mutate_its_input(how):
    # passes get frozen graphs: the parts are tuples and attribute assignment is refused
    def mutate(g):
        if how == "pop a node":
            g.nodes.pop()
        else:
            g.nodes = g.nodes[:-1]
        return PassResult(g)

    g = bg.mlp([4, 8, 3])
    text = str(g)
    with pytest.raises(AttributeError, match="tuple' object has no attribute 'pop'|graph mlp is frozen"):
        run_pipeline(g, [Pass("mutate", "g -> g", "never", mutate)])
    assert str(g) == text


def test_a_pass_must_return_a_frozen_graph():
    builder = bg.mlp([4, 8, 3])
    sneaky = Pass("sneaky", "g -> builder", "never", lambda g: PassResult(builder))
    with pytest.raises(PassError, match="pass sneaky returned a Graph graph, expected a FrozenGraph"):
        run_pipeline(bg.mlp([4, 8, 3]), [sneaky])


def test_unknown_pass():
    with pytest.raises(PassError, match="unknown pass 'fold_everything'; registered passes: fold_bias"):
        run_pipeline(bg.mlp([4, 8, 3]), ["fold_everything"])


def test_report_and_remap_of_the_training_pipeline():
    g = bg.mlp([4, 8, 3], dtype="f64")
    res = run_pipeline(g, TRAINING_PIPELINE)
    assert res.report == [
        ("fold_bias", ("removed fc1.b (8 parameters): cancelled by bn1's mean subtraction; bn1.running_mean absorbs it",)),
        ("fuse_bn", ("fused bn1 and act1 into one pass: act1 = relu(fc1.matmul*s + t), s = gamma/sqrt(var+eps), "
                     "t = beta - mean*s",)),
        ("fuse_bias_act", ()),
        ("dce", ()),
    ]
    assert res.format_report() == "\n".join([
        "pipeline fold_bias, fuse_bn, fuse_bias_act, dce on graph mlp",
        "  fold_bias: 1 change",
        "    - removed fc1.b (8 parameters): cancelled by bn1's mean subtraction; bn1.running_mean absorbs it",
        "  fuse_bn: 1 change",
        "    - fused bn1 and act1 into one pass: act1 = relu(fc1.matmul*s + t), s = gamma/sqrt(var+eps), "
        "t = beta - mean*s",
        "  fuse_bias_act: no change",
        "  dce: no change",
        "  parameters: 83 -> 75 (-8); nodes: 8 -> 6",
    ])
    check_preserves(g, res.graph, res.remap)
    assert run_pipeline(g, []).remap({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("which", ["dsl_example", "two_hidden"])
def test_default_pipelines_on_the_dsl_example(which, dsl_example):
    # the contract DSL example (tests/conftest.py: one hidden layer) and a deeper mlp
    g, hidden = (dsl_example, 1) if which == "dsl_example" else (bg.mlp([64, 128, 64, 10]), 2)
    train = run_pipeline(g, TRAINING_PIPELINE).graph
    prod = train.producers()
    for n in train.nodes:
        if n.op in BN_OPS:
            assert prod[n.inputs[0]].op != "bias_add", f"a bias_add still feeds {n.name}"
    assert ops(train).count("batchnorm_act") == hidden and "batchnorm" not in ops(train)
    assert sum(op in ACTIVATIONS for op in ops(train)) == 0
    inf = run_pipeline(to_inference(g), INFERENCE_PIPELINE).graph
    assert not set(BN_OPS) & set(ops(inf))
    assert ops(inf) == ["matmul", "bias_add_act"] * hidden + ["matmul", "bias_add"]
    assert not inf.state


# ------------------------------------------------------------------------------------------------
# Property tests: random MLP-shaped graphs
# ------------------------------------------------------------------------------------------------

_layer = st.builds(
    Layer,
    units=st.integers(1, 9),
    bias=st.booleans(),
    bn=st.booleans(),
    act=st.sampled_from([None, *ACTIVATIONS]),
    negative_slope=st.sampled_from([0.01, 0.2]),
)
_graphs = st.builds(
    lambda inputs, layers, outputs, loss, out_bias, out_bn, eps, momentum: build_graph(
        inputs, layers, outputs, loss=loss, out_bias=out_bias, out_bn=out_bn, eps=eps, momentum=momentum),
    inputs=st.integers(1, 9),
    layers=st.lists(_layer, min_size=0, max_size=3),  # with the output layer: 1-4 layers
    outputs=st.integers(1, 9),
    loss=st.sampled_from(LOSS_OPS),
    out_bias=st.booleans(),
    out_bn=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
    momentum=st.sampled_from([0.1, 0.5]),
)
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(g=_graphs, seed=st.integers(0, 2**16))
def test_training_pipeline_preserves_semantics(g, seed):
    check_roundtrip(g)
    res = run_pipeline(g, TRAINING_PIPELINE)
    check_preserves(g, res.graph, res.remap, batch=5, seed=seed, rtol=1e-8, atol=1e-9)
    check_roundtrip(res.graph)
    assert "batchnorm" not in ops(res.graph)
    prod = res.graph.producers()
    for n in res.graph.nodes:
        if n.op in BN_OPS:
            assert prod.get(n.inputs[0]) is None or prod[n.inputs[0]].op != "bias_add"


@_settings
@given(g=_graphs, seed=st.integers(0, 2**16))
def test_inference_pipeline_preserves_semantics(g, seed):
    inf = to_inference(g)
    check_roundtrip(inf)
    # the default order, and fusing BN first (fold_bias and the folding then see batchnorm_act)
    for pipeline in (INFERENCE_PIPELINE, ("fuse_bn", "fold_bias", "fold_bn_into_weights", "fuse_bias_act", "dce")):
        res = run_pipeline(inf, pipeline)
        check_preserves(inf, res.graph, res.remap, batch=5, seed=seed, rtol=1e-8, atol=1e-9)
        check_roundtrip(res.graph)
        assert not set(BN_OPS) & set(ops(res.graph)), "every BN here follows a matmul: all should fold"


# ------------------------------------------------------------------------------------------------
# The shared zoo of graphs (tests/conftest.py) and the training program made by autodiff
# ------------------------------------------------------------------------------------------------


def test_pipelines_on_the_zoo(zoo_graph):
    g = _as_f64(zoo_graph)  # float64, so the comparison is tight
    train = run_pipeline(g, TRAINING_PIPELINE)
    check_preserves(g, train.graph, train.remap, rtol=1e-8, atol=1e-9)
    inf = to_inference(g)
    res = run_pipeline(inf, INFERENCE_PIPELINE)
    check_preserves(inf, res.graph, res.remap, rtol=1e-8, atol=1e-9)


def test_passes_on_the_training_program():
    # Passes are meant to run before autodiff, but a graph with backward nodes must stay correct:
    # the bias value is also read by batchnorm_grad, so fold_bias keeps it and says why.
    from bngraph.autodiff import grad_graph

    g = grad_graph(bg.mlp([4, 6, 5, 3], dtype="f64"))
    res = run_pipeline(g, TRAINING_PIPELINE)
    assert res.notes[0] == ("fold_bias", ("kept fc1.b: %fc1 is also used by %fc1.grad (batchnorm_grad)",
                                          "kept fc2.b: %fc2 is also used by %fc2.grad (batchnorm_grad)"))
    assert ops(res.graph).count("batchnorm_act") == 2
    check_preserves(g, res.graph, res.remap)


# docs/passes.md's example pass (drop_identity) is tested in tests/test_custom_pass.py, and every block of
# the docs runs in tests/test_doc_snippets.py.


def test_a_broken_input_is_not_blamed_on_a_pass():
    g = bg.mlp([3, 4, 2]).build()
    g = g.rebuild(outputs=[*g.outputs, ("ghost", "nowhere")])
    with pytest.raises(bg.VerifyError) as e:
        run_pipeline(g, TRAINING_PIPELINE)
    assert "after pass" not in str(e.value) and "nowhere" in str(e.value)
