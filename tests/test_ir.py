"""The IR core: types and nodes, the printer/parser pair (parse(print(g)) == g), parser errors that
name the line, verifier errors that name the node, and the reference interpreter."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bngraph as bg
from bngraph.ir import BATCH, IRError, Node, TensorType, Value, ir_dtype
from bngraph.parser import ParseError
from bngraph.verifier import VerifyError

from conftest import build_dsl_example, check_golden, random_values

# --------------------------------------------------------------------------------------------
# Types, values, nodes
# --------------------------------------------------------------------------------------------


def test_tensor_type_prints_like_the_ir():
    assert str(TensorType("f32", (128, BATCH))) == "f32[128,m]"
    assert str(TensorType("i64", (BATCH,))) == "i64[m]"
    assert str(TensorType("f64", ())) == "f64[]"
    assert TensorType("f32", (3, BATCH)).concrete_shape(5) == (3, 5)
    assert TensorType("f32", (3, BATCH)).rank == 2
    assert TensorType("f64", (3,)).is_float and not TensorType("i64", (BATCH,)).is_float


@pytest.mark.parametrize("dtype, dims, match", [
    ("f16", (3,), "unknown dtype 'f16'"),
    ("f32", (-1,), r"bad dimension -1 in shape \(-1,\)"),
    ("f32", ("n",), "bad dimension 'n'"),
    ("f32", (2.5,), "bad dimension 2.5"),
])
def test_tensor_type_rejects_bad_dtype_and_dims(dtype, dims, match):
    with pytest.raises(IRError, match=match):
        TensorType(dtype, dims)


@pytest.mark.parametrize("spelling, ir", [
    ("f32", "f32"), ("float32", "f32"), (np.float32, "f32"), (np.dtype("float64"), "f64"), ("float64", "f64"),
])
def test_ir_dtype_accepts_numpy_spellings(spelling, ir):
    assert ir_dtype(spelling) == ir


def test_ir_dtype_rejects_unsupported():
    with pytest.raises(IRError, match=r"unsupported dtype .*\(numpy float16\)"):
        ir_dtype(np.float16)
    with pytest.raises(IRError, match="unknown dtype"):
        ir_dtype("no-such-type")


def test_nodes_are_immutable_and_attrs_sorted():
    n = Node.make("batchnorm", ["z", "g", "b", "rm", "rv"], [Value("y", TensorType("f32", (3, BATCH)))],
                  {"mode": "train", "eps": 1e-5, "momentum": 0.1})
    assert [k for k, _ in n.attrs] == ["eps", "mode", "momentum"]
    assert n.attr["eps"] == 1e-5 and n.name == "y" and n.out.name == "y"
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.op = "relu"
    m = n.replace(attrs={**n.attr, "mode": "eval"})
    assert m is not n and m.attr["mode"] == "eval" and n.attr["mode"] == "train"
    assert m.inputs == n.inputs and m.outputs == n.outputs


def test_graph_lookups(dsl_example):
    g = dsl_example
    assert g.value("fc1.W").kind == "param" and g.value("bn1.running_mean").kind == "state"
    assert g.value("x").kind == "input" and g.value("y").classes == 10
    assert g.producers()["bn1.var"].op == "batchnorm"
    assert [n.op for n in g.users()["fc1"]] == ["batchnorm", "running_update"]
    assert g.output("loss") == "loss" and g.loss_node.op == "softmax_cross_entropy"
    assert g.param_names() == ["fc1.W", "fc1.b", "bn1.gamma", "bn1.beta", "out.W", "out.b"]
    assert g.state_names() == ["bn1.running_mean", "bn1.running_var"]
    assert g.is_training
    with pytest.raises(IRError, match="graph mlp: no value named %nope"):
        g.value("nope")
    with pytest.raises(IRError, match=r"graph mlp has no output 'out' \(outputs: loss, state.bn1.running_mean"):
        g.output("out")


def test_rebuild_shares_nodes_and_leaves_the_original_alone(dsl_example):
    g = dsl_example.build()
    h = g.rebuild(nodes=g.nodes[:-1], outputs=g.outputs[1:])
    assert h is not g and h != g
    assert len(g.nodes) == len(h.nodes) + 1 and g.outputs[0] == ("loss", "loss")
    assert all(a is b for a, b in zip(g.nodes, h.nodes))
    assert g.rebuild() == g and g.rebuild() is not g
    assert repr(g) == "<bngraph.FrozenGraph mlp: 8 nodes, 6 params>"
    assert repr(dsl_example) == "<bngraph.Graph mlp: 8 nodes, 6 params>"


def test_graph_equality_ignores_only_the_default_dtype(dsl_example):
    g = dsl_example.build()
    assert g.rebuild(dtype="f64") == g
    assert g.rebuild(name="other") != g
    assert g != "not a graph"


@pytest.mark.parametrize("name", ["1mlp", "my graph", "", "a-b", "é"])
def test_graph_name_must_parse(name):
    with pytest.raises(IRError, match="graph name must be an identifier"):
        bg.Graph(name)
    with pytest.raises(IRError, match="graph name must be an identifier"):
        bg.FrozenGraph(name)


# --------------------------------------------------------------------------------------------
# The builder and the frozen graph
# --------------------------------------------------------------------------------------------


def test_build_freezes_a_snapshot(dsl_example):
    g = dsl_example
    frozen = g.build()
    assert isinstance(frozen, bg.FrozenGraph) and not isinstance(frozen, bg.Graph)
    assert frozen == g and g == frozen and str(frozen) == str(g) and frozen.dtype == g.dtype
    for part in ("inputs", "params", "state", "nodes", "outputs"):
        assert isinstance(getattr(frozen, part), tuple), part
    assert frozen.build() is frozen and bg.as_graph(frozen) is frozen
    g.tanh("relu1", name="later")  # the builder goes on; the snapshot does not change
    assert "later" not in frozen.values() and frozen != g and len(frozen.nodes) == len(g.nodes) - 1
    assert bg.GraphBuilder is bg.Graph


def test_a_frozen_graph_refuses_changes(dsl_example):
    g = dsl_example.build()
    with pytest.raises(AttributeError, match=r"graph mlp is frozen: build a new one with g.rebuild\(nodes=...\)"):
        g.nodes = ()
    with pytest.raises(AttributeError, match="graph mlp is frozen"):
        g.extra = 1
    with pytest.raises(AttributeError, match="graph mlp is frozen"):
        del g.name
    with pytest.raises(AttributeError):
        g.outputs.append(("out", "out"))  # a tuple
    assert not hasattr(g, "matmul"), "the DSL methods belong to the builder"


def test_frozen_graphs_hash_by_contents(dsl_example):
    a, b = dsl_example.build(), bg.parse(str(dsl_example))
    assert a is not b and a == b and hash(a) == hash(b)
    assert len({a, b, a.rebuild(name="other")}) == 2
    assert {a: 1}[b] == 1
    with pytest.raises(TypeError):
        hash(dsl_example)  # a builder changes: not hashable


def test_frozen_graphs_copy_and_pickle(dsl_example):
    import copy
    import pickle

    g = dsl_example.build()
    hash(g)  # cached: a pickle must not carry it to another process (str hashes differ there)
    for other in (copy.copy(g), copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        assert isinstance(other, bg.FrozenGraph) and other is not g and other._hash is None
        assert other == g and hash(other) == hash(g)


def test_builder_and_frozen_graph_share_the_lookups(dsl_example):
    from bngraph.graph import GraphBase

    g, f = dsl_example, dsl_example.build()
    assert g.values() == f.values() and g.producers() == f.producers() and g.users() == f.users()
    assert g.output("loss") == f.output("loss") and g.loss_node == f.loss_node
    assert g.output_names == f.output_names and g.is_training and f.is_training
    assert g.param_names() == f.param_names() and g.state_names() == f.state_names()
    for name in ("values", "value", "producers", "users", "output", "has_output", "output_names", "loss_node",
                 "param_names", "state_names", "is_training", "__str__", "__eq__"):
        assert name in vars(GraphBase), name
        assert name not in vars(bg.Graph) and name not in vars(bg.FrozenGraph), f"{name} is defined twice"


def test_every_entry_point_takes_a_builder_or_a_frozen_graph(dsl_example):
    g = bg.mlp([4, 5, 3], dtype="f64")
    f = g.build()
    feeds, values = random_values(g, np.random.default_rng(0), m=5)
    assert bg.verify(g) == bg.verify(f) == f
    assert bg.grad_graph(g) == bg.grad_graph(f)
    assert bg.to_inference(g) == bg.to_inference(f)
    assert bg.run_pipeline(g, bg.TRAINING_PIPELINE).graph == bg.run_pipeline(f, bg.TRAINING_PIPELINE).graph
    assert bg.passes.PASSES["fold_bias"].run(g).graph == bg.passes.PASSES["fold_bias"].run(f).graph
    for a, b in zip(bg.interpret(g, feeds, values).values(), bg.interpret(f, feeds, values).values()):
        np.testing.assert_array_equal(a, b)
    assert bg.emit(g) == bg.emit(f)
    for result in (bg.verify(g), bg.grad_graph(g), bg.to_inference(g), bg.run_pipeline(g, ["dce"]).graph,
                   bg.parse(str(g))):
        assert isinstance(result, bg.FrozenGraph)
    with pytest.raises(TypeError, match="expected a bngraph graph .* got str"):
        bg.as_graph("graph mlp() {}")


def test_core_modules_import_one_way():
    """No import cycles among the IR modules, counting imports inside functions (lazy imports hide
    cycles): graph.py does not import the DSL, the printer imports nothing from bngraph."""
    import ast
    from pathlib import Path

    pkg = Path(bg.__file__).parent
    core = ["activations", "ir", "printer", "ops", "graph", "dsl", "parser", "verifier", "interpreter", "init",
            "autodiff"]
    deps = {}
    for mod in core:
        found = set()
        for node in ast.walk(ast.parse((pkg / f"{mod}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add((node.module or "").split(".")[0] or None)
                if node.module is None:
                    found.update(a.name for a in node.names)
        deps[mod] = {d for d in found if d in core}
    assert deps["printer"] == set() and "dsl" not in deps["graph"] and "printer" not in deps["printer"]

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in deps[start])

    cycles = [m for m in core if reaches(m, m)]
    assert not cycles, f"import cycles through {cycles}: {deps}"


# --------------------------------------------------------------------------------------------
# Printer and parser
# --------------------------------------------------------------------------------------------


def test_golden_dsl_example(dsl_example):
    check_golden("dsl_example.ir", str(dsl_example))


def test_print_is_one_line_per_binder_and_node(dsl_example):
    lines = str(dsl_example).splitlines()
    assert lines[0] == "graph mlp(%x: f32[64,m], %y: i64[m] classes=10) {"
    assert lines[-1] == "}"
    assert lines[-2].startswith("  return loss=%loss, state.bn1.running_mean=%bn1.running_mean.next")
    assert sum(ln.startswith("  param ") for ln in lines) == 6
    assert sum(ln.startswith("  state ") for ln in lines) == 2
    assert len(lines) == 1 + 6 + 2 + 8 + 2


def test_false_booleans_are_omitted_and_true_ones_printed():
    g = bg.Graph("t")
    x = g.input("x", 3)
    W = g.param("W", (3, 4))
    g.add_node("matmul", [W, x], {"ta": True, "tb": False}, ["z"])
    g.outputs.append(("out", "z"))
    assert "%z: f32[4,m] = matmul[ta=true] %W, %x" in str(g)
    assert "tb" not in str(g)
    assert bg.parse(str(g)) == g


def test_roundtrip_zoo(zoo_graph):
    text = str(zoo_graph)
    g = bg.parse(text)
    assert g == zoo_graph
    assert str(g) == text
    bg.verify(g)


def test_parse_accepts_comments_blank_lines_and_spacing(dsl_example):
    text = "# a comment\n\n" + str(dsl_example).replace("  %fc1:", "\n  # the bias\n     %fc1:")
    text = text.replace("= relu %bn1", "=   relu    %bn1  # activation")
    assert bg.parse(text) == dsl_example


def test_parse_infers_the_default_dtype():
    g = bg.parse(str(bg.mlp([3, 2], dtype="f64")))
    assert g.dtype == "f64"


def test_parse_graph_without_params():
    g = bg.Graph("tiny")
    x = g.input("x", 2)
    t = g.input("t", 2)
    g.mse(g.relu(x), t)
    assert bg.parse(str(g)) == g


def _break_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


EXAMPLE = str(build_dsl_example())
EXAMPLE_LINES = EXAMPLE.splitlines()


def _lineno(fragment: str) -> int:
    return next(i + 1 for i, ln in enumerate(EXAMPLE_LINES) if fragment in ln)


@pytest.mark.parametrize("old, new, line_of, match", [
    ("graph mlp(", "graf mlp(", "graph mlp(", "expected 'graph NAME"),
    ("%x: f32[64,m]", "%x: f16[64,m]", "graph mlp(", r"expected '%name: dtype\[dims\]', got '%x: f16\[64,m\]'"),
    ("param %fc1.W: f32[128,64]", "param %fc1.W: f32[128,k]", "param %fc1.W", "bad dimension 'k'"),
    ("param %fc1.b: f32[128]", "param fc1.b: f32[128]", "param %fc1.b", r"expected '%name: dtype\[dims\]'"),
    ("state %bn1.running_var: f32[128]", "state %bn1.running_var f32[128]", "state %bn1.running_var",
     r"expected '%name: dtype\[dims\]'"),
    ("= relu %bn1", "= swish %bn1", "= relu %bn1", "relu1: unknown op 'swish'"),
    ("batchnorm[eps=1e-05,", "batchnorm[eps=-1.0,", "= batchnorm[", "bn1: eps must be > 0, got -1.0"),
    ("batchnorm[eps=1e-05,", "batchnorm[eps=small,", "= batchnorm[", "attribute eps of batchnorm must be float, got 'small'"),
    ("batchnorm[eps=1e-05,", "batchnorm[epsilon=1e-05,", "= batchnorm[",
     r"bn1: op batchnorm has no attribute\(s\) \['epsilon'\]"),
    ("batchnorm[eps=1e-05,", "batchnorm[eps,", "= batchnorm[", "expected 'key=value' attribute, got 'eps'"),
    ("mode=train", "mode=test", "= batchnorm[", "mode must be 'train' or 'eval', got 'test'"),
    ("= relu %bn1", "= relu %bn1, bn1", "= relu %bn1", "expected a value reference '%name', got 'bn1'"),
    ("%relu1: f32[128,m] = relu %bn1", "%relu1: f32[128,m] relu %bn1", "relu %bn1", "cannot read"),
    ("return loss=%loss,", "return loss%loss,", "return", "expected 'key=%value' in return, got 'loss%loss'"),
    ("return loss=%loss,", "return loss=loss,", "return", "expected a value reference '%name', got 'loss'"),
])
def test_parse_errors_name_the_line(old, new, line_of, match):
    lineno = _lineno(line_of)
    with pytest.raises(ParseError, match=rf"^line {lineno}: .*{match}"):
        bg.parse(_break_line(EXAMPLE, old, new))


def test_parse_errors_of_the_structure():
    with pytest.raises(ParseError, match="empty IR text"):
        bg.parse("  \n# nothing\n")
    with pytest.raises(ParseError, match="missing closing '}'"):
        bg.parse(EXAMPLE.rsplit("}", 1)[0])
    with pytest.raises(ParseError, match="missing 'return' line"):
        bg.parse("\n".join(ln for ln in EXAMPLE_LINES if "return" not in ln))
    with pytest.raises(ParseError, match=rf"^line {len(EXAMPLE_LINES) + 1}: text after the closing"):
        bg.parse(EXAMPLE + "\n  %extra: f32[] = relu %loss")


def test_parse_error_is_an_ir_error():
    assert issubclass(ParseError, IRError) and issubclass(IRError, ValueError)


# --------------------------------------------------------------------------------------------
# Verifier: each broken graph gives a message naming the node (and the pass, when given)
# --------------------------------------------------------------------------------------------


def test_verify_passes_and_returns_the_graph(zoo_graph):
    frozen = zoo_graph.build()
    assert bg.verify(frozen) is frozen
    assert bg.verify(zoo_graph) == zoo_graph  # a builder is built once, the frozen graph returned


def _replace_node(g, name, **changes):
    g = g.build()
    return g.rebuild(nodes=[n.replace(**changes) if n.name == name else n for n in g.nodes])


def test_verify_wrong_output_type(dsl_example):
    g = dsl_example
    bad = _replace_node(g, "relu1", outputs=(Value("relu1", TensorType("f32", (64, BATCH))),))
    with pytest.raises(VerifyError, match=r"node %relu1 \(relu\): output %relu1 expected type f32\[128,m\], got f32\[64,m\]"):
        bg.verify(bad)


def test_verify_wrong_output_dtype(dsl_example):
    bad = _replace_node(dsl_example, "relu1", outputs=(Value("relu1", TensorType("f64", (128, BATCH))),))
    with pytest.raises(VerifyError, match=r"output %relu1 expected type f32\[128,m\], got f64\[128,m\]"):
        bg.verify(bad)


def test_verify_use_before_definition(dsl_example):
    g = dsl_example.build()
    nodes = list(g.nodes)
    nodes[0], nodes[1] = nodes[1], nodes[0]  # bias_add before the matmul it reads
    with pytest.raises(VerifyError, match=r"graph mlp: node %fc1 \(bias_add\) uses %fc1.matmul before it is defined"):
        bg.verify(g.rebuild(nodes=nodes))


def test_verify_undefined_value(dsl_example):
    bad = _replace_node(dsl_example, "relu1", inputs=("bn9",))
    with pytest.raises(VerifyError, match=r"node %relu1 \(relu\) uses %bn9 which is not defined"):
        bg.verify(bad)


def test_verify_dead_node(dsl_example):
    g = dsl_example
    g.tanh("relu1", name="unused")
    with pytest.raises(VerifyError, match=r"node %unused \(tanh\) is dead: none of its outputs is used"):
        bg.verify(g)
    assert bg.verify(g, allow_dead=True) == g


def test_verify_unused_param_state_and_input(dsl_example):
    g = build_dsl_example()
    g.param("extra.W", (3, 3))
    with pytest.raises(VerifyError, match="param %extra.W is not used by any node"):
        bg.verify(g)
    g = build_dsl_example()
    g.state_value("extra.s", (3,))
    with pytest.raises(VerifyError, match="state %extra.s is not used by any node"):
        bg.verify(g)
    g = build_dsl_example()
    g.input("z", 3)
    with pytest.raises(VerifyError, match="input %z is not used by any node"):
        bg.verify(g)


@pytest.mark.parametrize("outputs, match", [
    ([("loss", "loss"), ("state.bn1.nope", "bn1.running_mean.next")],
     "output state.bn1.nope names bn1.nope, which is not a state"),
    ([("loss", "loss"), ("grad.bn1.running_mean", "bn1.running_mean.next")],
     "output grad.bn1.running_mean names bn1.running_mean, which is not a param"),
    ([("loss", "loss"), ("state.bn1.running_mean", "bn1.mean"), ("state.bn1.running_var", "relu1")],
     r"output state.bn1.running_var: expected type f32\[128\], got %relu1: f32\[128,m\]"),
    ([("loss", "relu1")], r"output loss must be a scalar, got %relu1: f32\[128,m\]"),
    ([("loss", "loss"), ("loss", "loss")], "duplicate output key loss"),
    ([("loss", "lost")], "output loss refers to %lost, which is not defined"),
    ([], "the graph has no outputs"),
])
def test_verify_bad_outputs(dsl_example, outputs, match):
    with pytest.raises(VerifyError, match=match):
        bg.verify(dsl_example.build().rebuild(outputs=outputs), allow_dead=True)


def test_verify_names_the_pass(dsl_example):
    bad = _replace_node(dsl_example, "relu1", inputs=("bn9",))
    with pytest.raises(VerifyError, match=r"^graph mlp after pass fuse_bn: node %relu1 \(relu\) uses %bn9"):
        bg.verify(bad, after="fuse_bn")


def test_verify_unknown_op_and_bad_attrs(dsl_example):
    dsl_example = dsl_example.build()
    with pytest.raises(VerifyError, match=r"node %relu1 \(swish\): unknown op 'swish'"):
        bg.verify(_replace_node(dsl_example, "relu1", op="swish"))
    bn = next(n for n in dsl_example.nodes if n.op == "batchnorm")
    bad = dataclasses.replace(bn, attrs=(("eps", 0.0), ("mode", "train"), ("momentum", 0.1)))
    nodes = [bad if n is bn else n for n in dsl_example.nodes]
    with pytest.raises(VerifyError, match=r"node %bn1 \(batchnorm\): eps must be > 0, got 0.0"):
        bg.verify(dsl_example.rebuild(nodes=nodes))
    # attributes must be stored normalized (defaults filled in), as the DSL and the parser do
    missing = dataclasses.replace(bn, attrs=(("eps", 1e-5), ("mode", "train")))
    nodes = [missing if n is bn else n for n in dsl_example.nodes]
    with pytest.raises(VerifyError, match=r"node %bn1 \(batchnorm\): attributes .* are not normalized"):
        bg.verify(dsl_example.rebuild(nodes=nodes))


def test_verify_shape_rule_and_output_count(dsl_example):
    dsl_example = dsl_example.build()
    # the second matmul reads an activation of the wrong width
    bad = _replace_node(dsl_example, "out.matmul", inputs=("out.W", "x"))
    with pytest.raises(VerifyError, match=r"node %out.matmul \(matmul\): matmul inner dimensions differ: "
                                          r"a is f32\[10,128\] \(inner 128\) but b is f32\[64,m\] \(inner 64\)"):
        bg.verify(bad)
    bn = next(n for n in dsl_example.nodes if n.op == "batchnorm")
    bad = _replace_node(dsl_example, "bn1", outputs=bn.outputs[:1])
    with pytest.raises(VerifyError, match=r"node %bn1 \(batchnorm\): batchnorm has 3 outputs, the node declares 1"):
        bg.verify(bad, allow_dead=True)


def test_verify_duplicate_names_and_kinds(dsl_example):
    g = dsl_example.build()
    with pytest.raises(VerifyError, match="duplicate name %fc1.W"):
        bg.verify(g.rebuild(params=g.params + g.params[:1]))
    with pytest.raises(VerifyError, match=r"node %x \(relu\): duplicate name %x"):
        bg.verify(_replace_node(g, "relu1", outputs=(Value("x", TensorType("f32", (128, BATCH))),)))
    wrong_kind = dataclasses.replace(g.params[0], kind="state")
    with pytest.raises(VerifyError, match="%fc1.W is listed as param but has kind state"):
        bg.verify(g.rebuild(params=(wrong_kind, *g.params[1:])))


def test_verify_logits_rows_vs_classes_from_text(dsl_example):
    text = str(dsl_example).replace("%y: i64[m] classes=10", "%y: i64[m] classes=7")
    with pytest.raises(VerifyError, match=r"node %loss \(softmax_cross_entropy\): logits %out expected shape "
                                          r"f32\[7,m\] for labels %y \(classes=7\), got f32\[10,m\]"):
        bg.verify(bg.parse(text))


def test_verify_wrong_type_from_text(dsl_example):
    text = str(dsl_example).replace("%relu1: f32[128,m] = relu", "%relu1: f32[128] = relu")
    with pytest.raises(VerifyError, match=r"node %relu1 \(relu\): output %relu1 expected type f32\[128,m\], got f32\[128\]"):
        bg.verify(bg.parse(text))


# --------------------------------------------------------------------------------------------
# The reference interpreter
# --------------------------------------------------------------------------------------------


def _numpy_mlp(feeds, values, eps=1e-5, momentum=0.1):
    """The DSL example written out by hand in numpy (compiler layout)."""
    x, y = feeds["x"], feeds["y"]
    z = values["fc1.W"] @ x + values["fc1.b"][:, None]
    mu, var = z.mean(axis=1), z.var(axis=1)
    a = values["bn1.gamma"][:, None] * (z - mu[:, None]) / np.sqrt(var[:, None] + eps) + values["bn1.beta"][:, None]
    a = np.maximum(a, 0)
    logits = values["out.W"] @ a + values["out.b"][:, None]
    logp = logits - logits.max(axis=0) - np.log(np.exp(logits - logits.max(axis=0)).sum(axis=0))
    m = x.shape[1]
    loss = -logp[y, np.arange(m)].mean()
    rm = (1 - momentum) * values["bn1.running_mean"] + momentum * mu
    rv = (1 - momentum) * values["bn1.running_var"] + momentum * var * m / (m - 1)
    return loss, rm, rv


def test_interpret_dsl_example_matches_hand_written_numpy():
    g = bg.mlp([64, 128, 10], dtype="f64")
    rng = np.random.default_rng(0)
    feeds, values = random_values(g, rng, m=16)
    out, env = bg.interpret(g, feeds, values, return_env=True)
    loss, rm, rv = _numpy_mlp(feeds, values)
    assert set(out) == {"loss", "state.bn1.running_mean", "state.bn1.running_var"}
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    np.testing.assert_allclose(out["state.bn1.running_mean"], rm, rtol=1e-12)
    np.testing.assert_allclose(out["state.bn1.running_var"], rv, rtol=1e-12)
    assert env["act1"].shape == (128, 16) and (env["act1"] >= 0).all()


def test_interpret_contract_example_in_float32(dsl_example):
    feeds, values = random_values(dsl_example, np.random.default_rng(1), m=8)
    out = bg.interpret(dsl_example, feeds, values)
    assert out["loss"].shape == () and out["loss"].dtype == np.float32 and np.isfinite(out["loss"])
    assert out["state.bn1.running_var"].dtype == np.float32


def test_interpret_every_zoo_graph(zoo_graph):
    feeds, values = random_values(zoo_graph, np.random.default_rng(2), m=5)
    out = bg.interpret(zoo_graph, feeds, values)
    assert np.isfinite(out["loss"]) and out["loss"].shape == ()


@pytest.mark.parametrize("change, match", [
    (lambda f, v: f.pop("y"), r"graph mlp: no value fed for input %y: i64\[m\]"),
    (lambda f, v: f.update(x=np.ones((64,))), r"input %x: expected shape f32\[64,m\], got array of shape \(64,\)"),
    (lambda f, v: f.update(x=np.ones((63, 8))), r"input %x: expected shape f32\[64,m\], got array of shape \(63, 8\)"),
    (lambda f, v: f.update(x=np.ones((8, 64))), r"input %x: expected shape f32\[64,m\], got array of shape \(8, 64\)"),
    (lambda f, v: f.update(y=np.zeros(7, dtype=np.int64)), "input %y: batch size 7 differs from 8 of the other inputs"),
    (lambda f, v: v.pop("bn1.gamma"), r"no value for param %bn1.gamma: f32\[128\]"),
    (lambda f, v: v.pop("bn1.running_var"), r"no value for state %bn1.running_var: f32\[128\]"),
    (lambda f, v: v.update({"fc1.W": np.ones((64, 128))}), r"param %fc1.W: expected shape \(128, 64\), got \(64, 128\)"),
    (lambda f, v: f.update(y=np.full(8, 10)), r"input %y: label 10 at index 0 is out of range: expected 0 <= label < 10"),
    (lambda f, v: f.update(y=np.array([0, 1, -1, 0, 0, 0, 0, 0])), r"label -1 at index 2 is out of range: expected 0 <= label < 10"),
    (lambda f, v: f.update(y=np.zeros(8)), r"input %y: labels must be integer class indices, got dtype float64 \(index 0: 0.0\)"),
])
def test_interpret_errors(dsl_example, change, match):
    feeds, values = random_values(dsl_example, np.random.default_rng(3), m=8)
    change(feeds, values)
    with pytest.raises(IRError, match=match):
        bg.interpret(dsl_example, feeds, values)
