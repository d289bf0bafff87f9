"""Issue 15, interop: from_torch imports what PyTorch runs (repeated modules, exact types, no hooks),
from_onnx runs onnx.checker and refuses what it cannot reproduce, each bad input is one clear error
naming the file's own names, and to_onnx refuses an epsilon that float32 cannot carry. PyTorch and
onnxruntime are the oracles."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from interop_support import need

torch = need("torch")
onnx = need("onnx")
ort = need("onnxruntime")
nn = torch.nn
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bngraph.interop.names import UnsafeModel  # noqa: E402
from bngraph.interop.onnx_read import UnsupportedNode  # noqa: E402


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


# ---- from_torch ---------------------------------------------------------------------------------
def _torch_matches(net, features, rtol=1e-10):
    imported = bg.from_torch(net.double().eval(), features, dtype="f64")
    model = imported.compile(dtype="float64")
    X = np.random.default_rng(3).normal(size=(7, features))
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.forward(X), expected, rtol=rtol, atol=1e-12)
    return imported


def test_a_repeated_activation_instance_is_imported_at_each_use():
    torch.manual_seed(0)
    act = nn.ReLU()
    imported = _torch_matches(nn.Sequential(nn.Linear(6, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 2)), 6)
    assert [n.op for n in imported.nodes].count("relu") == 2
    # a repeated block made of parameterless modules
    block = nn.Sequential(nn.Tanh(), nn.LeakyReLU(0.2))
    _torch_matches(nn.Sequential(nn.Linear(6, 5), block, nn.Linear(5, 5), block, nn.Linear(5, 2)), 6)


def test_a_shared_parameterised_module_is_refused_naming_both_uses():
    torch.manual_seed(0)
    lin = nn.Linear(5, 5)
    with pytest.raises(bg.IRError, match=r"from_torch: 3 is the Linear already used at 1 \(one module used twice"
                                         r"\): bngraph cannot tie") as err:
        bg.from_torch(nn.Sequential(nn.Linear(6, 5), lin, nn.ReLU(), lin), 6)
    _one_line(err)
    block = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))
    with pytest.raises(bg.IRError, match=r"from_torch: 2\.0 is the Linear already used at 1\.0"):
        bg.from_torch(nn.Sequential(nn.Linear(6, 5), block, block), 6)
    a, b = nn.Linear(5, 5), nn.Linear(5, 5)
    b.weight = a.weight  # tied weights across two modules
    with pytest.raises(bg.IRError, match=r"from_torch: 2\.weight is the parameter 1\.weight"):
        bg.from_torch(nn.Sequential(nn.Linear(6, 5), a, b), 6)


def test_modules_are_chosen_by_exact_type_not_by_name():
    class ReLU(nn.Module):  # a user class that only shares the name
        def forward(self, x):
            return x * 2

    with pytest.raises(bg.IRError, match=r"from_torch: 1 is a .*ReLU, not torch\.nn\.ReLU") as err:
        bg.from_torch(nn.Sequential(nn.Linear(6, 5), ReLU()), 6)
    _one_line(err)

    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(bg.IRError, match=r"from_torch: 0 is a .*ScaledLinear, a subclass of torch\.nn\.Linear "
                                         r"with its own forward"):
        bg.from_torch(nn.Sequential(ScaledLinear(6, 2)), 6)

    class MyNet(nn.Sequential):  # a subclass that keeps Sequential's forward imports as one
        pass

    torch.manual_seed(0)
    _torch_matches(MyNet(nn.Linear(6, 3), nn.Sigmoid()), 6)


def test_modules_with_hooks_are_refused():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    h = net[1].register_forward_hook(lambda m, i, o: o * 3)
    with pytest.raises(bg.IRError, match=r"from_torch: 1 \(ReLU\) has a forward hook") as err:
        bg.from_torch(net, 6)
    _one_line(err)
    h.remove()
    h = net[0].register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    with pytest.raises(bg.IRError, match=r"from_torch: 0 \(Linear\) has a forward pre-hook"):
        bg.from_torch(net, 6)
    h.remove()
    h = net.register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(bg.IRError, match=r"from_torch: the module \(Sequential\) has a backward hook"):
        bg.from_torch(net, 6)
    h.remove()
    h = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(bg.IRError, match=r"from_torch: a global forward hook is registered"):
            bg.from_torch(net, 6)
    finally:
        h.remove()
    weight_norm = nn.utils.parametrizations.weight_norm(nn.Linear(6, 3))
    with pytest.raises(bg.IRError, match=r"from_torch: 0 \(Linear\) has parametrized weights \(weight\)"):
        bg.from_torch(nn.Sequential(weight_norm), 6)
    replaced = nn.Linear(6, 3)
    replaced.forward = lambda x: x
    with pytest.raises(bg.IRError, match=r"from_torch: 0 \(Linear\) has its forward replaced on the instance"):
        bg.from_torch(nn.Sequential(replaced), 6)
    _torch_matches(net, 6)


# ---- from_onnx: the checker, opsets, attributes ---------------------------------------------------
def _gemm(attrs=None, W=None, opset=17, x_type=TensorProto.FLOAT):
    W = numpy_helper.from_array(np.ones((4, 3), np.float32), "W") if W is None else W
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="g", **(attrs or {}))
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", x_type, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [W])
    opsets = [] if opset is None else [helper.make_opsetid("", opset)]
    return helper.make_model(g, opset_imports=opsets, ir_version=8)


def _bn(inputs=("x", "s", "b", "m", "v"), attrs=None, opset=17, var=None):
    var = np.ones(3, np.float32) if var is None else var
    inits = [numpy_helper.from_array(a, n) for a, n in ((np.ones(3, np.float32), "s"), (np.zeros(3, np.float32), "b"),
                                                        (np.zeros(3, np.float32), "m"), (var, "v"))]
    nodes = [helper.make_node("BatchNormalization", list(inputs), ["y"], name="bn", **(attrs or {}))]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_attributes_of_the_wrong_type_are_refused():
    m = _gemm()
    m.graph.node[0].attribute.append(helper.make_attribute("transB", "0"))  # a string, not an int
    with pytest.raises(UnsupportedNode, match=r"ONNX node 'g' \(Gemm\): attribute 'transB' has type STRING; "
                                              r"Gemm-13 expects INT") as err:
        bg.from_onnx(m, loss=None)
    _one_line(err)
    with pytest.raises(UnsupportedNode, match=r"'g' \(Gemm\): attribute 'alpha' has type FLOATS; Gemm-13 expects "
                                              r"FLOAT"):
        bg.from_onnx(_gemm({"alpha": [1.0, 2.0]}), loss=None)


def test_legacy_batchnorm_attributes_are_refused_at_a_new_opset():
    for attr, value in (("is_test", 1), ("consumed_inputs", [0, 0, 0, 1, 1])):
        with pytest.raises(UnsupportedNode, match=rf"'bn' \(BatchNormalization\): attribute '{attr}' is not "
                                                  rf"supported: BatchNormalization-15 \(opset 17\) has"):
            bg.from_onnx(_bn(attrs={attr: value}), loss=None)


@pytest.mark.parametrize("opset", [0, -1, 1000, None])
def test_opsets_onnx_does_not_know_are_refused(opset):
    with pytest.raises(UnsafeModel, match=r"ONNX model 'm': .*opset") as err:
        bg.from_onnx(_gemm(opset=opset), loss=None)
    _one_line(err)


def _assert_ort_refuses(model):
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_checker_runs_first_and_refuses_what_onnxruntime_refuses():
    two_of_five = _bn(inputs=("x", "s", "b"))
    relu = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Relu", ["y"], ["y"], name="b")]
    not_ssa = helper.make_model(helper.make_graph(
        relu, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    int_weights = _gemm(W=numpy_helper.from_array(np.ones((4, 3), np.int64), "W"))
    for model, why in ((two_of_five, "input size 3 not in range"), (not_ssa, "single static assignment"),
                       (int_weights, "inconsistent type")):
        _assert_ort_refuses(model)
        with pytest.raises(UnsafeModel, match=rf"ONNX model 'm': not a valid ONNX model \(onnx.checker: .*{why}") \
                as err:
            bg.from_onnx(model, loss=None)
        _one_line(err)


def _add(k):
    node = helper.make_node("Add", ["x"] * k, ["y"], name="a")
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_malformed_files_are_one_clear_error(tmp_path):
    with pytest.raises(UnsafeModel, match=r"the ONNX bytes: not a readable ONNX file \(DecodeError") as err:
        bg.from_onnx(b"garbage")
    _one_line(err)
    for k in (1, 3):
        with pytest.raises(UnsafeModel, match=rf"input size {k} not in range"):
            bg.from_onnx(_add(k), loss=None)
    bare = _add(2)
    bare.graph.node[0].ClearField("input")
    bare.graph.node[0].ClearField("output")
    with pytest.raises(UnsafeModel, match="zero input and zero output"):
        bg.from_onnx(bare, loss=None)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UnsafeModel, match=r"empty\.onnx: the file is empty \(no graph\)") as err:
        bg.from_onnx(empty, loss=None)
    _one_line(err)
    no_outputs = _add(2)
    del no_outputs.graph.output[:]
    path = tmp_path / "no_outputs.onnx"
    onnx.save(no_outputs, path)
    for loss in (None, "auto"):
        with pytest.raises(UnsafeModel, match=r"no_outputs\.onnx: the graph has no outputs"):
            bg.from_onnx(path, loss=loss)


def test_an_unused_initializer_with_an_absurd_dimension_is_the_unsafe_model_error():
    huge = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[0, 2**62])
    m = _gemm()
    m.graph.initializer.append(huge)
    with pytest.raises(UnsafeModel, match=r"initializer 'big'.*dimension 4611686018427387904 .*refused before "
                                          r"allocating") as err:
        bg.from_onnx(m, loss=None)
    _one_line(err)


# ---- messages that name the file's own names ------------------------------------------------------
def _mlp(W=None, var=None, two_outputs=False):
    W = np.ones((4, 3), np.float32) if W is None else W
    var = np.ones(3, np.float32) if var is None else var
    inits = [numpy_helper.from_array(W, "fc1.W")] + [
        numpy_helper.from_array(a, n) for a, n in ((np.ones(3, np.float32), "s"), (np.zeros(3, np.float32), "b"),
                                                   (np.zeros(3, np.float32), "m"), (var.astype(np.float32), "v"))]
    nodes = [helper.make_node("Gemm", ["x", "fc1.W"], ["z"], name="g"),
             helper.make_node("BatchNormalization", ["z", "s", "b", "m", "v"], ["y"], name="bn")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
    if two_outputs:
        nodes.append(helper.make_node("Relu", ["z"], ["r"], name="relu"))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 3]))
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_bad_weights_name_the_initializer_and_the_file(tmp_path):
    path = tmp_path / "model.onnx"
    W = np.ones((4, 3), np.float32)
    W[2, 1] = np.inf
    onnx.save(_mlp(W), path)
    with pytest.raises(UnsafeModel, match=r"model\.onnx: initializer 'fc1\.W' contains NaN or inf \(at index "
                                          r"\(2, 1\)\)") as err:
        bg.from_onnx(path)
    _one_line(err)
    big = _mlp(np.full((4, 3), 1e30, np.float32))
    big.graph.node[0].attribute.append(helper.make_attribute("alpha", 1e10))  # W = alpha*B = 1e40
    onnx.save(big, path)
    with pytest.raises(UnsafeModel, match=r"model\.onnx: initializer 'fc1\.W' \(ONNX node 'g' \(Gemm\) input B\), "
                                          r"as %g\.W, holds 1e\+40 \(at index \(0, 0\)\): too large for float32") \
            as err:
        bg.from_onnx(path)
    _one_line(err)
    nan_constant = _mlp()
    nan_constant.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(
        np.array([1.0, np.nan, 2.0], np.float32))))
    nan_constant.graph.node.append(helper.make_node("Add", ["y", "k"], ["out"], name="plus"))
    nan_constant.graph.output[0].name = "out"
    with pytest.raises(UnsafeModel, match=r"ONNX model 'm': a Constant \(ONNX node 'plus' \(Add\) input the "
                                          r"constant\), as %plus\.b, contains NaN or inf \(at index \(1,\)\)"):
        bg.from_onnx(nan_constant)
    onnx.save(_mlp(var=-np.ones(3)), path)
    with pytest.raises(UnsafeModel, match=r"model\.onnx: initializer 'v' \(ONNX node 'bn' \(BatchNormalization\) input "
                                          r"input_var\), as %bn\.running_var, holds a negative variance -1 \(at "
                                          r"index \(0,\)\)"):
        bg.from_onnx(path)


def test_two_outputs_import_for_the_backend_and_compile_says_why_not(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(_mlp(two_outputs=True), path)
    with pytest.raises(bg.IRError, match=r"from_onnx: loss='auto' needs one 2-D \(batch, outputs\) graph output.*"
                                         r"2 outputs: 'y', 'r'"):
        bg.from_onnx(path)
    imported = bg.from_onnx(path, loss=None)
    with pytest.raises(bg.IRError, match=r"compile: bngraph compiles a graph with one output; this one has 2: "
                                         r"'y', 'r' \(bngraph\.onnx_backend runs every output\)") as err:
        imported.compile()
    _one_line(err)
    with pytest.raises(bg.IRError, match=r"compile: bngraph compiles a graph with one output; this one has 2"):
        bg.compile(imported)  # the function, not only the method
    import bngraph.onnx_backend as backend

    X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    sess = ort.InferenceSession(_mlp(two_outputs=True).SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(backend.prepare(_mlp(two_outputs=True)).run([X]), sess.run(None, {"x": X})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_backend_returns_an_empty_array_for_an_empty_batch():
    import bngraph.onnx_backend as backend

    sess = ort.InferenceSession(_mlp(two_outputs=True).SerializeToString(), providers=["CPUExecutionProvider"])
    X = np.zeros((0, 4), np.float32)
    got, want = backend.prepare(_mlp(two_outputs=True)).run([X]), sess.run(None, {"x": X})
    for g, w in zip(got, want):
        assert g.shape == w.shape == (0, 3) and g.dtype == w.dtype
    # spatial batch norm: (0, C, H, W)
    inits = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    X = np.zeros((0, 2, 3, 3), np.float32)
    (got,) = backend.prepare(m).run([X])
    (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    assert got.shape == want.shape == (0, 2, 3, 3) and got.dtype == want.dtype


# ---- to_onnx: epsilon is float32 in ONNX --------------------------------------------------------------
def _bn_model(eps, dtype="float64"):
    g = bg.Graph("m", "f64" if dtype == "float64" else "f32")
    x = g.input("x", 3)
    h = g.batchnorm(g.matmul(x, 2, name="fc"), name="bn", eps=eps)
    g.mse(h, g.input("y", 2))
    return bg.compile(g, dtype=dtype, seed=0)


def test_to_onnx_refuses_an_epsilon_that_float32_cannot_carry():
    for eps in (1e-50, 1e-40):  # 0 in float32; a subnormal float32 (1e-40 loses digits)
        model = _bn_model(eps)
        model.set_state({"bn.running_var": np.zeros(2)})
        with pytest.raises(bg.IRError, match=rf"to_onnx: %bn \(batchnorm\w*\) has eps={eps!r}, which a "
                                             rf"float32 .*cannot hold") as err:
            bg.to_onnx(model)
        _one_line(err)
        bg.to_onnx(model, fold_bn=True)  # folded: no epsilon attribute to write
    model = _bn_model(1e-5, "float32")
    X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    (out,) = ort.InferenceSession(bg.to_onnx(model).SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": X})
    np.testing.assert_allclose(out, model.forward(X, training=False), rtol=1e-5, atol=1e-6)
