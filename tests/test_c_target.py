"""The c target (bngraph/backends/c_target/): the CUDA target's kernels in the host dialect,
compiled by the host's C++ compiler with OpenMP, arrays in NumPy, matrix products through NumPy's
BLAS. Every program equals the NumPy target (float64 to 1e-12, float32 within tests/roundoff.py's
bound), on teams of one thread and of several (the grain set to one element, so the tiny shapes
here are cut between threads too); the optimizer kernels equal the NumPy update bit for bit; the
guarded step rolls back like the NumPy target's; checkpoints move between targets; the spatial ops
and a CNN equal the reference."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.c_target import host as c_host
from bngraph.backends.c_target import runtime as c_runtime

from test_cuda_spatial import CASES, assert_programs_match, cnn, spatial_graph
from test_cuda_step import _diverging_schedule, data
from test_cuda_target import (OPTIMIZERS, _compare_float32, _compare_programs, layered_graph,
                              optimizer_kernel_against_numpy)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="the c target needs a C++ compiler")


def c_model(g, dtype="float64", passes=None, seed=0, **kw):
    return bg.compile(g, target="c", dtype=dtype, passes=passes, seed=seed, **kw)


@pytest.fixture(params=["one thread", "teams"])
def teams(request, monkeypatch):
    """Teams of one thread, or of three threads cutting even a 7-element row (grain 1)."""
    if request.param == "teams":
        monkeypatch.setattr(c_host, "GRAIN", 1)
        monkeypatch.setattr(c_runtime.hostthreads, "budget", lambda: 3)
    return request.param


# ---- the text ----------------------------------------------------------------------------------

def test_emit_renders_one_cpp_and_a_driver_with_every_node_as_a_comment():
    g = bg.mlp([6, 5, 3])
    src = bg.emit(g, target="c")
    assert list(src) == ["mlp_c.cpp", "mlp_c.py"]
    cpp, py = src["mlp_c.cpp"], src["mlp_c.py"]
    assert 'extern "C" __global__' not in cpp and "bngraph_run(bngraph_team(work), body_)" in cpp  # the host dialect
    assert "Regenerate with `bngraph emit --target c`" in cpp and "bngraph emit --target c" in py
    kernels = [ln.split("(")[0].split()[-1] for ln in cpp.splitlines() if ln.startswith("KERNEL ")]
    assert kernels and all(f'extern "C" void launch__{k}(long long work, ' in cpp for k in kernels)
    # one kernel per node, the node above it; the driver launches each by name
    assert "// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu" in cpp
    assert 'launch("train_step__act1", (5,), (row_block(m),), ' in py
    assert "gemm(False, False, 5, m, 6, P[\"fc1.W\"], x, " in py
    # element loops are each thread's contiguous share, not grid-stride
    assert "i += (long long)gridDim.x * blockDim.x" not in cpp and "bngraph_share(n, blockIdx.x, gridDim.x)" in cpp


def test_the_cuda_module_is_unchanged_by_the_c_header():
    """templates/c/module.cpp.j2 extends the CUDA module, overriding only its header."""
    cu = bg.emit(bg.mlp([6, 5, 3]), target="cuda")["mlp_cuda.cu"]
    assert cu.startswith("// Graph mlp, compiled by bngraph") and "for CUDA (float32)." in cu.splitlines()[0]
    assert "host dialect" not in cu


def test_without_a_compiler_the_target_says_so_in_one_line(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(c_runtime.shutil, "which", lambda name: None)
    with pytest.raises(bg.IRError) as e:
        bg.compile(bg.mlp([4, 3]), target="c")
    assert "\n" not in str(e.value) and "needs a C++ compiler" in str(e.value) and "numpy target" in str(e.value)
    bg.emit(bg.mlp([4, 3]), target="c")  # rendering needs none
    assert bg.compile(bg.mlp([4, 3])).target == "numpy"  # still the default


def test_a_kernel_that_does_not_compile_is_one_clear_error():
    with pytest.raises(bg.IRError, match="target c could not compile the generated kernels"):
        c_runtime.compile_source('extern "C" __global__ void k(int* x) { this is not C++; }')


# ---- the numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
def test_programs_equal_the_numpy_target_float64(loss, teams):
    """Every op in every program, widths 1, 3, 6, 7, every activation: float64 to 1e-12."""
    g = layered_graph(loss, "f64", widths=(3, 7, 1, 6))
    _compare_programs(bg.compile(g, dtype="float64", seed=1), c_model(g, seed=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_programs_equal_the_numpy_target_float32(act, teams):
    g = bg.mlp([5, 7, 6, 3], activation=act, negative_slope=0.1)
    _compare_float32(bg.compile(g, dtype="float32", seed=1), c_model(g, dtype="float32", seed=1))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_kernels_equal_the_numpy_update_bit_for_bit(name, dtype, monkeypatch):
    monkeypatch.setattr(c_host, "GRAIN", 16)  # the 62 params cut between teams of threads
    check = lambda a, b, step: np.testing.assert_array_equal(a, b, err_msg=f"step {step}")  # noqa: E731
    optimizer_kernel_against_numpy(c_model(bg.mlp([4, 5, 3]), dtype=dtype), OPTIMIZERS[name], dtype, steps=4,
                                   lr0=1e-2, compare=check)


def test_fit_replays_the_guarded_step_and_trains_like_the_numpy_target(teams):
    X, y = data(96)
    ref, c = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64"), c_model(bg.mlp([4, 6, 5, 3]))
    for m in (ref, c):
        m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=16, verbose=False)
    assert c.trainer.guarded is not None and c.trainer.guarded.replays > 0  # recorded once, replayed after
    for k in ref.params:
        np.testing.assert_allclose(c.params[k], ref.params[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for k in ref.state:
        np.testing.assert_allclose(c.state[k], ref.state[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_diverging_step_changes_nothing_and_rolls_back_like_the_numpy_target():
    X, y = data(96)
    c, ref = c_model(bg.mlp([4, 6, 5, 3])), bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    hists = [m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=16, verbose=False,
                   lr_schedule=_diverging_schedule(9)) for m in (ref, c)]
    assert hists[0].stop_reason == hists[1].stop_reason and "nothing was updated" in hists[1].stop_reason
    assert c.step == ref.step == 9
    for k in ref.params:
        np.testing.assert_allclose(c.params[k], ref.params[k], rtol=1e-9, err_msg=k)
    a, b = c.optimizer.state_dict(), ref.optimizer.state_dict()
    assert a["step"] == b["step"] == 9


def test_checkpoints_move_between_the_c_and_numpy_targets(tmp_path):
    """A checkpoint records its target (bg.load rebuilds on it) and loads into the same graph on
    another target (Model.load_checkpoint), optimizer state included: both resume alike."""
    X, y = data(64)
    c = c_model(bg.mlp([4, 6, 3]))
    c.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=16, verbose=False)
    c.save(tmp_path / "c.npz")
    assert bg.load(tmp_path / "c.npz").target == "c"
    on_numpy = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    on_numpy.load_checkpoint(tmp_path / "c.npz")
    np.testing.assert_allclose(on_numpy.forward(X), c.forward(X), rtol=1e-12, atol=1e-12)
    on_numpy.save(tmp_path / "numpy.npz")
    back = c_model(bg.mlp([4, 6, 3]))
    back.load_checkpoint(tmp_path / "numpy.npz")
    for k in c.params:
        np.testing.assert_array_equal(back.params[k], c.params[k], err_msg=k)
    for m in (on_numpy, back):  # both resume the run (Adam's state from the checkpoint) with the same numbers
        m.fit(X, y, epochs=1, batch_size=16, verbose=False)
    assert back.step == on_numpy.step == 2 * 4 + 4
    for k in c.params:
        np.testing.assert_allclose(back.params[k], on_numpy.params[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("case", ["conv2d_groups_bias_relu", "maxpool_ties", "avgpool_exclude_pad", "global_avgpool"])
def test_spatial_ops_equal_the_reference_float64(case):
    assert_programs_match(c_model(spatial_graph(CASES[case])), sizes=(3,))


def test_cnn_every_program_equals_the_reference_float64(teams):
    assert_programs_match(c_model(cnn()), sizes=(2, 5))


# ---- the team's threads ------------------------------------------------------------------------

def test_two_threads_training_at_once_get_each_its_own_numbers(teams):
    """Launches from two Python threads take turns on the pool: each model ends as it would alone."""
    from concurrent.futures import ThreadPoolExecutor

    X, y = data(96)

    def train(seed):
        m = c_model(bg.mlp([4, 9, 3]), seed=seed)
        m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=32, verbose=False)
        return m.params

    alone = [train(s) for s in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(train, (1, 2)))
    for a, b in zip(alone, together):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_process_with_a_busy_pool_exits(tmp_path):
    """The pool's workers wait on a condition variable that is never destroyed: exit does not hang."""
    import subprocess
    import sys

    script = ("import numpy as np, bngraph as bg\n"
              "from bngraph.backends.c_target import host, runtime\n"
              "host.GRAIN = 1; runtime.hostthreads.budget = lambda: 3\n"
              "m = bg.compile(bg.mlp([4, 6, 3]), target='c')\n"
              "rng = np.random.default_rng(0)\n"
              "m.fit(rng.standard_normal((64, 4)), rng.integers(0, 3, 64), optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)\n"
              "print('trained')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "trained", out.stderr[-2000:]


# ---- the oracle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opt_name", ["adam", "adamw", "rmsprop-centered-wd", "sgd-momentum", "sgd-nesterov-wd"])
def test_five_steps_match_pytorch_float64(opt_name):
    """float64 against PyTorch (tests/test_torch_oracle.py's twin): losses, params, running
    statistics and outputs after five steps of each optimizer kind, on the c target."""
    pytest.importorskip("torch")
    from test_torch_oracle import OPTIMIZERS as TORCH_OPTIMIZERS, TOL, Twin, train_both

    assert opt_name in TORCH_OPTIMIZERS
    tw = Twin(act="tanh", loss="softmax_cross_entropy", bias=True, hidden=(8, 5), target="c")
    tol = TOL["float64"]
    train_both(tw, opt_name, tw.batches(), tol)
    tw.assert_params_match(tol, f"after 5 {opt_name} steps")
    tw.assert_state_match(tol, f"after 5 {opt_name} steps")
    X, _ = tw.data(11, seed=77)
    tw.assert_outputs_match(X, tol)
