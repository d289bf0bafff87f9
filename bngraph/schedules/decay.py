"""The schedules that are a formula of the epoch (or step) index: PyTorch's closed forms."""
from __future__ import annotations

import math
from bisect import bisect_right

from .base import Schedule, _choice, _float, _int, _json, _not_an_optimizer


class StepLR(Schedule):
    """``lr = base_lr * gamma ** (k // step_size)``: decay by ``gamma`` every ``step_size`` epochs."""

    ARGS = ("step_size", "gamma")

    def __init__(self, step_size, gamma=0.1, per="epoch"):
        super().__init__(per)
        self.step_size = _int("StepLR", "step_size", step_size)
        self.gamma = _float("StepLR", "gamma", gamma, 0.0)

    def lr_at(self, k, base_lr):
        return base_lr * self.gamma ** (k // self.step_size)


class MultiStepLR(Schedule):
    """``lr = base_lr * gamma ** (milestones passed)``: decay by ``gamma`` at each milestone
    (epoch indices; one listed twice decays twice, as in PyTorch)."""

    ARGS = ("milestones", "gamma")

    def __init__(self, milestones, gamma=0.1, per="epoch"):
        super().__init__(per)
        _not_an_optimizer("MultiStepLR", milestones)
        try:
            ms = [_int("MultiStepLR", "a milestone", m, 0) for m in milestones]
        except TypeError:
            raise ValueError(f"MultiStepLR: milestones must be a list of integers, got {milestones!r}") from None
        self.milestones = sorted(ms)
        self.gamma = _float("MultiStepLR", "gamma", gamma, 0.0)

    def lr_at(self, k, base_lr):
        return base_lr * self.gamma ** bisect_right(self.milestones, k)


class ExponentialLR(Schedule):
    """``lr = base_lr * gamma ** k``."""

    ARGS = ("gamma",)

    def __init__(self, gamma, per="epoch"):
        super().__init__(per)
        self.gamma = _float("ExponentialLR", "gamma", gamma, 0.0)

    def lr_at(self, k, base_lr):
        return base_lr * self.gamma ** k


class LinearLR(Schedule):
    """``lr = base_lr * (start_factor + (end_factor - start_factor) * min(k, total_iters) / total_iters)``:
    a linear warmup (or decay) over ``total_iters`` epochs, then constant."""

    ARGS = ("start_factor", "end_factor", "total_iters")

    def __init__(self, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, per="epoch"):
        super().__init__(per)
        self.start_factor = _float("LinearLR", "start_factor", start_factor, 0.0, 1.0, low_open=True)
        self.end_factor = _float("LinearLR", "end_factor", end_factor, 0.0, 1.0)
        self.total_iters = _int("LinearLR", "total_iters", total_iters)

    def lr_at(self, k, base_lr):
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                          * min(self.total_iters, k) / self.total_iters)


class CosineAnnealingLR(Schedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * k / T_max)) / 2`` (periodic after
    ``T_max``, as PyTorch's). ``T_max=None``: the epochs (or steps) of the fit that starts it."""

    ARGS = ("T_max", "eta_min")

    def __init__(self, T_max=None, eta_min=0.0, per="epoch"):
        super().__init__(per)
        self.T_max = None if T_max is None else _int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = _float("CosineAnnealingLR", "eta_min", eta_min, 0.0)
        self.t_max = self.T_max

    def resolve(self, length):
        if self.T_max is None:
            if length < 1:
                raise ValueError(f"CosineAnnealingLR(T_max=None) anneals over the {self.per}s of the fit that starts "
                                 f"it, and that fit runs none; give T_max")
            self.t_max = length

    def state_dict(self):
        return {**super().state_dict(), "T_max": self.t_max}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        t = state.get("T_max")
        self.t_max = self.T_max if t is None and self.T_max is not None else _int("CosineAnnealingLR",
                                                                                  "recorded T_max", t)

    def lr_at(self, k, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * k / self.t_max)) / 2


class CosineAnnealingWarmRestarts(Schedule):
    """SGDR: cosine from ``base_lr`` to ``eta_min`` over ``T_0`` epochs, then again over
    ``T_0 * T_mult``, ... (PyTorch's ``T_cur``/``T_i``, counted in integers)."""

    ARGS = ("T_0", "T_mult", "eta_min")

    def __init__(self, T_0, T_mult=1, eta_min=0.0, per="epoch"):
        super().__init__(per)
        self.T_0 = _int("CosineAnnealingWarmRestarts", "T_0", T_0)
        self.T_mult = _int("CosineAnnealingWarmRestarts", "T_mult", T_mult)
        self.eta_min = _float("CosineAnnealingWarmRestarts", "eta_min", eta_min, 0.0)

    def lr_at(self, k, base_lr):
        t_cur, t_i = k, self.T_0
        if self.T_mult == 1:
            t_cur = k % self.T_0
        else:
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * self.T_mult
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


class OneCycleLR(Schedule):
    """1cycle, per step: from ``max_lr / div_factor`` up to ``max_lr`` over ``pct_start`` of the
    cycle, then down to ``max_lr / div_factor / final_div_factor`` (``anneal_strategy`` "cos" or
    "linear"; ``three_phase`` as PyTorch's). The cycle has ``total_steps``, or ``epochs *
    steps_per_epoch``, or (neither given) the steps of the fit that starts it. Only the lr is
    cycled: PyTorch's ``cycle_momentum`` has no counterpart (bngraph schedules set ``lr`` only)."""

    ARGS = ("max_lr", "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy", "div_factor",
            "final_div_factor", "three_phase")

    def __init__(self, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4, three_phase=False):
        super().__init__("step")
        c = "OneCycleLR"
        self.max_lr = _float(c, "max_lr", max_lr, 0.0, low_open=True)
        self.total_steps = None if total_steps is None else _int(c, "total_steps", total_steps)
        self.epochs = None if epochs is None else _int(c, "epochs", epochs)
        self.steps_per_epoch = None if steps_per_epoch is None else _int(c, "steps_per_epoch", steps_per_epoch)
        if self.total_steps is None and (self.epochs is None) != (self.steps_per_epoch is None):
            raise ValueError(f"{c}: give total_steps, or epochs and steps_per_epoch, or none of them (the steps of "
                             f"the fit that starts it)")
        self.pct_start = _float(c, "pct_start", pct_start, 0.0, 1.0)
        self.anneal_strategy = _choice(c, "anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.div_factor = _float(c, "div_factor", div_factor, 0.0, low_open=True)
        self.final_div_factor = _float(c, "final_div_factor", final_div_factor, 0.0, low_open=True)
        if not isinstance(three_phase, bool):
            raise ValueError(f"{c}: three_phase must be True or False, got {three_phase!r}")
        self.three_phase = three_phase
        given = self.total_steps or (self.epochs * self.steps_per_epoch if self.epochs else None)
        self.steps = given

    def config(self):
        return _json({name: getattr(self, name) for name in self.ARGS})

    def resolve(self, length):
        if self.steps is None:
            if length < 1:
                raise ValueError("OneCycleLR without total_steps cycles over the steps of the fit that starts it, "
                                 "and that fit runs none; give total_steps")
            self.steps = length

    def state_dict(self):
        return {**super().state_dict(), "total_steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        t = state.get("total_steps")
        given = self.total_steps or (self.epochs * self.steps_per_epoch if self.epochs else None)
        self.steps = given if t is None and given else _int("OneCycleLR", "recorded total_steps", t)

    def start(self, base_lr, epochs_done, steps_done, length):
        super().start(None, epochs_done, steps_done, length)  # its lrs come from max_lr, not the optimizer's

    def check_run(self, first, last):
        if last >= self.steps:
            raise ValueError(f"fit: OneCycleLR's cycle has {self.steps} steps and this fit would run its steps "
                             f"{first + 1}..{last + 1} (PyTorch: 'Tried to step {last + 1} times'); give total_steps "
                             f"for the whole run, or fewer epochs")

    def lr_at(self, k, base_lr):
        total = self.steps
        initial = self.max_lr / self.div_factor
        lrs = {"initial_lr": initial, "max_lr": self.max_lr, "min_lr": initial / self.final_div_factor}
        if self.three_phase:
            phases = [(float(self.pct_start * total) - 1, "initial_lr", "max_lr"),
                      (float(2 * self.pct_start * total) - 2, "max_lr", "initial_lr"),
                      (total - 1, "initial_lr", "min_lr")]
        else:
            phases = [(float(self.pct_start * total) - 1, "initial_lr", "max_lr"), (total - 1, "max_lr", "min_lr")]
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(phases):
            if k <= end_step or i == len(phases) - 1:
                pct = (k - start_step) / (end_step - start_step)
                a, b = lrs[start], lrs[end]
                if self.anneal_strategy == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (b - a) * pct + a
            start_step = end_step
        raise AssertionError("unreachable")
