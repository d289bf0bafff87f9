"""The schedule base class (what fit and a checkpoint need of a schedule), the argument checks
the schedules share, and SequentialLR (schedules one after another)."""
from __future__ import annotations

import json
import math
import numbers
from bisect import bisect_right

from ..optim.base import check_lr

PER = ("epoch", "step")


def _not_an_optimizer(cls, value):
    if callable(getattr(value, "step", None)) and hasattr(value, "lr"):
        raise TypeError(f"bg.schedules.{cls} takes no optimizer (PyTorch's {cls}(optimizer, ...)): pass the "
                        f"schedule to fit(lr_schedule=...), which sets the optimizer's lr before each step")


def _int(cls, name, value, minimum=1):
    _not_an_optimizer(cls, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{cls}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(cls, name, value, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    _not_an_optimizer(cls, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{cls}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{cls}: {name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return value


def _choice(cls, name, value, choices):
    if value not in choices:
        raise ValueError(f"{cls}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _json(value):
    """``value`` as JSON gives it back (tuples become lists): how a checkpoint stores it."""
    return json.loads(json.dumps(value))


class Schedule:
    """A learning-rate schedule: the lr at index ``k`` (``per``: epochs or steps since it started)
    from its base lr. Subclasses define ``lr_at`` and ``ARGS`` (their constructor's arguments)."""

    ARGS: tuple = ()
    metric_driven = False  # ReduceLROnPlateau: stepped with a metric at the end of each epoch

    def __init__(self, per="epoch"):
        self.per = _choice(type(self).__name__, "per", per, PER)
        self.base_lr = None      # the optimizer's lr when the schedule started
        self.start_epoch = None  # model.epoch and model.step then
        self.start_step = None

    def lr_at(self, k: int, base_lr: float) -> float:
        """The lr after ``k`` calls of PyTorch's ``scheduler.step()``, from ``base_lr``."""
        raise NotImplementedError(f"{type(self).__name__} must define lr_at(k, base_lr): the lr after k epochs "
                                  f"or steps (per={self.per!r}) from the lr it started with")

    # ---- what a checkpoint records ------------------------------------------------------------
    def config(self) -> dict:
        """The constructor's arguments (JSON)."""
        return _json({name: getattr(self, name) for name in (*self.ARGS, "per")})

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "start_epoch": self.start_epoch, "start_step": self.start_step}

    def load_state_dict(self, state: dict):
        name = type(self).__name__
        if not isinstance(state, dict):
            raise ValueError(f"{name}: a state must be a dict, got {state!r}")
        base = state.get("base_lr")
        try:
            self.base_lr = None if base is None else check_lr(base)
        except ValueError as e:
            raise ValueError(f"{name}: recorded base_lr: {e}") from None
        for key in ("start_epoch", "start_step"):
            v = state.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name}: recorded {key} must be an integer >= 0, got {v!r}")
            setattr(self, key, v)

    @property
    def started(self) -> bool:
        return self.start_step is not None

    def record(self) -> dict:
        return {"type": type(self).__name__, "config": self.config(), "state": _json(self.state_dict())}

    # ---- fit's side --------------------------------------------------------------------------------
    def start(self, base_lr, epochs_done: int, steps_done: int, length: int):
        """Start at the model's counters; ``length``: epochs or steps (``per``) the starting fit runs."""
        self.base_lr = None if base_lr is None else check_lr(base_lr)
        self.start_epoch, self.start_step = epochs_done, steps_done
        self.resolve(length)

    def resolve(self, length: int):
        """Take whole-run lengths left open (None) from the starting fit's ``length``."""

    def index(self, epochs_done: int, steps_done: int) -> int:
        return epochs_done - self.start_epoch if self.per == "epoch" else steps_done - self.start_step

    def lr(self, epochs_done: int, steps_done: int) -> float:
        """The lr of the next step, given the epochs and steps the model has completed."""
        return self.lr_at(self.index(epochs_done, steps_done), self.base_lr)

    def check_run(self, first: int, last: int):
        """Refuse a fit whose steps would use indices ``first..last`` beyond the schedule's end."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SequentialLR(Schedule):
    """``schedulers[i]`` from ``milestones[i-1]`` on, each counting from 0 at its milestone, all
    from the same base lr (PyTorch's SequentialLR), e.g. a linear warmup then cosine annealing:
    ``SequentialLR([LinearLR(0.1, total_iters=5), CosineAnnealingLR()], milestones=[5])``."""

    ARGS = ("milestones",)

    def __init__(self, schedulers, milestones):
        children = list(schedulers) if isinstance(schedulers, (list, tuple)) else None
        if not children or not all(isinstance(s, Schedule) and not s.metric_driven for s in children):
            raise ValueError(f"SequentialLR: schedulers must be a non-empty list of bg.schedules objects (not "
                             f"ReduceLROnPlateau), got {schedulers!r}")
        pers = {s.per for s in children}
        if len(pers) != 1:
            raise ValueError("SequentialLR: its schedules must all count epochs or all count steps (per=...)")
        super().__init__(pers.pop())
        ms = [_int("SequentialLR", "a milestone", m) for m in milestones]
        if len(ms) != len(children) - 1 or ms != sorted(set(ms)):
            raise ValueError(f"SequentialLR: milestones must be {len(children) - 1} increasing integers (one fewer "
                             f"than the schedules), got {milestones!r}")
        self.schedulers, self.milestones = children, ms

    def config(self):
        return _json({"schedulers": [{"type": type(s).__name__, "config": s.config()} for s in self.schedulers],
                      "milestones": self.milestones})

    def resolve(self, length):
        for s, offset in zip(self.schedulers, [0, *self.milestones]):
            s.resolve(length - offset)

    def state_dict(self):
        return {**super().state_dict(), "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        children = state.get("schedulers")
        if not isinstance(children, list) or len(children) != len(self.schedulers):
            raise ValueError(f"SequentialLR: recorded schedulers {children!r} do not match its {len(self.schedulers)}")
        for s, st in zip(self.schedulers, children):
            s.load_state_dict(st)

    def _child(self, k):
        i = bisect_right(self.milestones, k)
        return self.schedulers[i], k - (self.milestones[i - 1] if i else 0)

    def check_run(self, first, last):
        bounds = [0, *self.milestones, math.inf]
        for s, a, b in zip(self.schedulers, bounds, bounds[1:]):
            lo, hi = max(first, a), min(last, b - 1)
            if lo <= hi:
                s.check_run(lo - a, hi - a)

    def lr_at(self, k, base_lr):
        s, k = self._child(k)
        return s.lr_at(k, base_lr)
