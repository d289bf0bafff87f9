"""The NumPy target's spatial ops (conv, pooling, flatten) and spatial batch norm, against PyTorch.

* Every op, alone: the generated code of ``conv`` / ``conv_grad_input`` / ``conv_grad_weight`` and of
  each pool and its gradient equals ``torch.nn.functional`` and torch's autograd (same ``dy``) in
  float64, for conv1d and conv2d with stride, padding (symmetric and asymmetric), dilation and
  groups (depthwise included), max pooling with padding, dilation and ceil mode, average pooling
  with padding, ``count_include_pad`` and ceil mode, global average pooling, flatten and unflatten.
* Every program (train_step, forward, forward_train, evaluate) of a zoo of small graphs that uses
  every spatial op, fused (the default passes) and unfused (``passes=[]``: plain batchnorm,
  bias_add and sum_batch on spatial values), equals the reference interpreter in float64, and
  (float32) stays close to it; also when every spatial value is given a preallocated buffer.
* Whole models: ``bg.compile(g, dtype="float64")`` CNNs (Conv2d + BatchNorm2d, Conv1d +
  BatchNorm1d) against the same torch ``nn`` model holding the same values: loss, gradients of
  weights, gamma and beta, running statistics, the params after one SGD-momentum and one Adam
  step, eval-mode and train-mode outputs; central finite differences of a CNN's own loss.
* A golden snapshot of the generated module of a small CNN (tests/golden/codegen/cnn_small.py;
  ``BNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_numpy_spatial.py`` rewrites it); inputs
  that are not C-contiguous (the model's ``np.swapaxes`` feed) read right.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bngraph as bg
from bngraph.backends import get_target, liveness, lowering
from bngraph.backends.numpy_target.runtime import load_module
from bngraph.compiler import build_programs
from bngraph.ir import BATCH
from bngraph.ops_spatial import SPATIAL_OPS

from conftest import random_values
from test_codegen import check_golden_source, finite_difference_check, run_generated
from test_torch_oracle import our_grads

TOL = dict(rtol=1e-10, atol=1e-12)
TARGET = get_target("numpy")
PROGRAMS = ("train_step", "forward", "forward_train", "evaluate")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tt(a):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64)


def bm(a):
    """torch's (m, C, d...) -> bngraph's (C, m, d...)."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1))


def run_program(g, feeds: dict, values: dict, m: int) -> dict:
    """Render graph ``g`` as one program ``p`` on the NumPy target, load the module, run it."""
    g = g.build()
    return run_generated(load_module(TARGET.render({"p": g}, "f64", g.name).sources, g.name), "p", g, feeds, values, m)


# ---- every op alone, against torch.nn.functional and autograd -------------------------------------

# (input (C, d...), out_channels, kernel, stride, padding (PyTorch's, or 2k ONNX pads), dilation, groups)
CONVS = {
    "1d-stride2-pad1": ((3, 11), 4, 3, 2, 1, 1, 1),
    "1d-dilation2-groups": ((4, 12), 6, 3, 1, 2, 2, 2),
    "1d-asym-pads": ((2, 9), 3, 4, 1, (2, 1), 1, 1),
    "1d-depthwise": ((5, 10), 5, 3, 3, 1, 1, 5),
    "2d-plain": ((3, 7, 6), 4, 3, 1, 0, 1, 1),
    "2d-stride-pad": ((3, 9, 8), 6, 3, 2, 1, 1, 1),
    "2d-rect-kernel-dilation": ((2, 9, 10), 3, (2, 3), (1, 2), (1, 2), (2, 1), 1),
    "2d-asym-pads": ((3, 7, 7), 4, 3, 1, (0, 1, 2, 0), 1, 1),
    "2d-groups": ((4, 6, 6), 6, 3, 1, 1, 1, 2),
    "2d-depthwise-stride": ((6, 8, 7), 12, 3, 2, 1, 1, 6),
    "2d-1x1": ((5, 4, 4), 3, 1, 1, 0, 1, 1),
}


def _torch_pad(padding, k):
    """F.pad's argument for ONNX pads (b1.., e1..), last dimension first."""
    return [p for i in reversed(range(k)) for p in (padding[i], padding[k + i])]


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_and_its_gradients_equal_torch(case):
    shape, F_out, kernel, stride, padding, dilation, groups = CONVS[case]
    k, m = len(shape) - 1, 3
    g = bg.Graph("conv", "f64")
    x = g.input("x", shape)
    y = g.conv(x, F_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False, name="c")
    node, yt = g.producers()[y.name], y.type
    dy = g.input("dy", (yt.shape[0], *yt.shape[2:]))
    conv_attrs = {key: node.attr[key] for key in ("stride", "pads", "dilation", "groups")}
    g.add_node("conv_grad_input", ["c.W", dy], {**conv_attrs, "in_size": shape[1:]}, ["dx"])
    g.add_node("conv_grad_weight", [dy, x], {**conv_attrs, "kernel": g.value("c.W").type.shape[2:]}, ["dW"])
    g.outputs = [("out", y.name), ("dx", "dx"), ("grad.c.W", "dW")]
    rng = np.random.default_rng(len(case))
    X = rng.standard_normal((m, *shape))
    W = rng.standard_normal(g.value("c.W").type.shape)
    DY = rng.standard_normal((m, yt.shape[0], *yt.shape[2:]))
    got = run_program(g, {"x": bm(X), "dy": bm(DY)}, {"c.W": W}, m)

    xt, Wt = tt(X).requires_grad_(), tt(W).requires_grad_()
    pads = node.attr["pads"]
    conv = F.conv1d if k == 1 else F.conv2d
    ref = conv(F.pad(xt, _torch_pad(pads, k)), Wt, stride=node.attr["stride"], dilation=node.attr["dilation"],
               groups=groups)
    ref.backward(tt(DY))
    np.testing.assert_allclose(got["out"], bm(ref.detach().numpy()), **TOL, err_msg="y")
    np.testing.assert_allclose(got["dx"], bm(xt.grad.numpy()), **TOL, err_msg="dx")
    np.testing.assert_allclose(got["grad.c.W"], Wt.grad.numpy(), **TOL, err_msg="dW")


# (op, input (C, d...), kernel, stride, padding, extra DSL arguments)
POOLS = {
    "max1d": ("maxpool", (3, 11), 3, 2, 1, {}),
    "max1d-dilation-ceil": ("maxpool", (2, 12), 3, 2, 1, dict(dilation=2, ceil_mode=True)),
    "max2d": ("maxpool", (3, 8, 8), 2, 2, 0, {}),
    "max2d-overlap-pad": ("maxpool", (2, 7, 9), 3, 2, 1, {}),
    "max2d-ceil": ("maxpool", (2, 7, 6), 2, 2, 0, dict(ceil_mode=True)),
    "max2d-dilation-rect": ("maxpool", (2, 9, 8), (3, 2), (1, 2), (1, 0), dict(dilation=(2, 1))),
    "avg1d-pad-include": ("avgpool", (3, 10), 3, 2, 1, dict(count_include_pad=True)),
    "avg1d-pad-exclude-ceil": ("avgpool", (2, 10), 3, 2, 1, dict(count_include_pad=False, ceil_mode=True)),
    "avg2d": ("avgpool", (3, 8, 8), 2, 2, 0, {}),
    "avg2d-pad-exclude": ("avgpool", (2, 7, 9), 3, 2, 1, dict(count_include_pad=False)),
    "avg2d-ceil-include": ("avgpool", (2, 7, 6), 3, 2, 1, dict(ceil_mode=True, count_include_pad=True)),
    "avg2d-stride1": ("avgpool", (2, 5, 6), (2, 3), 1, 0, {}),
    "avg1d-long-exclude": ("avgpool", (2, 20), 3, 1, 1, dict(count_include_pad=False)),  # [2] + [3] * 18 + [2]
}


def _torch_pool(op, k, kernel, stride, padding, extra):
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=extra.get("ceil_mode", False))
    if op == "maxpool":
        return (F.max_pool1d if k == 1 else F.max_pool2d), {**kw, "dilation": extra.get("dilation", 1)}
    return (F.avg_pool1d if k == 1 else F.avg_pool2d), {**kw, "count_include_pad": extra.get("count_include_pad", True)}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pool_and_its_gradient_equal_torch(case):
    op, shape, kernel, stride, padding, extra = POOLS[case]
    k, m = len(shape) - 1, 4
    g = bg.Graph("pool", "f64")
    x = g.input("x", shape)
    y = getattr(g, op)(x, kernel, stride=stride, padding=padding, name="p", **extra)
    node = g.producers()[y.name]
    dy = g.input("dy", (y.type.shape[0], *y.type.shape[2:]))
    if op == "maxpool":
        g.add_node("maxpool_grad", [dy, x, y], dict(node.attr), ["dx"])
    else:
        g.add_node("avgpool_grad", [dy], {**node.attr, "in_size": shape[1:]}, ["dx"])
    g.outputs = [("out", y.name), ("dx", "dx")]
    rng = np.random.default_rng(len(case))
    X = rng.standard_normal((m, *shape))
    X[0, 0].flat[:4] = 0.5  # ties: the first maximum in row-major order takes the gradient, as torch
    DY = rng.standard_normal((m, y.type.shape[0], *y.type.shape[2:]))
    got = run_program(g, {"x": bm(X), "dy": bm(DY)}, {}, m)

    fn, kw = _torch_pool(op, k, kernel, stride, padding, extra)
    xt = tt(X).requires_grad_()
    ref = fn(xt, **kw)
    assert tuple(ref.shape[2:]) == tuple(y.type.shape[2:])
    ref.backward(tt(DY))
    np.testing.assert_allclose(got["out"], bm(ref.detach().numpy()), **TOL, err_msg="y")
    np.testing.assert_allclose(got["dx"], bm(xt.grad.numpy()), **TOL, err_msg="dx")


@pytest.mark.parametrize("shape", [(3, 7), (4, 5, 6)], ids=["1d", "2d"])
def test_global_avgpool_flatten_unflatten_equal_torch(shape):
    m, C = 5, shape[0]
    g = bg.Graph("glob", "f64")
    x = g.input("x", shape)
    pooled = g.global_avgpool(x, name="gp")
    flat = g.flatten(x, name="fl")
    dy = g.input("dy", (C, *(1,) * (len(shape) - 1)))
    g.add_node("global_avgpool_grad", [dy], {"in_size": shape[1:]}, ["dx"])
    g.add_node("unflatten", [flat], {"shape": shape}, ["back"])
    g.outputs = [("out", pooled.name), ("flat", flat.name), ("dx", "dx"), ("back", "back")]
    rng = np.random.default_rng(3)
    X = rng.standard_normal((m, *shape))
    DY = rng.standard_normal((m, C, *(1,) * (len(shape) - 1)))
    got = run_program(g, {"x": bm(X), "dy": bm(DY)}, {}, m)

    xt = tt(X).requires_grad_()
    ref = (F.adaptive_avg_pool1d if len(shape) == 2 else F.adaptive_avg_pool2d)(xt, 1)
    ref.backward(tt(DY))
    np.testing.assert_allclose(got["out"], bm(ref.detach().numpy()), **TOL)
    np.testing.assert_allclose(got["dx"], bm(xt.grad.numpy()), **TOL)
    np.testing.assert_array_equal(got["flat"], nn.Flatten()(tt(X)).numpy().T)  # features in torch's order
    np.testing.assert_array_equal(got["back"], bm(X))
    assert got["back"].flags.c_contiguous and got["flat"].flags.c_contiguous


# ---- every program of graphs using every spatial op, against the interpreter ----------------------


def spatial_graphs() -> dict:
    """Small graphs that between them use every spatial op (tests/test_codegen.py's coverage list)."""
    def cnn2d():
        g = bg.Graph("cnn2d", "f64")
        x, y = g.input("x", (3, 9, 8)), g.labels("y", 4)
        h = g.relu(g.batchnorm(g.conv(x, 6, 3, padding=1, stride=2, name="c1"), name="bn1"))
        h = g.maxpool(h, 2, ceil_mode=True)
        h = g.tanh(g.batchnorm(g.conv(h, 4, (2, 1), padding=(1, 0, 0, 0), groups=2, name="c2"), name="bn2"))
        h = g.avgpool(h, 2, stride=1, padding=1, count_include_pad=False)
        g.softmax_cross_entropy(g.matmul(g.flatten(g.global_avgpool(h)), 4, name="out"), y)
        return g

    def cnn1d():
        g = bg.Graph("cnn1d", "f64")
        x, y = g.input("x", (2, 12)), g.labels("y", 3)
        h = g.leaky_relu(g.conv(x, 4, 3, dilation=2, padding=2, name="c1"), 0.1)  # a conv bias, no batch norm
        h = g.maxpool(h, 3, stride=2, padding=1, dilation=2)
        h = g.relu(g.batchnorm(g.conv(h, 4, 3, groups=4, bias=False, name="dw"), name="bn1"))
        g.softmax_cross_entropy(g.matmul(g.flatten(h), 3, name="out"), y)
        return g

    return {"cnn2d": cnn2d, "cnn1d": cnn1d}


def _equals_interpreter(g, passes, m=5, rtol=1e-10, atol=1e-12, dtype="float64"):
    model_src = TARGET.render(build_programs(g, dtype, passes).programs, "f64" if dtype == "float64" else "f32", g.name)
    module = load_module(model_src.sources, g.name)
    programs = build_programs(g, "float64", passes).programs
    rng = np.random.default_rng(7)
    for name in PROGRAMS:
        prog = programs[name]
        feeds, values = random_values(prog, rng, m=m)
        ref = bg.interpret(prog, feeds, values)
        cast = (lambda a: a) if dtype == "float64" else (lambda a: a.astype(np.float32) if a.dtype == np.float64 else a)
        got = run_generated(module, name, prog, {k: cast(v) for k, v in feeds.items()},
                            {k: cast(v) for k, v in values.items()}, m)
        assert set(got) == set(ref), name
        for k in ref:
            np.testing.assert_allclose(np.asarray(got[k]), ref[k], rtol=rtol, atol=atol, err_msg=f"{name}: {k}")
    return model_src


@pytest.mark.parametrize("passes", [None, []], ids=["fused", "unfused"])
@pytest.mark.parametrize("key", sorted(spatial_graphs()))
def test_every_program_equals_the_interpreter(key, passes):
    g = spatial_graphs()[key]()
    rendered = _equals_interpreter(g, passes)
    ops = {n.op for p in rendered.plans.values() for n in p.graph.nodes}  # BN, bias, sum_batch on spatial values:
    assert ({"batchnorm", "batchnorm_grad", "sum_batch", "bias_add", "act_grad"} if passes == []
            else {"batchnorm_act", "batchnorm_act_grad", "running_update"}) <= ops


def test_float32_code_is_close_to_the_float64_interpreter():
    _equals_interpreter(spatial_graphs()["cnn2d"](), None, rtol=1e-4, atol=1e-5, dtype="float32")


def test_the_graphs_here_use_every_spatial_op():
    seen = {n.op for make in spatial_graphs().values() for passes in (None, [])
            for p in build_programs(make(), "float64", passes).programs.values() for n in p.nodes}
    assert set(SPATIAL_OPS) <= seen  # unflatten too: flatten's gradient, in train_step


def _spatial_buffers(t) -> bool:  # every value with the batch on axis 1: (features, m) and (C, m, d...)
    return t.rank >= 2 and t.shape[1] == BATCH


def test_programs_are_right_when_spatial_values_get_buffers(monkeypatch):
    """Spatial values written into preallocated (and shared) buffers: the templates' dest path."""
    monkeypatch.setattr(lowering, "is_batch_sized", _spatial_buffers)
    monkeypatch.setattr(liveness, "is_batch_sized", _spatial_buffers)
    for key, make in spatial_graphs().items():
        rendered = _equals_interpreter(make(), None)
        plan = rendered.plans["train_step"]
        buffers = dict(plan.buffers)
        assert all(d is not None for st in plan.steps for d, o in zip(st.dests, st.node.outputs) if o.type.rank > 2)
        assert any(len(keys) > 1 and t.rank > 2 for keys, t in plan.arrays), f"{key}: no spatial array shared"
        assert all(buffers[k].concrete_shape(5) == shape for keys, shape, _ in plan.array_shapes(5) for k in keys)


# ---- whole models against torch nn ----------------------------------------------------------------


class CNNTwin:
    """A bngraph CNN and the same torch nn.Sequential holding the same values (no conv bias before a
    batch norm, so that no fold of a bias has to be mirrored)."""

    def __init__(self, dim: int, seed: int = 0, target: str = "numpy", device=None):
        g = bg.Graph(f"cnn{dim}d", "f64")
        self.shape = (3, 10) if dim == 1 else (3, 9, 8)
        x, y = g.input("x", self.shape), g.labels("y", 5)
        h = g.relu(g.batchnorm(g.conv(x, 6, 3, stride=2, padding=1, bias=False, name="c1"), name="bn1", eps=1e-3,
                               momentum=0.2))
        h = g.tanh(g.conv(g.maxpool(h, 2, ceil_mode=True), 4, 2, padding=1, groups=2, name="c2"))  # a bias, no BN
        h = g.batchnorm(g.avgpool(h, 2, stride=1, padding=1, count_include_pad=False), name="bn2")
        g.softmax_cross_entropy(g.matmul(g.flatten(h), 5, name="out"), y)
        self.model = bg.compile(g, dtype="float64", seed=seed, target=target, device=device)
        Conv, BN = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        MaxPool, AvgPool = (nn.MaxPool1d, nn.AvgPool1d) if dim == 1 else (nn.MaxPool2d, nn.AvgPool2d)
        out_size = self.model.programs["train_step"].value("bn2").type.shape
        n_flat = out_size[0] * int(np.prod(out_size[2:]))
        self.net = nn.Sequential(
            Conv(3, 6, 3, stride=2, padding=1, bias=False), BN(6, eps=1e-3, momentum=0.2), nn.ReLU(),
            MaxPool(2, ceil_mode=True), Conv(6, 4, 2, padding=1, groups=2), nn.Tanh(),
            AvgPool(2, stride=1, padding=1, count_include_pad=False), BN(4), nn.Flatten(), nn.Linear(n_flat, 5),
        ).double()
        net = self.net
        self.names = {"c1.W": net[0].weight, "bn1.gamma": net[1].weight, "bn1.beta": net[1].bias,
                      "c2.W": net[4].weight, "c2.b": net[4].bias, "bn2.gamma": net[7].weight, "bn2.beta": net[7].bias,
                      "out.W": net[9].weight, "out.b": net[9].bias}
        rng = np.random.default_rng(seed + 100)
        params = dict(self.model.params)
        for bn in ("bn1", "bn2"):  # non-trivial gamma, beta, running statistics
            n = params[f"{bn}.gamma"].size
            params[f"{bn}.gamma"], params[f"{bn}.beta"] = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n)
        state = {k: (rng.uniform(0.5, 2.0, v.size) if k.endswith("var") else rng.normal(0, 0.5, v.size))
                 for k, v in self.model.state.items()}
        self.model.set_params(params)
        self.model.set_state(state)
        assert set(self.names) == set(self.model.params)
        with torch.no_grad():
            for name, p in self.names.items():
                p.copy_(tt(self.model.params[name]))
            for bn, mod in (("bn1", net[1]), ("bn2", net[7])):
                mod.running_mean.copy_(tt(state[f"{bn}.running_mean"]))
                mod.running_var.copy_(tt(state[f"{bn}.running_var"]))
        self.bns = {"bn1": net[1], "bn2": net[7]}

    def data(self, m, seed):
        rng = np.random.default_rng(seed)
        return rng.normal(0.3, 1.2, (m, *self.shape)), rng.integers(0, 5, m)

    def torch_state(self):
        return {f"{bn}.{s}": getattr(mod, s).numpy() for bn, mod in self.bns.items()
                for s in ("running_mean", "running_var")}


@pytest.mark.parametrize("dim", [1, 2], ids=["conv1d-bn1d", "conv2d-bn2d"])
def test_a_cnn_step_equals_torch(dim):
    tw = CNNTwin(dim)
    X, y = tw.data(6, seed=1)
    loss, grads, state = our_grads(tw.model, X, y)
    tw.net.train()
    ref = F.cross_entropy(tw.net(tt(X)), torch.tensor(y))
    ref.backward()
    np.testing.assert_allclose(loss, float(ref.detach()), **TOL, err_msg="loss")
    for name, p in tw.names.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), **TOL, err_msg=f"grad of {name}")
    for name, v in tw.torch_state().items():
        np.testing.assert_allclose(state[name], v, **TOL, err_msg=f"new {name}")


OPTIMIZERS = {
    "sgd-momentum": (lambda: bg.optim.SGD(lr=0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "adam": (lambda: bg.optim.Adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
}


TARGETS = {"numpy": ("numpy", None), "cuda-emulator": ("cuda", "emulator")}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dim", [1, 2], ids=["conv1d-bn1d", "conv2d-bn2d"])
def test_cnn_training_steps_and_outputs_equal_torch(dim, opt, target):
    """On every target (the CUDA target's kernels through the emulator): two training steps,
    the params, running statistics, eval and train-mode outputs and evaluate, against PyTorch."""
    tw = CNNTwin(dim, seed=dim, target=TARGETS[target][0], device=TARGETS[target][1])
    ours, theirs = OPTIMIZERS[opt]
    ob, ot = ours(), theirs(list(tw.names.values()))
    for step, m in enumerate((6, 5)):  # two steps (the second sees momentum / Adam's moments)
        X, y = tw.data(m, seed=10 + step)
        tw.net.train()
        ot.zero_grad()
        lt = F.cross_entropy(tw.net(tt(X)), torch.tensor(y))
        lt.backward()
        ot.step()
        lo = tw.model.train_step(X, y, ob)
        np.testing.assert_allclose(lo, float(lt.detach()), **TOL, err_msg=f"loss of step {step + 1}")
    for name, p in tw.names.items():
        np.testing.assert_allclose(tw.model.params[name], p.detach().numpy(), **TOL, err_msg=f"param {name}")
    for name, v in tw.torch_state().items():
        np.testing.assert_allclose(tw.model.state[name], v, **TOL, err_msg=f"state {name}")
    X, y = tw.data(7, seed=99)
    tw.net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(tw.model.forward(X), tw.net(tt(X)).numpy(), **TOL, err_msg="eval-mode output")
        eval_loss = float(F.cross_entropy(tw.net(tt(X)), torch.tensor(y)))
    np.testing.assert_allclose(tw.model.evaluate(X, y)["loss"], eval_loss, **TOL)
    before = {k: v.copy() for k, v in tw.model.state.items()}
    tw.net.train()
    with torch.no_grad():
        np.testing.assert_allclose(tw.model.forward(X, training=True), tw.net(tt(X)).numpy(), **TOL,
                                   err_msg="train-mode output")
    for k, v in tw.model.state.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"forward(training=True) changed {k}")


def test_cnn_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    tw = CNNTwin(2, seed=4)
    X, y = tw.data(5, seed=3)
    finite_difference_check(tw.model, X, y, rng, entries=3)


# ---- the generated code ----------------------------------------------------------------------------


def small_cnn():
    g = bg.Graph("cnn")
    x, y = g.input("x", (1, 8, 8)), g.labels("y", 10)
    h = g.relu(g.batchnorm(g.conv(x, 8, 3, padding=1, name="conv1"), name="bn1"))
    h = g.maxpool(h, 2)
    h = g.relu(g.batchnorm(g.conv(h, 16, 3, padding=1, groups=2, name="conv2"), name="bn2"))
    g.softmax_cross_entropy(g.matmul(g.flatten(g.global_avgpool(h)), 10, name="out"), y)
    return g


def test_generated_cnn_module_matches_golden_without_loops_over_pixels_or_scatters():
    (src,) = bg.emit(small_cnn(), target="numpy").values()
    check_golden_source("cnn_small.py", src)
    assert "np.add.at" not in src
    loops = [ln.strip() for ln in src.splitlines() if ln.strip().startswith("for ")]
    # the loops there are over kernel offsets (col2im, the pool and its gradient), nothing else
    assert loops and all(ln.startswith(("for i, j in np.ndindex(3, 3):", "for i, j in np.ndindex(2, 2):"))
                         for ln in loops)
    assert "sliding_window_view" in src  # im2col through a strided view


@pytest.mark.parametrize("first", ["batchnorm", "conv", "maxpool", "avgpool", "flatten"])
def test_ops_reading_the_input_directly_take_the_models_non_contiguous_layout(first):
    """The model feeds x as np.swapaxes(X, 0, 1), a view that is not C-contiguous: an op reading it
    without padding (strided slices, the (C, m*d) view of batch norm) must still see the right numbers."""
    g = bg.Graph("direct", "f64")
    x, y = g.input("x", (2, 6, 5)), g.labels("y", 3)
    h = {"batchnorm": lambda: g.batchnorm(x, name="bn0"), "conv": lambda: g.conv(x, 3, 2, bias=False, name="c0"),
         "maxpool": lambda: g.maxpool(x, 2, stride=1), "avgpool": lambda: g.avgpool(x, 2, stride=(2, 1)),
         "flatten": lambda: x}[first]()
    g.softmax_cross_entropy(g.matmul(g.flatten(g.tanh(h)), 3, name="out"), y)
    model = bg.compile(g, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((7, 2, 6, 5)), rng.integers(0, 3, 7)
    assert not model._feeds(X, Y)["x"].flags.c_contiguous  # what the generated code is given
    loss, grads, state = our_grads(model, X, Y)
    prog = model.programs["train_step"]
    ref = bg.interpret(prog, {"x": bm(X), "y": Y}, {**model.params, **model.state})
    np.testing.assert_allclose(loss, ref["loss"], **TOL)
    for name, gr in grads.items():
        np.testing.assert_allclose(gr, ref[f"grad.{name}"], **TOL, err_msg=name)
    for name, s in state.items():
        np.testing.assert_allclose(s, ref[f"state.{name}"], **TOL, err_msg=name)
    fwd = bg.interpret(model.programs["forward"], {"x": bm(X)}, {**model.params, **model.state})["out"]
    np.testing.assert_allclose(model.forward(X), fwd.T, **TOL)
