"""The CUDA target without a GPU: rendering, nvcc, snapshots, and the kernels run by the emulator.

* ``bg.emit(g, target="cuda")`` gives the ``.cu`` kernels and the Python host driver without
  importing CuPy; ``bg.compile(g, target="cuda")`` without CuPy or a GPU is one clear error.
* Every kernel generated for a matrix of graphs (every activation and loss, float32 and float64,
  widths 1, 3, 1000 and 4097, with and without bias and batch norm; the elementwise arithmetic of
  tests/test_binary_ops.py) compiles with
  ``nvcc -arch=sm_90`` (nvcc is installed on these machines and in CI; the test is skipped only
  where it is missing).
* Golden snapshots of the rendered ``.cu`` and driver for one model.
* The emulator (``device="emulator"``) runs the same kernels on the CPU: every program equals the
  NumPy target's (float64 to 1e-12, float32 within the rounding bound of tests/roundoff.py,
  from each program's conditioning), every output element is written (buffers
  poisoned with NaN first), batch norm stays exact on data whose mean is large against its
  spread, and a model trains to the NumPy target's numbers.

GPU runs of the same checks are in tests/test_cuda_gpu.py (marked ``gpu``).
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg

from bngraph.backends import get_target
from roundoff import float32_bounds
from test_codegen import check_golden_source
from test_loss_variants import kernel_zoo

PROGRAMS = ("train_step", "forward", "forward_train", "evaluate")


def emulated(g, dtype="float64", passes=None, seed=0):
    return bg.compile(g, target="cuda", device="emulator", dtype=dtype, passes=passes, seed=seed)


def layered_graph(loss: str, dtype: str, widths=(3, 1000, 1, 4097), features=5, outputs=3):
    """Every activation, with and without bias and batch norm, odd widths: one graph per loss."""
    g = bg.Graph(f"matrix_{loss}", dtype)
    h = g.input("x", features)
    y = g.labels("y", outputs) if loss == "softmax_cross_entropy" else g.input("t", outputs)
    acts = list(bg.ACTIVATIONS)
    for k, (units, act) in enumerate(zip(itertools.cycle(widths), acts * 2), start=1):
        bias, bn = k % 2 == 1, k % 3 != 0
        h = g.matmul(h, units, bias=bias, name=f"fc{k}")
        if bn:
            h = g.batchnorm(h, name=f"bn{k}")
        extra = {"negative_slope": 0.2 if k < 6 else 1.5} if act == "leaky_relu" else {}
        h = g.activation(h, act, name=f"a{k}", **extra)
    h = g.matmul(h, outputs, name="out")
    g.loss(loss, h, y)
    return g


# ---- without CuPy --------------------------------------------------------------------------------


def test_emit_renders_kernels_and_driver_without_importing_cupy():
    code = ("import sys, bngraph as bg\n"
            "src = bg.emit(bg.mlp([4, 5, 3]), target='cuda')\n"
            "assert sorted(src) == ['mlp_cuda.cu', 'mlp_cuda.py'], sorted(src)\n"
            "assert 'cupy' not in sys.modules\n"
            "print(len(src['mlp_cuda.cu']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_compile_without_cupy_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError, as without CuPy
    with pytest.raises(bg.IRError, match=r"the cuda target needs CuPy and an NVIDIA GPU: install the extra with "
                                         r"pip install 'cupy-cuda13x\[ctk\]' \(in a checkout of bngraph: pip install "
                                         r"'\.\[cuda\]'\)"):
        bg.compile(bg.mlp([4, 5, 3]), target="cuda")


def test_cli_train_on_cuda_without_a_gpu_exits_2(monkeypatch, capsys):
    from bngraph.cli import main

    monkeypatch.setitem(sys.modules, "cupy", None)
    assert main(["train", "--target", "cuda", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the cuda target needs CuPy" in err[0]


# ---- the generated text ---------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["cu", "py"])
def test_cuda_source_matches_golden(part):
    src = bg.emit(bg.mlp([4, 5, 3]), target="cuda")[f"mlp_cuda.{part}"]
    check_golden_source(f"mlp_4_5_3_cuda.{part}", src)


def test_every_node_is_a_comment_in_the_driver_and_kernels_are_named_by_program():
    from bngraph.printer import format_node

    model_src = bg.emit(bg.mlp([4, 5, 3]), target="cuda")
    driver, cu = model_src["mlp_cuda.py"], model_src["mlp_cuda.cu"]
    # the programs as the target lowers them: after its pre-lowering passes (fuse_loss_grad)
    programs = get_target("cuda").renderer.lower(bg.compile(bg.mlp([4, 5, 3])).programs)
    for name, prog in programs.items():
        fn = driver[driver.index(f"def {name}("):]
        fn = fn[:fn.index("\n\n\n")] if "\n\n\n" in fn else fn
        comments = [ln.strip()[2:] for ln in fn.splitlines() if ln.strip().startswith("# %")]
        assert comments == [format_node(n) for n in prog.nodes], name
    for launched in {ln.split('"')[1] for ln in driver.splitlines() if "launch(\"" in ln}:
        assert re.search(rf'extern "C" __global__ void (__launch_bounds__\([^)]*\) )?{launched}\(', cu), launched
    assert "train_step__loss" in cu and "train_step__out_grad" not in cu  # the loss and its gradient: one kernel
    assert "= softmax_cross_entropy_and_grad %out, %y, %loss.grad" in cu  # ... one node, printed above it


# ---- nvcc ----------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")


def _nvcc(path: Path):
    return subprocess.run([NVCC, "-arch=sm_90", "-c", str(path), "-o", str(path.with_suffix(".o"))],
                          capture_output=True, text=True)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_generated_kernel_compiles_with_nvcc(tmp_path):
    sources = {}
    for loss, dtype in itertools.product(("softmax_cross_entropy", "mse", "sigmoid_bce"), ("f32", "f64")):
        g = layered_graph(loss, dtype)
        for passes in (None, []):
            src = bg.emit(g, target="cuda", dtype=dtype, passes=passes)[f"{g.name}_cuda.cu"]
            sources[f"{loss}_{dtype}_{'fused' if passes is None else 'plain'}"] = src
        inf = bg.emit(g, target="cuda", dtype=dtype, inference=True)[f"{g.name}_cuda.cu"]
        sources[f"{loss}_{dtype}_inference"] = inf
    for dtype in ("f32", "f64"):  # every class loss variant: loss, gradient and fused kernels (+ log_softmax)
        zoo = kernel_zoo(dtype)
        sources[f"class_losses_{dtype}"] = get_target("cuda").renderer.render(
            {"forward": zoo}, dtype, zoo.name).sources[f"{zoo.name}_cuda.cu"]
    from test_binary_ops import arithmetic_graph  # add, sub, mul, div, neg and their gradients

    for dtype in ("f32", "f64"):
        sources[f"arithmetic_{dtype}"] = bg.emit(arithmetic_graph(dtype), target="cuda", dtype=dtype)["arith_cuda.cu"]
    paths = []
    for key, src in sources.items():
        p = tmp_path / f"{key}.cu"
        p.write_text(src)
        paths.append(p)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_nvcc, paths))
    for p, r in zip(paths, results):
        assert r.returncode == 0, f"{p.name}:\n{r.stderr[-3000:]}"
        assert "warning" not in r.stderr.lower(), f"{p.name}:\n{r.stderr[-3000:]}"


# ---- the emulator: the kernels' numbers ---------------------------------------------------------


def _poison(model, sizes=(7, 9)):
    """NaN in every buffer and gradient: an output element a kernel forgets stays NaN. Each buffer
    gets an array of its own first (no buffer sharing), else a forgotten element could keep an
    earlier value's numbers instead of NaN (tests/test_buffer_sharing.py checks the sharing)."""
    for plan in model.executable.plans.values():
        plan.slots = {k: i for i, (k, _) in enumerate(plan.buffers)}
    for program in PROGRAMS:
        for m in sizes:
            for b in model.executable.buffers(program, m).values():
                b[...] = np.nan
    for v in model.grads.values():
        v[...] = np.nan


def _feeds(model, rng, m):
    X = rng.standard_normal((m, model.n_features))
    if model.classes is not None:
        y = rng.integers(0, model.classes, m)
    elif model.loss_kind == "sigmoid_bce":
        y = rng.uniform(0, 1, (m, model.n_outputs))
    else:
        y = rng.standard_normal((m, model.n_outputs))
    return X, y


def _compare_programs(ref, emu, rtol, atol, sizes=(7, 9)):
    _poison(emu)
    rng = np.random.default_rng(0)
    for m in sizes:
        X, y = _feeds(ref, rng, m)
        for program in PROGRAMS:
            with_y = program in ("train_step", "evaluate")
            a = ref._run(program, ref._feeds(X, y if with_y else None), m)
            b = emu._run(program, emu._feeds(X, y if with_y else None), m)
            assert set(a) == set(b)
            for k in a:
                got = np.asarray(b[k])
                assert np.all(np.isfinite(got)), f"{program} {k}: an element was not written"
                scale = max(1.0, float(np.abs(a[k]).max()))
                np.testing.assert_allclose(got, a[k], rtol=rtol, atol=atol * scale, err_msg=f"{program} {k} m={m}")


def _compare_float32(ref, emu, sizes=(2, 3, 7, 9), extra=lambda scale: 0.0, seed=0) -> float:
    """float32: every output of every program within the bound of tests/roundoff.py, computed from
    the program's conditioning at these inputs (``extra(scale)``: a further allowance, e.g. the
    GPU numerics'). Returns the largest difference over its bound."""
    _poison(emu, sizes)
    rng, worst = np.random.default_rng(seed), 0.0
    for m in sizes:
        X, y = _feeds(ref, rng, m)
        for program in PROGRAMS:
            with_y = program in ("train_step", "evaluate")
            feeds = ref._feeds(X, y if with_y else None)
            bounds = float32_bounds(ref, program, feeds, seed=m)
            a = ref._run(program, feeds, m)
            b = emu._run(program, emu._feeds(X, y if with_y else None), m)
            for k in a:
                got, want = np.asarray(b[k], np.float64), np.asarray(a[k], np.float64)
                assert np.all(np.isfinite(got)), f"{program} {k} m={m}: an element was not written"
                tol = bounds[k] + extra(max(1.0, float(np.abs(want).max())))
                diff = float(np.abs(got - want).max())
                assert diff <= tol, f"{program} {k} m={m}: kernels and NumPy differ by {diff:.3g} > bound {tol:.3g}"
                worst = max(worst, diff / tol)
    return worst


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
@pytest.mark.parametrize("passes", [None, []], ids=["fused", "plain"])
def test_emulated_programs_equal_the_numpy_target_float64(loss, passes):
    """Every op in every program, widths 1, 3, 6, 7, every activation: float64 to 1e-12."""
    g = layered_graph(loss, "f64", widths=(3, 7, 1, 6))
    _compare_programs(bg.compile(g, dtype="float64", passes=passes, seed=1),
                      emulated(g, dtype="float64", passes=passes, seed=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
@pytest.mark.parametrize("act", sorted(bg.ACTIVATIONS))
def test_emulated_programs_equal_the_numpy_target_float32(loss, act):
    """float32: the kernels accumulate in double, NumPy in float32; they agree within the rounding
    bound of tests/roundoff.py, which follows the program's conditioning (m = 2 included, where
    batch norm's 1/std amplifies float32 rounding past any fixed tolerance)."""
    g = bg.mlp([5, 7, 6, 3], activation=act, loss=loss, negative_slope=0.1)
    _compare_float32(bg.compile(g, dtype="float32", seed=1), emulated(g, dtype="float32", seed=1))


def test_emulated_batchnorm_is_exact_when_the_mean_dwarfs_the_spread():
    """1e4 + N(0, 1) in float32: a one-pass E[z^2] - E[z]^2 would lose every digit of the variance."""
    g = bg.Graph("bigmean", "f32")
    x = g.input("x", 3)
    t = g.input("t", 3)
    g.mse(g.batchnorm(x, name="bn"), t)
    emu = emulated(g, dtype="float32")
    rng = np.random.default_rng(0)
    X = (1e4 + rng.standard_normal((512, 3))).astype(np.float32)
    out = emu.forward(X, training=True)
    z = X.astype(np.float64)
    want = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-3)  # float32 data: ~1e-3 of 1e4 is its resolution
    assert abs(out.std(0) - 1).max() < 1e-3


def test_emulated_model_trains_like_the_numpy_target():
    ds = bg.load_dataset("digits", seed=0)
    ref = bg.compile(bg.mlp([64, 32, 16, 10]), dtype="float64")
    emu = emulated(bg.mlp([64, 32, 16, 10]))
    kw = dict(epochs=4, batch_size=64, validation_data=(ds.X_test, ds.y_test), verbose=False)
    h_ref = ref.fit(ds.X_train, ds.y_train, optimizer=bg.optim.Adam(lr=3e-3), **kw)
    h_emu = emu.fit(ds.X_train, ds.y_train, optimizer=bg.optim.Adam(lr=3e-3), **kw)
    for a, b in zip(h_ref, h_emu):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-9)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-12)
    for k, v in ref.params.items():
        np.testing.assert_allclose(emu.params[k], v, rtol=1e-8, atol=1e-10, err_msg=k)
    assert h_emu[-1]["val_accuracy"] > 0.85


def test_emulator_reports_a_kernel_that_does_not_compile(monkeypatch):
    from bngraph.backends.cuda_target import emulator

    with pytest.raises(bg.IRError, match="could not compile the generated kernels"):
        emulator.compile_kernels("this is not C++")


# ---- the optimizer kernels -----------------------------------------------------------------------

OPTIMIZERS = {
    "adam": lambda: bg.optim.Adam(lr=1e-2),
    "adam-l2-amsgrad": lambda: bg.optim.Adam(lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamw": lambda: bg.optim.AdamW(lr=1e-2, weight_decay=0.05),
    "sgd": lambda: bg.optim.SGD(lr=0.1),
    "momentum-dampening-l2": lambda: bg.optim.SGD(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    "nesterov": lambda: bg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-2),
    "rmsprop-centered-momentum-l2": lambda: bg.optim.RMSprop(lr=1e-2, centered=True, momentum=0.5, weight_decay=1e-2),
    "adam-groups": lambda: bg.optim.Adam(lr=1e-2, weight_decay=0.1,
                                         groups=[{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0},
                                                 {"params": "fc1.*", "lr": 1e-3}]),
}


def optimizer_kernel_against_numpy(model, make, dtype, steps, lr0, compare):
    """The same params, gradients and lr schedule (``lr0 / (1 + step)``: lr is data) through the CUDA
    kernel ``model`` has for the optimizer ``make()`` and through its NumPy passes, with
    ``compare(kernel's buffer, NumPy's buffer, step)`` after each step. Returns (kernel's, NumPy's)
    optimizer."""
    from bngraph.flat import FlatLayout

    layout = FlatLayout([(k, v.shape, dtype) for k, v in model.params.items()])
    rng = np.random.default_rng(0)
    P1, P2, G = layout.allocate(np), layout.allocate(np), layout.allocate(np)
    for k in layout.names:
        P1.views[k][...] = rng.standard_normal(layout.segments[k].shape)
    P2.buffers[dtype][...] = P1.buffers[dtype]
    device, host = make(), make()
    kernel = model.executable.optimizer_kernel(device)
    assert kernel is not None
    device.bind(layout, np, kernel=kernel)
    host.bind(layout, np)
    for step in range(steps):
        G.buffers[dtype][...] = rng.standard_normal(G.buffers[dtype].shape)
        device.lr = host.lr = lr0 / (1 + step)
        device.step_flat(P1, G)
        host.step_flat(P2, G)
        compare(P1.buffers[dtype], P2.buffers[dtype], step)
    return device, host


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_kernels_equal_the_array_module_update_bit_for_bit(name, dtype):
    """The same params, gradients and schedule through the CUDA kernels (emulated) and through
    bngraph.optim's NumPy passes: identical bits, params and every slot, over 6 steps."""
    check = lambda a, b, step: np.testing.assert_array_equal(a, b, err_msg=f"step {step}")  # noqa: E731
    device, host = optimizer_kernel_against_numpy(emulated(bg.mlp([4, 5, 3]), dtype=dtype), OPTIMIZERS[name], dtype,
                                                  steps=6, lr0=1e-2, compare=check)
    a, b = device.state_dict(), host.state_dict()
    assert a["step"] == b["step"] == 6
    for p, slots in b["slots"].items():
        for key, v in slots.items():
            np.testing.assert_array_equal(a["slots"][p][key], v, err_msg=f"{p}/{key}")


def test_a_user_optimizer_keeps_the_array_module_path():
    class Halving(bg.optim.SGD):
        def update(self, p, g, slots):
            p -= 0.5 * self.lr * g

    model = emulated(bg.mlp([4, 5, 3]))
    assert model.executable.optimizer_kernel(Halving(lr=0.1)) is None
    assert model.executable.optimizer_kernel(bg.optim.AdamW()) is not None


# ---- CUDA graphs (the emulator records and replays like a graph: arguments fixed at capture) -----


def test_graph_replay_equals_the_eager_step_bit_for_bit():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((45, 4)), rng.integers(0, 3, 45)  # 45 = 5*8 + 5: two batch sizes
    eager = emulated(bg.mlp([4, 6, 5, 3]), dtype="float32")
    graphed = bg.compile(bg.mlp([4, 6, 5, 3]), target="cuda", device="emulator", dtype="float32", cuda_graph=True)
    schedule = lambda epoch, step: 1e-2 / step  # noqa: E731  (lr changes every step: it must not be baked in)
    for m in (eager, graphed):
        m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, lr_schedule=schedule, verbose=False)
    assert graphed.trainer.guarded.replays == 3 * 6 - 2  # per batch size: one eager run, then captured and replayed
    assert sorted(graphed.trainer.guarded.entries) == [5, 8]
    for k in eager.params:
        np.testing.assert_array_equal(graphed.params[k], eager.params[k], err_msg=k)
    for k in eager.state:
        np.testing.assert_array_equal(graphed.state[k], eager.state[k], err_msg=k)


def test_graph_capture_records_instead_of_running():
    model = bg.compile(bg.mlp([4, 5, 3]), target="cuda", device="emulator", cuda_graph=True)
    rt = model.runtime
    out = model.grads["out.b"]
    out[...] = 7.0
    feeds = model._feeds(np.ones((4, 4)), np.zeros(4, np.int64))
    graph = rt.capture(lambda: model.executable.run("train_step", feeds, model._P.views, model._S, model._G.views, 4))
    assert np.all(out == 7.0)  # captured, not run
    assert len(graph) > 5
    rt.replay(graph)
    assert not np.all(out == 7.0)


def test_cuda_graph_needs_a_target_that_captures():
    with pytest.raises(bg.IRError, match="cuda_graph=True needs a target whose runtime captures graphs"):
        bg.compile(bg.mlp([4, 5, 3]), cuda_graph=True)


def test_cli_trains_on_the_emulator_with_and_without_a_graph(capsys):
    from bngraph.cli import main

    assert main(["train", "--target", "cuda", "--device", "emulator", "--epochs", "1", "--quiet"]) == 0
    eager = capsys.readouterr().out
    assert main(["train", "--target", "cuda", "--device", "emulator", "--cuda-graph", "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().out == eager and "test accuracy" in eager


# ---- batch-norm rows kept in registers ---------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "identity", "tanh"])
def test_batchnorm_kernels_give_the_same_bits_with_rows_in_registers_or_read_again(act):
    """The BN kernels keep a row of up to BN_CACHE*blockDim.x examples in registers (one read);
    longer rows are read again. The emulator runs one thread, so BN_CACHE=16 caches rows of up
    to 16 examples; the same source compiled with BN_CACHE=1 reads them again: identical bits."""
    from bngraph.backends.cuda_target.emulator import _c_arg, compile_kernels

    g = bg.mlp([5, 7, 3], activation=act)
    src = bg.emit(g, target="cuda", dtype="float64")["mlp_cuda.cu"]
    cached, reread = compile_kernels(src), compile_kernels("#define BN_CACHE 1\n" + src)
    rng = np.random.default_rng(0)
    for m in (2, 5, 16):
        z, da, a = (rng.standard_normal((7, m)) * 3 + 1 for _ in range(3))
        gamma, beta = rng.standard_normal(7), rng.standard_normal(7)
        results = []
        for lib in (cached, reread):
            y, mean, var = np.empty((7, m)), np.empty(7), np.empty(7)
            lib.train_step__act1(*map(_c_arg, (z, gamma, beta, y, mean, var, np.int32(m))))
            dz, dg, db = np.empty((7, m)), np.empty(7), np.empty(7)
            lib.train_step__fc1_matmul_grad(*map(_c_arg, (da, a, z, gamma, mean, var, dz, dg, db, np.int32(m))))
            results.append((y, mean, var, dz, dg, db))
        for got, want in zip(*results):
            np.testing.assert_array_equal(got, want, err_msg=f"m={m}")
        zh = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
        if act == "identity":
            np.testing.assert_allclose(results[0][0], gamma[:, None] * zh + beta[:, None], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(results[0][1], z.mean(1), rtol=1e-12)
        np.testing.assert_allclose(results[0][2], z.var(1), rtol=1e-12)


def test_graphs_of_more_batch_sizes_than_are_kept_replay_on_their_own_buffers():
    """With a user optimizer the graph holds train_step only (GraphedPrograms); each batch size's
    graph owns its buffers, and sizes beyond the last four are dropped with their graphs, so a
    replay never writes into buffers that were given back. Seven sizes, twice each: the same bits
    as the eager model."""
    class Halving(bg.optim.SGD):
        def update(self, p, g, slots):
            p -= 0.5 * self.lr * g

    rng = np.random.default_rng(0)
    eager = emulated(bg.mlp([4, 6, 3]))
    graphed = bg.compile(bg.mlp([4, 6, 3]), target="cuda", device="emulator", dtype="float64", cuda_graph=True)
    for m in [5, 6, 7, 8, 9, 10, 11] * 2 + [5, 5]:
        X, y = rng.standard_normal((m, 4)), rng.integers(0, 3, m)
        for model in (eager, graphed):
            model.train_step(X, y, Halving(lr=0.1))
    (replays,) = graphed.trainer.host.graphs.programs.values()
    assert sorted(replays.entries) == [5, 9, 10, 11] and graphed.trainer.host.graphs.replays == 1
    for k in eager.params:
        np.testing.assert_array_equal(graphed.params[k], eager.params[k], err_msg=k)
