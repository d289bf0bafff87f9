"""The CUDA target's spatial ops (issue 19, point 4): convolution (im2col + cuBLAS, grouped convs as
strided-batched GEMMs), pooling, global average pooling, flatten/unflatten, and batch norm, bias and
the bias gradient on spatial values (rows of m*d1*d2 examples, cut into segments when long).

Every program of small graphs (train_step: the loss, every gradient, the new running statistics;
forward, evaluate, forward_train) run on the CPU emulator against the reference interpreter
(bngraph.interpreter: bngraph.spatial's NumPy semantics, checked against PyTorch), float64 to 1e-10,
with every buffer poisoned first (an element no kernel writes stays NaN); float32 within
tests/roundoff.py's bound; training steps with SGD-momentum and Adam against the optimizers'
formulas on the interpreter's gradients; a CNN step on the execution model (real grids and blocks);
nvcc/ptxas on every spatial kernel (tests/test_cuda_spatial_nvcc.py).
"""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target.kernel_source import strip_comments
from bngraph.interpreter import interpret
from roundoff import float32_bounds

PROGRAMS = ("train_step", "forward", "evaluate", "forward_train")


def spatial_graph(body, shape=(2, 7, 6), dtype="f64", name="sp"):
    """x (shape) -> a 1x1 conv (so the op under test gets an input gradient) -> body -> flatten ->
    linear -> softmax cross-entropy over 3 classes."""
    g = bg.Graph(name, dtype)
    x, y = g.input("x", shape), g.labels("y", 3)
    h = body(g, g.conv(x, 4, 1, bias=False, name="pre"))
    g.softmax_cross_entropy(g.matmul(g.flatten(h), 3, name="out"), y)
    return g


def cnn(dtype="f64", shape=(1, 8, 8), groups=2, name="cnn"):
    """Two conv+BN+ReLU blocks (the second grouped), max pool, global average pool, a linear head."""
    g = bg.Graph(name, dtype)
    x, y = g.input("x", shape), g.labels("y", 5)
    h = g.relu(g.batchnorm(g.conv(x, 4, 3, padding=1, name="conv1"), name="bn1"))
    h = g.maxpool(h, 2)
    h = g.relu(g.batchnorm(g.conv(h, 6, 3, padding=1, groups=groups, name="conv2"), name="bn2"))
    g.softmax_cross_entropy(g.matmul(g.flatten(g.global_avgpool(h)), 5, name="out"), y)
    return g


def host(model, a):
    a = model.runtime.to_numpy(a) if not isinstance(a, np.ndarray) else a
    return np.asarray(a)


def poison(model, sizes):
    """NaN in every buffer (each its own array) and gradient: an element no kernel writes stays NaN."""
    for plan in model.executable.plans.values():
        plan.slots = {k: i for i, (k, _) in enumerate(plan.buffers)}
    for program in PROGRAMS:
        for m in sizes:
            for b in model.executable.buffers(program, m).values():
                b[...] = np.nan
    for v in model.grads.values():
        v[...] = np.nan


def data(model, m, seed=0):
    rng = np.random.default_rng(seed)
    shape = model.programs["forward"].inputs[0].type.shape
    X = rng.standard_normal((m, shape[0], *shape[2:]))
    return X, rng.integers(0, model.classes, m)


def run_both(model, program, X, y, wide=False):
    """(the kernels' outputs, the interpreter's) for one program at one batch."""
    feeds = model._feeds(X, y if program in ("train_step", "evaluate") else None)
    got = {k: host(model, v) for k, v in model._run(program, feeds, X.shape[0]).items()}
    cast = (lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a) if wide else (lambda a: a)
    values = {k: cast(host(model, v)) for k, v in {**model.params, **model.state}.items()}
    want = interpret(model.programs[program], {k: cast(host(model, v)) for k, v in feeds.items()}, values)
    assert set(got) == set(want)
    return got, want, feeds


def assert_programs_match(model, sizes=(3,), tol=1e-10, seed=0):
    poison(model, sizes)
    for m in sizes:
        X, y = data(model, m, seed)
        for program in PROGRAMS:
            got, want, _ = run_both(model, program, X, y)
            for k in want:
                assert np.all(np.isfinite(got[k])), f"{program} {k} m={m}: an element was not written"
                scale = max(1.0, float(np.abs(want[k]).max()))
                err = float(np.abs(got[k] - want[k]).max())
                assert err <= tol * scale, f"{program} {k} m={m}: off by {err:.3g}"


CASES = {
    "conv2d_stride_pad": lambda g, h: g.conv(h, 3, 3, stride=2, padding=1),
    "conv2d_asymmetric_pads": lambda g, h: g.conv(h, 3, (3, 2), stride=(2, 1), padding=(0, 1, 2, 1)),
    "conv2d_dilation": lambda g, h: g.conv(h, 3, 3, dilation=2, padding=(1, 2)),
    "conv2d_groups_bias_relu": lambda g, h: g.relu(g.conv(h, 6, 3, groups=2, padding=1)),
    "conv2d_depthwise": lambda g, h: g.conv(h, 8, 3, groups=4, stride=2, bias=False),
    "maxpool_ceil_pad": lambda g, h: g.maxpool(h, 3, stride=2, padding=1, ceil_mode=True),
    "maxpool_dilation": lambda g, h: g.maxpool(h, 2, stride=1, dilation=2),
    # relu's zeros tie inside overlapping windows: dy goes to each window's first maximum
    "maxpool_ties": lambda g, h: g.maxpool(g.relu(h), 2, stride=1),
    "avgpool_include_pad": lambda g, h: g.avgpool(h, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    "avgpool_exclude_pad": lambda g, h: g.avgpool(h, (3, 2), stride=2, padding=(1, 0, 1, 1), ceil_mode=True,
                                                  count_include_pad=False),
    "global_avgpool": lambda g, h: g.global_avgpool(h),
}
CASES_1D = {
    "conv1d": lambda g, h: g.conv(h, 3, 3, stride=2, padding=(1, 2), dilation=2),
    "conv1d_groups": lambda g, h: g.conv(h, 4, 2, groups=2),
    "maxpool1d_ceil": lambda g, h: g.maxpool(h, 3, stride=2, ceil_mode=True),
    "avgpool1d": lambda g, h: g.avgpool(h, 2, stride=2, padding=1, count_include_pad=False),
    "global_avgpool1d": lambda g, h: g.global_avgpool(h),
}


@pytest.mark.parametrize("case", list(CASES))
def test_2d_op_every_program_equals_the_reference_float64(case):
    g = spatial_graph(CASES[case], name=case)
    assert_programs_match(bg.compile(g, target="cuda", device="emulator", dtype="float64"), sizes=(3, 2))


@pytest.mark.parametrize("case", list(CASES_1D))
def test_1d_op_every_program_equals_the_reference_float64(case):
    g = spatial_graph(CASES_1D[case], shape=(2, 11), name=case)
    assert_programs_match(bg.compile(g, target="cuda", device="emulator", dtype="float64"), sizes=(3,))


def test_the_ops_lower_to_their_kernels_and_strided_batched_gemms():
    src = bg.emit(cnn(), target="cuda", dtype="f64")
    cu, py = src["cnn_cuda.cu"], src["cnn_cuda.py"]
    for comment in ("// %conv1.conv: f64[4,m,8,8] = conv[", "= conv_grad_weight[", "= conv_grad_input[",
                    "= maxpool[", "= maxpool_grad[", "= global_avgpool %", "= global_avgpool_grad[",
                    "= flatten %", "= unflatten["):
        assert comment in cu, comment
    code = strip_comments(cu.split("// ======== train_step")[1].split("// ======== forward")[0])
    assert "__global__" in code and "atomic" not in code  # the gathers write each element once: no atomics
    # groups=2: 3-D operands, one strided-batched GEMM per product; groups=1: plain 2-D ones
    assert 'P["conv2.W"].reshape(2, 3, 18)' in py and 'P["conv1.W"].reshape(4, 9)' in py
    assert "segments(4, m * 64)" in py and "np.int32(m * 64)" in py  # spatial BN: rows of m*8*8
    # the backward's columns reuse the forward's arrays (typed (C*k*o, m): shared like activations)
    assert 'B["conv1.W.grad.cols"] reuses the array of B["' in py


def test_emulator_gemm_is_per_group_for_3d_operands():
    from bngraph.backends.cuda_target.emulator import gemm

    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 6, 5))
    C = np.empty((3, 4, 6))
    gemm(False, True, 4, 6, 5, A, B, C)
    np.testing.assert_allclose(C, np.stack([a @ b.T for a, b in zip(A, B)]), rtol=1e-14)


@pytest.mark.parametrize("shape,m", [((1, 8, 8), 3), ((1, 32, 32), 3)], ids=["rows-whole", "rows-in-segments"])
def test_cnn_every_program_equals_the_reference_float64(shape, m):
    """A CNN's spatial batch norm on rows of m*d1*d2: 3*64 (a block a channel) and 3*1024 = 3072
    (longer than a float64 block keeps in registers at 256 threads: cut into segments)."""
    model = bg.compile(cnn(shape=shape), target="cuda", device="emulator", dtype="float64")
    py = model.sources["cnn_cuda.py"]
    n = m * shape[1] * shape[2]
    segs = {}
    exec(py.split("def train_step")[0], segs)  # the driver's constants and segments()
    assert (segs["segments"](4, n) > 1) == (n > 2048)
    assert_programs_match(model, sizes=(m,))


def test_cnn_float32_within_the_roundoff_bound():
    model = bg.compile(cnn("f32"), target="cuda", device="emulator", dtype="float32")
    poison(model, (2, 5))
    for m in (2, 5):
        X, y = data(model, m, seed=m)
        for program in PROGRAMS:
            got, want, feeds = run_both(model, program, X, y, wide=True)
            bounds = float32_bounds(model, program, feeds, seed=m)
            for k in want:
                diff = float(np.abs(np.asarray(got[k], np.float64) - want[k]).max())
                assert diff <= bounds[k], f"{program} {k} m={m}: {diff:.3g} > bound {bounds[k]:.3g}"


def _sgd_momentum(p, g, slot, lr=0.1, mu=0.9):
    v = g.copy() if slot is None else mu * slot + g  # PyTorch: the buffer starts as the first gradient
    return p - lr * v, v


def _adam(p, g, slot, t, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m_, v_ = slot if slot is not None else (np.zeros_like(g), np.zeros_like(g))
    m_, v_ = b1 * m_ + (1 - b1) * g, b2 * v_ + (1 - b2) * g * g
    return p - lr * (m_ / (1 - b1 ** t)) / (np.sqrt(v_ / (1 - b2 ** t)) + eps), (m_, v_)


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_cnn_training_steps_equal_the_reference(opt):
    """Two steps: the loss, the params after each (the optimizer's formula on the interpreter's
    gradients) and the running statistics, float64."""
    model = bg.compile(cnn(), target="cuda", device="emulator", dtype="float64")
    optimizer = bg.optim.SGD(lr=0.1, momentum=0.9) if opt == "sgd_momentum" else bg.optim.Adam(lr=0.01)
    P = {k: host(model, v).copy() for k, v in model.params.items()}
    S = {k: host(model, v).copy() for k, v in model.state.items()}
    slots = dict.fromkeys(P)
    for t in (1, 2):
        X, y = data(model, 6, seed=t)
        feeds = {k: host(model, v) for k, v in model._feeds(X, y).items()}
        want = interpret(model.programs["train_step"], feeds, {**P, **S})
        loss = model.train_step(X, y, optimizer)
        assert abs(loss - float(want["loss"])) <= 1e-10 * max(1.0, abs(loss))
        for k in P:
            g = want[f"grad.{k}"]
            P[k], slots[k] = _sgd_momentum(P[k], g, slots[k]) if opt == "sgd_momentum" else _adam(P[k], g, slots[k], t)
            np.testing.assert_allclose(host(model, model.params[k]), P[k], rtol=0, atol=1e-10, err_msg=f"{k} step {t}")
        for k in S:
            S[k] = want[f"state.{k}"]
            np.testing.assert_allclose(host(model, model.state[k]), S[k], rtol=0, atol=1e-10, err_msg=f"{k} step {t}")


def test_cnn_step_on_the_execution_model_with_odd_shapes():
    """Real grids and blocks, concurrent threads, poisoned memory: an odd input (7x5), m = 3, the
    grouped conv, every program; and rows long enough to be cut into segments (m*d = 3*33*33)."""
    g = spatial_graph(lambda g, h: g.relu(g.batchnorm(g.conv(h, 6, 3, groups=2, padding=(1, 0, 1, 1), stride=(2, 1),
                                                             name="c"), name="bn")),
                      shape=(2, 7, 5), name="odd")
    model = bg.compile(g, target="cuda", device="emulator-threads", dtype="float64")
    assert_programs_match(model, sizes=(3,))
    long_rows = cnn(shape=(1, 33, 33), name="long")
    model = bg.compile(long_rows, target="cuda", device="emulator-threads", dtype="float64")
    X, y = data(model, 3)
    got, want, _ = run_both(model, "train_step", X, y)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-10 * max(1.0, float(np.abs(want[k]).max())),
                                   err_msg=k)
    assert any(name.endswith("_partial") for name, _, _ in model.runtime.launcher.history)


def _op_graph(name, ops, inputs, dtype="f64"):
    """A graph of single spatial nodes on inputs (name -> shape without m), outputs named as the nodes."""
    from bngraph.ir import BATCH, Node, TensorType, Value
    from bngraph.ops import OPS

    ins = [Value(k, TensorType(dtype, (s[0], BATCH, *s[1:])), "input") for k, s in inputs.items()]
    types = {v.name: v.type for v in ins}
    nodes = []
    for out, op, args, attrs in ops:
        at = OPS[op].normalize_attrs(out, attrs)
        (t,) = OPS[op].infer(out, [types[a] for a in args], at)
        types[out] = t
        nodes.append(Node.make(op, args, [Value(out, t)], at))
    return bg.verify(bg.FrozenGraph(name, dtype, inputs=ins, params=[], state=[], nodes=nodes,
                                    outputs=[(n.out.name, n.out.name) for n in nodes]))


def _run_cuda(g, feeds, m, device="emulator"):
    from bngraph.backends import get_target

    t = get_target("cuda")
    exe = t.runtime(device).load(t.renderer.render({"forward": g}, g.dtype, g.name))
    out = exe.run("forward", {k: exe.runtime.asarray(v, v.dtype) for k, v in feeds.items()}, {}, {}, None, m)
    return {k: np.asarray(exe.runtime.to_numpy(v)) for k, v in out.items()}


@pytest.mark.parametrize("device", ["emulator", "emulator-threads"])
def test_maxpool_ties_and_nans_follow_the_reference(device):
    """Integer data tie inside overlapping windows (stride 1, padding, ceil mode): max pool's
    gradient goes to each window's first maximum in row-major order; a NaN wins its window (forward)
    and takes its gradient (backward), as bngraph.spatial (PyTorch) does. Exact, op by op."""
    from bngraph import spatial

    a = dict(kernel=(3, 2), stride=(1, 2), pads=(1, 1, 0, 1), dilation=(1, 1), ceil_mode=True)
    rng = np.random.default_rng(3)
    m, x = 3, rng.integers(0, 3, (2, 3, 5, 6)).astype(np.float64)
    x[1, 2, 3, 4] = np.nan
    y = spatial.maxpool(x, a["kernel"], a["stride"], a["pads"], a["dilation"], True)
    dy = rng.standard_normal(y.shape)
    g = _op_graph("ties", [("y", "maxpool", ["x"], a), ("dx", "maxpool_grad", ["dy", "x", "yr"], a)],
                  {"x": (2, 5, 6), "dy": (2, *y.shape[2:]), "yr": (2, *y.shape[2:])})
    got = _run_cuda(g, {"x": x, "dy": dy, "yr": y}, m, device)
    np.testing.assert_array_equal(got["y"], y)
    want = spatial.maxpool_grad(dy, x, y, a["kernel"], a["stride"], a["pads"], a["dilation"], True)
    np.testing.assert_array_equal(got["dx"], want)
