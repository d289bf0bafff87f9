"""Every target lowers through a table; C-like targets share one table of elementwise math.

* Every target's activation table has exactly the op table's activations (NumPy's code table, the
  C-style base and the CUDA dialect, and any registered target whose renderer has a ``language``).
* An op with a template but no row in the CUDA table is one clear error naming the op, the node
  and the target; a CUDA row that is not a kernel or host row is one too; a kernel row needs a spec.
* A new elementwise op registered in this file alone (an op-table entry with ``bngraph.ops.register``,
  one lowering row per target over the existing templates) trains on the NumPy target and on the
  CUDA emulator, and both match the float64 reference (the op table's semantics, interpreted).
* ``fuse_loss_grad``: golden before/after IR; the fused programs compute what the pairs computed
  (interpreter, and the NumPy target's lowering of the fused ops, every class loss variant); a loss
  read before its gradient stays apart; the CUDA target prints the fused node above its kernel.
"""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import Lowering, LoweringError, TARGETS, get_target
from bngraph.backends.cstyle import CStyleLanguage
from bngraph.backends.cuda_target.lowerings import CUDA, HostCode, Kernel, pointwise
from bngraph.backends.numpy_target import lowerings as numpy_lowerings
from bngraph.backends.numpy_target.runtime import load_module
from bngraph.compiler import build_programs
from bngraph.ops import OPS, OpDef, register
from bngraph.passes import PASSES, fuse_loss_grad

from conftest import random_values
from bngraph.passcheck import check_roundtrip
from test_codegen import run_generated
from test_cuda_target import _compare_programs, emulated
from test_loss_variants import kernel_zoo
from test_passes import GOLDEN, _compare_golden


# ---- activation tables ------------------------------------------------------------------------------


def test_every_targets_activation_keys_equal_the_op_tables():
    expected = set(bg.ACTIVATIONS)
    assert set(numpy_lowerings.ACTIVATIONS) == expected, "the NumPy target's activation code table"
    assert set(CStyleLanguage.activations) == expected, "the C-style base (bngraph/backends/cstyle.py)"
    assert set(CUDA.activations) == expected, "the CUDA dialect"
    for name, target in TARGETS.items():
        language = getattr(target.renderer, "language", None)
        if language is not None:
            assert set(language.activations) == expected, f"target {name}"
        for act in expected:
            assert act in target.renderer.lowerings, f"target {name} has no row for activation {act}"


def test_sigmoid_is_written_once_for_c_targets():
    """The activation and the BCE gradient share one sigmoid (elements vs accumulators)."""
    assert CUDA.activation("sigmoid", "x") == (
        "(x >= (real)0 ? (real)1 / ((real)1 + exp(-x)) : exp(x) / ((real)1 + exp(x)))")
    assert CUDA.loss("sigmoid_bce")[1] == "(p >= 0 ? 1 / (1 + exp(-p)) : exp(p) / (1 + exp(p))) - t"


def test_a_dialect_overrides_only_types_and_intrinsics():
    class Fast(CStyleLanguage):
        intrinsics = {**CStyleLanguage.intrinsics, "exp": "__expf", "tanh": "tanhf"}

    assert Fast().activation("tanh", "x") == "tanhf(x)"
    assert "__expf(-p)" in Fast().loss("sigmoid_bce")[1]
    assert Fast().code("mul", "a[i]", "b[i]") == CUDA.code("mul", "a[i]", "b[i]") == "a[i] * b[i]"
    with pytest.raises(LoweringError, match="Fast.code_for_op has no row for op softplus"):
        Fast().code("softplus", "x")


# ---- a new elementwise op, registered here alone ------------------------------------------------------


def _square_grad(emit, node, cts):
    # y = x*x:  dx = dy * (x + x)
    x = node.inputs[0]
    return [emit("mul", [cts[0], emit("add", [x, x], {})[0]], {})[0]]


SQUARE = OpDef("square", "y = x*x  (elementwise; registered by tests/test_arch_tables.py)",
               lambda where, types, attrs: (types[0],), lambda ins, attrs: (ins[0] * ins[0],), _square_grad)
ROWS = {"numpy": Lowering("ufunc.j2", context=lambda node, ins: {"ufunc": "square"}),  # np.square(x, out=...)
        "cuda": pointwise(lambda L, x: L.code("mul", x, x))}  # c[i] = a[i] * a[i]


@pytest.fixture
def square_op(monkeypatch):
    """The op-table entry and one row per target, removed again afterwards."""
    register(SQUARE)
    try:
        for target, row in ROWS.items():
            monkeypatch.setitem(get_target(target).renderer.lowerings, "square", row)
        yield SQUARE
    finally:
        OPS.pop("square")


def square_graph(dtype="f64") -> bg.Graph:
    g = bg.Graph("sq", dtype)
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.batchnorm(g.matmul(x, 6, bias=False, name="fc1"), name="bn1")
    h = g.add_node("square", [h], {}, ["sq1"]).out
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    return g


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def test_a_new_elementwise_op_trains_on_numpy_and_the_emulator_like_the_reference(square_op):
    X, y = _data()
    ref_model = bg.compile(square_graph(), dtype="float64", seed=3)
    params = {k: np.array(v) for k, v in ref_model.params.items()}
    state = {k: np.array(v) for k, v in ref_model.state.items()}
    prog, lr = ref_model.programs["train_step"], 0.05
    assert "square" in {n.op for n in prog.nodes}
    models = {"numpy": ref_model, "emulator": emulated(square_graph(), seed=3)}
    sgd = {name: bg.optim.SGD(lr=lr) for name in models}
    for start in range(0, 40, 10):  # four steps of 10 examples
        xb, yb = X[start:start + 10], y[start:start + 10]
        out = bg.interpret(prog, {"x": xb.T, "y": yb}, {**params, **state})  # the float64 reference
        params = {k: v - lr * out[f"grad.{k}"] for k, v in params.items()}
        state = {k: out[f"state.{k}"] for k in state}
        for name, model in models.items():
            loss = model.train_step(xb, yb, optimizer=sgd[name])
            np.testing.assert_allclose(loss, out["loss"], rtol=1e-12, err_msg=name)
    for name, model in models.items():
        for k, v in params.items():
            np.testing.assert_allclose(model.runtime.to_numpy(model.params[k]), v, rtol=1e-11, atol=1e-13,
                                       err_msg=f"{name}: {k}")
        for k, v in state.items():
            np.testing.assert_allclose(model.runtime.to_numpy(model.state[k]), v, rtol=1e-11, atol=1e-13,
                                       err_msg=f"{name}: {k}")
    _compare_programs(models["numpy"], models["emulator"], rtol=1e-12, atol=1e-12)
    cu = bg.emit(square_graph(), target="cuda", dtype="float64")["sq_cuda.cu"]
    assert "// %sq1: f64[6,m] = square %bn1\n" in cu and "c[i] = a[i] * a[i];" in cu


def test_an_op_with_a_template_and_no_cuda_row_is_one_clear_error(square_op, monkeypatch):
    monkeypatch.delitem(get_target("cuda").renderer.lowerings, "square")  # elementwise.cu.j2 is there; the row is not
    with pytest.raises(LoweringError, match=r"target cuda has no lowering for op square \(node %sq1\)"):
        bg.emit(square_graph(), target="cuda")
    bg.emit(square_graph(), target="numpy")  # the NumPy target has its row


def test_every_cuda_row_is_a_kernel_or_host_code():
    """So that an op with a row is an op the renderer can lower (the op-completeness test of
    tests/test_targets.py checks that every op has a row)."""
    for op, row in get_target("cuda").renderer.lowerings.items():
        assert isinstance(row, (Kernel, HostCode)), f"cuda row of {op}: {type(row).__name__}"


def test_a_cuda_row_must_be_a_kernel_or_host_code(square_op, monkeypatch):
    monkeypatch.setitem(get_target("cuda").renderer.lowerings, "square", Lowering("elementwise.cu.j2"))
    with pytest.raises(LoweringError, match=r"target cuda: the row of op square \(node %sq1\) is a Lowering; "
                                            r"a cuda row is a Kernel or HostCode"):
        bg.emit(square_graph(), target="cuda")
    with pytest.raises(TypeError, match=r"a CUDA kernel row \(elementwise.cu.j2\) needs a spec"):
        Kernel("elementwise.cu.j2")


# ---- fuse_loss_grad ----------------------------------------------------------------------------------


def _train_step(loss="mse", dtype="float32"):
    return build_programs(bg.mlp([3, 4, 2], name="mlp", loss=loss), dtype).programs["train_step"]


def test_fuse_loss_grad_golden():
    before = _train_step()
    after = fuse_loss_grad(before).graph
    _compare_golden(GOLDEN / "fuse_loss_grad.before.ir", check_roundtrip(before))
    _compare_golden(GOLDEN / "fuse_loss_grad.after.ir", check_roundtrip(after))
    assert bg.parse((GOLDEN / "fuse_loss_grad.after.ir").read_text()) == after
    assert PASSES["fuse_loss_grad"] is fuse_loss_grad


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
def test_fuse_loss_grad_pairs_each_loss_and_keeps_the_numbers(loss):
    prog = _train_step(loss, "float64")
    res = fuse_loss_grad(prog)
    ops = [n.op for n in res.graph.nodes]
    assert f"{loss}_and_grad" in ops and loss not in ops and f"{loss}_grad" not in ops
    assert res.changes == (f"fused %loss ({loss}) and %out.grad ({loss}_grad) into one node: "
                           f"loss, out.grad = {loss}_and_grad",)
    assert fuse_loss_grad(res.graph).graph is res.graph  # idempotent
    feeds, values = random_values(prog, np.random.default_rng(0), m=5)
    if loss == "sigmoid_bce":
        feeds["y"] = np.random.default_rng(1).uniform(0, 1, feeds["y"].shape)
    a, b = bg.interpret(prog, feeds, values), bg.interpret(res.graph, feeds, values)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    _same_on_numpy(prog, res.graph, feeds, values, 5)


def _same_on_numpy(plain, fused, feeds, values, m):
    """The NumPy target's code of the fused graph (loss_and_grad.j2) computes the same bits."""
    renderer = get_target("numpy").renderer
    outs = []
    for g in (plain, fused):
        rendered = renderer.render({"forward": g}, g.dtype, g.name)
        outs.append(run_generated(load_module(rendered.sources, g.name), "forward", g, feeds, values, m))
    assert set(outs[0]) == set(outs[1])
    for k in outs[0]:
        np.testing.assert_array_equal(np.asarray(outs[1][k]), np.asarray(outs[0][k]), err_msg=k)


def test_every_class_loss_variant_fused_on_numpy_equals_the_pair():
    zoo = kernel_zoo()
    fused = fuse_loss_grad(zoo).graph
    # four nodes per variant (a loss, a gradient, a loss and its gradient), then log_softmax and its gradient
    assert sum(n.op.endswith("_and_grad") for n in fused.nodes) == (len(zoo.nodes) - 2) // 4
    rng = np.random.default_rng(2)
    feeds, values = random_values(zoo, rng, m=6)
    feeds["yn"] = np.where(rng.random(6) < 0.3, -1, feeds["y"])
    _same_on_numpy(zoo, fused, feeds, values, 6)


def test_a_loss_read_before_its_gradient_stays_apart():
    prog = _train_step()
    seed = "  %loss.grad: f32[] = fill"
    text = str(prog).replace(seed, "  %twice: f32[] = add %loss, %loss\n" + seed)
    text = text.replace("return loss=%loss,", "return loss=%loss, twice=%twice,")
    g = bg.parse(text)
    res = fuse_loss_grad(g)
    assert res.graph is g and res.changes == ()
    assert res.notes == ("kept %loss and %out.grad apart: %twice (add) reads the loss before the gradient",)


def fused_graphs() -> list:
    """Graphs holding every <loss>_and_grad op, run on the NumPy target above (for the coverage
    test of tests/test_codegen.py)."""
    return [fuse_loss_grad(kernel_zoo()).graph,
            *(fuse_loss_grad(_train_step(loss, "float64")).graph for loss in ("mse", "sigmoid_bce"))]
