"""Buffers that share memory, decided once by the lowering plan (bngraph/backends/liveness.py) for
every target: never two live values in one array, every target allocates and comments what the plan
decided, and training with shared buffers gives the same bits as with one array per buffer, on the
NumPy target and on the CUDA target (its kernels run by the emulator, its graph replays included).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import get_target
from bngraph.backends.lowering import is_batch_sized
from bngraph.backends.liveness import live_ranges, share
from bngraph.compiler import build_programs
from conftest import ZOO

TARGETS = ("numpy", "cuda")


def _plans(g, target="numpy"):
    """The plans a target makes of ``g``'s programs (after its own pre-lowering passes)."""
    try:
        programs = build_programs(g, g.dtype, None).programs
    except bg.IRError:  # an inference-only graph of the zoo: nothing to train
        return {}
    r = get_target(target).renderer
    if hasattr(r, "lower"):
        programs = r.lower(programs)
    return {name: r.plan(name, p) for name, p in programs.items()}


def _groups(bufs: dict) -> set:
    """The keys of ``{key: array}`` grouped by the array they are (as frozensets)."""
    by_id: dict = {}
    for k, a in bufs.items():
        by_id.setdefault(id(a), set()).add(k)
    return {frozenset(s) for s in by_id.values()}


def _plan_groups(plan) -> set:
    return {frozenset(keys) for keys, _ in plan.arrays}


def _batch_bytes(plan, m: int, shared: bool) -> tuple:
    """(arrays, bytes) of the batch-sized buffers at batch size m, shared as planned or one each."""
    big = {k: t for k, t in plan.buffers if is_batch_sized(t)}
    groups = {plan.slots[k] if shared else k: t for k, t in big.items()}
    return len(groups), sum(int(np.prod(t.concrete_shape(m))) * np.dtype(bg.ir.DTYPES[t.dtype]).itemsize
                            for t in groups.values())


# ---- the plan's invariants ------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_shared_buffers_never_overlap(name, target):
    """Replay each plan on shadow memory (slot -> the value it holds now): every read finds its own
    value in its array, a step's inputs, outputs and temporaries are distinct arrays, what the
    program returns (or copies into G at the end) is still there at the end; only batch-sized
    buffers of one type share."""
    for prog, plan in _plans(ZOO[name](), target).items():
        ranges, slots, types = live_ranges(plan), plan.slots, dict(plan.buffers)
        assert slots == share(plan) and set(slots) == set(types), prog
        for a in slots:
            for b in slots:
                if a < b and slots[a] == slots[b]:
                    (s1, e1), (s2, e2) = ranges[a], ranges[b]
                    assert types[a] == types[b] and is_batch_sized(types[a]), (prog, a, b)
                    assert e1 < s2 or e2 < s1, (prog, a, ranges[a], b, ranges[b])
        holds: dict = {}  # slot -> buffer key whose value it holds
        for step in plan.steps:
            reads = [plan.resolve(i) for i in step.node.inputs if plan.resolve(i) in slots]
            writes = [d.key for d in step.dests if d is not None and d.kind == "buffer"]
            writes += list(step.temp_buffers.values())
            for k in reads:
                assert holds.get(slots[k]) == k, (prog, step.node.name, k, holds.get(slots[k]))
            used = [slots[k] for k in {*reads, *writes}]
            assert len(used) == len(set(used)), (prog, step.node.name)
            for k in writes:
                holds[slots[k]] = k
        for _, v in (*plan.outputs, *plan.copies):
            v = plan.resolve(v)
            if v in slots:
                assert holds[slots[v]] == v, (prog, v)


def test_the_plans_sharing_counts_and_bytes():
    """Batch-sized buffers of the training step at b1024 (float32), one array each (before: the
    NumPy target shared in its own runtime, the CUDA target not at all) -> shared by the plan:

    ============================  ======  ================================  ==============================
    graph                         target  before                            after
    ============================  ======  ================================  ==============================
    mlp 64-128-10                 cuda    7 arrays, 2,220,032 B (2.12 MiB)   6 arrays, 2,179,072 B (2.08 MiB)
    mlp 784-1024x3-10             cuda    15 arrays, 50,454,528 B (48.1 MiB) 10 arrays, 33,636,352 B (32.1 MiB)
    mlp 784-1024x3-10             numpy   18 arrays, 63,037,440 B (60.1 MiB) 11 arrays, 37,830,656 B (36.1 MiB)
    ============================  ======  ================================  ==============================

    (The one-hidden-layer mlp has little to share: its backward needs z, a, da and dz of the one
    layer at once; its output gradient takes over the array of the output's matmul. The deeper net's
    forward programs: 8 arrays, 24.1 MiB -> 4 arrays, 8.1 MiB on both targets.)"""
    small = _plans(bg.mlp([64, 128, 10]), "cuda")
    big = {t: _plans(bg.mlp([784, 1024, 1024, 1024, 10]), t) for t in TARGETS}
    assert _batch_bytes(small["train_step"], 1024, False) == (7, 2_220_032)
    assert _batch_bytes(small["train_step"], 1024, True) == (6, 2_179_072)
    assert _batch_bytes(big["cuda"]["train_step"], 1024, False) == (15, 50_454_528)
    assert _batch_bytes(big["cuda"]["train_step"], 1024, True) == (10, 33_636_352)
    assert _batch_bytes(big["numpy"]["train_step"], 1024, False) == (18, 63_037_440)
    assert _batch_bytes(big["numpy"]["train_step"], 1024, True) == (11, 37_830_656)
    for t in TARGETS:
        assert _batch_bytes(big[t]["forward"], 1024, False) == (8, 25_247_744)
        assert _batch_bytes(big[t]["forward"], 1024, True) == (4, 8_470_528)
    # the plan's own figures agree: all buffers (the CUDA target's small ones too) against the arrays
    plan = big["cuda"]["train_step"]
    assert plan.nbytes(1024) < plan.nbytes(1024, shared=False)
    assert plan.nbytes(1024, shared=False) - plan.nbytes(1024) == 50_454_528 - 33_636_352


def test_a_step_never_shares_with_its_own_inputs_and_outputs():
    plan = _plans(bg.mlp([784, 1024, 1024, 1024, 10]))["train_step"]
    slots = plan.slots
    assert len(slots) == 18 and len(set(slots.values())) == 11
    # e.g. the fused BN backward reads z, a, da and writes dz and its dy temporary: five arrays
    step = next(s for s in plan.steps if s.node.op == "batchnorm_act_grad")
    keys = [plan.resolve(i) for i in step.node.inputs if plan.resolve(i) in slots]
    keys += [d.key for d in step.dests if d is not None and d.kind == "buffer"] + list(step.temp_buffers.values())
    assert len({slots[k] for k in keys}) == len(keys) == 5


def test_without_sharing_every_buffer_is_an_array_of_its_own():
    g = build_programs(bg.mlp([5, 7, 7, 3]), "f32", None).programs["train_step"]
    r = get_target("numpy").renderer
    plan = bg.backends.plan_program("train_step", g, r.lowerings, "numpy", r.reserved, share_buffers=False)
    assert len(plan.arrays) == len(plan.buffers) and not any(s.reuses for s in plan.steps)
    assert len(r.plan("train_step", g).arrays) < len(plan.buffers)


# ---- what the renderers and runtimes make of it ---------------------------------------------------


def _reuse_comments(src: str, fn: str) -> dict:
    """``{key: previous key}`` from the ``# B["k"] reuses the array of B["p"]`` comments of one
    generated function."""
    body = src.split(f"\ndef {fn}(", 1)[1].split("\ndef ", 1)[0]
    return dict(re.findall(r'# B\["([^"]+)"\] reuses the array of B\["([^"]+)"\]', body))


@pytest.mark.parametrize("target", TARGETS)
def test_both_renderers_and_runtimes_use_the_plans_sharing(target):
    """The generated code says which array each value takes over, exactly as the plan does; the
    NumPy module's alloc_<fn>(m) and each runtime's B (the NumPy runtime, the CUDA emulator, and
    the fixed buffers a CUDA graph replays on) group the keys into arrays as the plan's slots do."""
    g = bg.mlp([6, 8, 8, 8, 3])
    kw = dict(target="cuda", device="emulator", dtype="float64", cuda_graph=True) if target == "cuda" else {}
    model = bg.compile(g, **kw)
    plans, (src,) = model.executable.plans, [s for k, s in model.sources.items() if k.endswith(".py")]
    assert any(len(p.arrays) < len(p.buffers) for p in plans.values())
    for name, plan in plans.items():
        want = {k: prev for s in plan.steps for k, prev in s.reuses.items()}
        assert _reuse_comments(src, name) == want, name
        assert set(want) == {k for keys, _ in plan.arrays for k in keys[1:]}, name
        assert _groups(model.executable.buffers(name, 5)) == _plan_groups(plan), name
        if target == "numpy":
            assert _groups(getattr(model.executable.module, f"alloc_{name}")(5)) == _plan_groups(plan), name
    if target == "cuda":  # the guarded step's buffers per batch size, which a CUDA graph replays on
        rng = np.random.default_rng(0)
        opt = bg.optim.SGD(lr=0.1)
        for _ in range(3):
            model.train_step(rng.standard_normal((5, 6)), rng.integers(0, 3, 5), opt)
        (entry,) = model.trainer.guarded.entries.values()
        assert _groups(entry.buffers) == _plan_groups(plans["train_step"])


def _without_sharing(model):
    """One array per buffer from now on (the plans' slots made distinct; no buffers made yet)."""
    for plan in model.executable.plans.values():
        plan.slots = {k: i for i, (k, _) in enumerate(plan.buffers)}
    return model


@pytest.mark.parametrize("widths, act", [([12, 16, 16, 3], "relu"), ([5, 8, 8, 8, 2], "tanh")])
def test_training_with_shared_buffers_is_bit_identical(widths, act):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], 40)
    shared = bg.compile(bg.mlp(widths, activation=act))
    separate = _without_sharing(bg.compile(bg.mlp(widths, activation=act)))
    assert len({id(a) for a in shared.executable.buffers("train_step", 20).values()}) < \
        len({id(a) for a in separate.executable.buffers("train_step", 20).values()})
    _train_and_compare(shared, separate, X, y, batch_size=20)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda_graph"])
def test_cuda_training_with_shared_buffers_is_bit_identical(graphs):
    """The CUDA target's kernels (emulator) with shared device buffers against one array per buffer
    poisoned with NaN: the same bits, so no kernel reads an array another value took over, and no
    kernel leaves an element unwritten that an earlier occupant's numbers would hide. Batch sizes
    20 and the short last batch 8; with ``cuda_graph`` the second step of a size is captured and
    later ones replay on the same arrays."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((48, 6))
    y = rng.integers(0, 3, 48)
    def make():
        return bg.compile(bg.mlp([6, 8, 8, 8, 3], activation="tanh"), target="cuda", device="emulator",
                          dtype="float64", cuda_graph=graphs)

    shared, separate = make(), _without_sharing(make())
    for prog in ("train_step", "forward", "evaluate"):
        for m in (20, 8):
            for a in separate.executable.buffers(prog, m).values():
                a[...] = np.nan
    assert len(shared.executable.plans["train_step"].arrays) < len(separate.executable.plans["train_step"].arrays)
    _train_and_compare(shared, separate, X, y, batch_size=20)


def _train_and_compare(shared, separate, X, y, batch_size):
    for model in (shared, separate):
        model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=batch_size, verbose=False)
    for k, v in shared.params.items():
        assert np.asarray(v).tobytes() == np.asarray(separate.params[k]).tobytes(), k
    for k, v in shared.state.items():
        assert np.asarray(v).tobytes() == np.asarray(separate.state[k]).tobytes(), k
    np.testing.assert_array_equal(shared.forward(X), separate.forward(X))
    assert shared.evaluate(X, y) == separate.evaluate(X, y)
