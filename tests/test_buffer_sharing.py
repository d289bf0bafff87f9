"""Buffers that share memory (bngraph/backends/numpy_target/liveness.py): never two live values in
one array, and training with shared buffers gives the same bits as with one array per buffer."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.numpy_target.liveness import live_ranges, share
from bngraph.compiler import build_programs
from conftest import ZOO


def _plans(g):
    from bngraph.backends import get_target

    try:
        programs = build_programs(g, "f32", None).programs
    except bg.IRError:  # an inference-only graph of the zoo: nothing to train
        return {}
    return {name: get_target("numpy").renderer.plan(name, p) for name, p in programs.items()}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shared_buffers_never_overlap(name):
    for prog, plan in _plans(ZOO[name]()).items():
        ranges, slots, types = live_ranges(plan), share(plan), dict(plan.buffers)
        assert set(slots) == set(types), prog
        for a in slots:
            for b in slots:
                if a < b and slots[a] == slots[b]:
                    (s1, e1), (s2, e2) = ranges[a], ranges[b]
                    assert types[a] == types[b], (prog, a, b)
                    assert e1 < s2 or e2 < s1, (prog, a, ranges[a], b, ranges[b])


def test_the_big_train_step_needs_fewer_arrays():
    plan = _plans(bg.mlp([784, 1024, 1024, 1024, 10]))["train_step"]
    slots = share(plan)
    assert len(slots) == 18 and len(set(slots.values())) == 11
    # a step's own inputs, outputs and temporaries are never one array: e.g. the fused BN backward
    step = next(s for s in plan.steps if s.node.op == "batchnorm_act_grad")
    keys = [plan.resolve(i) for i in step.node.inputs if plan.resolve(i) in slots]
    keys += [d.key for d in step.dests if d is not None and d.kind == "buffer"] + list(step.temp_buffers.values())
    assert len({slots[k] for k in keys}) == len(keys)


@pytest.mark.parametrize("widths, act", [([12, 16, 16, 3], "relu"), ([5, 8, 8, 8, 2], "tanh")])
def test_training_with_shared_buffers_is_bit_identical(widths, act):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], 40)
    shared, separate = (bg.compile(bg.mlp(widths, activation=act)) for _ in range(2))
    exe = separate.executable
    exe._slots = {p: {k: i for i, (k, _) in enumerate(plan.buffers)} for p, plan in exe.plans.items()}
    assert len({id(a) for a in shared.executable.buffers("train_step", 20).values()}) < \
        len({id(a) for a in exe.buffers("train_step", 20).values()})
    opts = [bg.optim.Adam(lr=1e-2), bg.optim.Adam(lr=1e-2)]
    for model, opt in zip((shared, separate), opts):
        model.fit(X, y, optimizer=opt, epochs=3, batch_size=20, verbose=False)
    for k, v in shared.params.items():
        assert v.tobytes() == separate.params[k].tobytes(), k
    for k, v in shared.state.items():
        assert v.tobytes() == separate.state[k].tobytes(), k
    np.testing.assert_array_equal(shared.forward(X), separate.forward(X))
    assert shared.evaluate(X, y) == separate.evaluate(X, y)
