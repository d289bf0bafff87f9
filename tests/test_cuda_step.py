"""The CUDA target's guarded training step (bngraph/backends/cuda_target/step.py), on the emulator.

With a built-in optimizer a step is enqueued whole (train_step, step_guard, the optimizer
kernels, step_commit; with cuda_graph=True one graph) and the host reads nothing until asked:
``train_step`` reads at once, ``fit`` once per logging interval. These tests check that nothing
is read inside a step, that fit reads once per epoch when quiet, that a step that diverges among
unread ones changes nothing (nor does any later one) and is reported as on the NumPy target, and
the guard kernel's flags on planted NaNs.
"""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target.optimizers import BLOCK, STATUS_CLEAR
from bngraph.backends.cuda_target.step import GuardedStep


def emulated(g, dtype="float64", **kw):
    return bg.compile(g, target="cuda", device="emulator", dtype=dtype, **kw)


def data(n=45, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


@pytest.mark.parametrize("graphs", [False, True])
def test_fit_reads_the_device_once_per_epoch_and_never_inside_a_step(monkeypatch, graphs):
    X, y = data()
    model = emulated(bg.mlp([4, 6, 5, 3]), cuda_graph=graphs)
    reads = []
    real = model.runtime.to_numpy
    submitting = [False]

    def to_numpy(a):
        assert not submitting[0], "a host read inside a step"
        reads.append(a.shape)
        return real(a)

    original = GuardedStep.submit

    def submit(self, X, y):
        submitting[0] = True
        try:
            return original(self, X, y)
        finally:
            submitting[0] = False

    monkeypatch.setattr(model.runtime, "to_numpy", to_numpy)
    monkeypatch.setattr(GuardedStep, "submit", submit)
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, verbose=False)
    assert len(reads) == 3 * 2  # per epoch: the status and the 6 losses, once
    assert model.trainer.guarded.pending == 0 and model.step == 18
    ref = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    ref_hist = ref.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, verbose=False)
    np.testing.assert_allclose(hist.column("loss"), ref_hist.column("loss"), rtol=1e-12)


def test_a_captured_graph_holds_the_whole_step():
    X, y = data()
    model = emulated(bg.mlp([4, 6, 5, 3]), cuda_graph=True)
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1, momentum=0.9), epochs=1, batch_size=8, verbose=False)
    names = [getattr(fn, "__name__", "") for fn, _ in model.trainer.guarded.entries[8].graph]
    assert names.count("step_guard") == names.count("step_commit") == 1
    assert names.count("optim_sgd") == 2  # every stretch checked (mode 0), then stored (mode 1)
    assert names.index("step_guard") < names.index("optim_sgd") < names.index("step_commit")
    assert names.index("step_guard") > 0  # after train_step's own kernels


def _diverging_schedule(at):
    return lambda epoch, step: 1e200 if step == at else 1e-2


@pytest.mark.parametrize("graphs", [False, True])
def test_a_step_that_diverges_among_unread_ones_changes_nothing(graphs):
    """lr 1e30 at global step 9 blows the params up (finite), so step 10's loss is NaN. Quiet fit
    reads once per epoch, so steps 10..12 run on the device before the host knows: the device
    must skip them, and the host must roll its counts back to step 9."""
    X, y = data(96)
    dev = emulated(bg.mlp([4, 6, 5, 3]), cuda_graph=graphs)
    ref = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    hists = [m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=16, verbose=False,
                   lr_schedule=_diverging_schedule(9)) for m in (ref, dev)]
    assert hists[0].stop_reason == hists[1].stop_reason
    assert "epoch 2, step 4 of 6 (global step 10): loss is nan at step 10; nothing was updated" in hists[1].stop_reason
    assert dev.step == ref.step == 9 and dev.fit_state["position"]["done"] == ref.fit_state["position"]["done"] == 3
    assert dev.optimizer.lr == ref.optimizer.lr == 1e200  # the lr before the failed step: step 9's
    for k in ref.params:
        np.testing.assert_allclose(dev.params[k], ref.params[k], rtol=1e-9, err_msg=k)
    for k in ref.state:
        np.testing.assert_allclose(dev.state[k], ref.state[k], rtol=1e-9, err_msg=k)
    a, b = dev.optimizer.state_dict(), ref.optimizer.state_dict()
    assert a["step"] == b["step"] == 9
    for p in b["slots"]:
        assert int(a["slots"][p]["step"]) == int(b["slots"][p]["step"]) == 9
    # the flag is cleared: with sane params again, fit resumes the epoch at its step 4 (global step 10)
    good = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    for m in (dev, ref):
        m.set_params(good.params)
        m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-3), epochs=1, verbose=False)
    assert dev.step == ref.step == 12
    for k in ref.params:
        np.testing.assert_allclose(dev.params[k], ref.params[k], rtol=1e-8, err_msg=k)


def test_train_step_reads_at_once_and_a_diverged_step_changes_nothing():
    X, y = data(16)
    model = emulated(bg.mlp([4, 6, 5, 3]))
    opt = bg.optim.Adam(lr=1e-2)
    loss = model.train_step(X, y, opt)
    assert np.isfinite(loss) and model.trainer.guarded.pending == 0
    opt.lr = 1e200
    model.train_step(X, y, opt)  # finite, huge params
    before = {k: v.copy() for k, v in model.params.items()}
    state = {k: v.copy() for k, v in model.state.items()}
    opt.lr = 1e-2
    with pytest.raises(bg.TrainingDiverged, match="at step 3; nothing was updated"):
        model.train_step(X, y, opt)
    assert model.step == 2 and opt.state_dict()["step"] == 2
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])
    for k in state:
        np.testing.assert_array_equal(model.state[k], state[k])


def _guard(model, grads, state_values, loss=1.0):
    """Launch step_guard by hand on planted arrays: the status it leaves."""
    rt, exe = model.runtime, model.executable
    status = np.array(STATUS_CLEAR, np.uint64)
    header = np.array([7.0, 0.0])
    losses = np.zeros(4, model.dtype)
    arrays = [grads, *state_values]
    checks = np.array([(rt.pointer(a), a.size) for a in arrays], np.int64).reshape(-1)
    exe.launch("step_guard", (1,), (BLOCK,), status, header, np.array(loss, model.dtype), losses, checks,
               np.int32(len(arrays)))
    return status, losses


def test_the_guard_flags_each_kind_of_nonfinite_value():
    model = emulated(bg.mlp([4, 6, 5, 3]))
    g = np.zeros(model.layout.totals["float64"])
    s = [np.ones(6), np.ones(6)]
    status, losses = _guard(model, g, s, loss=2.5)
    assert status[0] == 0 and losses[0] == 2.5
    status, _ = _guard(model, g, s, loss=np.inf)
    assert status[0] == 1 and status[1] == 7
    offset = model.layout.segments["bn1.gamma"].offset + 2
    g[offset] = np.nan
    g[offset + 1] = np.inf
    status, _ = _guard(model, g, s)
    assert status[0] == 2 and status[1] == 7 and status[2] == offset
    assert model.layout.name_at(int(status[2])) == "bn1.gamma"
    g[:] = 0
    s[1][3] = np.nan
    status, _ = _guard(model, g, s)
    assert status[0] == 4 and status[3] == 2  # the second state value
    sticky = np.array([1, 3, 0, 0, 0], np.uint64)  # an earlier step flagged: nothing more is checked
    rt = model.runtime
    checks = np.array([(rt.pointer(g), g.size)], np.int64)
    g[0] = np.nan
    model.executable.launch("step_guard", (1,), (BLOCK,), sticky, np.array([9.0, 1.0]), np.array(1.0),
                            np.zeros(2), checks, np.int32(1))
    assert list(sticky) == [1, 3, 0, 0, 0]


def test_a_user_optimizer_is_checked_on_the_host():
    class Halving(bg.optim.SGD):
        def update(self, p, g, slots):
            p -= 0.5 * self.lr * g

    X, y = data()
    model = emulated(bg.mlp([4, 6, 5, 3]))
    model.fit(X, y, optimizer=Halving(lr=0.1), epochs=1, batch_size=8, verbose=False)
    assert model.trainer.guarded is None and model.step == 6


def test_ctrl_c_among_unread_steps_stops_after_a_whole_step(monkeypatch, sigint_default):
    import os
    import signal

    from bngraph.training import StepBoundaryInterrupt

    X, y = data(96)
    model = emulated(bg.mlp([4, 6, 5, 3]))
    real = GuardedStep.submit

    def submit_then_ctrl_c(self, X, y):
        real(self, X, y)
        if self.model.step == 8:
            os.kill(os.getpid(), signal.SIGINT)  # honoured at the next step boundary

    monkeypatch.setattr(GuardedStep, "submit", submit_then_ctrl_c)
    with pytest.raises(StepBoundaryInterrupt, match=r"epoch 2, after step 2 of 6 \(global step 8\)"):
        model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=16, verbose=False)
    pos = model.fit_state["position"]
    assert model.step == 8 and pos["done"] == 2 and len(pos["losses"]) == 2 and model.trainer.guarded.pending == 0
