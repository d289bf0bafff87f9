"""Code generation (bngraph/backends/numpy_backend.py + templates/numpy/*.j2).

* Snapshots: the generated module of two small fixed models, training and inference, equals the
  files under tests/golden/codegen/ exactly. After an intended change to the templates or the
  compiler, regenerate them with

      BNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_codegen.py

  and review the diff before committing it.
* Structure: every IR node of every program appears, in order, as a ``# %...`` comment line; the
  module compiles; the text is stable from one emit to the next.
* Semantics: every generated program equals the reference interpreter (``bg.interpret``) in
  float64, for every loss and activation, with and without bias and batch norm, fused (the default
  passes) and unfused (``passes=[]``), eval-mode batch-norm gradients included; and its gradients
  equal central finite differences of its own loss.
"""
from __future__ import annotations

import linecache
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import get_target
from bngraph.compiler import inference_graph
from bngraph.printer import format_node

from conftest import random_values

GOLDEN = Path(__file__).parent / "golden" / "codegen"
UPDATE = bool(os.environ.get("BNGRAPH_UPDATE_GOLDEN"))  # BNGRAPH_UPDATE_GOLDEN=1 rewrites the snapshots
PROGRAMS = ("train_step", "forward", "forward_train", "evaluate")
TARGET = get_target("numpy")


def check_golden_source(name: str, text: str):
    """``text`` equals tests/golden/codegen/<name> byte for byte (BNGRAPH_UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run BNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_codegen.py"
    expected = path.read_text()
    # a plain == so that pytest shows the diff; BNGRAPH_UPDATE_GOLDEN=1 rewrites the file
    assert text == expected


def snapshot_models() -> dict:
    return {
        "mlp_4_5_3": lambda: bg.mlp([4, 5, 3]),
        "tanh_mse": lambda: bg.mlp([3, 4, 2], activation="tanh", loss="mse", name="regressor"),
    }


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(snapshot_models()))
@pytest.mark.parametrize("inference", [False, True], ids=["train", "inference"])
def test_emitted_source_matches_golden(key, inference):
    g = snapshot_models()[key]()
    files = bg.emit(g, target="numpy", inference=inference)
    assert list(files) == [f"{g.name}_numpy.py"]
    (src,) = files.values()
    check_golden_source(f"{key}{'_inference' if inference else ''}.py", src)


def test_emit_returns_name_to_source_and_matches_the_compiled_model():
    g = bg.mlp([4, 5, 3])
    files = bg.emit(g, target="numpy")
    assert isinstance(files, dict) and list(files) == ["mlp_numpy.py"]
    assert all(isinstance(s, str) for s in files.values())
    model = bg.compile(g, target="numpy")
    assert isinstance(model.source, str)
    assert model.source == files["mlp_numpy.py"]  # what runs is what emit shows
    assert model.sources == files


@pytest.mark.parametrize("key", sorted(snapshot_models()))
@pytest.mark.parametrize("inference", [False, True], ids=["train", "inference"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emit_is_stable(key, inference, dtype):
    make = snapshot_models()[key]
    a = bg.emit(make(), dtype=dtype, inference=inference)
    b = bg.emit(make(), dtype=dtype, inference=inference)
    g = make()
    c, d = bg.emit(g, dtype=dtype, inference=inference), bg.emit(g, dtype=dtype, inference=inference)
    assert a == b == c == d
    # a graph parsed back from its text gives the same code
    assert bg.emit(bg.parse(str(g)), dtype=dtype, inference=inference) == a


def test_emit_does_not_mutate_the_graph():
    g = bg.mlp([4, 5, 3])
    before = str(g)
    bg.emit(g)
    bg.emit(g, inference=True)
    bg.compile(g)
    assert str(g) == before


def test_emit_dtype_and_target_errors():
    src = bg.emit(bg.mlp([4, 5, 3]), dtype="float64")["mlp_numpy.py"]
    assert "DTYPE = np.float64" in src and "f64[5,m]" in src and "f32" not in src
    with pytest.raises(bg.IRError, match="unknown target 'tpu': available targets are c, cuda, numpy"):
        bg.emit(bg.mlp([4, 5, 3]), target="tpu")


# --------------------------------------------------------------------------------------------
# Structure: one comment per IR node, in order; the module compiles
# --------------------------------------------------------------------------------------------


def function_source(src: str, name: str) -> str:
    m = re.search(rf"^def {name}\(.*?(?=^def |\Z)", src, re.S | re.M)
    assert m, f"no function {name} in the generated source"
    return m.group(0)


def node_comments(fn_src: str) -> list:
    return [ln.strip()[2:] for ln in fn_src.splitlines() if ln.strip().startswith("# %")]


@pytest.mark.parametrize("passes", [None, []], ids=["default-passes", "no-passes"])
@pytest.mark.parametrize("make", [
    lambda: bg.mlp([4, 5, 3]),
    lambda: bg.mlp([3, 4, 2], activation="tanh", loss="mse"),
    lambda: bg.mlp([3, 4, 4, 2], activation="sigmoid", loss="sigmoid_bce", batchnorm=False),
    lambda: bg.mlp([3, 4, 2], activation="leaky_relu", negative_slope=2.5, bias=False),
], ids=["mlp", "tanh-mse", "sigmoid-bce-nobn", "leaky-nobias"])
def test_every_node_is_a_comment_in_order(make, passes):
    model = bg.compile(make(), passes=passes)
    assert set(model.programs) == set(PROGRAMS)
    for name in PROGRAMS:
        prog = model.programs[name]
        fn = function_source(model.source, name)
        assert node_comments(fn) == [format_node(n) for n in prog.nodes], name
        # the comment is the node exactly as print(graph) shows it
        text = str(prog)
        assert all(f"  {c}" in text for c in node_comments(fn))
        # and the allocator exists next to it
        assert f"def alloc_{name}(m):" in model.source


@pytest.mark.parametrize("key", sorted(snapshot_models()))
def test_inference_emit_has_every_node_of_the_inference_graph(key):
    g = snapshot_models()[key]()
    src = bg.emit(g, inference=True)[f"{g.name}_numpy.py"]
    graph = inference_graph(g).graph
    assert node_comments(function_source(src, "forward")) == [format_node(n) for n in graph.nodes]
    assert "def train_step" not in src
    assert not any(n.op.startswith("batchnorm") for n in graph.nodes)  # folded into the weights
    assert "W_folded" in src
    ns: dict = {}
    exec(compile(src, "<inference>", "exec"), ns)
    assert callable(ns["forward"]) and callable(ns["alloc_forward"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("inference", [False, True])
def test_generated_module_compiles(dtype, inference):
    for make in snapshot_models().values():
        for fname, src in bg.emit(make(), dtype=dtype, inference=inference).items():
            code = compile(src, fname, "exec")  # a SyntaxError would fail here
            ns: dict = {}
            exec(code, ns)
            assert ns["DTYPE"] is getattr(np, dtype)
            for name in (("forward",) if inference else PROGRAMS):
                assert callable(ns[name]) and callable(ns[f"alloc_{name}"])


def test_generated_source_is_registered_with_linecache():
    model = bg.compile(bg.mlp([4, 5, 3]))
    filename = model.executable.module.__file__
    assert filename.startswith("<bngraph:")
    lines = model.source.splitlines()
    assert linecache.getline(filename, 1).rstrip("\n") == lines[0]
    k = next(i for i, ln in enumerate(lines) if ln.startswith("def train_step"))
    assert linecache.getline(filename, k + 1).rstrip("\n") == lines[k]


# --------------------------------------------------------------------------------------------
# Semantics: generated code == the reference interpreter (float64)
# --------------------------------------------------------------------------------------------


def run_generated(module, name: str, prog, feeds: dict, values: dict, m: int) -> dict:
    """Call the generated function as a reader of the module would: its own alloc_<name>, and a
    fresh gradient array per param when the program computes gradients."""
    fn = getattr(module, name)
    B = getattr(module, f"alloc_{name}")(m)
    args = [feeds[v.name] for v in prog.inputs]
    if any(k.startswith("grad.") for k, _ in prog.outputs):
        G = {p.name: np.full(p.type.shape, np.nan, values[p.name].dtype) for p in prog.params}  # poisoned
        return fn(*args, values, values, G, B)
    return fn(*args, values, values, B)


def assert_matches_interpreter(module, name: str, prog, rng, m: int = 7, rtol=1e-10, atol=1e-12):
    feeds, values = random_values(prog, rng, m=m)
    copies = {k: v.copy() for k, v in values.items()}
    ref = bg.interpret(prog, feeds, values)
    got = run_generated(module, name, prog, feeds, values, m)
    assert set(got) == set(ref), name
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), ref[k], rtol=rtol, atol=atol, err_msg=f"{name}: {k}")
        assert np.asarray(got[k]).shape == np.asarray(ref[k]).shape, f"{name}: {k}"
    # the generated code reads P and S and writes only into B
    for k in values:
        np.testing.assert_array_equal(values[k], copies[k], err_msg=f"{name} wrote into {k}")
    return got


def _configs():
    out = []
    for loss in ("softmax_cross_entropy", "mse", "sigmoid_bce"):
        for act in bg.ACTIVATIONS:
            for bias in (True, False):
                for bn in (True, False):
                    out.append(pytest.param(loss, act, bias, bn, id=f"{loss}-{act}-{'bias' if bias else 'nobias'}-"
                                                                 f"{'bn' if bn else 'nobn'}"))
    return out


@pytest.mark.parametrize("loss, act, bias, bn", _configs())
def test_generated_programs_equal_interpreter(loss, act, bias, bn):
    rng = np.random.default_rng(zlib.crc32(f"{loss}{act}{bias}{bn}".encode()))
    g = bg.mlp([5, 7, 6, 3], activation=act, batchnorm=bn, bias=bias, loss=loss, dtype="f64",
               negative_slope=0.05, momentum=0.3, eps=1e-4)
    for passes in (None, []):
        model = bg.compile(g, dtype="float64", passes=passes)
        for name in PROGRAMS:
            prog = model.programs[name]
            assert_matches_interpreter(model.executable.module, name, prog, rng)


@pytest.mark.parametrize("slope", [0.0, 0.3, 1.0, 1.5, 4.0])
@pytest.mark.parametrize("bn", [True, False])
def test_leaky_relu_any_nonnegative_slope_equals_interpreter(slope, bn):
    """max(x, slope*x) is leaky_relu only for 0 <= slope <= 1: a slope > 1 takes the np.where path."""
    rng = np.random.default_rng(int(slope * 10) + bn)
    g = bg.mlp([4, 6, 5, 3], activation="leaky_relu", negative_slope=slope, batchnorm=bn, dtype="f64")
    for passes in (None, []):
        model = bg.compile(g, dtype="float64", passes=passes)
        for name in PROGRAMS:
            got = assert_matches_interpreter(model.executable.module, name, model.programs[name], rng)
            assert all(np.all(np.isfinite(v)) for v in got.values())
    if slope > 1:
        assert f"* {slope}" in model.source and "np.where" in model.source
        assert f"np.maximum(fc1_matmul, fc1_matmul * {slope}" not in model.source


def test_leaky_relu_slope_above_one_is_not_a_max():
    """A direct check of the values: x = -1 with slope 2 gives -2 (max(x, 2x) would give -1)."""
    g = bg.Graph("leaky", "f64")
    x = g.input("x", 2)
    t = g.input("t", 2)
    a = g.leaky_relu(x, negative_slope=2.0, name="a")
    g.mse(a, t)
    model = bg.compile(g, dtype="float64")
    out = model.forward(np.array([[-1.0, 3.0], [0.5, -0.25]]))
    np.testing.assert_array_equal(out, [[-2.0, 3.0], [0.5, -0.5]])


# A graph with eval-mode batch norm (unfused and fused with an activation), a transposed weight and
# fused bias+activation: differentiated, it has eval-mode batchnorm_grad and batchnorm_act_grad.
EVAL_BN_IR = """\
graph evalbn(%x: f64[5,m], %y: i64[m] classes=4) {
  param %fc1.W: f64[5,7]
  param %bn1.gamma: f64[7]
  param %bn1.beta: f64[7]
  param %fc2.W: f64[6,7]
  param %fc2.b: f64[6]
  param %bn2.gamma: f64[6]
  param %bn2.beta: f64[6]
  param %out.W: f64[4,6]
  param %out.b: f64[4]
  state %bn1.running_mean: f64[7]
  state %bn1.running_var: f64[7]
  state %bn2.running_mean: f64[6]
  state %bn2.running_var: f64[6]
  %fc1: f64[7,m] = matmul[ta=true] %fc1.W, %x
  %bn1: f64[7,m] = batchnorm_act[act=leaky_relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=1.5] %fc1, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
  %fc2.matmul: f64[6,m] = matmul %fc2.W, %bn1
  %fc2: f64[6,m] = bias_add_act[act=sigmoid, negative_slope=0.0] %fc2.matmul, %fc2.b
  %bn2: f64[6,m] = batchnorm[eps=0.001, mode=eval, momentum=0.1] %fc2, %bn2.gamma, %bn2.beta, %bn2.running_mean, %bn2.running_var
  %out.matmul: f64[4,m] = matmul %out.W, %bn2
  %out: f64[4,m] = bias_add %out.matmul, %out.b
  %loss: f64[] = softmax_cross_entropy %out, %y
  return loss=%loss
}
"""


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_eval_mode_batchnorm_grad_equals_interpreter(dtype):
    g = bg.parse(EVAL_BN_IR if dtype == "f64" else EVAL_BN_IR.replace("f64", "f32"))
    train = bg.grad_graph(g)
    ops = {(n.op, n.attr.get("mode")) for n in train.nodes}
    assert ("batchnorm_grad", "eval") in ops and ("batchnorm_act_grad", "eval") in ops
    programs = {"train_step": train, "forward": bg.to_inference(g)}
    rendered = TARGET.renderer.render(programs, dtype, "evalbn")
    src = rendered.sources["evalbn_numpy.py"]
    assert node_comments(function_source(src, "train_step")) == [format_node(n) for n in train.nodes]
    module = TARGET.runtime().load(rendered).module
    rng = np.random.default_rng(7)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "f64" else dict(rtol=2e-4, atol=2e-5)
    for name, prog in programs.items():
        assert_matches_interpreter(module, name, prog, rng, **tol)


def shared_weight_graph():
    """A weight used twice: h2 = W tanh(W x)."""
    g = bg.Graph("shared", "f64")
    x = g.input("x", 4)
    y = g.labels("y", 3)
    W = g.param("W", (4, 4))
    h = g.add_node("matmul", [W, x], {}, ["h1"]).out
    h = g.tanh(h, name="a1")
    h = g.add_node("matmul", [W, h], {}, ["h2"]).out
    h = g.relu(g.batchnorm(h, name="bn"), name="a2")
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    return g


def test_shared_weight_accumulates_gradients_with_add():
    """A weight used twice (h2 = W tanh(W x)): autodiff sums its two cotangents with an add node."""
    model = bg.compile(shared_weight_graph(), dtype="float64")
    assert "add" in {n.op for n in model.programs["train_step"].nodes}
    rng = np.random.default_rng(3)
    for name in PROGRAMS:
        assert_matches_interpreter(model.executable.module, name, model.programs[name], rng)


def test_python_unfriendly_names_are_renamed():
    """IR names that clash with the generated code's own names (np, m, P, S, B, DTYPE) or with
    Python keywords still give correct code."""
    g = bg.Graph("weird", "f64")
    x = g.input("np", 4)
    t = g.labels("m", 3)
    h = g.matmul(x, 5, name="B")
    h = g.batchnorm(h, name="P")
    h = g.activation(h, "tanh", name="lambda")
    h = g.matmul(h, 5, name="S", bias=False)
    h = g.leaky_relu(h, negative_slope=3.0, name="lambda_2")
    h = g.sigmoid(h, name="DTYPE")
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), t)
    rng = np.random.default_rng(11)
    for passes in (None, []):
        model = bg.compile(g, dtype="float64", passes=passes)
        compile(model.source, "weird", "exec")
        for name in PROGRAMS:
            assert_matches_interpreter(model.executable.module, name, model.programs[name], rng, m=5)


def test_float32_generated_code_is_close_to_float64_interpreter():
    g = bg.mlp([5, 7, 6, 3], activation="tanh")
    model = bg.compile(g, dtype="float32")
    ref_model = bg.compile(g, dtype="float64")
    rng = np.random.default_rng(5)
    for name in PROGRAMS:
        prog64 = ref_model.programs[name]
        feeds, values = random_values(prog64, rng, m=9)
        ref = bg.interpret(prog64, feeds, values)
        f32 = lambda a: a.astype(np.float32) if a.dtype == np.float64 else a  # noqa: E731
        got = run_generated(model.executable.module, name, model.programs[name], {k: f32(v) for k, v in feeds.items()},
                            {k: f32(v) for k, v in values.items()}, 9)
        for k in ref:
            assert np.asarray(got[k]).dtype == np.float32, k
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=f"{name}: {k}")


def test_the_equivalence_tests_cover_every_op():
    """The graphs run by the equivalence tests above, between them, use every op of the op table."""
    from bngraph.compiler import build_programs

    seen = set()
    for loss in ("softmax_cross_entropy", "mse", "sigmoid_bce"):
        for act in bg.ACTIVATIONS:
            for bn in (True, False):
                g = bg.mlp([5, 7, 6, 3], activation=act, batchnorm=bn, loss=loss, dtype="f64")
                for passes in (None, []):
                    seen.update(n.op for p in build_programs(g, "float64", passes).programs.values() for n in p.nodes)
    eval_bn = bg.parse(EVAL_BN_IR)
    seen.update(n.op for n in bg.grad_graph(eval_bn).nodes)
    seen.update(n.op for n in bg.to_inference(eval_bn).nodes)
    # test_shared_weight_accumulates_gradients_with_add runs the programs of this graph
    seen.update(n.op for p in build_programs(shared_weight_graph(), "float64").programs.values() for n in p.nodes)
    from test_binary_ops import arithmetic_graph  # its programs are run against the interpreter there

    seen.update(n.op for p in build_programs(arithmetic_graph(), "float64").programs.values() for n in p.nodes)
    # tests/test_loss_variants.py runs every class loss variant (and log_softmax) against the op table
    from test_loss_variants import kernel_zoo, weighted_graph

    seen.update(n.op for n in kernel_zoo().nodes)
    seen.update(n.op for p in build_programs(weighted_graph("nll"), "float64").programs.values() for n in p.nodes)
    # tests/test_arch_tables.py runs the fused <loss>_and_grad ops (pass fuse_loss_grad) on the NumPy target
    from test_arch_tables import fused_graphs

    seen.update(n.op for g in fused_graphs() for n in g.nodes)
    from test_numpy_spatial import spatial_graphs  # tests/test_numpy_spatial.py runs these against the interpreter

    seen.update(n.op for make in spatial_graphs().values() for passes in (None, [])
                for p in build_programs(make(), "float64", passes).programs.values() for n in p.nodes)
    # tests/test_distributed.py trains a replicated model (one replica) like the plain one
    import distributed_scenarios
    from bngraph.distributed import Distributed, Local

    seen.update(n.op for p in distributed_scenarios.model(Distributed(Local())).programs.values() for n in p.nodes)
    missing = sorted(set(bg.OPS) - seen)
    assert not missing, f"ops never exercised by the codegen equivalence tests: {missing}"


# --------------------------------------------------------------------------------------------
# Gradients of the generated train_step against finite differences of its own loss
# --------------------------------------------------------------------------------------------


def finite_difference_check(model, X, y, rng, entries=4, h=1e-6, rtol=1e-5, atol=1e-7):
    prog = model.programs["train_step"]
    feeds = model._feeds(X, model._check_y(y, X.shape[0], "test"))
    values = {k: np.array(v) for k, v in {**model.params, **model.state}.items()}
    m = X.shape[0]
    out = run_generated(model.executable.module, "train_step", prog, feeds, values, m)
    grads = {k[5:]: np.array(v) for k, v in out.items() if k.startswith("grad.")}
    assert set(grads) == set(model.params)

    def loss_at(values):
        return float(run_generated(model.executable.module, "train_step", prog, feeds, values, m)["loss"])

    for p, gr in grads.items():
        flat = values[p].reshape(-1)
        for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = loss_at(values)
            flat[i] = old - h
            down = loss_at(values)
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert abs(gr.reshape(-1)[i] - fd) <= atol + rtol * abs(fd), (p, int(i), gr.reshape(-1)[i], fd)


@pytest.mark.parametrize("act, slope", [("tanh", 0.0), ("sigmoid", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 2.0),
                                        ("identity", 0.0)])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
@pytest.mark.parametrize("bn", [True, False])
def test_train_step_gradients_match_finite_differences(act, slope, loss, bn):
    rng = np.random.default_rng(0)
    g = bg.mlp([4, 6, 5, 3], activation=act, negative_slope=slope, batchnorm=bn, loss=loss, dtype="f64")
    model = bg.compile(g, dtype="float64", seed=2)
    X = rng.standard_normal((9, 4))
    y = rng.integers(0, 3, 9) if loss == "softmax_cross_entropy" else rng.uniform(0, 1, (9, 3))
    finite_difference_check(model, X, y, rng)


def test_leaky_relu_negative_slope_gradient_is_right_or_refused():
    """The activation derivative is computed from the output, np.where(y > 0, 1, slope): that is
    wrong for a negative slope (x < 0 gives y = slope*x > 0), so a negative slope must be refused
    (or its gradient computed some other way)."""
    rng = np.random.default_rng(0)
    try:
        g = bg.mlp([4, 6, 3], activation="leaky_relu", negative_slope=-0.5, batchnorm=False, dtype="f64")
    except bg.IRError as e:
        assert "negative_slope" in str(e)
        return
    model = bg.compile(g, dtype="float64")
    X = rng.standard_normal((9, 4))
    finite_difference_check(model, X, rng.integers(0, 3, 9), rng, entries=24)
