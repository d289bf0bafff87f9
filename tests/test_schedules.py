"""Learning-rate schedules (bngraph/schedules/): every schedule against torch.optim.lr_scheduler,
step for step over hundreds of steps (rtol 1e-12, float64), inside fit as PyTorch users step them
(per epoch or per step), across a checkpoint and a mid-epoch stop, and the ways of spelling one:
a schedule object, Keras's fn(epoch), fn(epoch, step), the command line's text."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import bngraph as bg
from bngraph import schedules as S

torch = pytest.importorskip("torch")
lrs_mod = torch.optim.lr_scheduler

BASE = 0.1
N = 300


def torch_lrs(make, n=N, base=BASE, metrics=None):
    """The lr of each of ``n`` steps under PyTorch: read, optimizer.step(), scheduler.step()."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base, momentum=0.9)
    sched = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's milestone step uses the deprecated epoch argument
        for k in range(n):
            out.append(opt.param_groups[0]["lr"])
            p.grad = torch.ones_like(p)
            opt.step()
            if metrics is None:
                sched.step()
            else:
                sched.step(metrics[k])
    return out


def ours(schedule, n=N, base=BASE):
    schedule.start(base, 0, 0, n)
    return [schedule.lr(k, k) for k in range(n)]  # one index per "scheduler.step()", per epoch or per step


CASES = {
    "StepLR(30, 0.1)": (lambda: S.StepLR(30, 0.1), lambda o: lrs_mod.StepLR(o, 30, 0.1)),
    "StepLR(7, 0.5)": (lambda: S.StepLR(7, gamma=0.5), lambda o: lrs_mod.StepLR(o, step_size=7, gamma=0.5)),
    "MultiStepLR": (lambda: S.MultiStepLR([150, 30, 80, 80], 0.3),
                    lambda o: lrs_mod.MultiStepLR(o, [150, 30, 80, 80], 0.3)),
    "ExponentialLR": (lambda: S.ExponentialLR(0.98), lambda o: lrs_mod.ExponentialLR(o, 0.98)),
    "LinearLR warmup": (lambda: S.LinearLR(0.25, 1.0, 40), lambda o: lrs_mod.LinearLR(o, 0.25, 1.0, 40)),
    "LinearLR decay": (lambda: S.LinearLR(1.0, 0.1, 100), lambda o: lrs_mod.LinearLR(o, 1.0, 0.1, 100)),
    "CosineAnnealingLR": (lambda: S.CosineAnnealingLR(100), lambda o: lrs_mod.CosineAnnealingLR(o, 100)),
    "CosineAnnealingLR periodic eta_min": (lambda: S.CosineAnnealingLR(50, eta_min=1e-4),
                                           lambda o: lrs_mod.CosineAnnealingLR(o, 50, eta_min=1e-4)),
    "CosineAnnealingWarmRestarts T_mult=2": (
        lambda: S.CosineAnnealingWarmRestarts(10, 2, 1e-5),
        lambda o: lrs_mod.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-5)),
    "CosineAnnealingWarmRestarts T_mult=1": (lambda: S.CosineAnnealingWarmRestarts(25),
                                             lambda o: lrs_mod.CosineAnnealingWarmRestarts(o, T_0=25)),
    "warmup + cosine (SequentialLR)": (
        lambda: S.SequentialLR([S.LinearLR(0.1, 1.0, 20), S.CosineAnnealingLR(280)], [20]),
        lambda o: lrs_mod.SequentialLR(o, [lrs_mod.LinearLR(o, 0.1, 1.0, 20), lrs_mod.CosineAnnealingLR(o, 280)],
                                       [20])),
    "warmup + step + exp (SequentialLR)": (
        lambda: S.SequentialLR([S.LinearLR(0.5, 1.0, 10), S.StepLR(40, 0.5), S.ExponentialLR(0.99)], [10, 150]),
        lambda o: lrs_mod.SequentialLR(o, [lrs_mod.LinearLR(o, 0.5, 1.0, 10), lrs_mod.StepLR(o, 40, 0.5),
                                           lrs_mod.ExponentialLR(o, 0.99)], [10, 150])),
}
for strategy in ("cos", "linear"):
    for three in (False, True):
        CASES[f"OneCycleLR {strategy} three_phase={three}"] = (
            lambda s=strategy, t=three: S.OneCycleLR(0.5, total_steps=N, pct_start=0.25, anneal_strategy=s,
                                                     three_phase=t),
            lambda o, s=strategy, t=three: lrs_mod.OneCycleLR(o, 0.5, total_steps=N, pct_start=0.25,
                                                              anneal_strategy=s, three_phase=t))
CASES["OneCycleLR epochs x steps_per_epoch"] = (
    lambda: S.OneCycleLR(0.2, epochs=20, steps_per_epoch=15, div_factor=10.0, final_div_factor=100.0),
    lambda o: lrs_mod.OneCycleLR(o, 0.2, epochs=20, steps_per_epoch=15, div_factor=10.0, final_div_factor=100.0))


@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch_step_for_step(name):
    mine, theirs = CASES[name]
    got, want = ours(mine()), torch_lrs(theirs)
    assert len(set(want)) > 3  # the schedule moves
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def plateau_metrics(n=N, seed=0):
    """A loss that falls, stalls, wobbles and jumps (NaN once): every branch of ReduceLROnPlateau."""
    rng = np.random.default_rng(seed)
    m = np.maximum(np.exp(-np.arange(n) / 40.0) + 0.02 * rng.standard_normal(n), 0.05)
    m[100:140] = m[99]          # exactly flat: not an improvement
    m[200] = float("nan")
    return [float(v) for v in m]


@pytest.mark.parametrize("kwargs", [
    {},
    {"patience": 0, "factor": 0.5},
    {"patience": 3, "factor": 0.5, "cooldown": 4, "min_lr": 1e-3},
    {"patience": 2, "threshold": 0.05, "threshold_mode": "abs", "factor": 0.7},
    {"mode": "max", "patience": 2, "factor": 0.8, "threshold": 0.01},
    {"patience": 1, "factor": 0.5, "eps": 0.01},
])
def test_reduce_on_plateau_matches_pytorch(kwargs):
    metrics = plateau_metrics()
    if kwargs.get("mode") == "max":
        metrics = [-m for m in metrics]
    want = torch_lrs(lambda o: lrs_mod.ReduceLROnPlateau(o, **kwargs), metrics=metrics)
    s = S.ReduceLROnPlateau(monitor="loss", **kwargs)
    s.start(BASE, 0, 0, N)
    got = []
    for m in metrics:
        got.append(s.lr(0, 0))
        s.step(m)
    assert len(set(want)) > 1
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


# ---- inside fit ---------------------------------------------------------------------------------------

def data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


class LrLog(bg.callbacks.Callback):
    def __init__(self):
        self.lrs, self.where = [], []

    def on_step_end(self, model, step, logs):
        self.lrs.append(logs["lr"])
        self.where.append((logs["epoch"], logs["global_step"]))


def fit_lrs(schedule, epochs, n=20, batch_size=8, model=None, **kw):
    X, y = data(n)
    model = model or bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    log = LrLog()
    hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=BASE), epochs=epochs, batch_size=batch_size, verbose=False,
                     lr_schedule=schedule, callbacks=[log], **kw)
    return log.lrs, hist, model


def per_epoch(lrs, steps):
    return [lr for lr in lrs for _ in range(steps)]


def test_fit_steps_an_epoch_schedule_after_each_epoch_and_a_step_schedule_after_each_step():
    # 20 rows in batches of 8: 3 steps per epoch, 40 epochs: 120 steps
    got, hist, _ = fit_lrs(S.CosineAnnealingLR(), epochs=40)
    want = torch_lrs(lambda o: lrs_mod.CosineAnnealingLR(o, 40), n=40)
    np.testing.assert_allclose(got, per_epoch(want, 3), rtol=1e-12, atol=0)
    np.testing.assert_allclose(hist.column("lr"), want, rtol=1e-12, atol=0)  # the lr each epoch ran with
    got, _, _ = fit_lrs(S.CosineAnnealingLR(per="step"), epochs=40)
    np.testing.assert_allclose(got, torch_lrs(lambda o: lrs_mod.CosineAnnealingLR(o, 120), n=120), rtol=1e-12)
    got, _, _ = fit_lrs(S.OneCycleLR(0.5, anneal_strategy="linear"), epochs=40)  # its cycle: the fit's 120 steps
    np.testing.assert_allclose(got, torch_lrs(lambda o: lrs_mod.OneCycleLR(o, 0.5, total_steps=120,
                                                                           anneal_strategy="linear"), n=120),
                               rtol=1e-12)
    got, _, _ = fit_lrs(S.SequentialLR([S.LinearLR(0.1, total_iters=5), S.CosineAnnealingLR()], [5]), epochs=40)
    want = torch_lrs(lambda o: lrs_mod.SequentialLR(
        o, [lrs_mod.LinearLR(o, 0.1, total_iters=5), lrs_mod.CosineAnnealingLR(o, 35)], [5]), n=40)
    np.testing.assert_allclose(got, per_epoch(want, 3), rtol=1e-12)


def test_fit_drives_reduce_on_plateau_with_the_validation_loss_or_the_training_loss():
    X, y = data(40)
    Xv, yv = data(15, seed=1)
    for monitor in ("val_loss", "loss"):
        model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
        s = S.ReduceLROnPlateau(monitor=monitor, patience=1, factor=0.5, threshold=0.02)
        hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=0.5), epochs=25, batch_size=8, verbose=False,
                         validation_data=(Xv, yv), lr_schedule=s)
        want = torch_lrs(lambda o: lrs_mod.ReduceLROnPlateau(o, patience=1, factor=0.5, threshold=0.02), n=25,
                         base=0.5, metrics=hist.column(monitor))
        assert len(set(want)) > 2
        np.testing.assert_allclose(hist.column("lr"), want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="monitors 'val_loss'.*needs validation_data=, or monitor='loss'"):
        model.fit(X, y, epochs=1, verbose=False, lr_schedule=S.ReduceLROnPlateau())


@pytest.mark.parametrize("make", [
    lambda: S.SequentialLR([S.LinearLR(0.2, total_iters=2), S.CosineAnnealingLR()], [2]),
    lambda: S.OneCycleLR(0.3),
    lambda: S.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, threshold=0.2),
    lambda: S.StepLR(2, 0.5, per="step"),
], ids=["warmup-cosine", "onecycle", "plateau", "step-per-step"])
def test_a_schedule_resumes_exactly_from_a_checkpoint_saved_mid_epoch(make, tmp_path):
    """A run stopped after global step 7 (mid-epoch 3), saved, loaded and given a fresh schedule of
    the same arguments: the same lrs, and the same weights bit for bit, as a run never stopped."""
    straight, _, ref = fit_lrs(make(), epochs=5)

    class StopAt(bg.callbacks.Callback):
        def on_step_end(self, model, step, logs):
            return "test stop" if logs["global_step"] == 7 else None

    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    log = LrLog()
    hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=BASE), epochs=5, batch_size=8, verbose=False,
                     lr_schedule=make(), callbacks=[log, StopAt()])
    assert hist.stop_reason == "test stop" and not hist.diverged and model.fit_state["position"]["done"] == 1
    model.save(tmp_path / "run.npz")
    resumed = bg.load(tmp_path / "run.npz")
    assert resumed.optimizer.lr == log.lrs[-1]  # the checkpoint's lr is the last step's, not the base
    rest, _, _ = fit_lrs(make(), epochs=3, model=resumed)  # epoch 3 (its last 2 steps), epochs 4 and 5
    assert log.lrs + rest == straight
    assert bg.schedules.recorded(resumed).record() == resumed.fit_state["schedule"]
    for k in ref.params:
        np.testing.assert_array_equal(resumed.params[k], ref.params[k], err_msg=k)
    for k in ref.state:
        np.testing.assert_array_equal(resumed.state[k], ref.state[k], err_msg=k)


def test_a_schedule_of_other_arguments_starts_anew_and_two_fits_continue_one():
    s = S.StepLR(1, 0.5)
    a, _, model = fit_lrs(s, epochs=2)
    b, _, _ = fit_lrs(s, epochs=2, model=model)  # the same schedule, the same model: it continues
    assert a + b == per_epoch([BASE * 0.5 ** k for k in range(4)], 3)
    c, _, _ = fit_lrs(S.StepLR(1, 0.1), epochs=1, model=model)  # another: it starts at the model's counters
    assert c == [BASE] * 3


def test_onecycle_refuses_a_fit_longer_than_its_cycle_before_any_step():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(ValueError, match=r"OneCycleLR's cycle has 10 steps and this fit would run its steps 1..12"):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=4, batch_size=8, verbose=False,
                  lr_schedule=S.OneCycleLR(0.5, total_steps=10))
    assert model.step == 0


# ---- fn(epoch), fn(epoch, step), and what is refused ----------------------------------------------------

def test_keras_fn_of_epoch_gets_the_epoch_from_0_once_per_epoch():
    calls = []

    def schedule(epoch):
        calls.append(epoch)
        return 0.1 * 0.5 ** epoch

    got, hist, _ = fit_lrs(schedule, epochs=3)
    assert calls == [0, 1, 2] and got == per_epoch([0.1, 0.05, 0.025], 3)
    got, _, _ = fit_lrs(lambda epoch, step: 0.1 / step, epochs=1)  # the two-argument form as before
    assert got == [0.1, 0.05, 0.1 / 3]


class Callable2:
    def __call__(self, epoch, step):
        return 0.01


@pytest.mark.parametrize("bad, says", [
    (lambda epoch, step=0: 0.1, "can be called with \\(epoch\\) or with \\(epoch, step\\), so which one is meant"),
    (lambda *args: 0.1, "ambiguous"),
    (lambda epoch, lr: lr * 0.9, "looks like Keras's schedule\\(epoch, lr\\)"),
    (lambda: 0.1, "must take one argument \\(epoch\\) or two \\(epoch, step\\)"),
    (lambda a, b, c: 0.1, "must take one argument"),
    (max, "cannot read the signature"),
    (0.1, "must be a bg.schedules object .*got float"),
    (S.StepLR, "is the class bg.schedules.StepLR; pass an instance"),
])
def test_an_ambiguous_or_wrong_lr_schedule_is_refused_before_anything_changes(bad, says):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(ValueError, match=says):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, verbose=False, lr_schedule=bad)
    assert model.step == 0
    fit_lrs(Callable2(), epochs=1)  # a callable object's signature is read too


def test_a_pytorch_habit_passing_the_optimizer_gets_bngraphs_spelling():
    with pytest.raises(TypeError, match="takes no optimizer.*fit\\(lr_schedule=...\\)"):
        S.StepLR(bg.optim.SGD(lr=0.1), 30)
    with pytest.raises(ValueError, match="StepLR: step_size must be an integer >= 1, got 0"):
        S.StepLR(0)
    with pytest.raises(ValueError, match="OneCycleLR: give total_steps, or epochs and steps_per_epoch"):
        S.OneCycleLR(0.1, epochs=3)


# ---- the command line's spelling --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expect", [
    ("step:30", S.StepLR(30)),
    ("step:30:0.5", S.StepLR(30, 0.5)),
    ("step:30:gamma=0.5:per=step", S.StepLR(30, 0.5, per="step")),
    ("multistep:30,60", S.MultiStepLR([30, 60])),
    ("exp:0.95", S.ExponentialLR(0.95)),
    ("cosine", S.CosineAnnealingLR()),
    ("cosine:50:1e-5", S.CosineAnnealingLR(50, 1e-5)),
    ("restarts:10:2", S.CosineAnnealingWarmRestarts(10, 2)),
    ("onecycle:0.1", S.OneCycleLR(0.1)),
    ("onecycle:0.1:anneal_strategy=linear:three_phase=true", S.OneCycleLR(0.1, anneal_strategy="linear",
                                                                          three_phase=True)),
    ("plateau:5", S.ReduceLROnPlateau(patience=5)),
    ("plateau:5:0.5:cooldown=2", S.ReduceLROnPlateau(patience=5, factor=0.5, cooldown=2)),
    ("cosine:warmup=5", S.SequentialLR([S.LinearLR(0.1, 1.0, 5), S.CosineAnnealingLR()], [5])),
    ("step:10:warmup=3:warmup_factor=0.5", S.SequentialLR([S.LinearLR(0.5, 1.0, 3), S.StepLR(10)], [3])),
])
def test_parse_builds_the_schedule_a_short_text_names(text, expect):
    got = S.parse(text)
    assert type(got) is type(expect) and got.config() == expect.config(), (got, expect)


def test_parse_takes_the_monitor_and_refuses_what_it_cannot_read():
    assert S.parse("plateau", monitor="loss").monitor == "loss"
    assert S.parse("plateau:monitor=val_accuracy:mode=max", monitor="loss").monitor == "val_accuracy"
    for text, says in [
        ("", "expected one of step:STEP_SIZE"),
        ("linear:3", "unknown schedule 'linear'; expected one of step:STEP_SIZE\\[:GAMMA\\]; multistep"),
        ("step", "step needs step_size: step:STEP_SIZE\\[:GAMMA\\]"),
        ("step:ten", "step_size must be an integer, got 'ten'"),
        ("step:30:0.1:7", "too many values for step:STEP_SIZE\\[:GAMMA\\]"),
        ("step:gamma=0.5:30", "too many values"),
        ("step:30:colour=red", "step has no 'colour'; its arguments are step_size, gamma, per"),
        ("step:30:step_size=4", "step_size is given twice"),
        ("exp:2x", "gamma must be a number, got '2x'"),
        ("multistep:30,sixty", "milestones must be a list of integers"),
        ("onecycle:0.1:warmup=3", "onecycle takes no warmup"),
        ("step:0", "StepLR: step_size must be an integer >= 1, got 0"),
        ("cosine:per=week", "CosineAnnealingLR: per must be one of 'epoch', 'step', got 'week'"),
    ]:
        with pytest.raises(ValueError, match=f"schedule {text!r}: {says}" if text else says):
            S.parse(text)


def test_a_record_rebuilds_its_schedule():
    for s in (S.StepLR(3, 0.2, per="step"), S.OneCycleLR(0.3, total_steps=50, three_phase=True),
              S.SequentialLR([S.LinearLR(0.5, total_iters=4), S.CosineAnnealingWarmRestarts(5, 2)], [4]),
              S.ReduceLROnPlateau(monitor="loss", mode="max", cooldown=1)):
        s.start(0.01, 2, 30, 100)
        if isinstance(s, S.ReduceLROnPlateau):
            for m in (1.0, 0.5, 0.7, 0.2, 0.1, 0.1):
                s.step(m)
        rec = s.record()
        again = S.from_config(rec)
        again.load_state_dict(rec["state"])
        assert again.record() == rec and repr(again) == repr(s)
        assert [again.lr(e, k) for e, k in ((2, 30), (5, 40), (9, 99))] == [s.lr(e, k) for e, k in
                                                                             ((2, 30), (5, 40), (9, 99))]
    with pytest.raises(ValueError, match="not a recorded bngraph schedule"):
        S.from_config({"type": "StepLR", "config": {"colour": 1}})
    assert not math.isinf(S.ReduceLROnPlateau().state_dict()["best"] or 0.0)  # JSON has no inf


def test_a_damaged_record_is_refused_clearly_and_a_foreign_one_ignored():
    _, _, model = fit_lrs(S.CosineAnnealingLR(), epochs=2)
    rec = model.fit_state["schedule"]
    assert rec["state"]["T_max"] == 2 and rec["config"]["T_max"] is None
    model.fit_state["schedule"] = {**rec, "state": {**rec["state"], "start_step": -3}}
    with pytest.raises(ValueError, match="the model's record of its CosineAnnealingLR is damaged: "
                                         "CosineAnnealingLR: recorded start_step must be an integer >= 0, got -3"):
        fit_lrs(S.CosineAnnealingLR(), epochs=1, model=model)
    model.fit_state["schedule"] = {**rec, "state": {**rec["state"], "T_max": None}}
    with pytest.raises(ValueError, match="recorded T_max must be an integer >= 1, got None"):
        fit_lrs(S.CosineAnnealingLR(), epochs=1, model=model)
    model.fit_state["schedule"] = 5  # not a record: a schedule starts anew
    got, _, _ = fit_lrs(S.StepLR(1, 0.5), epochs=2, model=model)
    assert got == per_epoch([BASE, BASE / 2], 3)
    with pytest.raises(ValueError, match="not a recorded bngraph schedule: 5"):
        S.from_config(5)


def test_a_schedule_of_your_own_runs_and_one_without_lr_at_says_what_it_lacks():
    class Halving(S.Schedule):
        def lr_at(self, k, base_lr):
            return base_lr * 0.5 ** k

    class Empty(S.Schedule):
        pass

    got, _, _ = fit_lrs(Halving(), epochs=3)
    np.testing.assert_allclose(got, per_epoch([BASE * 0.5 ** k for k in range(3)], 3), rtol=1e-12)
    with pytest.raises(NotImplementedError, match=r"Empty must define lr_at\(k, base_lr\): the lr after k epochs or "
                                                  r"steps \(per='epoch'\)"):
        fit_lrs(Empty(), epochs=1)
