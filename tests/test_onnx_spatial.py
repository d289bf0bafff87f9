"""ONNX import and export of convolutional networks (issue 19, point 5).

* ONNX's own node tests for Conv, MaxPool, AveragePool and GlobalAveragePool run on the NumPy target
  through the backend adapter; ``EXCLUDED`` lists what the IR cannot express, each with its reason
  (docs/interop.md lists the same), and each excluded case must be refused with a clear error;
* hand-made files (every attribute: strides, pads, dilations, group, auto_pad, ceil_mode,
  count_include_pad, spatial batch norm in eval and training mode) against onnxruntime, float32;
* export of a trained CNN (folded or not) run in onnxruntime against ``model.forward``, and
  imported back;
* refusals name the node, what was expected and what was got.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from interop_support import need

onnx = need("onnx")
ort = need("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.backend.test import BackendTest  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from bngraph.interop.onnx_backend import BngraphBackend  # noqa: E402
from bngraph.interop.onnx_read import UnsupportedNode  # noqa: E402

SPATIAL = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool"}
OTHERS = {"Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Flatten",
          "Softmax", "LogSoftmax", "Add", "Mul", "Sub", "Div", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"}

THREE_D = "3 spatial dimensions: the IR's convolutions and pools take 1 or 2"
AVG_DILATION = "AveragePool with dilations: the IR's avgpool has none"
INDICES = "MaxPool's Indices output: the IR's maxpool returns the maxima only"
INTEGER = "integer (uint8) data: the IR computes in float32/float64"


def _cases(names, reason):
    return {n: reason for n in names.split()}


EXCLUDED = {
    **_cases("test_averagepool_3d_default test_averagepool_3d_dilations_small "
             "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True "
             "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False "
             "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True "
             "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False "
             "test_maxpool_3d_default test_maxpool_3d_dilations test_maxpool_3d_dilations_use_ref_impl "
             "test_maxpool_3d_dilations_use_ref_impl_large", THREE_D),
    **_cases("test_averagepool_2d_dilations", AVG_DILATION),
    **_cases("test_maxpool_with_argmax_2d_precomputed_pads test_maxpool_with_argmax_2d_precomputed_strides", INDICES),
    **_cases("test_maxpool_2d_uint8", INTEGER),
}
# the refusal each reason comes with (the message names the node and the op type too)
REFUSALS = {THREE_D: "3 spatial dimensions|expected \\(N, C, L\\) or \\(N, C, H, W\\)",
            AVG_DILATION: "dilations=\\[2, 2\\]: the IR's avgpool has no dilation",
            INDICES: "the Indices output", INTEGER: "integer result"}

with warnings.catch_warnings():  # onnx's own case generators overflow casts on purpose
    warnings.simplefilter("ignore", RuntimeWarning)
    SELECTED = {c.name: c for c in load_model_tests(kind="node")
                if c.model is not None and {n.op_type for n in c.model.graph.node} <= SPATIAL | OTHERS
                and {n.op_type for n in c.model.graph.node} & SPATIAL}
    backend_test = BackendTest(BngraphBackend, __name__)
INCLUDED = sorted(set(SELECTED) - set(EXCLUDED))

for _name in INCLUDED:
    backend_test.include(f"^{re.escape(_name)}_cpu$")
_KEEP = {f"{n}_cpu" for n in INCLUDED}
for _cls_name, _cls in backend_test.test_cases.items():  # onnx's harness runs the included cases
    for _attr in [a for a in vars(_cls) if a.startswith("test_") and a not in _KEEP]:
        delattr(_cls, _attr)
    if any(a.startswith("test_") for a in vars(_cls)):
        globals()[f"Spatial{_cls_name}"] = _cls


def _run_case(case):
    rep = BngraphBackend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, (case.name, g.shape, g.dtype, e.shape, e.dtype)
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=case.name)


def test_the_selection():
    assert set(EXCLUDED) <= set(SELECTED), sorted(set(EXCLUDED) - set(SELECTED))
    ops = {op for n in INCLUDED for op in (x.op_type for x in SELECTED[n].model.graph.node)}
    assert ops == SPATIAL  # every spatial op has included cases


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_cases_are_refused_with_their_reason(name):
    with pytest.raises(UnsupportedNode, match=r"ONNX node .+\(.+\): ") as e:
        BngraphBackend.prepare(SELECTED[name].model)
    assert re.search(REFUSALS[EXCLUDED[name]], str(e.value)), str(e.value)


def test_counts_are_printed_and_documented(capsys):
    passed = []
    for name in INCLUDED:
        _run_case(SELECTED[name])
        passed.append(name)
    line = (f"ONNX backend node tests of the spatial ops (onnx {onnx.__version__}, NumPy target): {len(passed)} "
            f"passed of {len(INCLUDED)} included; {len(EXCLUDED)} excluded of {len(SELECTED)} selected")
    with capsys.disabled():
        print("\n" + line)
    docs = (Path(__file__).parents[1] / "docs" / "interop.md").read_text()
    fact = f"**{len(passed)} passed** of {len(INCLUDED)} spatial cases included on the NumPy target; " \
           f"**{len(EXCLUDED)} excluded** of {len(SELECTED)} selected"
    assert fact in docs, f"docs/interop.md should say {fact!r}"
    missing = [n for n in EXCLUDED if f"`{n}`" not in docs]
    assert not missing, f"docs/interop.md does not list the excluded cases {missing}"


# ---- hand-made files against onnxruntime ---------------------------------------------------------

def _model(nodes, x_shape, out_shape, inits=(), opset=17, out="y", extra_outputs=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape), *extra_outputs],
                          list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)  # the output shapes the checker wants


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _same_as_ort(model, X, rtol=1e-5, atol=1e-5):
    expected = _ort(model, {"x": X})
    got = BngraphBackend.prepare(model).run([X])
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return got


RNG = np.random.default_rng(0)

CONVS = [  # (input shape, W shape, attributes, bias)
    ((2, 3, 9, 8), (4, 3, 3, 3), {}, True),
    ((2, 3, 9, 8), (4, 3, 3, 2), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}, True),
    ((2, 4, 7, 7), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, False),
    ((2, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    ((2, 3, 8, 9), (5, 3, 2, 4), {"auto_pad": "SAME_LOWER", "strides": [3, 2]}, True),
    ((2, 3, 8, 9), (5, 3, 3, 3), {"auto_pad": "VALID", "dilations": [2, 2]}, True),
    ((2, 3, 8, 9), (5, 3, 3, 3), {"auto_pad": "NOTSET", "kernel_shape": [3, 3]}, False),
    ((3, 2, 11), (4, 2, 3), {"strides": [2], "pads": [2, 1], "dilations": [2]}, True),
    ((3, 2, 11), (4, 2, 4), {"auto_pad": "SAME_UPPER"}, True),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", CONVS)
def test_conv_matches_onnxruntime(x_shape, w_shape, attrs, bias):
    W = RNG.normal(size=w_shape)
    inits = [_init("W", W)] + ([_init("B", RNG.normal(size=w_shape[0]))] if bias else [])
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], name="conv1", **attrs)
    model = _model([node], list(x_shape), None, inits)
    X = RNG.normal(size=x_shape).astype(np.float32)
    _same_as_ort(model, X)
    imported = bg.from_onnx(model, loss=None)
    ops = [n.op for n in imported.nodes]
    assert ops == (["conv", "bias_add"] if bias else ["conv"])


POOLS = [  # (op, input shape, attributes)
    ("MaxPool", (2, 3, 9, 8), {"kernel_shape": [3, 3]}),
    ("MaxPool", (2, 3, 9, 8), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": 1}),
    ("MaxPool", (2, 3, 9, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [2, 1]}),
    ("MaxPool", (2, 3, 9, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("MaxPool", (2, 3, 9, 8), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ("MaxPool", (2, 3, 10), {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [3, 3]}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                   "count_include_pad": 1}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1],
                                   "ceil_mode": 1}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER",
                                   "count_include_pad": 1}),
    ("AveragePool", (2, 3, 9, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "VALID"}),
    ("AveragePool", (2, 3, 11), {"kernel_shape": [4], "strides": [3], "pads": [2, 1], "count_include_pad": 1}),
    ("GlobalAveragePool", (2, 3, 9, 8), {}),
    ("GlobalAveragePool", (2, 3, 11), {}),
]


@pytest.mark.parametrize("op, x_shape, attrs", POOLS)
def test_pools_match_onnxruntime(op, x_shape, attrs):
    model = _model([helper.make_node(op, ["x"], ["y"], name="pool1", **attrs)], list(x_shape), None)
    _same_as_ort(model, RNG.normal(size=x_shape).astype(np.float32))


def _cnn_file(opset=17):
    """Conv (bias) -> BatchNormalization -> Relu -> MaxPool -> Conv -> Add of a per-channel constant
    -> AveragePool -> residual Add -> GlobalAveragePool -> Flatten -> Gemm, on (N, 3, 10, 10)."""
    inits = [_init("W1", RNG.normal(size=(4, 3, 3, 3)) * 0.5), _init("B1", RNG.normal(size=4)),
             _init("gamma", RNG.uniform(0.5, 1.5, 4)), _init("beta", RNG.normal(size=4)),
             _init("mean", RNG.normal(size=4)), _init("var", RNG.uniform(0.5, 2, 4)),
             _init("W2", RNG.normal(size=(4, 4, 3, 3)) * 0.3), _init("c", RNG.normal(size=(4, 1, 1))),
             _init("W3", RNG.normal(size=(5, 4))), _init("B3", RNG.normal(size=5))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["b1"], name="bn1"),
             helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "W2"], ["c2"], name="conv2", auto_pad="SAME_UPPER"),
             helper.make_node("Add", ["c2", "c"], ["a2"], name="bias2"),
             helper.make_node("AveragePool", ["a2"], ["p2"], name="pool2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=1),
             helper.make_node("Add", ["p2", "p1"], ["res"], name="residual"),
             helper.make_node("GlobalAveragePool", ["res"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    return _model(nodes, ["N", 3, 10, 10], ["N", 5], inits, opset)


def test_a_cnn_file_matches_onnxruntime_and_compiles():
    model = _cnn_file()
    X = RNG.normal(size=(6, 3, 10, 10)).astype(np.float32)
    (expected,) = _ort(model, {"x": X})
    _same_as_ort(model, X)
    imported = bg.from_onnx(model, loss="mse")
    assert [s.kind for s in imported.inputs_spec] == ["spatial", "flat"]
    compiled = imported.compile()
    assert compiled.n_features == (3, 10, 10)
    np.testing.assert_allclose(compiled.forward(X, training=False), expected, rtol=1e-5, atol=1e-5)
    loss = compiled.train_step(X, RNG.normal(size=(6, 5)).astype(np.float32), bg.optim.SGD(0.01))
    assert np.isfinite(loss)


def test_elementwise_ops_before_the_first_conv_and_a_softmax_over_channels():
    """A graph input read first by Relu or BatchNormalization enters in the spatial layout too; a
    Softmax over the channels of spatial data is the output head."""
    inits = [_init("W", RNG.normal(size=(4, 3, 3))), *(_init(k, v) for k, v in
             (("s", RNG.uniform(0.5, 1.5, 3)), ("b", RNG.normal(size=3)), ("m", RNG.normal(size=3)),
              ("v", RNG.uniform(0.5, 2, 3))))]
    for first in (helper.make_node("Relu", ["x"], ["h"], name="relu"),
                  helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], name="bn")):
        nodes = [first, helper.make_node("Conv", ["h", "W"], ["c"], name="conv", pads=[1, 1]),
                 helper.make_node("Softmax", ["c"], ["y"], name="softmax", axis=1)]
        model = _model(nodes, ["N", 3, 7], None, inits, opset=13)
        _same_as_ort(model, RNG.normal(size=(4, 3, 7)).astype(np.float32))
        assert bg.from_onnx(model, loss=None).inputs_spec[0].kind == "spatial"


@pytest.mark.parametrize("shape", [(5, 3, 6, 4), (5, 3, 7)])
def test_spatial_batchnorm_in_training_mode_returns_onnx_running_statistics(shape):
    """training_mode=1 on a convolution's output: normalized with the batch's statistics (per channel
    over N and the positions), the running statistics updated with ONNX's population variance."""
    k = len(shape) - 2
    C = shape[1]
    gamma, beta, mean, var = RNG.uniform(0.5, 1.5, C), RNG.normal(size=C), RNG.normal(size=C), RNG.uniform(0.5, 2, C)
    W = RNG.normal(size=(C, C) + (1,) * k)
    inits = [_init("W", W), _init("gamma", gamma), _init("beta", beta), _init("mean", mean), _init("var", var)]
    stats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in ("rm", "rv")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y", "rm", "rv"],
                              name="bn", training_mode=1, momentum=0.8, epsilon=1e-3)]
    model = _model(nodes, list(shape), list(shape), inits, opset=15, extra_outputs=stats)
    X = RNG.normal(size=shape).astype(np.float32)
    y, rm, rv = BngraphBackend.prepare(model).run([X])
    z = np.einsum("fc,nc...->nf...", W.reshape(C, C), X.astype(np.float64))
    axes = (0, *range(2, 2 + k))
    mu, v = z.mean(axis=axes), z.var(axis=axes)
    bshape = (1, C) + (1,) * k
    expected = gamma.reshape(bshape) * (z - mu.reshape(bshape)) / np.sqrt(v.reshape(bshape) + 1e-3) \
        + beta.reshape(bshape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm, 0.8 * mean + 0.2 * mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rv, 0.8 * var + 0.2 * v, rtol=1e-5, atol=1e-5)


# ---- export --------------------------------------------------------------------------------------

def _cnn_graph(k=2):
    g = bg.Graph("cnn")
    x = g.input("x", (3, 9, 8) if k == 2 else (3, 17))
    h = g.conv(x, 6, 3, padding=1, name="conv1")
    h = g.relu(g.batchnorm(h, name="bn1"), name="relu1")
    h = g.maxpool(h, 2, stride=2, ceil_mode=True, name="pool1")
    h = g.conv(h, 6, 2, stride=1, padding="same", dilation=2, groups=3, name="conv2")
    h = g.batchnorm(h, name="bn2")
    h = g.avgpool(h, 3, stride=2, padding=1, count_include_pad=False, name="pool2")
    h = g.flatten(g.tanh(h, name="tanh2"), name="flat")
    out = g.matmul(h, 4, name="fc")
    g.softmax_cross_entropy(out, g.labels("y", 4))
    return g


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_export_of_a_trained_cnn_matches_model_forward_in_onnxruntime(tmp_path, k, fold_bn):
    shape = (3, 9, 8) if k == 2 else (3, 17)
    model = bg.compile(_cnn_graph(k), seed=1)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(32, *shape)).astype(np.float32), rng.integers(0, 4, 32)
    model.fit(X, y, optimizer=bg.optim.Adam(1e-2), epochs=2, batch_size=8, verbose=False)
    path = tmp_path / "cnn.onnx"
    proto = bg.to_onnx(model, path, fold_bn=fold_bn)
    ops = [n.op_type for n in proto.graph.node]
    assert {"Conv", "MaxPool", "AveragePool", "Flatten", "Gemm"} <= set(ops)
    assert ("BatchNormalization" in ops) is not fold_bn
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", *shape]
    (out,) = _ort(onnx.load(str(path)), {"x": X})
    expected = model.forward(X, training=False)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    back = bg.from_onnx(str(path), loss=None)  # and imported back: the same numbers
    (again,) = BngraphBackend.prepare(proto).run([X])
    np.testing.assert_allclose(again, expected, rtol=1e-4, atol=1e-5)
    assert back.inputs_spec[0].kind == "spatial"


def test_export_of_a_global_average_pool_and_a_spatial_bias(tmp_path):
    g = bg.Graph("gap")
    x = g.input("x", (2, 6, 6))
    h = g.relu(g.conv(x, 5, 3, name="c1"), name="r1")  # conv + bias_add (+ relu): Conv with B, Relu
    out = g.matmul(g.flatten(g.global_avgpool(h, name="gap")), 3, name="fc")
    g.mse(out, g.input("t", 3))
    model = bg.compile(g, seed=3)
    X = np.random.default_rng(3).normal(size=(7, 2, 6, 6)).astype(np.float32)
    proto = bg.to_onnx(model)
    assert [n.op_type for n in proto.graph.node][:3] == ["Conv", "Relu", "GlobalAveragePool"]
    assert len(proto.graph.node[0].input) == 3  # the bias is Conv's B
    (out,) = _ort(proto, {"x": X})
    np.testing.assert_allclose(out, model.forward(X), rtol=1e-5, atol=1e-5)


# ---- refusals ------------------------------------------------------------------------------------

def _refused(nodes, x_shape, inits=(), match="", extra_outputs=(), opset=17):
    model = _model(nodes, x_shape, None, inits, opset=opset, extra_outputs=extra_outputs)
    with pytest.raises(UnsupportedNode, match=match):
        bg.from_onnx(model, loss=None)


def test_refusals_name_the_node_what_was_expected_and_what_was_got():
    W3 = [_init("W", np.ones((2, 3, 2, 2, 2)))]
    _refused([helper.make_node("Conv", ["x", "W"], ["y"], name="c3d")], [1, 3, 4, 4, 4], W3,
             r"ONNX node 'c3d' \(Conv\): input 'x' has shape \(1, 3, 4, 4, 4\): expected \(N, C, L\) or \(N, C, H, W\)")
    W = [_init("W", np.ones((2, 3, 3, 3)))]
    _refused([helper.make_node("Conv", ["x", "W"], ["y"], name="c1", kernel_shape=[2, 2])], [1, 3, 5, 5], W,
             r"'c1' \(Conv\): kernel_shape=\[2, 2\] but W has kernel \(3, 3\)")
    _refused([helper.make_node("Conv", ["x", "W"], ["y"], name="c2", auto_pad="SAME_UPPER", pads=[1, 1, 1, 1])],
             [1, 3, 5, 5], W, r"'c2' \(Conv\): auto_pad=SAME_UPPER together with pads=\[1, 1, 1, 1\]")
    _refused([helper.make_node("Conv", ["x", "W"], ["y"], name="c4")], [1, 4, 5, 5], W,
             r"'c4' \(Conv\): group=1 with X of 4 channels and W of shape \(2, 3, 3, 3\): expected W \(M, C/group")
    _refused([helper.make_node("Conv", ["x", "W"], ["y"], name="c5")], [1, 3, 2, 2], W,
             r"'c5' \(Conv\): .*leaves no output")
    idx = [helper.make_tensor_value_info("i", TensorProto.INT64, None)]
    _refused([helper.make_node("MaxPool", ["x"], ["y", "i"], name="mp", kernel_shape=[2, 2])], [1, 3, 4, 4],
             match=r"'mp' \(MaxPool\): the Indices output 'i': the IR's maxpool returns the maxima only",
             extra_outputs=idx)
    _refused([helper.make_node("MaxPool", ["x"], ["y"], name="mp2", kernel_shape=[2, 2], storage_order=1)],
             [1, 3, 4, 4], match=r"'mp2' \(MaxPool\): storage_order=1: only 0")
    _refused([helper.make_node("MaxPool", ["x"], ["y"], name="mp3", kernel_shape=[2, 2], pads=[2, 0, 0, 0])],
             [1, 3, 4, 4], match=r"'mp3' \(MaxPool\): .*maxpool window 0 along spatial dimension 1 covers padding only")
    _refused([helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[2, 2], dilations=[2, 1])],
             [1, 3, 6, 6], match=r"'ap' \(AveragePool\): dilations=\[2, 1\]: the IR's avgpool has no dilation",
             opset=19)
    _refused([helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["y"], name="fl", axis=2)], [1, 3, 4, 4],
             match=r"'fl' \(Flatten\): axis=2 on \(N, 3, 1, 1\) data: only axis=1")
    c = [_init("c", np.ones((3, 2, 1)))]
    _refused([helper.make_node("MaxPool", ["x"], ["p"], name="mp4", kernel_shape=[1, 1]),
              helper.make_node("Add", ["p", "c"], ["y"], name="add")], [1, 3, 2, 4], c,
             r"'add' \(Add\): the constant of shape \(3, 2, 1\) on \(N, 3, 2, 4\) data: expected one value per channel")


def test_standalone_code_of_a_cnn_file(tmp_path):
    """``bngraph emit FILE.onnx --inference --standalone``: the module takes (N, C, H, W) and needs NumPy only."""
    import os
    import subprocess
    import sys

    from bngraph.cli import main

    model = _cnn_file()
    onnx.save_model(model, str(tmp_path / "cnn.onnx"))
    assert main(["emit", str(tmp_path / "cnn.onnx"), "--inference", "--standalone", "--out", str(tmp_path / "d")]) == 0
    X = RNG.normal(size=(4, 3, 10, 10)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    script = ("import sys; sys.modules['bngraph'] = None\nimport importlib, numpy as np\n"
              "np.save(sys.argv[3], importlib.import_module(sys.argv[1]).output(np.load(sys.argv[2])))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script, "g", str(tmp_path / "X.npy"), str(tmp_path / "y.npy")],
                          cwd=tmp_path / "d", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (expected,) = _ort(model, {"x": X})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)
