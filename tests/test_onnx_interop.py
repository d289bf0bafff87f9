"""ONNX import and export: onnxruntime is the oracle for both directions, and crafted files do not
get past the importer's checks (names cannot inject code, absurd sizes are refused before
anything is allocated, external data is refused)."""
from __future__ import annotations

import ast
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import bngraph as bg
from bngraph.ir import NAME_PATTERN
from interop_support import need

onnx = need("onnx")
ort = need("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bngraph.interop.onnx_backend import BngraphBackend  # noqa: E402
from bngraph.interop.names import UnsafeModel  # noqa: E402
from bngraph.interop.onnx_read import UnsupportedNode  # noqa: E402


def _data(n=48, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


def _trained(activation="relu", dtype="float32", widths=(6, 8, 5, 3)):
    X, y = _data()
    model = bg.compile(bg.mlp(list(widths), activation=activation), dtype=dtype, seed=1)
    model.fit(X.astype(dtype), y, optimizer=bg.optim.Adam(1e-2), epochs=3, batch_size=8, verbose=False)
    return model, X.astype(dtype)


def _ort(model_proto, feeds):
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_export_matches_model_forward_in_onnxruntime(tmp_path, activation, fold_bn):
    model, X = _trained(activation)
    path = tmp_path / "m.onnx"
    proto = bg.to_onnx(model, path, fold_bn=fold_bn)
    ops = [n.op_type for n in proto.graph.node]
    assert ("BatchNormalization" in ops) is not fold_bn
    (out,) = _ort(onnx.load(str(path)), {"x": X})
    np.testing.assert_allclose(out, model.forward(X, training=False), rtol=1e-5, atol=1e-5)


def test_export_float64_and_probabilities():
    model, X = _trained("tanh", dtype="float64")
    proto = bg.to_onnx(model, probabilities=True)
    assert proto.graph.output[0].name == "probabilities"
    (p,) = _ort(proto, {"x": X})
    logits = model.forward(X)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-10)


def test_export_names_are_readable_and_nodes_carry_their_ir_line():
    model, _ = _trained()
    proto = bg.to_onnx(model)
    inits = {t.name for t in proto.graph.initializer}
    assert {"fc1.W", "bn1.gamma", "bn1.running_var", "out.W", "out.b"} <= inits
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    assert bn.doc_string.startswith("%act1: f32[8,m] = batchnorm_act[act=relu")
    assert helper.get_attribute_value(bn.attribute[1]) == pytest.approx(0.9)  # ONNX momentum: weight of the old value


def test_round_trip_import_export_import():
    model, X = _trained("leaky_relu")
    imported = bg.from_onnx(bg.to_onnx(model, probabilities=True))
    assert imported.has_output("loss") and imported.loss_node.op == "softmax_cross_entropy"  # the Softmax head
    again = imported.compile()
    np.testing.assert_allclose(again.forward(X), model.forward(X), rtol=1e-6, atol=1e-6)
    y = _data()[1]
    before = again.evaluate(X, y)["loss"]
    again.fit(X, y, optimizer=bg.optim.SGD(0.05), epochs=5, batch_size=16, verbose=False)
    assert again.evaluate(X, y)["loss"] < before  # training goes on in bngraph
    # the exported file keeps the names the import kept
    names = {t.name for t in bg.to_onnx(again).graph.initializer}
    assert "out.W" in names and "bn1.gamma" in names


def _hand_model(momentum=0.8):
    """x -> (x - mean)/std -> Gemm -> *2 -> BN -> Relu -> MatMul + bias -> Softmax, as exporters write it."""
    rng = np.random.default_rng(3)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {"mean": f32(rng.normal(size=4)), "std": f32(rng.uniform(0.5, 2, 4)), "W1": f32(rng.normal(size=(5, 4))),
             "b1": f32(rng.normal(size=5)), "two": f32([2.0]), "gamma": f32(rng.uniform(0.5, 1.5, 5)),
             "beta": f32(rng.normal(size=5)), "rm": f32(rng.normal(size=5)), "rv": f32(rng.uniform(0.5, 2, 5)),
             "W2": f32(rng.normal(size=(5, 3))), "b2": f32(rng.normal(size=3))}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("Div", ["c", "std"], ["n"]),
             helper.make_node("Gemm", ["n", "W1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Mul", ["h", "two"], ["h2"]),
             helper.make_node("BatchNormalization", ["h2", "gamma", "beta", "rm", "rv"], ["bn"], momentum=momentum,
                              epsilon=1e-3, name="bn1"),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["z"]),
             helper.make_node("Add", ["z", "b2"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])]
    g = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_import_matches_onnxruntime_on_a_hand_written_model():
    proto = _hand_model()
    X = np.random.default_rng(4).normal(size=(7, 4)).astype(np.float32)
    (expected,) = _ort(proto, {"x": X})
    (got,) = BngraphBackend.prepare(proto).run([X])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    model = bg.from_onnx(proto).compile()  # the head: forward gives logits, softmax of them is the file's output
    logits = model.forward(X)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), expected, rtol=1e-5, atol=1e-6)


def test_import_folds_a_scale_into_the_gemm_and_converts_momentum():
    imported = bg.from_onnx(_hand_model(momentum=0.8))
    ops = [n.op for n in imported.nodes]
    assert ops.count("matmul") == 3  # Div by std: a diagonal matmul; Mul by 2 folded into fc1; the MatMul
    (bn,) = [n for n in imported.nodes if n.op == "batchnorm"]
    assert bn.attr["momentum"] == pytest.approx(0.2) and bn.attr["eps"] == 1e-3  # 1 - ONNX's 0.8; 1e-3 exactly
    assert imported.original_names["fc1.W"] == "W1" and imported.original_names["bn1.gamma"] == "gamma"


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_over_an_inner_axis_of_4d_data_is_a_layout_change_at_the_boundary(op):
    """Softmax over axis 2 of (N, 3, 4, 5): the 4 values of axis 2 are the IR's features, the other
    axes the batch in order, (4, N*3*5); the output goes back to (N, 3, 4, 5)."""
    proto = _single(op, ["x"], ["y"], attrs={"axis": 2}, shape=("N", 3, 4, 5), out_shape=("N", 3, 4, 5))
    X = (3 * np.random.default_rng(5).normal(size=(2, 3, 4, 5))).astype(np.float32)
    rep = BngraphBackend.prepare(proto)
    (spec,) = rep.imported.inputs_spec
    assert (spec.kind, spec.axis, spec.fshape) == ("channels", 2, (4,))
    assert rep.imported.build().value("x").type.shape[0] == 4  # the softmax axis is the IR's features axis
    a, batch = spec.to_ir(X, np.float32)
    np.testing.assert_array_equal(a, np.moveaxis(X, 2, 0).reshape(4, 30))
    assert batch == (2, 3, 5)
    (got,) = rep.run([X])
    (expected,) = _ort(proto, {"x": X})
    assert got.shape == X.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, _ort(_single(op, ["x"], ["y"], attrs={"axis": 3}, shape=("N", 3, 4, 5),
                                             out_shape=("N", 3, 4, 5)), {"x": X})[0], atol=1e-3)  # not the last axis
    with pytest.raises(bg.IRError, match=r"expected shape \(N, 3, 4, 5\)|4 on axis 2"):
        rep.run([X[:, :, :3]])


def test_softmax_before_opset_13_normalizes_the_flattened_trailing_axes():
    """Opset < 13: Softmax(axis=1) of (N, 3, 4) is a softmax over the 12 values of each example
    (ONNX's old coercion to 2-D): Flatten's layout at the boundary, the output back to (N, 3, 4)."""
    proto = _single("Softmax", ["x"], ["y"], attrs={"axis": 1}, shape=("N", 3, 4), out_shape=("N", 3, 4))
    proto.opset_import[0].version = 11
    X = np.random.default_rng(6).normal(size=(2, 3, 4)).astype(np.float32)
    rep = BngraphBackend.prepare(proto)
    (spec,) = rep.imported.inputs_spec
    assert (spec.kind, spec.axis, spec.fshape) == ("flat", 1, (3, 4))
    (got,) = rep.run([X])
    e = np.exp(X.reshape(2, 12) - X.reshape(2, 12).max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, (e / e.sum(axis=1, keepdims=True)).reshape(2, 3, 4), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, _ort(proto, {"x": X})[0], rtol=1e-5, atol=1e-7)


def test_softmax_over_channels_after_spatial_batchnorm_and_a_computed_axis_refused():
    """A computed value: the softmax axis must be its features axis (the channels of spatial batch
    norm's layout); any other axis would need a layout change in the middle of the graph."""
    rng = np.random.default_rng(7)
    bn = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in
          {"s": rng.uniform(0.5, 1.5, 3), "b": rng.normal(size=3), "m": rng.normal(size=3),
           "v": rng.uniform(0.5, 2, 3)}.items()]
    proto = _single("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], inits=bn, shape=("N", 3, 4, 5),
                    out_shape=("N", 3, 4, 5))
    proto.graph.node.append(helper.make_node("Softmax", ["h"], ["y"], axis=1, name="sm"))
    proto.graph.output[0].name = "y"
    X = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    (got,) = BngraphBackend.prepare(proto).run([X])
    np.testing.assert_allclose(got, _ort(proto, {"x": X})[0], rtol=1e-5, atol=1e-6)
    proto.graph.node[1].attribute[0].i = 2
    with pytest.raises(UnsupportedNode, match=r"'sm' \(Softmax\): axis=2: a softmax over axis 2 of a computed "
                                              r"value whose features are outside axes \(1,\).*graph inputs only"):
        bg.from_onnx(proto, loss=None)


def _single(op_type, inputs, outputs, *, attrs=None, inits=(), shape=("N", 4), out_shape=("N", 4), name="n"):
    node = helper.make_node(op_type, list(inputs), list(outputs), name=name, **(attrs or {}))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(out_shape)) for o in outputs],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_unsupported_nodes_name_the_node_the_op_and_why():
    with pytest.raises(UnsupportedNode, match=r"ONNX node 'erf1' \('Erf'\): not supported; bngraph imports"):
        bg.from_onnx(_single("Erf", ["x"], ["y"], name="erf1"))
    relu_after_softmax = _single("Softmax", ["x"], ["s"])
    relu_after_softmax.graph.node.append(helper.make_node("Relu", ["s"], ["r"], name="r1"))
    relu_after_softmax.graph.output[0].name = "r"
    with pytest.raises(UnsupportedNode, match=r"'r1' \(Relu\): reads the output of a softmax"):
        bg.from_onnx(relu_after_softmax)
    with pytest.raises(UnsupportedNode, match="alpha=-0.5"):
        bg.from_onnx(_single("LeakyRelu", ["x"], ["y"], attrs={"alpha": -0.5}))


EVIL = "x\"'\n__import__('os').system('touch PWNED')\n#"


def test_crafted_names_cannot_inject_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), EVIL + "W")
    nodes = [helper.make_node("Gemm", [EVIL, EVIL + "W"], [EVIL + "h"], transB=1, name=EVIL,
                              doc_string=EVIL), helper.make_node("Relu", [EVIL + "h"], ["\n\"\"\"" + EVIL])]
    g = helper.make_graph(nodes, EVIL, [helper.make_tensor_value_info(EVIL, TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("\n\"\"\"" + EVIL, TensorProto.FLOAT, ["N", 3])], [w])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    imported = bg.from_onnx(proto, loss="mse")
    import re

    assert all(re.fullmatch(NAME_PATTERN, n) for n in [imported.name, *imported.values()])
    model = imported.compile()
    X = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(model.forward(X), 4 * np.ones((2, 3)))
    for src in [model.source, *bg.emit(imported.build(), inference=True).values()]:
        imports = [n for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [a.name for n in imports for a in n.names] == ["numpy"]
        assert not any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "__import__" for n in ast.walk(ast.parse(src)))
    BngraphBackend.prepare(proto).run([X])
    assert not (tmp_path / "PWNED").exists()
    dot = bg.to_dot(imported)
    assert "\n__import__" not in dot  # labels escaped
    # an unknown attribute, even a string one, is refused and shown quoted
    proto.graph.node[0].attribute.append(helper.make_attribute(EVIL, EVIL))
    with pytest.raises(UnsupportedNode, match="is not supported") as err:
        bg.from_onnx(proto)
    assert "\n" not in str(err.value) and "attribute 'x\"\\'\\n__import__" in str(err.value)  # repr: no raw newline


def test_absurd_sizes_are_refused_before_allocating():
    huge = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    proto = _single("Gemm", ["x", "W"], ["y"], inits=[huge], attrs={"transB": 1})
    tracemalloc.start()
    with pytest.raises(UnsafeModel, match="refused before allocating"):
        bg.from_onnx(proto)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20
    wide = _single("Relu", ["x"], ["y"], shape=("N", 1 << 40), out_shape=("N", 1 << 40))
    with pytest.raises(UnsafeModel, match="refused before allocating"):
        bg.from_onnx(wide)
    lying = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    lying.dims[:] = [4, 4]  # declares 16 values, holds 4
    with pytest.raises(UnsafeModel, match="declares shape"):
        bg.from_onnx(_single("Gemm", ["x", "W"], ["y"], inits=[lying]))


def test_external_data_is_refused():
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(UnsafeModel, match="external file"):
        bg.from_onnx(_single("Gemm", ["x", "W"], ["y"], inits=[w]))


def test_a_missing_onnx_names_the_extra():
    code = ("import sys; sys.modules['onnx'] = None\nimport bngraph as bg\n"
            "try:\n    bg.from_onnx('m.onnx')\nexcept bg.MissingDependency as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'onnx>=1.15' (in a checkout of bngraph: pip install '.[onnx]')" in out and "bg.from_onnx" in out
