"""The target of docs/targets.md, written from scratch (examples/scratch_target/), and the
inference-only path through the public API (issue 16, part 9).

* The ``lists`` target (plain Python lists: its own Renderer on the plan API, its own lowering
  table, its own templates outside the package, its own Runtime) imports nothing from the built-in
  targets, and every template it names exists and is used.
* It lowers forward ops only: ``bg.emit(g, target="lists", inference=True)`` renders, and
  ``model.export_inference(target="lists")`` runs a model trained on NumPy, with the NumPy
  target's numbers; the generated module runs on plain lists with nothing but Python.
* Asking it to train (``bg.compile``, ``bg.emit`` of the training programs) is one error naming
  the op and the target; a forward op it lacks is the plain missing-lowering error.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import LoweringError, register_target, unregister_target

FOLDER = Path(__file__).resolve().parents[1] / "examples" / "scratch_target"
sys.path.insert(0, str(FOLDER))
import lists_target  # noqa: E402  (examples/scratch_target/lists_target.py)

def chain():
    """Every activation on its own (no bias to fuse with), and an identity."""
    g = bg.Graph("chain")
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.matmul(x, 6, bias=False, name="fc1")
    h = g.identity(g.relu(g.sigmoid(g.tanh(g.leaky_relu(h, 0.2)))), name="feat")
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    return g


GRAPHS = {  # graphs whose inference programs use, together, every op the lists target lowers
    "chain": chain,
    "relu_bn": lambda: bg.mlp([4, 6, 5, 3]),
    "tanh_nll": lambda: bg.mlp([4, 6, 3], activation="tanh", loss="nll"),  # log_softmax
    "sigmoid_mse": lambda: bg.mlp([4, 5, 2], activation="sigmoid", loss="mse"),
    "leaky_no_bn": lambda: bg.mlp([4, 5, 3], activation="leaky_relu", batchnorm=False),
}


@pytest.fixture
def lists():
    register_target(lists_target.TARGET)
    try:
        yield lists_target.TARGET
    finally:
        unregister_target("lists")


def _data(n=40, features=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features))


def _trained(make, dtype="float64"):
    """A model of ``make()`` trained a little on the NumPy target (its running statistics moved)."""
    model = bg.compile(make(), dtype=dtype)
    X, rng = _data(), np.random.default_rng(1)
    classes = model.inputs.classes
    y = rng.random((40, model.inputs.n_outputs)) if classes is None else rng.integers(0, classes, 40)
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=16, verbose=False)
    return model


def test_the_target_is_written_from_scratch():
    """Its module imports the public backends API, never a built-in target's renderer or templates."""
    tree = ast.parse((FOLDER / "lists_target.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in modules if "numpy_target" in m or "cuda_target" in m or "templates" in m}
    assert issubclass(lists_target.ListsRenderer, bg.backends.Renderer)
    assert lists_target.ListsRenderer.__mro__[1] is bg.backends.Renderer
    assert lists_target.ListsRuntime.__mro__[1] is bg.backends.Runtime
    assert lists_target.TEMPLATES.parent == FOLDER  # outside the package's templates/


def test_every_template_is_named_and_every_named_template_exists():
    named = {"module.py.j2", "function.py.j2"} | {row.template for row in lists_target.LOWERINGS.values()}
    files = {p.name for p in (FOLDER / "templates").glob("*.j2")}
    assert named == files


def test_it_lowers_forward_ops_only_and_the_tests_use_every_one():
    kinds = {op: bg.OPS[op].kind for op in lists_target.LOWERINGS}
    assert set(kinds.values()) == {"forward"}, kinds
    used = {n.op for make in GRAPHS.values()
            for n in bg.run_pipeline(bg.to_inference(make()), bg.INFERENCE_PIPELINE).graph.nodes}
    assert used == set(lists_target.LOWERINGS)


def test_transposed_operands_and_values_without_a_buffer(lists):
    """A program given to Target.load directly: matmuls that read an operand transposed, and
    small (per-unit) values, which the plan gives no buffer (the renderer makes a new list)."""
    g = bg.verify(bg.parse("""graph t(%x: f64[4,m]) {
      param %W: f64[4,6]
      %gram: f64[6,6] = matmul[ta=true] %W, %W
      %proj: f64[4,4] = matmul[tb=true] %W, %W
      %z: f64[6,m] = matmul[ta=true] %W, %x
      %u: f64[6,m] = matmul %gram, %z
      %v: f64[4,m] = matmul %proj, %x
      return out=%u, aux=%v
    }"""))
    loaded = lists.load({"forward": g}, "f64", "t")
    plan = loaded.executable.plans["forward"]
    assert [d is None for step in plan.steps for d in step.dests] == [True, True, False, False, False]
    assert plan.idents["z"] == "z_2"  # z is a name the templates use (reserved)
    rng = np.random.default_rng(5)
    W, x, rt = rng.standard_normal((4, 6)), rng.standard_normal((4, 7)), loaded.runtime
    out = loaded.executable.run("forward", {"x": rt.asarray(x, np.float64)}, {"W": rt.asarray(W, np.float64)}, {},
                                None, 7)
    want = bg.interpret(g, {"x": x}, {"W": W})
    for key in ("out", "aux"):
        np.testing.assert_allclose(rt.to_numpy(out[key]), want[key], rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_export_inference_runs_on_the_lists_target_like_numpy(lists, name):
    model = _trained(GRAPHS[name])
    ref = model.export_inference()
    inf = model.export_inference(target="lists")
    assert isinstance(inf._runtime, lists_target.ListsRuntime) and ref._runtime is model.runtime
    assert list(inf.sources) == [f"{model.graph.name}_lists.py"] and "import numpy" not in inf.source
    X = _data(23, seed=2)  # batches of 10, 10 and 3: the buffers per batch size
    got = inf.forward(X, batch_size=10)
    np.testing.assert_allclose(got, ref.forward(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, model.forward(X), rtol=1e-9, atol=1e-10)
    assert sorted(inf.params) == sorted(ref.params)


def test_a_float32_model_agrees_to_rounding(lists):
    """The lists target computes in double whatever the dtype; a float32 model's logits agree."""
    model = _trained(GRAPHS["relu_bn"], dtype="float32")
    X = _data(17, seed=3)
    np.testing.assert_allclose(model.export_inference(target="lists").forward(X), model.forward(X),
                               rtol=1e-4, atol=1e-5)


def test_emit_renders_the_inference_program_and_it_runs_on_plain_lists(lists):
    """bg.emit needs no model and no gradient lowering; the module needs nothing but Python."""
    g = bg.mlp([4, 6, 3], activation="tanh", loss="nll")
    (name, source), = bg.emit(g, target="lists", inference=True).items()
    assert name == "mlp_lists.py"
    assert "    # %log_probs: f32[3,m] = log_softmax %out\n" in source
    module = {}
    exec(compile(source, name, "exec"), module)
    graph = bg.run_pipeline(bg.to_inference(g), bg.INFERENCE_PIPELINE).graph
    rng = np.random.default_rng(4)
    values = {v.name: rng.standard_normal(v.type.shape) for v in (*graph.params, *graph.state)}
    x = rng.standard_normal((4, 7))
    B = {key: [[0.0] * 7 for _ in range(shape[0])] for key, shape, _ in
         lists.renderer.plan("forward", graph).buffer_shapes(7)}
    P = {k: v.tolist() for k, v in values.items()}
    out = module["forward"](x.tolist(), P, {}, B)["out"]
    want = bg.interpret(graph, {"x": x}, values)["out"]
    np.testing.assert_allclose(np.array(out), want, rtol=1e-12, atol=1e-12)


def test_asking_it_to_train_is_one_error_naming_the_op_and_the_target(lists):
    says = (r"target lists has no lowering for op batchnorm_act \(node %act1\), which program train_step needs: "
            r"target lists cannot train this graph \(an inference program needs fewer ops: "
            r"bg.emit\(g, target='lists', inference=True\), model.export_inference\(target='lists'\)\)")
    with pytest.raises(LoweringError, match=says):
        bg.compile(bg.mlp([4, 5, 3]), target="lists")
    with pytest.raises(LoweringError, match=says):
        bg.emit(bg.mlp([4, 5, 3]), target="lists")
    with pytest.raises(LoweringError, match=r"target lists has no lowering for op softmax_cross_entropy \(node %loss\), "
                                            r"which program train_step needs: target lists cannot train"):
        bg.compile(bg.mlp([4, 5, 3], batchnorm=False), target="lists")


def test_a_forward_op_it_lacks_is_the_plain_missing_lowering_error(lists):
    """A batch norm that follows no matmul stays in the inference program (eval mode): this target
    has no row for it, and says so without talk of training."""
    g = bg.Graph("bn_first")
    x, y = g.input("x", 4), g.labels("y", 3)
    g.softmax_cross_entropy(g.matmul(g.batchnorm(x, name="bn0"), 3, name="out"), y)
    with pytest.raises(LoweringError, match=r"^target lists has no lowering for op batchnorm_act \(node %bn0\)$"):
        bg.emit(g, target="lists", inference=True)


def test_export_to_an_unknown_target_or_device_is_refused(lists):
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(bg.IRError, match="unknown target 'nope': available targets are c, cuda, lists, numpy"):
        model.export_inference(target="nope")
    with pytest.raises(ValueError, match="the lists target runs on the host CPU; got device 3"):
        model.export_inference(target="lists", device=3)
