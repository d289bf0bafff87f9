"""The proof that a fused update cannot overflow (bngraph/optim/bounds.py), checked against the
update itself.

For every built-in record and its options, thousands of random cases: hyperparameters from the
ordinary to the absurd (lr up to 1e38, weight decay up to 1e30, eps down to 0), inputs whose
magnitudes range over float32's whole span, slots that are non-negative where the optimizer keeps
them so. Whenever the analysis says *proved*, the real rendered NumPy update in float32 must leave
every param and slot finite, and every slot inside the interval the analysis gives for it (the
interval the step tracks). And the proof is not vacuous: every ordinary case is proved.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bngraph.optim.bounds import Unproved, analysis, limits
from bngraph.optim.records import ADAM_RECORD, ADAMW_RECORD, RMSPROP_RECORD, SGD_RECORD
from bngraph.optim.render_numpy import numpy_update

NONNEG = {"exp_avg_sq", "max_exp_avg_sq", "square_avg"}

CONFIGS = [
    (SGD_RECORD, {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}),
    (SGD_RECORD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-4, "nesterov": False}),
    (SGD_RECORD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": True}),
    (RMSPROP_RECORD, {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                      "centered": False}),
    (RMSPROP_RECORD, {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "weight_decay": 1e-2, "momentum": 0.5,
                      "centered": True}),
    (ADAM_RECORD, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}),
    (ADAM_RECORD, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": True}),
    (ADAMW_RECORD, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": True}),
]
IDS = ["sgd", "sgd-momentum-wd", "sgd-nesterov", "rmsprop", "rmsprop-centered-momentum", "adam", "adam-l2-amsgrad",
       "adamw-amsgrad"]


def _case(rng, record, base, absurd: bool):
    hp = dict(base)
    if absurd:  # scale one or two hyperparameters towards (and past) float32's limits
        for key in rng.choice([k for k in ("lr", "weight_decay", "eps") if k in hp], size=2):
            hp[key] = float(10.0 ** rng.uniform(-45 if key == "eps" else -3, 38)) * (rng.random() < 0.9)
    t = int(rng.integers(1, 1000)) if record.counter else None
    n = 64
    scale = (lambda: 10.0 ** rng.uniform(-30, 37)) if absurd else (lambda: 10.0 ** rng.uniform(-3, 1))
    p = (rng.normal(size=n) * scale()).astype(np.float32)
    g = (rng.normal(size=n) * scale()).astype(np.float32)
    slots = {}
    for s in record.slots:
        x = rng.normal(size=n) * scale()
        x = np.abs(x) ** 2 if s.name in NONNEG else x
        slots[s.name] = np.minimum(x, np.finfo(np.float32).max / 2).astype(np.float32)
    return hp, t, p, g, slots


def _rng_of(x) -> tuple:
    return float(x.min()), float(x.max())


@pytest.mark.parametrize("record,base", CONFIGS, ids=IDS)
def test_a_proved_update_never_overflows_and_its_slots_stay_in_their_intervals(record, base):
    rng = np.random.default_rng(7)
    update, a = numpy_update(record), analysis(record)
    proved = ordinary_proved = 0
    for i in range(1500):
        absurd = i % 3 != 0
        hp, t, p, g, slots = _case(rng, record, base, absurd)
        keep = record.slot_keys(hp)
        slots = {k: v for k, v in slots.items() if k in keep}
        values = record.values(hp, t, ())
        inputs = {"p": (-float(np.abs(p).max()), float(np.abs(p).max())),
                  "g": (-float(np.abs(g).max()), float(np.abs(g).max())),
                  **{k: _rng_of(v) for k, v in slots.items()}}
        try:
            out = a.run(values, "float32", inputs)
        except Unproved:
            assert absurd or base.get("centered"), (hp, t)  # an ordinary case is always proved
            continue
        proved += 1
        ordinary_proved += not absurd
        P, S = p.copy(), {k: v.copy() for k, v in slots.items()}
        with np.errstate(all="ignore"):
            update(np, P, g, S, np.empty_like(p), np.empty_like(p), values)
        assert np.isfinite(P).all(), (hp, t, inputs)
        for k, v in S.items():
            assert np.isfinite(v).all(), (k, hp, t, inputs)
            lo, hi = out[k]
            slack = 1e-5 * max(abs(lo), abs(hi)) + 1e-30  # float32 rounding of a few operations
            assert lo - slack <= v.min() and v.max() <= hi + slack, (k, out[k], _rng_of(v))
            assert lo >= 0.0 or k not in NONNEG, (k, lo)  # the sign the square root relies on is tracked
    # centered RMSprop: proved only when square_avg's lower end exceeds grad_avg's square, so no count
    assert base.get("centered") or (proved > 100 and ordinary_proved == 500), (proved, ordinary_proved)


def test_what_cannot_be_proved_says_why():
    a = analysis(ADAM_RECORD)
    hp = dict(CONFIGS[5][1], eps=0.0)
    big, small = limits("float32")
    with pytest.raises(Unproved, match="a denominator may be 0"):
        a.run(ADAM_RECORD.values(hp, 1, ()), "float32", {"p": (-1, 1), "g": (-1, 1), "exp_avg": (-1, 1),
                                                         "exp_avg_sq": (0.0, 1.0)})
    with pytest.raises(Unproved, match="a square root's argument may be negative"):
        a.run(ADAM_RECORD.values(CONFIGS[5][1], 1, ()), "float32", {"p": (-1, 1), "g": (-1, 1), "exp_avg": (-1, 1),
                                                                    "exp_avg_sq": (-1e-3, 1.0)})
    with pytest.raises(Unproved, match="a value of the update may exceed"):  # g*g in exp_avg_sq
        a.run(ADAM_RECORD.values(CONFIGS[5][1], 1, ()), "float32", {"p": (-1, 1), "g": (-1e20, 1e20),
                                                                    "exp_avg": (-1, 1), "exp_avg_sq": (0.0, 1.0)})
    with pytest.raises(Unproved, match="the slot 'exp_avg' hold values up to"):
        a.run(ADAM_RECORD.values(CONFIGS[5][1], 1, ()), "float32", {"p": (-1, 1), "g": (-1, 1),
                                                                    "exp_avg": (-math.inf, 1), "exp_avg_sq": (0, 1)})
    assert big == float(np.finfo(np.float32).max) / 4 and small == math.sqrt(float(np.finfo(np.float32).tiny))


@np.errstate(over="ignore")  # as the training step runs it: an overflowing sum of squares is no warning
def test_the_numpy_bound_of_a_buffer_is_an_upper_bound_and_sees_nan_and_inf():
    from bngraph.backends.device import HostMemory
    mem, rng = HostMemory(), np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for scale in (0.0, 1e-30, 1e-20, 1.0, 1e18, 1e19, 1e30):
            x = (rng.normal(size=1000) * scale).astype(dtype)
            b = mem.abs_bound(x)
            assert b >= float(np.abs(x).max()) and math.isfinite(b), (dtype, scale)
        for bad in (np.nan, np.inf, -np.inf):
            x = np.ones(1000, dtype)
            x[rng.integers(1000)] = bad
            assert mem.abs_bound(x) == math.inf
    assert mem.abs_bound(np.zeros(0, np.float32)) == 0.0
