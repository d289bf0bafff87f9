"""A training step is all or nothing (bngraph/model.py ``_step``/``_update``), whatever goes wrong
inside it; fit's order is the documented (seed, epoch) permutation; Ctrl-C in fit stops between
two steps; the lr schedule sees global step numbers (bngraph/training.py)."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import bngraph as bg
from bngraph.training import StepBoundaryInterrupt, batch_bounds


def data(n=40, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


class HeavyBall(bg.optim.Optimizer):
    """Your own update (not a built-in): runs on a snapshot."""

    def __init__(self, lr=0.05, mu=0.8, fail_at=None):
        super().__init__(lr=lr, mu=mu)
        self.fail_at = fail_at  # (step_count, param index): raise there, halfway through a step
        self.seen = 0

    def update(self, p, g, slots):
        if self.fail_at and self.fail_at == (self.step_count, self.seen % 5):
            raise RuntimeError("the optimizer failed halfway")
        self.seen += 1
        v = slots.setdefault("v", np.zeros_like(p))
        v *= self.mu
        v += g
        p -= self.lr * v


class Protocol:
    """Only the protocol (lr, step); no state_dict."""

    def __init__(self, lr=0.1, action=None):
        self.lr, self.calls, self.action = lr, 0, action

    def step(self, params, grads):
        self.calls += 1
        for i, (k, g) in enumerate(grads.items()):
            if self.action and i == 2:
                self.action(params, k)  # instead of this param's update
                continue
            params[k] -= self.lr * g


OPTIMIZERS = {"adam": lambda: bg.optim.Adam(lr=1e-2), "heavyball": HeavyBall, "protocol": Protocol}


def snapshot(model):
    opt = model.optimizer
    sd = opt.state_dict() if hasattr(opt, "state_dict") else None
    return ({k: np.array(v) for k, v in {**model.params, **model.state}.items()}, model.step, model.epoch,
            sd, getattr(opt, "calls", None), getattr(opt, "lr", None))


def assert_unchanged(model, snap):
    values, step, epoch, sd, calls, lr = snap
    for k, v in {**model.params, **model.state}.items():
        np.testing.assert_array_equal(v, values[k], err_msg=k)
    assert (model.step, model.epoch) == (step, epoch)
    opt = model.optimizer
    if sd is not None:
        now = opt.state_dict()
        assert now["step"] == sd["step"] and now["hyper"] == sd["hyper"]
        assert now["slots"].keys() == sd["slots"].keys()
        for p, slots in sd["slots"].items():
            for s, a in slots.items():
                np.testing.assert_array_equal(now["slots"][p][s], a, err_msg=f"{p}/{s}")
    assert getattr(opt, "lr", None) == lr


def trained(make_opt, graph=None):
    X, y = data()
    model = bg.compile(graph or bg.mlp([4, 5, 3]), dtype="float64")
    opt = make_opt()
    for _ in range(2):
        model.train_step(X[:8], y[:8], opt)
    return model, X, y


def poison(model, change):
    """Make the generated train_step misbehave: ``change(out, G)`` after the real call."""
    real = model.executable.functions["train_step"]

    def program(*args):
        out = dict(real(*args))
        return change(out, args[-2])

    model.executable.functions["train_step"] = program


def _raise(out, G):
    G["out.W"][...] = 7.0  # it wrote some gradients, then failed
    raise RuntimeError("the generated code failed")


def _nan_grad(out, G):
    G["bn1.gamma"][1] = np.nan  # a finite loss with a NaN gradient
    return out


def _inf_state(out, G):
    out["state.bn1.running_var"] = np.full(5, np.inf)
    return out


def _drop(key):
    def change(out, G):
        del out[key]
        return out

    return change


FAILURES = [
    pytest.param(_raise, RuntimeError, "the generated code failed", id="program-raises"),
    pytest.param(_drop("state.bn1.running_var"), bg.errors.ProgramError,
                 r"train_step returned no state\.bn1\.running_var .*; nothing was updated", id="missing-state-output"),
    pytest.param(_drop("loss"), bg.errors.ProgramError, r"returned no loss", id="missing-loss"),
    pytest.param(_nan_grad, bg.TrainingDiverged, r"the gradient of bn1\.gamma contains NaN or inf at step 3; nothing",
                 id="nan-gradient"),  # item 18
    pytest.param(_inf_state, bg.TrainingDiverged, r"the new bn1\.running_var contains NaN or inf at step 3",
                 id="inf-running-stat"),
]


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("change, exc, match", FAILURES)
def test_a_failure_inside_the_program_changes_nothing(opt, change, exc, match):
    model, X, y = trained(OPTIMIZERS[opt])
    snap = snapshot(model)
    poison(model, change)
    with pytest.raises(exc, match=match):
        model.train_step(X[:8], y[:8])
    assert_unchanged(model, snap)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_fit_stops_on_a_nan_gradient_with_nothing_changed(opt):
    model, X, y = trained(OPTIMIZERS[opt])
    snap = snapshot(model)
    poison(model, _nan_grad)
    hist = model.fit(X, y, epochs=2, batch_size=8, verbose=False, lr_schedule=lambda e, s: 0.5)
    assert hist.stop_reason.startswith("stopped early at epoch 1, step 1 of 5 (global step 3): the gradient of "
                                       "bn1.gamma contains NaN or inf")
    assert_unchanged(model, snap)  # the lr the schedule set for the failed step is undone too


def test_a_batch_variance_that_overflows_is_caught_before_the_update():
    """float32: values ~1e20 are finite, their variance is not; the loss and gradients stay finite."""
    X, y = data(16)
    X[:, 0] *= 1e20
    for opt in (bg.optim.SGD(lr=0.1), Protocol()):
        model = bg.compile(bg.mlp([4, 5, 3]))
        snap = snapshot(model)
        with pytest.raises(bg.TrainingDiverged, match=r"the new bn1\.running_var contains NaN or inf at step 1"):
            model.train_step(X, y, opt)
        model.optimizer = None
        assert_unchanged(model, snap)


@pytest.mark.parametrize("param_index", [0, 2, 4])
def test_your_optimizer_raising_halfway_is_rolled_back(param_index):
    model, X, y = trained(lambda: HeavyBall(fail_at=(2, param_index)))
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="halfway"):
        model.train_step(X[:8], y[:8])
    assert_unchanged(model, snap)
    model.optimizer.fail_at = None
    model.train_step(X[:8], y[:8])  # and it goes on from there
    assert model.step == 3 and model.optimizer.step_count == 3


@pytest.mark.parametrize("action, exc, match", [
    (lambda params, k: params[k].__setitem__(..., np.nan), bg.TrainingDiverged,
     r"the update at step 3 made \S+ NaN or inf .*; nothing was updated"),
    (lambda params, k: params[k].__setitem__(..., np.inf), bg.TrainingDiverged, r"NaN or inf"),
    (lambda params, k: (_ for _ in ()).throw(KeyboardInterrupt()), KeyboardInterrupt, None),
    (lambda params, k: params.__setitem__(k, np.zeros(3)), ValueError,
     r"set params\[.*\] to an array of shape \(3,\), expected"),
])
def test_a_protocol_optimizer_that_breaks_params_is_rolled_back(action, exc, match):
    model, X, y = trained(Protocol)
    model.optimizer.action = action
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        model.train_step(X[:8], y[:8])
    assert_unchanged(model, snap)


def test_a_protocol_optimizer_may_rebind_params_instead_of_updating_in_place():
    class Rebinding(Protocol):
        def step(self, params, grads):
            for k, g in grads.items():
                params[k] = params[k] - self.lr * g  # a new array, not in place

    X, y = data()
    a = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    b = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    a.fit(X, y, optimizer=Rebinding(), epochs=2, batch_size=8, verbose=False)
    b.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=2, batch_size=8, verbose=False)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-12, err_msg=k)


def test_a_built_in_optimizer_is_not_copied_each_step(monkeypatch):
    """The cost rule: only optimizers that are not built-ins run on a snapshot."""
    import bngraph.snapshot as snapshot_mod

    copies = []
    real = snapshot_mod.copy_array
    monkeypatch.setattr(snapshot_mod, "copy_array", lambda a: copies.append(a.size) or real(a))
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    for opt in (bg.optim.Adam(lr=1e-2), bg.optim.SGD(lr=0.1, momentum=0.9), bg.optim.AdamW(lr=1e-2)):
        model.train_step(X[:8], y[:8], opt)
    assert copies == []
    model.train_step(X[:8], y[:8], HeavyBall())
    assert copies == [model._P.buffers["float32"].size]


# --------------------------------------------------------------------------------------------
# fit's order (item 17) and the lr schedule's step numbers
# --------------------------------------------------------------------------------------------


def _order_spy(model):
    """Record, per step, which rows of X (row i holds i in column 0) the step trained on."""
    seen = []
    real = model.trainer.submit  # fit's step

    def spy(Xb, yb, opt):
        seen.append(np.rint(Xb[:, 0]).astype(int).tolist())
        return real(Xb, yb, opt)

    model.trainer.submit = spy
    return seen


def _expected(n, batch_size, seed, epochs, shuffle=True, merge=True):
    out = []
    for ep in epochs:
        order = np.random.default_rng([seed, ep]).permutation(n) if shuffle else np.arange(n)
        out += [order[a:b].tolist() for a, b in batch_bounds(n, batch_size, merge)]
    return out


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("n, bs", [(37, 8), (33, 8), (40, 40)])
def test_fit_order_is_the_documented_seed_epoch_permutation(seed, n, bs):
    X, y = data(n)
    X[:, 0] = np.arange(n)
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    seen = _order_spy(model)
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.01), epochs=3, batch_size=bs, seed=seed, verbose=False)
    assert seen == _expected(n, bs, seed, [1, 2, 3])
    if n > bs:
        assert seen[0] != seen[len(seen) // 3]  # another order each epoch
    seen.clear()  # a second call continues with epoch 4
    model.fit(X, y, epochs=1, verbose=False)
    assert seen == _expected(n, bs, seed, [4])
    seen.clear()
    model.fit(X, y, epochs=1, shuffle=False, verbose=False)
    assert seen == _expected(n, bs, seed, [5], shuffle=False)


def test_lr_schedule_gets_global_steps_across_a_checkpoint(tmp_path):
    X, y = data(20)  # batches of 8: 8, 8, 4 -> 3 steps per epoch
    calls = []

    def schedule(epoch, step):
        calls.append((epoch, step))
        return 0.1 / step

    model = bg.compile(bg.mlp([4, 5, 3]))
    model.fit(X, y, optimizer=bg.optim.SGD(lr=1.0), epochs=2, batch_size=8, lr_schedule=schedule, verbose=False)
    model.save(tmp_path / "s.npz")
    resumed = bg.load(tmp_path / "s.npz")
    resumed.fit(X, y, epochs=1, lr_schedule=schedule, verbose=False)  # batch size 8 from the checkpoint
    assert calls == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6), (3, 7), (3, 8), (3, 9)]
    assert resumed.step == 9 and resumed.optimizer.step_count == 9
    assert resumed.optimizer.lr == pytest.approx(0.1 / 9)


# --------------------------------------------------------------------------------------------
# Ctrl-C in fit
# --------------------------------------------------------------------------------------------


class CtrlC(bg.optim.SGD):
    """SGD that gets Ctrl-C (``times`` SIGINTs) while stepping at ``at`` steps."""

    def __init__(self, at, times=1):
        super().__init__(lr=0.05, momentum=0.9)
        self.at, self.times = set(at), times

    def step(self, params, grads):  # overriding step: not a built-in, so it runs on a snapshot
        super().step(params, grads)
        if self.step_count in self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_in_fit_stops_between_steps_and_resumes_exactly(tmp_path, sigint_default):
    X, y = data(37)
    straight = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    straight.fit(X, y, optimizer=bg.optim.SGD(lr=0.05, momentum=0.9), epochs=3, batch_size=8, verbose=False)
    model = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    with pytest.raises(StepBoundaryInterrupt, match=r"fit: interrupted at epoch 2, after step 2 of 5 \(global step "
                                                     r"7\)") as info:
        model.fit(X, y, optimizer=CtrlC(at=[7]), epochs=3, batch_size=8, verbose=False)
    assert isinstance(info.value, KeyboardInterrupt) and len(info.value.history) == 1
    assert model.step == 7 and model.epoch == 1 and model.fit_state["position"]["done"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # fit put the handler back
    model.save(tmp_path / "i.npz")
    resumed = bg.load(tmp_path / "i.npz", optimizer=CtrlC(at=[]))
    hist = resumed.fit(X, y, epochs=2, verbose=False)  # the rest of epoch 2, then epoch 3
    assert hist.column("epoch") == [2, 3]
    for k, v in straight.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k)


def test_a_second_ctrl_c_interrupts_at_once(sigint_default):
    X, y = data(37)
    model = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    opt = CtrlC(at=[3], times=2)
    with pytest.raises(KeyboardInterrupt) as info:
        model.fit(X, y, optimizer=opt, epochs=2, batch_size=8, verbose=False)
    assert not isinstance(info.value, StepBoundaryInterrupt)  # raised inside step 3, which was rolled back
    assert model.step == 2 and opt.step_count == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resuming_with_another_batch_size_restarts_the_interrupted_epoch(capsys, sigint_default):
    X, y = data(37)
    model = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    with pytest.raises(StepBoundaryInterrupt):
        model.fit(X, y, optimizer=CtrlC(at=[7]), epochs=3, batch_size=8, verbose=False)
    model.optimizer.at = set()
    hist = model.fit(X, y, epochs=1, batch_size=10)  # the place in epoch 2 means nothing with batches of 10
    assert "epoch 2 starts again from its first batch: it was interrupted with other data, seed, batch size or " \
           "shuffle" in capsys.readouterr().err
    assert hist.column("epoch") == [2] and hist.column("steps") == [4] and model.step == 7 + 4
    assert model.fit_state["position"] is None and model.fit_state["batch_size"] == 10
