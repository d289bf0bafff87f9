"""The fused step on host threads (bind(threads=N)): every element in exactly one lane, and the
same bits as the per-parameter reference path, for every optimizer, with groups and two dtypes;
the batch-norm units of the generated code in lanes (hostthreads.rows)."""
from __future__ import annotations

import numpy as np
import pytest

from bngraph import hostthreads, optim
from bngraph.backends.numpy_target.update import HostLanes
from test_optim import CONFIGS, _id
from test_optim_flat import flat_copy, no_fallback, step_both

SHAPES = {"fc1.W": ((40, 30), np.float32), "bn1.gamma": ((40,), np.float32), "bn1.beta": ((40,), np.float32),
          "fc2.W": ((17, 40), np.float64), "out.W": ((9, 17), np.float32), "out.b": ((9,), np.float64)}
GROUPS = [{"params": ["*.gamma", "*.beta"], "lr": 3e-3}]


@pytest.fixture
def small_lanes(monkeypatch):
    """Lanes for arrays of a few elements (normally only long buffers get threads), two threads."""
    monkeypatch.setattr(hostthreads, "MIN_LANE", 8)
    monkeypatch.setenv("BNGRAPH_NUM_THREADS", "2")


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(t) for n, (s, t) in SHAPES.items()}


def lane_elements(binding, group, lane):
    """The (dtype, index) of every element of one lane of ``binding.update`` (the NumPy executor's
    pieces: a stretch of the group's runs, a slice of it or all of it, and a slice of the scratch)."""
    out = []
    for k, sub, scut in binding.update.lanes[group][lane]:
        dt, start, stop = binding.runs[group][k]
        a, b = (start, stop) if sub is None else (start + sub.start, start + sub.stop)
        assert b - a == scut.stop - scut.start
        out += [(dt, i) for i in range(a, b)]
    return out


@pytest.mark.parametrize("threads, block", [(2, None), (3, 7), (4, 64)])
def test_lanes_cover_every_element_once(small_lanes, threads, block):
    P = flat_copy(params())
    opt = optim.Adam(groups=GROUPS)
    opt.bind(P.layout, np, threads=threads, block=block)
    b, lanes = opt.binding, opt.binding.update.lanes
    assert isinstance(b.executor, HostLanes) and b.update.threads == threads and b.update.block == block
    assert max(len(g) for g in lanes) == threads
    for g, names in enumerate(b.names):
        want = {(dt, i) for dt, start, stop in P.layout.runs(names) for i in range(start, stop)}
        got = [x for lane in range(len(lanes[g])) for x in lane_elements(b, g, lane)]
        assert len(got) == len(set(got)) and set(got) == want
        for lane in lanes[g]:
            assert all(scut.stop - scut.start <= (block or 10**9) for _, _, scut in lane)
    assert len(b.update.scratch) == threads


def test_the_runtime_chooses_how_the_update_runs(small_lanes):
    """The model binds through its runtime: the NumPy runtime's executor (pieces on host-thread
    lanes), the same one ``bind(layout, np)`` gets; the emulated CUDA runtime's launches its kernel."""
    import bngraph as bg
    from bngraph.optim.executors import KernelLaunches

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    model = bg.compile(bg.mlp([6, 40, 40, 3]))
    assert isinstance(model.executable.update_executor(optim.Adam()), HostLanes)
    opt = optim.Adam(lr=1e-2)
    model.train_step(X, y, opt)
    assert isinstance(opt.binding.executor, HostLanes) and len(opt.binding.update.lanes[-1]) == 2
    emulated = bg.compile(bg.mlp([6, 40, 40, 3]), target="cuda", device="emulator")
    assert isinstance(emulated.executable.update_executor(optim.Adam()), KernelLaunches)


@pytest.mark.parametrize("cfg", CONFIGS[::3] + [("Adam", dict(amsgrad=True, weight_decay=0.1)),
                                                ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))], ids=_id)
def test_threaded_fused_step_equals_reference_bitwise(small_lanes, cfg):
    name, kw = cfg
    ref_params, ref = params(), getattr(optim, name)(groups=GROUPS, **kw)
    P = flat_copy(params())
    G = P.layout.allocate(np)
    opt = getattr(optim, name)(groups=GROUPS, **kw)
    opt.bind(P.layout, np, threads=3, block=11)
    assert max(len(g) for g in opt.binding.update.lanes) == 3
    opt.step = no_fallback
    rng = np.random.default_rng(1)
    for k in range(6):
        grads = {n: rng.standard_normal(s).astype(t) for n, (s, t) in SHAPES.items()}
        step_both(ref, ref_params, opt, P, G, grads, k)


def test_an_error_in_a_lane_is_raised_after_all_lanes_finished():
    done = []

    def work(i):
        if i == 1:
            raise RuntimeError("lane 1 failed")
        done.append(i)
        return i

    with pytest.raises(RuntimeError, match="lane 1 failed"):
        hostthreads.run_lanes(work, [0, 1, 2])
    assert sorted(done) == [0, 2]
    assert hostthreads.run_lanes(lambda i: i * i, [1, 2, 3]) == [1, 4, 9]


def test_thread_budget_and_lane_count(monkeypatch):
    for var in ("BNGRAPH_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                "OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    # OpenBLAS threads spin ~0.1 s after each product by default: then no lanes
    assert not hostthreads.blas_leaves_cores_free() and hostthreads.default_threads() == 1
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    assert hostthreads.default_threads() == 1
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert hostthreads.blas_leaves_cores_free()
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert hostthreads.budget() == 3
    assert hostthreads.blas_leaves_cores_free() is False  # 3 BLAS threads, default spin
    monkeypatch.setenv("BNGRAPH_NUM_THREADS", "1")
    assert hostthreads.budget() == 1 and hostthreads.default_threads() == 1
    monkeypatch.setenv("BNGRAPH_NUM_THREADS", "2")
    assert hostthreads.default_threads() == 2  # asked for explicitly
    assert hostthreads.lanes_for(10**8, threads=16) == hostthreads.MAX_LANES
    assert hostthreads.lanes_for(hostthreads.MIN_LANE - 1, threads=4) == 1
    assert hostthreads.split(0, 100, 3) == [(0, 32), (32, 64), (64, 100)]
    assert hostthreads.split(5, 7, 3) == [(5, 7)]


@pytest.mark.parametrize("widths, act", [([6, 40, 40, 3], "relu"), ([5, 24, 24, 2], "sigmoid")])
def test_batchnorm_units_in_lanes_train_bit_identically(small_lanes, widths, act):
    """The generated BN statements run on lanes of units (hostthreads.rows): the same bits as one call."""
    import bngraph as bg

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], 60)
    lanes, single = (bg.compile(bg.mlp(widths, activation=act)) for _ in range(2))
    assert lanes.executable.module.rows is hostthreads.rows
    single.executable.module.rows = lambda fn, *arrays: fn(*arrays)
    calls = []
    real = hostthreads.run_lanes
    hostthreads.run_lanes = lambda fn, lanes_: calls.append(len(lanes_)) or real(fn, lanes_)
    try:
        for model in (lanes, single):
            model.fit(X, y, optimizer=optim.Adam(lr=1e-2), epochs=2, batch_size=30, verbose=False)
    finally:
        hostthreads.run_lanes = real
    assert calls and max(calls) == 2
    for k, v in lanes.params.items():
        assert v.tobytes() == single.params[k].tobytes(), k
    for k, v in lanes.state.items():
        assert v.tobytes() == single.state[k].tobytes(), k
