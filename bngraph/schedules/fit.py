"""What ``fit`` does with its ``lr_schedule``: a schedule object, ``fn(epoch, step) -> lr`` or
Keras's ``fn(epoch) -> lr``, told apart by the function's signature (:func:`kind`), all driven
through one object (:class:`FitSchedule`): ``lr(epoch, step)`` before each step, ``epoch_end``
after each epoch's validation."""
from __future__ import annotations

import inspect

from ..optim.base import check_lr
from .base import Schedule
from .text import TYPES

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_FORMS = ("a bg.schedules object (e.g. bg.schedules.StepLR(30)), fn(epoch) -> lr (Keras's: epoch from 0) or "
          "fn(epoch, step) -> lr (epoch and the global step, from 1)")


def kind(lr_schedule) -> str:
    """``"object"``, ``"epoch"`` (Keras's ``fn(epoch)``) or ``"epoch_step"`` (``fn(epoch, step)``),
    or a ValueError for anything else, and for a function that could be called either way."""
    if isinstance(lr_schedule, Schedule):
        return "object"
    name = getattr(lr_schedule, "__name__", type(lr_schedule).__name__)
    if isinstance(lr_schedule, type) and lr_schedule.__name__ in TYPES:
        raise ValueError(f"fit: lr_schedule is the class bg.schedules.{name}; pass an instance, e.g. "
                         f"bg.schedules.{name}(...)")
    if not callable(lr_schedule):
        raise ValueError(f"fit: lr_schedule must be {_FORMS}; got {type(lr_schedule).__name__}")
    try:
        params = list(inspect.signature(lr_schedule).parameters.values())
    except (TypeError, ValueError):
        raise ValueError(f"fit: cannot read the signature of lr_schedule {name}, so not whether it takes (epoch) "
                         f"or (epoch, step): wrap it, e.g. lambda epoch: {name}(epoch)") from None
    positional = [p for p in params if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    keyword_only = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
                    and p.default is inspect.Parameter.empty]
    spread = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    one = len(required) <= 1 <= len(positional) or (spread and len(required) <= 1)
    two = len(required) <= 2 <= len(positional) or (spread and len(required) <= 2)
    if keyword_only or not (one or two):
        raise ValueError(f"fit: lr_schedule {name} must take one argument (epoch) or two (epoch, step), got "
                         f"({', '.join(p.name for p in params)})")
    if one and two:
        raise ValueError(f"fit: lr_schedule {name} can be called with (epoch) or with (epoch, step), so which one "
                         f"is meant is ambiguous: make it fn(epoch) (Keras's, epoch from 0) or fn(epoch, step) "
                         f"(epoch and the global step, from 1), with no defaults or *args")
    if two and positional[1].name == "lr":
        raise ValueError(f"fit: lr_schedule {name}(epoch, lr) looks like Keras's schedule(epoch, lr); bngraph's "
                         f"two-argument form is fn(epoch, step). Use fn(epoch) -> lr, or bg.schedules.ExponentialLR "
                         f"and the others for a decay of the current lr")
    return "epoch" if one else "epoch_step"


class FitSchedule:
    """One fit's schedule: ``lr(epoch, step)`` (the epoch and the global step of the next step, both
    from 1) and ``epoch_end(model, record)``. A schedule object continues the model's record of it
    (``model.fit_state["schedule"]``, a checkpoint's) when that record is of the same type and
    arguments, else starts at the model's counters; ``commit`` writes the record back."""

    def __init__(self, lr_schedule, model, optimizer, steps_per_epoch: int, epochs: int, done: int, metrics):
        self.fn, self.kind = lr_schedule, kind(lr_schedule)
        self.cache = None  # (epoch, lr) of a Keras fn(epoch): called once per epoch
        if self.kind != "object":
            return
        s = lr_schedule
        entry = (model.fit_state or {}).get("schedule")
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("type") == type(s).__name__ and entry.get("config") == s.config():
            try:
                s.load_state_dict(entry.get("state"))
            except ValueError as e:
                raise ValueError(f"fit: the model's record of its {type(s).__name__} is damaged: {e}") from None
        else:
            base = getattr(optimizer, "lr", None)
            if base is None and type(s).__name__ != "OneCycleLR":
                raise ValueError(f"fit: {type(s).__name__} scales the optimizer's lr, and "
                                 f"{type(optimizer).__name__} has no lr attribute")
            length = epochs if s.per == "epoch" else epochs * steps_per_epoch - done
            s.start(base, model.epoch, model.step, length)
        if s.per == "step" and epochs:
            first = s.index(model.epoch, model.step)
            s.check_run(first, first + epochs * steps_per_epoch - done - 1)
        monitor = getattr(s, "monitor", None)
        if s.metric_driven and monitor not in metrics:
            hint = "; it needs validation_data=, or monitor='loss'" if monitor.startswith("val_") else ""
            raise ValueError(f"fit: {type(s).__name__} monitors {monitor!r}, which this fit does not report (it "
                             f"reports {', '.join(metrics)}){hint}")

    def commit(self, model):
        """Record the schedule object's place in ``model.fit_state`` (which checkpoints carry)."""
        if self.kind == "object":
            model.fit_state["schedule"] = self.fn.record()

    def lr(self, epoch: int, step: int) -> float:
        if self.kind == "object":
            return check_lr(self.fn.lr(epoch - 1, step - 1))
        if self.kind == "epoch":
            if self.cache is None or self.cache[0] != epoch:
                self.cache = (epoch, self._checked(self.fn(epoch - 1), f"({epoch - 1})"))
            return self.cache[1]
        return self._checked(self.fn(epoch, step), f"({epoch}, {step})")

    @staticmethod
    def _checked(value, call) -> float:
        """An lr a function returned, checked like ``Adam(lr=...)``: a finite number >= 0 (not True)."""
        try:
            return check_lr(value)
        except ValueError:
            raise ValueError(f"fit: lr_schedule{call} returned {value!r}; it must return the learning rate, a "
                             f"finite number >= 0") from None

    def epoch_end(self, model, record: dict):
        """After an epoch's validation: a metric-driven schedule takes its metric, and the record is updated."""
        if self.kind == "object" and self.fn.metric_driven:
            self.fn.step(record.get(self.fn.monitor, float("nan")))
            self.commit(model)
