"""The class losses' options: ONNX's SoftmaxCrossEntropyLoss / NegativeLogLikelihoodLoss and
PyTorch's ``F.cross_entropy`` / ``F.nll_loss`` with class weights, ``ignore_index`` and
``reduction`` (mean, sum, none); ``nll`` on any log-probabilities; ``log_softmax``.

* The defaults leave every node, its text and its code as they were; the options print and parse
  back, and bad ones are clear errors.
* The reference semantics and gradients equal PyTorch's (float64), labels equal to an
  ``ignore_index`` outside [0, classes) included (tests/test_ops.py also checks the table's cases
  against finite differences).
* The NumPy target and the CUDA target's kernels (run by the emulator) compute the op table's
  numbers for every variant: loss kernels, gradient kernels and the two fused, float32 and float64.
  tests/test_cuda_target.py compiles the same kernels with nvcc.
* A model with a weighted, ignore_index, sum-reduction loss trains on both targets: its step's loss
  and gradients equal PyTorch's for the same network and finite differences; the class weights are
  state (set, checkpointed, never stepped); ``evaluate`` in chunks equals one batch.
* ONNX import: class weights from the file train with the model; what stays unsupported is refused
  with the node named.
"""
from __future__ import annotations

import itertools
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bngraph as bg
from bngraph.backends import get_target
from bngraph.ir import BATCH, TensorType, Value, Node
from bngraph.ops import OPS

C = 4  # classes
REDUCTIONS = ("mean", "sum", "none")
IGNORES = (None, 1, -1)  # none; a class (in range); a label outside [0, C)
CLASS_LOSSES = ("softmax_cross_entropy", "nll")
EMULATOR = shutil.which("g++") is not None
needs_emulator = pytest.mark.skipif(not EMULATOR, reason="the CUDA emulator needs g++")


def options(reduction="mean", ignore_index=None) -> dict:
    return {"reduction": reduction, "ignore_index": ignore_index}


def labels_for(rng, m, ignore_index, classes=C):
    """Class indices, about a third of them ``ignore_index`` when there is one."""
    y = rng.integers(0, classes, m)
    if ignore_index is not None:
        y[rng.random(m) < 0.35] = ignore_index
        y[0] = 0 if ignore_index != 0 else 2  # at least one example counts
    return y


def torch_loss(op, scores_t, y, weight, at):
    """PyTorch's loss on (N, C) scores; PyTorch's ignore_index default (-100) matches no label here."""
    ii = at.get("ignore_index")
    kw = dict(weight=None if weight is None else torch.tensor(weight), reduction=at.get("reduction", "mean"),
              ignore_index=-100 if ii is None else ii)
    fn = F.cross_entropy if op == "softmax_cross_entropy" else F.nll_loss
    return fn(scores_t, torch.tensor(y), **kw)


# ---- the IR ----------------------------------------------------------------------------------------


def weighted_graph(op="softmax_cross_entropy", dtype="f64", features=5, hidden=6, bn=True, **opts):
    """x -> fc1 (no bias) -> bn1 -> tanh -> out -> [log_softmax] -> the class loss, with class
    weights: state %cw (C,)."""
    g = bg.Graph(f"weighted_{op}", dtype)
    h = g.matmul(g.input("x", features), hidden, bias=not bn, name="fc1")
    if bn:
        h = g.batchnorm(h, name="bn1")
    z = g.matmul(g.tanh(h, name="a1"), C, name="out")
    if op == "nll":
        z = g.log_softmax(z, name="logp")
    getattr(g, op)(z, g.labels("y", C), weight=g.state_value("cw", (C,)), **opts)
    return g


def test_the_defaults_leave_the_node_and_its_text_unchanged():
    plain = bg.mlp([4, 5, 3])
    assert "%loss: f32[] = softmax_cross_entropy %out, %y\n" in str(plain)
    assert plain.loss_node.attrs == ()
    g = bg.Graph("t")
    g.softmax_cross_entropy(g.matmul(g.input("x", 4), 3, name="out"), g.labels("y", 3),
                            reduction="mean", ignore_index=None)
    assert g.loss_node.attrs == () and str(g.loss_node) == "%loss: f32[] = softmax_cross_entropy %out, %y"
    for op in ("softmax_cross_entropy", "nll", "softmax_cross_entropy_grad", "nll_grad"):
        assert OPS[op].normalize_attrs("t", {"reduction": "mean", "ignore_index": None}) == {}


@pytest.mark.parametrize("op", CLASS_LOSSES)
def test_options_print_and_parse_back(op):
    g = weighted_graph(op, reduction="sum", ignore_index=-100)
    text = str(g)
    assert f"%loss: f64[] = {op}[ignore_index=-100, reduction=sum] %{g.loss_node.inputs[0]}, %y, %cw" in text
    assert "state %cw: f64[4]" in text
    assert bg.parse(text) == g.build()
    # the default written out is the default left out
    assert bg.parse(text.replace("reduction=sum", "reduction=mean")).loss_node.attr == {"ignore_index": -100}
    train = bg.compile(g, dtype="float64").programs["train_step"]
    assert f"{op}_grad[ignore_index=-100, reduction=sum] %" in str(train)
    assert bg.parse(str(train)) == train


def _two_class_graph():
    g = bg.Graph("t")
    z = g.matmul(g.input("x", 4), 3, name="z")
    y = g.labels("y", 3)
    return g, z, y


@pytest.mark.parametrize("call, match", [
    (lambda g, z, y: g.softmax_cross_entropy(z, y, reduction="avg"),
     r"loss: reduction must be one of mean, sum, none, got 'avg'"),
    (lambda g, z, y: g.nll(z, y, ignore_index=1.5), r"loss: attribute ignore_index of nll must be int, got 1.5"),
    (lambda g, z, y: g.nll(z, y, ignore_index=True), r"attribute ignore_index of nll must be int, got True"),
    (lambda g, z, y: g.softmax_cross_entropy(z, y, weight=g.state_value("w", (4,))),
     r"loss: softmax_cross_entropy class weights expected shape f32\[3\], got f32\[4\]"),
    (lambda g, z, y: g.softmax_cross_entropy(z, y, weight=z),
     r"loss: softmax_cross_entropy class weights expected shape f32\[3\], got f32\[3,m\]"),
    (lambda g, z, y: g.softmax_cross_entropy(z, y, reduction="none"),
     r"loss: reduction='none' gives one loss per example, and a graph's loss is a scalar"),
    (lambda g, z, y: g.add_node("nll", [z, y, g.param("w", (3,)), g.param("v", (3,))], {}, ["l"]),
     r"l: nll takes 2 inputs, got 4; with class weights 3"),
    (lambda g, z, y: g.add_node("nll", [z, g.input("t", 3)], {}, ["l"]),
     r"l: nll expects integer class labels made with g.labels"),
])
def test_bad_options_and_inputs_are_clear_errors(call, match):
    g, z, y = _two_class_graph()
    before = str(g)
    with pytest.raises(bg.IRError, match=match):
        call(g, z, y)
    assert "loss" not in {k for k, _ in g.outputs} and str(g).count("=") == before.count("=")


def test_reduction_none_is_a_value_not_the_loss():
    g, z, y = _two_class_graph()
    per = g.add_node("softmax_cross_entropy", [z, y], {"reduction": "none"}, ["per"]).out
    assert per.type == TensorType("f32", (BATCH,))
    bad = g.build().rebuild(outputs=[("loss", "per")])
    with pytest.raises(bg.VerifyError, match=r"output loss must be a scalar, got %per: f32\[m\]"):
        bg.verify(bad)
    rule = OPS["softmax_cross_entropy_grad"].infer
    types = [TensorType("f32", (3, BATCH)), TensorType("i64", (BATCH,))]
    with pytest.raises(bg.IRError, match=r"t: softmax_cross_entropy_grad incoming gradient dL expected shape f32\[m\]"):
        rule("t", [*types, TensorType("f32", ())], {"reduction": "none"})
    assert rule("t", [*types, TensorType("f32", (BATCH,))], {"reduction": "none"}) == (types[0],)


# ---- the reference semantics vs PyTorch -----------------------------------------------------------


@pytest.mark.parametrize("op", CLASS_LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", (None, 1, -100))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_reference_and_gradient_vs_torch(op, reduction, ignore_index, weighted):
    rng = np.random.default_rng(hash((op, reduction, ignore_index, weighted)) % 2**32)
    m = 11
    x = rng.standard_normal((C, m)) * 3
    if op == "nll":
        x = x - np.log(np.exp(x).sum(axis=0))  # log-probabilities
    y = labels_for(rng, m, ignore_index)
    w = rng.uniform(0.2, 3.0, C) if weighted else None
    at = OPS[op].normalize_attrs("t", options(reduction, ignore_index))
    ins = [x, y] + ([w] if weighted else [])
    (loss,) = OPS[op].ref(ins, at)
    xt = torch.tensor(x.T, requires_grad=True)
    lt = torch_loss(op, xt, y, w, at)
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-12, atol=1e-14)
    dl = rng.standard_normal(m) if reduction == "none" else np.array(0.75)
    lt.backward(torch.tensor(dl))
    (grad,) = OPS[f"{op}_grad"].ref([*ins, dl], at)
    np.testing.assert_allclose(grad, xt.grad.numpy().T, rtol=1e-10, atol=1e-14)
    if ignore_index is not None:  # an ignored example: no loss, no gradient
        gone = y == ignore_index
        assert np.all(grad[:, gone] == 0)
        if reduction == "none":
            assert np.all(loss[gone] == 0)


def test_every_example_ignored_is_nan_for_the_mean_as_in_torch():
    x, y = np.zeros((C, 3)), np.full(3, 2)
    at = OPS["nll"].normalize_attrs("t", options("mean", 2))
    with np.errstate(invalid="ignore"):
        (loss,) = OPS["nll"].ref([x, y], at)
    assert np.isnan(loss) and torch.isnan(F.nll_loss(torch.tensor(x.T), torch.tensor(y), ignore_index=2))


def test_log_softmax_and_its_rule_vs_torch():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((3, 7)) * 30, np.array([[-1000.0, 0, 1000, 5, -5, 0.5, 700]])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (y,) = OPS["log_softmax"].ref([x], {})
    xt = torch.tensor(x, requires_grad=True)
    yt = F.log_softmax(xt, dim=0)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    (dx,) = OPS["log_softmax_grad"].ref([dy, y], {})
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-13)


# ---- every variant's code: the NumPy target and the CUDA kernels (emulator) -----------------------


def kernel_zoo(dtype="f64") -> bg.FrozenGraph:
    """One node per variant and role: every class loss with every reduction, ignore_index (none, a
    class, -1 outside the classes) and class weights or not, as a loss alone (on %x1), a gradient
    alone (on %x2) and a loss with its gradient (on %x3: the CUDA target fuses them into one kernel).
    ``-1`` variants read %yn, whose ignored labels are -1; the others %y."""
    f = lambda *shape: TensorType(dtype, shape)  # noqa: E731
    inputs = [Value(f"x{k}", f(C, BATCH), "input") for k in (1, 2, 3)]
    inputs += [Value("y", TensorType("i64", (BATCH,)), "input", C), Value("yn", TensorType("i64", (BATCH,)), "input"),
               Value("dls", f(), "input"), Value("dlv", f(BATCH), "input")]
    state = [Value("cw", f(C), "state")]
    nodes, outputs = [], []

    def add(op, ins, at, out_type):
        name = f"v{len(nodes)}"
        nodes.append(Node.make(op, ins, [Value(name, out_type)], OPS[op].normalize_attrs(name, at)))
        outputs.append((name, name))

    for op, reduction, ii, weighted in itertools.product(CLASS_LOSSES, REDUCTIONS, IGNORES, (False, True)):
        at = options(reduction, ii)
        y = "yn" if ii == -1 else "y"
        w = ["cw"] if weighted else []
        dl = "dlv" if reduction == "none" else "dls"
        loss_type = f(BATCH) if reduction == "none" else f()
        add(op, ["x1", y, *w], at, loss_type)
        add(f"{op}_grad", ["x2", y, *w, dl], at, f(C, BATCH))
        add(op, ["x3", y, *w], at, loss_type)
        add(f"{op}_grad", ["x3", y, *w, dl], at, f(C, BATCH))
    add("log_softmax", ["x1"], {}, f(C, BATCH))
    add("log_softmax_grad", ["x2", "x3"], {}, f(C, BATCH))
    return bg.verify(bg.FrozenGraph("zoo", dtype, inputs=inputs, params=[], state=state, nodes=nodes, outputs=outputs))


def zoo_values(rng, dtype, m=9):
    np_dtype = np.float32 if dtype == "f32" else np.float64
    feeds = {f"x{k}": rng.standard_normal((C, m)).astype(np_dtype) for k in (1, 2, 3)}
    feeds["x3"] = (feeds["x3"] - np.log(np.exp(feeds["x3"]).sum(axis=0))).astype(np_dtype)  # log-probabilities too
    feeds["y"] = labels_for(rng, m, 1)
    feeds["yn"] = labels_for(rng, m, -1)
    feeds["dls"], feeds["dlv"] = np.array(0.7, np_dtype), rng.standard_normal(m).astype(np_dtype)
    return feeds, {"cw": rng.uniform(0.2, 3.0, C).astype(np_dtype)}


def zoo_reference(g, feeds, state) -> dict:
    """Each node's reference semantics (the interpreter minus its label check: -1 is ignored here)."""
    env = {**feeds, **state}
    for n in g.nodes:
        env[n.out.name] = OPS[n.op].ref([env[i] for i in n.inputs], n.attr)[0]
    return {k: env[v] for k, v in g.outputs}


def run_rendered(target, device, g, feeds, state, m):
    t = get_target(target)
    exe = t.runtime(device).load(t.renderer.render({"forward": g}, g.dtype, g.name))
    out = exe.run("forward", feeds, {}, state, None, m)
    return {k: np.asarray(exe.runtime.to_numpy(v)) for k, v in out.items()}


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("target, device", [("numpy", None), pytest.param("cuda", "emulator", marks=needs_emulator)])
def test_every_variant_computes_the_op_tables_numbers(target, device, dtype):
    g = kernel_zoo(dtype)
    feeds, state = zoo_values(np.random.default_rng(5), dtype)
    ref = zoo_reference(g, feeds, state)
    got = run_rendered(target, device, g, feeds, state, 9)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "f64" else dict(rtol=2e-5, atol=2e-6)
    for k, v in ref.items():
        node = next(n for n in g.nodes if n.out.name == k)
        assert got[k].shape == np.shape(v) and got[k].dtype == v.dtype, (str(node), got[k].shape, got[k].dtype)
        np.testing.assert_allclose(got[k], v, err_msg=str(node), **tol)


def test_the_cuda_kernels_fuse_a_loss_with_its_gradient():
    cu = get_target("cuda").renderer.render({"forward": kernel_zoo()}, "f64", "zoo").sources["zoo_cuda.cu"]
    kernels = [ln for ln in cu.splitlines() if ln.startswith('extern "C" __global__ void forward__')
               and not ln.split("(")[0].endswith(("_total", "_weights"))]  # a summed loss's second pass
    # per variant: the lone loss, the lone gradient, and one kernel for the pair; + log_softmax and its grad
    assert len(kernels) == 2 * 3 * 3 * 2 * 3 + 2
    assert "skipped" in cu and "wsum = block_sum(wsum, red);" in cu and "loss[j] = (real)(w * l);" in cu


# ---- training ------------------------------------------------------------------------------------


def _torch_step(model, X, y, op, at):
    """The same network in PyTorch (float64): the loss and the gradients of every param."""
    P = {k: torch.tensor(np.array(model.runtime.to_numpy(v)), requires_grad=True) for k, v in model.params.items()}
    cw = np.array(model.runtime.to_numpy(model.state["cw"]))
    h = torch.tensor(X) @ P["fc1.W"].T
    h = F.batch_norm(h, None, None, P["bn1.gamma"], P["bn1.beta"], training=True, eps=1e-5)
    z = torch.tanh(h) @ P["out.W"].T + P["out.b"]
    if op == "nll":
        z = F.log_softmax(z, dim=1)
    loss = torch_loss(op, z, y, cw, at)
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in P.items()}


@pytest.mark.parametrize("op", CLASS_LOSSES)
@pytest.mark.parametrize("opts", [dict(reduction="sum", ignore_index=1), dict(ignore_index=0), dict(ignore_index=-100),
                                  dict()], ids=["sum-ii", "mean-ii", "mean-ii-outside-the-classes", "mean"])
@pytest.mark.parametrize("target, device", [("numpy", None), pytest.param("cuda", "emulator", marks=needs_emulator)])
def test_a_weighted_model_step_equals_torch(op, opts, target, device):
    rng = np.random.default_rng(7)
    model = bg.compile(weighted_graph(op, **opts), target=target, device=device, dtype="float64", seed=3)
    model.set_state({"cw": np.array([0.5, 2.0, 1.0, 3.0])})
    X, y = rng.standard_normal((13, 5)), labels_for(rng, 13, opts.get("ignore_index"))
    want_loss, want = _torch_step(model, X, y, op, opts)
    loss = model.train_step(X, y, optimizer=bg.optim.SGD(lr=0.1))
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for k, g in model.grads.items():
        np.testing.assert_allclose(model.runtime.to_numpy(g), want[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_array_equal(model.runtime.to_numpy(model.state["cw"]), [0.5, 2.0, 1.0, 3.0])  # never stepped


@pytest.mark.parametrize("op", CLASS_LOSSES)
def test_a_weighted_model_step_equals_finite_differences(op):
    from test_codegen import finite_difference_check

    model = bg.compile(weighted_graph(op, bn=False, reduction="sum", ignore_index=2), dtype="float64", seed=1)
    model.set_state({"cw": np.array([0.5, 2.0, 1.0, 3.0])})
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((9, 5)), labels_for(rng, 9, 2)
    finite_difference_check(model, X, y, rng, entries=6)


@pytest.mark.parametrize("op", CLASS_LOSSES)
@pytest.mark.parametrize("target, device", [("numpy", None), pytest.param("cuda", "emulator", marks=needs_emulator)])
def test_a_weighted_model_trains_and_keeps_its_class_weights(op, target, device, tmp_path):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((96, 5))
    y = (X[:, :C] + 0.3 * rng.standard_normal((96, C))).argmax(axis=1)
    model = bg.compile(weighted_graph(op, dtype="f32", reduction="sum", ignore_index=3), target=target,
                       device=device, seed=0)
    weights = np.array([1.0, 4.0, 0.5, 2.0], np.float32)
    model.set_state({"cw": weights})
    before = model.evaluate(X, y)["loss"]
    history = model.fit(X, y, optimizer=bg.optim.Adam(lr=0.02), epochs=15, batch_size=16, verbose=False)
    after = model.evaluate(X, y)
    assert after["loss"] < 0.6 * before and history[-1]["loss"] < history[0]["loss"]
    np.testing.assert_array_equal(model.runtime.to_numpy(model.state["cw"]), weights)
    model.save(tmp_path / "m.npz")
    again = bg.load(tmp_path / "m.npz", device=device)
    np.testing.assert_array_equal(again.runtime.to_numpy(again.state["cw"]), weights)
    assert again.evaluate(X, y)["loss"] == pytest.approx(after["loss"], rel=1e-6)


@pytest.mark.parametrize("opts", [dict(), dict(ignore_index=1), dict(reduction="sum", ignore_index=0)])
def test_evaluate_in_chunks_equals_one_batch(opts):
    """evaluate weighs each chunk's mean by what it averages over (sum_i w_i), and adds sums."""
    model = bg.compile(weighted_graph(**opts), dtype="float64", seed=2)
    model.set_state({"cw": np.array([0.5, 2.0, 1.0, 3.0])})
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((23, 5)), labels_for(rng, 23, opts.get("ignore_index"))
    y[:5] = opts.get("ignore_index", 0)  # the first chunk of 5: every example ignored (with ignore_index)
    whole = model.evaluate(X, y, batch_size=None)["loss"]
    with np.errstate(invalid="ignore"):  # the all-ignored chunk's own mean is 0/0; it counts for nothing
        assert model.evaluate(X, y, batch_size=5)["loss"] == pytest.approx(whole, rel=1e-12)
    logits = model.forward(X)
    want = torch_loss("softmax_cross_entropy", torch.tensor(logits), y, np.array([0.5, 2.0, 1.0, 3.0]), opts)
    assert whole == pytest.approx(want.item(), rel=1e-10)


# ---- ONNX import -----------------------------------------------------------------------------------


def _onnx():
    """onnx, imported here so that the modules importing this one (kernel_zoo, weighted_graph) need
    no onnx; skipped without it, but required in CI (interop_support.need)."""
    from interop_support import need

    return need("onnx")


def _onnx_model(nodes, inputs, outputs, inits=(), opset=13):
    helper = _onnx().helper
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


FLOAT, INT64 = 1, 7  # onnx.TensorProto.FLOAT, INT64


def _vi(name, elem, shape):
    return _onnx().helper.make_tensor_value_info(name, elem, shape)


def _array(a, name):
    return _onnx().numpy_helper.from_array(a, name)


def _node(*args, **kwargs):
    return _onnx().helper.make_node(*args, **kwargs)


def test_an_onnx_weighted_loss_imports_with_its_weights_and_trains():
    rng = np.random.default_rng(11)
    W = rng.standard_normal((5, C)).astype(np.float32) * 0.3
    cw = np.array([1.0, 3.0, 0.5, 2.0], np.float32)
    nodes = [_node("Gemm", ["x", "W"], ["z"]),
             _node("SoftmaxCrossEntropyLoss", ["z", "y", "cw"], ["loss"], reduction="sum", ignore_index=2)]
    model = _onnx_model(nodes, [_vi("x", FLOAT, ["N", 5]), _vi("y", INT64, ["N"])],
                        [_vi("loss", FLOAT, [])],
                        [_array(W, "W"), _array(cw, "cw")])
    g = bg.from_onnx(model)
    assert [v.name for v in g.state] == ["cw"] and g.original_names["cw"] == "cw"
    assert "softmax_cross_entropy[ignore_index=2, reduction=sum] %z, %y, %cw" in str(g)
    np.testing.assert_array_equal(g.weights["cw"], cw)
    m = g.compile(dtype="float64")
    X = rng.standard_normal((40, 5))
    y = (X[:, :C] + 0.3 * rng.standard_normal((40, C))).argmax(axis=1)
    want = torch_loss("softmax_cross_entropy", torch.tensor(X @ W.astype(np.float64)), y, cw.astype(np.float64),
                      dict(reduction="sum", ignore_index=2))
    assert m.evaluate(X, y)["loss"] == pytest.approx(want.item(), rel=1e-10)
    m.fit(X, y, optimizer=bg.optim.Adam(lr=0.05), epochs=20, batch_size=8, verbose=False)
    assert m.evaluate(X, y)["loss"] < 0.5 * want.item()
    np.testing.assert_array_equal(m.state["cw"], cw)


def _refused(nodes, inputs, outputs, match, inits=()):
    from bngraph.interop.onnx_read import UnsupportedNode

    with pytest.raises(UnsupportedNode, match=match):
        bg.from_onnx(_onnx_model(nodes, inputs, outputs, inits), loss=None)


def x_in():
    return _vi("x", FLOAT, ["N", C])


def y_in():
    return _vi("y", INT64, ["N"])


def loss_out():
    return _vi("loss", FLOAT, [])


def test_onnx_loss_errors_name_the_node():
    sce = lambda ins, **at: _node("SoftmaxCrossEntropyLoss", ins, ["loss"], name="L", **at)  # noqa: E731
    _refused([sce(["x", "y"], reduction="avg")], [x_in(), y_in()], [loss_out()],
             r"ONNX node 'L' \(SoftmaxCrossEntropyLoss\): reduction='avg': expected one of mean, sum, none")
    from bngraph.interop.names import UnsafeModel

    with pytest.raises(UnsafeModel, match=r"onnx.checker: .*node name: L\): labels typestr: Tind"):  # float labels
        bg.from_onnx(_onnx_model([_node("Relu", ["x"], ["h"]), _node("Relu", ["x"], ["t"]), sce(["h", "t"])],
                                 [x_in()], [loss_out()]), loss=None)
    _refused([sce(["x", "y", "w"])], [x_in(), y_in()], [loss_out()],
             r"'L' \(SoftmaxCrossEntropyLoss\): class weights of shape \(3,\): expected \(4,\), one per class",
             [_array(np.ones(3, np.float32), "w")])
    _refused([sce(["x", "y"])], [x_in(), _vi("y", INT64, ["N", 2])], [loss_out()],
             r"labels 'y' must be a 1-D int32/int64 graph input, got element type 7 and shape \(\?, 2\)")
    _refused([_node("Relu", ["x"], ["h"]), sce(["h", "y"])],
             [_vi("x", FLOAT, ["N", C, 3]), _vi("y", INT64, ["N", 3])], [loss_out()],
             r"'L' \(SoftmaxCrossEntropyLoss\): needs 2-D scores \(N, C\), or N-D scores \(N, C, d1, ...\) that are a "
             r"graph input")
    _refused([_node("Softmax", ["x"], ["p"]),
              _node("NegativeLogLikelihoodLoss", ["p", "y"], ["loss"], name="L")], [x_in(), y_in()], [loss_out()],
             r"'L' \(NegativeLogLikelihoodLoss\): reads a Softmax's output \(probabilities, not log-probabilities\)")


def test_onnx_nll_after_log_softmax_is_one_fused_loss_and_nll_alone_is_nll():
    nll = _node("NegativeLogLikelihoodLoss", ["p", "y"], ["loss"], reduction="sum")
    fused = bg.from_onnx(_onnx_model([_node("LogSoftmax", ["x"], ["p"]), nll], [x_in(), y_in()], [loss_out()]),
                         loss=None)
    assert [n.op for n in fused.nodes] == ["softmax_cross_entropy"]
    alone = bg.from_onnx(_onnx_model([nll], [_vi("p", FLOAT, ["N", C]), y_in()], [loss_out()]), loss=None)
    assert [str(n) for n in alone.nodes] == ["%loss: f32[] = nll[reduction=sum] %p, %y"]


def test_a_log_softmax_output_exports_to_onnx(tmp_path):
    from interop_support import need

    ort = need("onnxruntime")
    model = bg.compile(weighted_graph("nll", dtype="f32", reduction="sum", ignore_index=1), seed=4)
    model.set_state({"cw": np.array([1.0, 2.0, 3.0, 4.0], np.float32)})
    X = np.random.default_rng(12).standard_normal((6, 5)).astype(np.float32)
    bg.to_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [n.op_type for n in _onnx().load(tmp_path / "m.onnx").graph.node][-1] == "LogSoftmax"
    (got,) = session.run(None, {session.get_inputs()[0].name: X})
    np.testing.assert_allclose(got, model.forward(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target, device", [("numpy", None), pytest.param("cuda", "emulator", marks=needs_emulator)])
def test_labels_outside_the_classes_are_refused_unless_they_are_the_ignore_index(target, device):
    """fit/evaluate/interpret take the loss's ignore_index (PyTorch's -100) as a label, and only it;
    accuracy leaves the ignored examples out."""
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, C, 40)
    y[::4] = -100
    model = bg.compile(weighted_graph(ignore_index=-100), target=target, device=device, dtype="float64")
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=10, verbose=False)
    kept = y != -100
    out = model.forward(X)
    assert model.evaluate(X, y)["accuracy"] == pytest.approx(float((out[kept].argmax(1) == y[kept]).mean()))
    with pytest.raises(bg.DataError, match=r"label -1 at row 0 is out of range: expected 0 <= label < 4 or the "
                                           r"loss's ignore_index -100"):
        model.evaluate(X, np.where(kept, y, -1))
    plain = bg.compile(weighted_graph(), dtype="float64")
    with pytest.raises(bg.DataError, match=r"label -100 at row 0 is out of range: expected 0 <= label < 4$"):
        plain.evaluate(X, y)
    from bngraph.init import init_values

    g = weighted_graph(ignore_index=-100).build()
    values = {**init_values(g, 0), "cw": np.ones(C)}
    loss = bg.interpret(g, {"x": X.T, "y": y}, values)["loss"]
    assert np.isfinite(loss)
    with pytest.raises(bg.IRError, match="out of range"):
        bg.interpret(g, {"x": X.T, "y": np.where(kept, y, -1)}, values)


def test_mlp_with_nll_puts_log_softmax_before_the_loss():
    g = bg.mlp([4, 6, 3], loss="nll")
    assert "%log_probs: f32[3,m] = log_softmax %out" in str(g)
    assert "= nll %log_probs, %y" in str(g)
    X = np.random.default_rng(0).standard_normal((30, 4))
    model = bg.compile(g)
    np.testing.assert_allclose(np.exp(model.forward(X)).sum(axis=1), 1.0, rtol=1e-5)
