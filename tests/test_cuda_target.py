"""The CUDA target without a GPU: rendering, nvcc, snapshots, and the kernels run by the emulator.

* ``bg.emit(g, target="cuda")`` gives the ``.cu`` kernels and the Python host driver without
  importing CuPy; ``bg.compile(g, target="cuda")`` without CuPy or a GPU is one clear error.
* Every kernel generated for a matrix of graphs (every activation and loss, float32 and float64,
  widths 1, 3, 1000 and 4097, with and without bias and batch norm) compiles with
  ``nvcc -arch=sm_90`` (nvcc is installed on these machines and in CI; the test is skipped only
  where it is missing).
* Golden snapshots of the rendered ``.cu`` and driver for one model.
* The emulator (``device="emulator"``) runs the same kernels on the CPU: every program equals the
  NumPy target's (float64 to 1e-12, float32 to ~1e-5), every output element is written (buffers
  poisoned with NaN first), batch norm stays exact on data whose mean is large against its
  spread, and a model trains to the NumPy target's numbers.

GPU runs of the same checks are in tests/test_cuda_gpu.py (marked ``gpu``).
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg

from test_codegen import check_golden_source

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
                                         r"pip install 'bngraph\[cuda\]'"):
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
    programs = bg.compile(bg.mlp([4, 5, 3])).programs
    for name, prog in programs.items():
        fn = driver[driver.index(f"def {name}("):]
        fn = fn[:fn.index("\n\n\n")] if "\n\n\n" in fn else fn
        comments = [ln.strip()[2:] for ln in fn.splitlines() if ln.strip().startswith("# %")]
        assert comments == [format_node(n) for n in prog.nodes], name
    for launched in {ln.split('"')[1] for ln in driver.splitlines() if "launch(\"" in ln}:
        assert f'extern "C" __global__ void {launched}(' in cu
    assert "train_step__loss" in cu and "train_step__out_grad" not in cu  # the loss and its gradient: one kernel


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


def _poison(model):
    """NaN in every buffer and gradient: an output element a kernel forgets stays NaN."""
    for program in PROGRAMS:
        for m in (7, 9):
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
    """float32: the kernels accumulate in double, NumPy in float32; they agree to float32 rounding."""
    g = bg.mlp([5, 7, 6, 3], activation=act, loss=loss, negative_slope=0.1)
    _compare_programs(bg.compile(g, dtype="float32", seed=1), emulated(g, dtype="float32", seed=1),
                      rtol=1e-4, atol=1e-5)


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
