"""Schedules by name: the registry a checkpoint's record is rebuilt from, and the short spelling
the command line's ``--schedule`` takes (:func:`parse`)."""
from __future__ import annotations

import inspect

from .base import Schedule, SequentialLR
from .decay import (CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, LinearLR, MultiStepLR, OneCycleLR,
                    StepLR)
from .plateau import ReduceLROnPlateau

TYPES = {cls.__name__: cls for cls in (StepLR, MultiStepLR, ExponentialLR, LinearLR, CosineAnnealingLR,
                                        CosineAnnealingWarmRestarts, OneCycleLR, SequentialLR, ReduceLROnPlateau)}


def from_config(entry: dict) -> Schedule:
    """A schedule from ``{"type": name, "config": arguments}`` (what ``Schedule.record()`` writes)."""
    if not isinstance(entry, dict) or entry.get("type") not in TYPES or not isinstance(entry.get("config"), dict):
        raise ValueError(f"not a recorded bngraph schedule: {entry!r}")
    config = dict(entry["config"])
    if entry["type"] == "SequentialLR":
        config["schedulers"] = [from_config(s) for s in config.get("schedulers") or []]
    try:
        return TYPES[entry["type"]](**config)
    except TypeError as e:
        raise ValueError(f"not a recorded bngraph schedule: {entry!r} ({e})") from None


def recorded(model) -> Schedule | None:
    """The schedule ``model.fit_state`` records (a checkpoint's), rebuilt with its state, or None:
    to continue a run without spelling its schedule again."""
    entry = (getattr(model, "fit_state", None) or {}).get("schedule")
    if entry is None:
        return None
    schedule = from_config(entry)
    schedule.load_state_dict(entry.get("state"))
    return schedule


# ---- the command line's spelling -------------------------------------------------------------------

# name -> (class, its positional arguments in the text, the form shown in messages)
SPELLINGS = {
    "step": (StepLR, ("step_size", "gamma"), "step:STEP_SIZE[:GAMMA]"),
    "multistep": (MultiStepLR, ("milestones", "gamma"), "multistep:M1,M2,...[:GAMMA]"),
    "exp": (ExponentialLR, ("gamma",), "exp:GAMMA"),
    "cosine": (CosineAnnealingLR, ("T_max", "eta_min"), "cosine[:T_MAX[:ETA_MIN]]"),
    "restarts": (CosineAnnealingWarmRestarts, ("T_0", "T_mult", "eta_min"), "restarts:T_0[:T_MULT[:ETA_MIN]]"),
    "onecycle": (OneCycleLR, ("max_lr", "pct_start"), "onecycle:MAX_LR[:PCT_START]"),
    "plateau": (ReduceLROnPlateau, ("patience", "factor"), "plateau[:PATIENCE[:FACTOR]]"),
}
INTS = {"step_size", "T_max", "T_0", "T_mult", "total_iters", "patience", "cooldown", "total_steps", "epochs",
        "steps_per_epoch", "warmup"}
WORDS = {"per", "monitor", "mode", "threshold_mode", "anneal_strategy"}
FORMS = "; ".join(form for _, _, form in SPELLINGS.values())


def _value(text, key, name, where):
    try:
        if key == "milestones":
            return [int(m) for m in name.split(",") if m]
        if key in WORDS:
            return name
        if key == "three_phase":
            return {"true": True, "false": False}[name.lower()]
        return int(name) if key in INTS else float(name)
    except (ValueError, KeyError):
        what = ("a list of integers such as 30,60" if key == "milestones" else "true or false" if key == "three_phase"
                else "an integer" if key in INTS else "a number")
        raise ValueError(f"schedule {text!r}: {key} must be {what}, got {name!r} ({where})") from None


def parse(text: str, monitor: str | None = None) -> Schedule:
    """A schedule from its short spelling, ``NAME[:ARG...][:KEY=VALUE...]`` (the command line's
    ``--schedule``): ``step:30`` (StepLR, step_size 30, gamma 0.1), ``step:30:0.5``,
    ``multistep:30,60``, ``exp:0.95``, ``cosine`` (CosineAnnealingLR over the whole run),
    ``cosine:50:1e-5``, ``restarts:10:2``, ``onecycle:0.1`` (OneCycleLR, max_lr 0.1, over the
    whole run), ``plateau:5`` (ReduceLROnPlateau, patience 5, on ``monitor``, default val_loss),
    ``plateau:5:0.5``. ``KEY=VALUE`` sets any other argument of the class (``per=step``,
    ``anneal_strategy=linear``, ``cooldown=2``, ...); ``warmup=N`` (not for onecycle and plateau)
    puts a linear warmup of N epochs (or steps) first, from ``warmup_factor`` (default 0.1) times
    the lr: ``SequentialLR([LinearLR(warmup_factor, 1.0, N), schedule], [N])``. A spelling that
    is not one of these is a ValueError saying what is wrong and listing the forms."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"schedule {text!r}: expected one of {FORMS}")
    name, *fields = text.strip().split(":")
    if name not in SPELLINGS:
        raise ValueError(f"schedule {text!r}: unknown schedule {name!r}; expected one of {FORMS}")
    cls, positional, form = SPELLINGS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    args, extra, named = {}, {}, False
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq:
            if named or len(args) >= len(positional):
                raise ValueError(f"schedule {text!r}: too many values for {form} (name the others KEY=VALUE, "
                                 f"after the values)")
            key, value = positional[len(args)], field
        else:
            named = True
            if key not in allowed and key not in ("warmup", "warmup_factor"):
                raise ValueError(f"schedule {text!r}: {name} has no {key!r}; its arguments are "
                                 f"{', '.join(allowed)} (and warmup=N, warmup_factor=F)")
        if key in args or key in extra:
            raise ValueError(f"schedule {text!r}: {key} is given twice")
        (extra if key in ("warmup", "warmup_factor") else args)[key] = _value(text, key, value, form)
    if name == "plateau" and "monitor" not in args and monitor is not None:
        args["monitor"] = monitor
    required = [p.name for p in inspect.signature(cls).parameters.values()
                if p.default is inspect.Parameter.empty and p.name not in args]
    if required:
        raise ValueError(f"schedule {text!r}: {name} needs {', '.join(required)}: {form}")
    try:
        schedule = cls(**args)
        if not extra:
            return schedule
        if name in ("onecycle", "plateau"):
            raise ValueError(f"{name} takes no warmup (onecycle warms up itself: pct_start)")
        if "warmup" not in extra:
            raise ValueError("warmup_factor needs warmup=N")
        warmup = LinearLR(extra.get("warmup_factor", 0.1), 1.0, extra["warmup"], per=schedule.per)
        return SequentialLR([warmup, schedule], [extra["warmup"]])
    except ValueError as e:
        raise ValueError(f"schedule {text!r}: {e}") from None
