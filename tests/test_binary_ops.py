"""The elementwise arithmetic ops (add, sub, mul, div, neg) through every layer, and what the ONNX
backend adapter does with them: data-by-data Mul/Sub/Div, integer data, and Identity as an alias.

* A graph using all five, written in the IR text, parses, prints back and verifies; bad shapes are
  one clear error naming the node, what was expected and what it got.
* Its gradients (autodiff of the whole graph, float64) match central finite differences of the
  interpreted loss and PyTorch's autograd on the same network; the NumPy target's programs equal
  the interpreter's (train step gradients included), and the CUDA target's kernels (emulated) the NumPy target's
  numbers in every program. (nvcc compiles its kernels: tests/test_cuda_target.py.)
* ONNX: Mul/Sub/Div of two data tensors, integer data (exact below 2**53, ONNX's truncation and
  wrap-around, clear errors past it), pass-through outputs of any type, Identity inside a graph.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bngraph as bg
from bngraph.autodiff import grad_graph

from interop_support import need
from test_codegen import PROGRAMS, assert_matches_interpreter
from test_cuda_target import _compare_programs, emulated

ARITH_IR = """\
graph arith(%x: f64[5,m], %t: f64[3,m]) {
  param %fa.W: f64[4,5]
  param %fb.W: f64[4,5]
  param %fs.W: f64[4,5]
  param %out.W: f64[3,4]
  param %out.b: f64[3]
  %fa: f64[4,m] = matmul %fa.W, %x
  %fb: f64[4,m] = matmul %fb.W, %x
  %fs: f64[4,m] = matmul %fs.W, %x
  %s: f64[4,m] = sigmoid %fs
  %p: f64[4,m] = mul %fa, %fb
  %q: f64[4,m] = div %p, %s
  %r: f64[4,m] = sub %q, %fa
  %n: f64[4,m] = neg %fb
  %h: f64[4,m] = add %r, %n
  %out.matmul: f64[3,m] = matmul %out.W, %h
  %out: f64[3,m] = bias_add %out.matmul, %out.b
  %loss: f64[] = mse %out, %t
  return loss=%loss
}
"""


def arithmetic_graph(dtype: str = "f64") -> bg.Graph:
    """``out = W (fa*fb/sigmoid(fs) - fa - fb) + b``, mse: every arithmetic op, fa read three times
    (its gradients summed by add), a divisor in (0, 1)."""
    g = bg.Graph("arith", dtype)
    x, t = g.input("x", 5), g.input("t", 3)
    fa, fb = g.matmul(x, 4, bias=False, name="fa"), g.matmul(x, 4, bias=False, name="fb")
    s = g.sigmoid(g.matmul(x, 4, bias=False, name="fs"), name="s")
    p = g.add_node("mul", [fa, fb], {}, ["p"]).out
    q = g.add_node("div", [p, s], {}, ["q"]).out
    r = g.add_node("sub", [q, fa], {}, ["r"]).out
    n = g.add_node("neg", [fb], {}, ["n"]).out
    h = g.add_node("add", [r, n], {}, ["h"]).out
    g.mse(g.matmul(h, 3, name="out"), t)
    return g


def _values(g, seed=0, m=7):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((5, m)), "t": rng.standard_normal((3, m))}
    values = {p.name: rng.standard_normal(p.type.shape) * 0.5 for p in g.params}
    return feeds, values


# ---- the IR ---------------------------------------------------------------------------------------


def test_the_ir_text_parses_prints_back_and_verifies():
    g = bg.parse(ARITH_IR)
    bg.verify(g)
    assert g == arithmetic_graph().build()
    assert bg.parse(str(g)) == g
    assert [n.op for n in g.nodes if n.op in ("add", "sub", "mul", "div", "neg")] == ["mul", "div", "sub", "neg", "add"]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_a_shape_mismatch_names_the_node_what_it_expected_and_got(op):
    g = bg.Graph("t")
    a, b = g.input("a", 4), g.input("b", 3)
    with pytest.raises(bg.IRError, match=rf"c: {op} operand b expected shape f32\[4,m\], got f32\[3,m\]"):
        g.add_node(op, [a, b], {}, ["c"])
    with pytest.raises(bg.IRError, match=rf"c: {op} takes 2 inputs, got 1"):
        g.add_node(op, [a], {}, ["c"])
    bad = bg.parse(ARITH_IR.replace("= neg %fb", "= neg %fb, %fa"))
    with pytest.raises(bg.VerifyError, match=r"node %n \(neg\): .*neg takes 1 inputs, got 2"):
        bg.verify(bad)


# ---- gradients ------------------------------------------------------------------------------------


def _interpreted_grads(g, feeds, values):
    out = bg.interpret(grad_graph(g), feeds, values)
    return {k[len("grad."):]: v for k, v in out.items() if k.startswith("grad.")}


def test_gradients_match_finite_differences_float64():
    g = arithmetic_graph()
    feeds, values = _values(g)
    grads = _interpreted_grads(g, feeds, values)
    assert set(grads) == {p.name for p in g.params}
    h = 1e-6
    for name, v in values.items():
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus, minus = {**values, name: v.copy()}, {**values, name: v.copy()}
            plus[name][idx] += h
            minus[name][idx] -= h
            fd[idx] = (bg.interpret(g, feeds, plus)["loss"] - bg.interpret(g, feeds, minus)["loss"]) / (2 * h)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-8, err_msg=name)


def test_gradients_match_pytorch():
    g = arithmetic_graph()
    feeds, values = _values(g, seed=1)
    grads = _interpreted_grads(g, feeds, values)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    x, t = torch.tensor(feeds["x"]), torch.tensor(feeds["t"])
    fa, fb, fs = P["fa.W"] @ x, P["fb.W"] @ x, P["fs.W"] @ x
    h = fa * fb / torch.sigmoid(fs) - fa + (-fb)
    loss = torch.nn.functional.mse_loss(P["out.W"] @ h + P["out.b"][:, None], t)
    loss.backward()
    np.testing.assert_allclose(bg.interpret(g, feeds, values)["loss"], loss.item(), rtol=1e-13)
    for k, p in P.items():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-11, atol=1e-13, err_msg=k)


class _Record:
    lr = 0.0

    def step(self, params, grads):
        self.grads = {k: np.array(v, copy=True) for k, v in grads.items()}


def test_the_numpy_target_gives_the_interpreters_gradients():
    g = arithmetic_graph()
    feeds, values = _values(g, seed=2)
    model = bg.compile(g, dtype="float64")
    model.set_params(values)
    rec = _Record()
    loss = model.train_step(feeds["x"].T, feeds["t"].T, rec)
    assert loss == pytest.approx(bg.interpret(g, feeds, values)["loss"], rel=1e-13)
    for k, v in _interpreted_grads(g, feeds, values).items():
        np.testing.assert_allclose(rec.grads[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
    for op, ufunc in (("sub", "subtract"), ("mul", "multiply"), ("div", "divide"), ("neg", "negative")):
        assert f"np.{ufunc}(" in model.source, op


@pytest.mark.parametrize("passes", [None, []], ids=["default-passes", "no-passes"])
def test_every_generated_program_equals_the_interpreter(passes):
    model = bg.compile(arithmetic_graph(), dtype="float64", passes=passes)
    rng = np.random.default_rng(3)
    for name in PROGRAMS:
        assert_matches_interpreter(model.executable.module, name, model.programs[name], rng)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_the_cuda_kernels_emulated_equal_the_numpy_target(dtype, tol):
    g = arithmetic_graph("f64" if dtype == "float64" else "f32")
    ref, emu = bg.compile(g, dtype=dtype, seed=1), emulated(g, dtype=dtype, seed=1)
    for op, expr in (("sub", "a[i] - b[i]"), ("mul", "a[i] * b[i]"), ("div", "a[i] / b[i]"), ("neg", "-a[i]")):
        assert f"c[i] = {expr};" in emu.source, op
    _compare_programs(ref, emu, rtol=tol, atol=tol)


def test_exported_arithmetic_runs_in_onnxruntime():
    need("onnx")
    ort = need("onnxruntime")
    g = bg.Graph("arith1", "f64")
    x = g.input("x", 5)
    fa, fb = g.matmul(x, 4, name="fa"), g.matmul(x, 4, name="fb")
    s = g.sigmoid(fb, name="s")
    h = g.add_node("sub", [g.add_node("div", [g.add_node("mul", [fa, fb], {}, ["p"]).out, s], {}, ["q"]).out,
                           g.add_node("neg", [fa], {}, ["n"]).out], {}, ["h"]).out
    g.mse(g.matmul(h, 3, name="out"), g.input("y", 3))
    model = bg.compile(g, dtype="float64", seed=3)
    X = np.random.default_rng(4).standard_normal((6, 5))
    proto = bg.to_onnx(model)
    assert {"Mul", "Div", "Sub", "Neg"} <= {n.op_type for n in proto.graph.node}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": X})[0], model.forward(X), rtol=1e-12, atol=1e-12)


# ---- ONNX ---------------------------------------------------------------------------------------


def _onnx():
    onnx = need("onnx")
    from onnx import TensorProto, helper

    return onnx, TensorProto, helper


def _model(nodes, inputs, outputs, elem=None, inits=()):
    """inputs/outputs: [(name, shape)] or [(name, shape, elem type)]."""
    onnx, T, helper = _onnx()
    elem = T.FLOAT if elem is None else elem
    def vi(spec):
        return helper.make_tensor_value_info(spec[0], spec[2] if len(spec) > 2 else elem, list(spec[1]))

    g = helper.make_graph(nodes, "g", [vi(s) for s in inputs], [vi(s) for s in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _rep(model, **kwargs):
    from bngraph.interop.onnx_backend import BngraphBackend

    return BngraphBackend.prepare(model, **kwargs)


TARGETS = [{}, {"target": "cuda", "target_device": "emulator"}]  # prepare(...) keywords


@pytest.mark.parametrize("op, fn", [("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide)])
@pytest.mark.parametrize("target", TARGETS, ids=["numpy", "cuda-emulated"])
def test_onnx_data_by_data_ops(op, fn, target):
    _, _, helper = _onnx()
    model = _model([helper.make_node(op, ["x", "y"], ["z"], name="n")],
                   [("x", ("N", 3, 2)), ("y", ("N", 3, 2))], [("z", ("N", 3, 2))])
    imported = bg.from_onnx(model, loss=None)
    assert [n.op for n in imported.nodes] == [op.lower()]
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 3, 2)).astype(np.float32), rng.uniform(1, 2, (4, 3, 2)).astype(np.float32)
    (z,) = _rep(model, **target).run([x, y])
    np.testing.assert_allclose(z, fn(x, y), rtol=1e-6)
    assert z.shape == x.shape and z.dtype == np.float32


def test_onnx_constant_minus_data_is_neg_then_bias():
    _, _, helper = _onnx()
    from onnx import numpy_helper

    c = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "c")
    model = _model([helper.make_node("Sub", ["c", "x"], ["z"], name="n")], [("x", ("N", 3))], [("z", ("N", 3))],
                   inits=[c])
    imported = bg.from_onnx(model, loss=None)
    assert [n.op for n in imported.nodes] == ["neg", "bias_add"]
    assert imported.original_names["n.b"] == "c"
    x = np.random.default_rng(6).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(_rep(model).run([x])[0], np.array([1, 2, 3], np.float32) - x, rtol=1e-6)


def test_onnx_data_by_data_shapes_must_agree():
    _, _, helper = _onnx()
    from bngraph.interop.onnx_read import UnsupportedNode

    model = _model([helper.make_node("Mul", ["x", "y"], ["z"], name="prod")],
                   [("x", ("N", 3, 2)), ("y", ("N", 1, 2))], [("z", ("N", 3, 2))])  # ONNX broadcasts y
    with pytest.raises(UnsupportedNode, match=r"ONNX node 'prod' \(Mul\): operands with features \(3, 2\) and "
                                              r"\(1, 2\): an elementwise Mul of two data tensors needs one shape"):
        bg.from_onnx(model, loss=None)


INT_CASES = [("Add", np.int8, [100, -100, 5], [100, -100, 7], [-56, 56, 12]),  # wraps like NumPy's int8
             ("Sub", np.uint8, [3, 200, 0], [10, 100, 1], [249, 100, 255]),
             ("Mul", np.uint16, [300, 2, 7], [300, 3, 9], [24464, 6, 63]),
             ("Div", np.int32, [-7, 7, -7, 7, 0], [2, 2, -2, -2, 5], [-3, 3, 3, -3, 0]),  # truncates toward zero
             ("Div", np.int64, [2**53 - 1, 2**53 - 2, -(2**52) - 1], [2**52 + 1, 3, 2**52], [1, 3002399751580330, -1]),
             ("Sub", np.uint64, [0, 5, 2**53 - 1], [1, 5, 0], [2**64 - 1, 0, 2**53 - 1])]


@pytest.mark.parametrize("op, dtype, a, b, want", INT_CASES, ids=[f"{c[0]}-{np.dtype(c[1]).name}" for c in INT_CASES])
@pytest.mark.parametrize("target", TARGETS, ids=["numpy", "cuda-emulated"])
def test_onnx_integer_data_is_exact_and_follows_onnx(op, dtype, a, b, want, target):
    onnx, T, helper = _onnx()
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    n = len(a)
    model = _model([helper.make_node(op, ["a", "b"], ["c"], name="n")], [("a", (n,)), ("b", (n,))], [("c", (n,))], elem)
    a, b = np.array(a, dtype), np.array(b, dtype)
    (c,) = _rep(model, **target).run([a, b])
    assert c.dtype == dtype
    np.testing.assert_array_equal(c, np.array(want, dtype=np.int64 if dtype != np.uint64 else np.uint64).astype(dtype))
    if op != "Div":  # NumPy's own fixed-width arithmetic agrees
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(c, {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b))


def test_onnx_integers_past_2_53_and_division_by_zero_are_clear_errors():
    onnx, T, helper = _onnx()
    add = _model([helper.make_node("Add", ["a", "b"], ["c"])], [("a", (2,)), ("b", (2,))], [("c", (2,))], T.INT64)
    rep = _rep(add)
    with pytest.raises(bg.DataError, match=r"input 'a': the integer 9007199254740992 has magnitude >= 2\*\*53"):
        rep.run([np.array([2**53, 0], np.int64), np.array([1, 1], np.int64)])
    with pytest.raises(bg.DataError, match=r"output 'c' \(Add of integers\): the result 9007199254740992(\.0)? is not "
                                           r"an integer of magnitude < 2\*\*53"):
        rep.run([np.array([2**52, 0], np.int64), np.array([2**52, 1], np.int64)])
    mul = _model([helper.make_node("Mul", ["a", "b"], ["c"])], [("a", (1,)), ("b", (1,))], [("c", (1,))], T.UINT64)
    with pytest.raises(bg.DataError, match=r"output 'c' \(Mul of integers\)"):
        _rep(mul).run([np.array([2**30], np.uint64), np.array([2**30], np.uint64)])  # 2**60: past float64's integers
    div = _model([helper.make_node("Div", ["a", "b"], ["c"])], [("a", (1,)), ("b", (1,))], [("c", (1,))], T.INT32)
    with pytest.raises(bg.DataError, match=r"a division by zero gives inf or nan"):
        _rep(div).run([np.array([1], np.int32), np.array([0], np.int32)])


def test_onnx_integer_graphs_that_round_inside_are_refused():
    onnx, T, helper = _onnx()
    from onnx import numpy_helper

    from bngraph.interop.onnx_read import UnsupportedNode

    nodes = [helper.make_node("Div", ["a", "b"], ["q"], name="d"), helper.make_node("Mul", ["q", "b"], ["c"], name="m")]
    chain = _model(nodes, [("a", (2,)), ("b", (2,))], [("c", (2,))], T.INT32)
    with pytest.raises(UnsupportedNode, match=r"ONNX node 'm' \(Mul\): integer operand 'q' is not an integer graph "):
        _rep(chain)
    both = _model(nodes, [("a", (2,)), ("b", (2,))], [("q", (2,)), ("c", (2,))], T.INT32)
    with pytest.raises(UnsupportedNode, match=r"'d' \(Div\): its integer result is read by node 'm' \(Mul\)"):
        _rep(both)
    const = _model([helper.make_node("Add", ["a", "k"], ["c"], name="plus")], [("a", (2,))], [("c", (2,))], T.INT32,
                   inits=[numpy_helper.from_array(np.array([1, 2], np.int32), "k")])
    with pytest.raises(UnsupportedNode, match=r"'plus' \(Add\): integer operand 'k' is not an integer graph input"):
        _rep(const)


def test_onnx_identity_is_an_alias_and_outputs_that_are_inputs_pass_through():
    onnx, T, helper = _onnx()
    # an int8 input returned through two Identity nodes, and a float output computed beside it
    model = _model([helper.make_node("Identity", ["k"], ["k1"]), helper.make_node("Identity", ["k1"], ["k2"]),
                    helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("Relu", ["x1"], ["r"]),
                    helper.make_node("Identity", ["r"], ["y"])],
                   [("k", (3,), T.INT8), ("x", ("N", 4))], [("k2", (3,), T.INT8), ("y", ("N", 4)), ("x1", ("N", 4))])
    rep = _rep(model)
    assert [n.op for n in rep.imported.nodes] == ["relu"]  # Identity adds no IR node
    k, x = np.array([-128, 0, 127], np.int8), np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    k2, y, x1 = rep.run([k, x])
    assert k2.dtype == np.int8 and np.array_equal(k2, k) and k2 is not k
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(x1, x)
    seq = [np.ones(2, np.float32), np.zeros(3, np.float32)]  # a sequence: never imported, returned as fed
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(T.FLOAT, None))
    g = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g",
                          [helper.make_value_info("s", seq_type)], [helper.make_value_info("t", seq_type)])
    seq_rep = _rep(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert seq_rep.program is None and seq_rep.run([seq])[0] is seq


def test_identity_inside_a_graph_does_not_fold_a_scale_into_a_shared_matmul():
    """z = x W; y = Identity(z) * 2; outputs y and Relu(z): the scale must not change W for Relu."""
    _, T, helper = _onnx()
    from onnx import numpy_helper

    W = numpy_helper.from_array(np.random.default_rng(8).standard_normal((4, 3)).astype(np.float32), "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    model = _model([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Identity", ["z"], ["zi"]),
                    helper.make_node("Mul", ["zi", "two"], ["y"]), helper.make_node("Relu", ["z"], ["r"])],
                   [("x", ("N", 4))], [("y", ("N", 3)), ("r", ("N", 3))], inits=[W, two])
    x = np.random.default_rng(9).standard_normal((5, 4)).astype(np.float32)
    y, r = _rep(model).run([x])
    z = x @ numpy_helper.to_array(W)
    np.testing.assert_allclose(y, 2 * z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r, np.maximum(z, 0), rtol=1e-5, atol=1e-6)
