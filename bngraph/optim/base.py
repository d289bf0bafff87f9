"""The optimizer base class: hyperparameters and parameter groups, the per-parameter reference loop
(``step`` -> ``update``) and state dicts. Flat buffers (``bind`` / ``step_flat``): flatstep.py.

Nothing here assumes NumPy arrays: the array module is the bound runtime's ``xp`` or, unbound, the
parameter's own (:func:`bngraph.flat.array_namespace`). NumPy is used only to validate scalars.
"""
from __future__ import annotations

import math
import numbers
from types import MappingProxyType
from typing import Any

import numpy as np

from ..flat import array_namespace
from .flatstep import COUNTER, FlatStepMixin
from .groups import SlotPlan, assign_groups, group_spec
from .habits import TorchHabits, describe


# ---- scalars (hyperparameters) -----------------------------------------------------------------

def number(name: str, value: Any) -> float:
    """``value`` as a finite Python float, or a ValueError naming the hyperparameter."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d array of any module
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool, or a ValueError: only True/False (a NumPy bool too), never a truthy
    string such as "no"."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d array of any module
        value = value.item()
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_nonneg(name: str, value: Any) -> float:
    value = number(name, value)
    if value < 0:
        raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")
    return value


def check_lr(value: Any) -> float:
    value = number("lr", value)
    if value < 0:
        raise ValueError(f"Invalid learning rate: {value} (must be >= 0)")
    return value


def update_message(step: int, name: str, slot: str | None, dtype, cause) -> str:
    """The TrainingDiverged message of an update that would have made param ``name`` (or its
    optimizer ``slot``) NaN/inf at ``step`` and was not applied; ``cause()``: the param's clause
    (:func:`update_cause`)."""
    if slot is None:
        return f"the update at step {step} made {name} NaN or inf ({cause()}); nothing was updated"
    return (f"the update at step {step} made the optimizer's {slot!r} of {name} NaN or inf (finite loss and "
            f"gradients: a gradient too large to square in {np.dtype(dtype).name}, or hyperparameters too "
            f"large for it?); nothing was updated")


def update_cause(optimizer, name: str, grad, dtype, to_host=np.asarray) -> str:
    """Why an update with a finite loss and finite gradients left param ``name`` NaN/inf: the
    clause a TrainingDiverged message gives (looked for only after it happened). ``grad``: the
    param's gradient; ``to_host`` copies a device array to the host."""
    state = getattr(optimizer, "state", None)
    slots = state.get(name, {}) if isinstance(state, dict) else {}
    for key, a in slots.items():
        if key != COUNTER and hasattr(a, "dtype") and a.dtype.kind == "f":
            if not np.isfinite(to_host(a)).all():
                return (f"its optimizer state {key!r} holds NaN or inf (set or loaded that way, or overflowed "
                        f"by this update)")
    hp = {}
    if isinstance(optimizer, Optimizer):  # the hyperparameters of the group that owns the param
        groups = optimizer.param_groups
        hp = next((dict(g) for g in groups if name in g.get("names", ())), dict(groups[-1]))
    if hp.get("eps") == 0 and (to_host(grad) == 0).any():
        return (f"eps=0 and a gradient of exactly 0 give 0/0 in {type(optimizer).__name__}'s update: "
                f"use eps > 0, e.g. 1e-8")
    lr = hp.get("lr", getattr(optimizer, "lr", None))
    return f"finite loss and gradients: is the learning rate (lr={lr!r}) too large for {np.dtype(dtype).name}?"


# ---- arrays of any array module ------------------------------------------------------------------

def copy_array(a):
    """A copy of ``a`` in its own array module (``empty_like`` + ``[...] =`` exist everywhere;
    ``asarray(copy=True)`` does not, e.g. on NumPy 1.x)."""
    out = array_namespace(a).empty_like(a)
    out[...] = a
    return out


def host_int(a) -> int | None:
    """``int(a)`` for host data (a Python integer, or an array in host memory, which has
    ``__array_interface__``), else None: a device array is never read back."""
    if isinstance(a, numbers.Integral):
        return int(a)
    return int(a) if hasattr(a, "__array_interface__") else None


def host_steps(slots_by_name: dict) -> dict | None:
    """name -> step counter of a state dict's slots, read from host arrays; None if one is not."""
    out = {}
    for name, slots in slots_by_name.items():
        if COUNTER in slots:
            out[str(name)] = host_int(slots[COUNTER])
            if out[str(name)] is None:
                return None
    return out


def is_floating(xp, dtype) -> bool:
    kind = getattr(dtype, "kind", None)  # NumPy and CuPy dtypes: the fast answer
    if kind is not None or dtype is None:
        return kind == "f"
    isdtype = getattr(xp, "isdtype", None)  # the array API
    return isdtype is not None and bool(isdtype(dtype, "real floating"))


def astype(xp, a, dtype):
    """``a`` in ``dtype`` (no copy when it already is)."""
    if a.dtype == dtype:
        return a
    f = getattr(xp, "astype", None)  # the array API; NumPy >= 2
    return f(a, dtype) if f is not None else a.astype(dtype)


class Optimizer(FlatStepMixin, TorchHabits):
    """Base class: hyperparameters (``lr`` first), parameter groups, a step counter and per-parameter
    slots.

    Subclasses pass their constructor arguments to ``super().__init__(lr=lr, name=value, ...,
    groups=groups)``; they become attributes and the ``"hyper"`` entry of ``state_dict()``. Then
    implement either

    - ``update(self, p, g, slots)``: update one parameter array ``p`` in place from its gradient
      ``g`` (already in ``p``'s dtype); ``slots`` is this parameter's own dict of state arrays
      (empty on the first call; put arrays of ``p``'s array module in it). While ``update`` runs,
      ``self.<hyperparameter>`` is the value of the group that owns ``p``; or
    - ``step(self, params, grads)`` directly (then increment ``self.step_count`` yourself and
      keep per-parameter state in ``self.slots(name)`` if you want ``state_dict`` to carry it).

    A built-in also defines ``_slot_keys(hp)`` (the slots a group with hyperparameters ``hp`` keeps)
    and ``_kernel(xp, p, g, slots, d, tmp, hp, t, fresh)`` (the update of any stretch of a flat
    buffer; its ``update`` calls it too); ``step_flat`` uses them when neither ``update`` nor
    ``step`` is overridden (``_fusable``).
    """

    def __init__(self, lr: float = 1e-3, *, groups=None, **hyper: Any) -> None:
        for name in hyper:
            if name.startswith("_") or hasattr(type(self), name) or name in (
                    "step_count", "state", "groups"):
                raise ValueError(f"hyperparameter name {name!r} clashes with an Optimizer "
                                 f"attribute; choose another name")
        d = self.__dict__  # hyperparameters are not plain attributes: see __getattr__/__setattr__
        d["_hyper_names"] = ("lr",) + tuple(hyper)
        d["_bound"] = None
        d["_plan"] = None
        d["_steps"] = {}           # host copy of the per-param step counters (flatstep.py)
        d["_active_name"] = None   # the param being updated, while update() runs
        d["_assigned"] = None      # (names, group index per name) of the last unbound step
        defaults = self.check_hyper({"lr": lr, **hyper})
        self._set_hyper(defaults, [group_spec(self, g, i, defaults)
                                   for i, g in enumerate(groups or [])])
        self.step_count = 0
        self.state: dict[str, dict[str, Any]] = {}

    # -- hyperparameters: the default group's values, or the updated param's group's in update() --
    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name in d.get("_hyper_names", ()):
            return d["_active"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting a hyperparameter sets the default group's value, and so that of every group that
        does not set its own (``opt.lr = x`` is what an lr schedule does). Validated at once."""
        if name not in self.__dict__.get("_hyper_names", ()):
            object.__setattr__(self, name, value)
        elif name == "lr":  # every step under a schedule: only lr needs checking
            lr = check_lr(value)
            for hp, spec in zip(self._effective, self._specs + [{}]):
                if "lr" not in spec:
                    hp["lr"] = lr
        else:
            self._set_hyper(self.check_hyper({**self._defaults, name: value}), self._specs)
            self._flush_plan()

    def _effective_of(self, defaults: dict, specs: list) -> list:
        """Each group's hyperparameters (its overrides over ``defaults``), validated; the default group last."""
        return [self.check_hyper({**defaults, **{k: v for k, v in s.items() if k != "params"}})
                for s in specs] + [defaults]

    def _set_hyper(self, defaults: dict, specs: list) -> None:
        """Validate every group's effective hyperparameters, then commit (all or nothing)."""
        effective = self._effective_of(defaults, specs)
        d = self.__dict__
        d["_specs"], d["_effective"], d["_defaults"], d["_active"] = specs, effective, defaults, defaults
        d["_assigned"] = None

    def check_hyper(self, hp: dict) -> dict:
        """``hp`` (every hyperparameter) validated and normalized, or a ValueError naming the one
        that is wrong; a subclass extends it for its own (and may check several at once)."""
        return {**hp, "lr": check_lr(hp["lr"])}

    def slot_plan(self, names, hyper: dict | None = None, groups=None) -> SlotPlan:
        """The slots an optimizer of this type keeps for params ``names`` under ``hyper`` (over this
        one's hyperparameters) and ``groups`` (as the constructor's), both validated as there;
        nothing of this optimizer changes (a checkpoint's state is checked against it before it is loaded)."""
        defaults = self.check_hyper({**self.hyper, **(hyper or {})})
        specs = [group_spec(self, g, i, defaults) for i, g in enumerate(groups or [])]
        effective = self._effective_of(defaults, specs)
        owner = dict(zip(names, assign_groups(specs, list(names))))
        return SlotPlan(effective, owner, {n: tuple(self._slot_keys(effective[g])) for n, g in owner.items()},
                        {n: tuple(self._lazy_slots(effective[g])) for n, g in owner.items()},
                        frozenset(k for hp in effective for k in self._slot_keys(hp)))

    @property
    def hyper(self) -> dict[str, Any]:
        """The current hyperparameters of the default group (the constructor arguments)."""
        return {name: self._defaults[name] for name in self._hyper_names}

    @property
    def param_groups(self) -> list[dict]:
        """The groups in matching order, each ``{"params": patterns, <every hyperparameter>}``
        (and, once bound, ``"names"``: the params it owns); the default group is last, with
        ``"params": ("*",)``. Read-only snapshots: set hyperparameters on the optimizer
        (``opt.lr = x``), or give groups to the constructor."""
        out = []
        for i, spec in enumerate(self._specs + [{"params": ["*"]}]):
            g = {"params": tuple(spec["params"]), **self._effective[i]}
            if self._bound is not None:
                g["names"] = tuple(self._bound.names[i])
            out.append(MappingProxyType(g))
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        if self._specs:
            args += f", groups={self._specs!r}"
        return f"{type(self).__name__}({args})"

    # -- the reference path: one parameter at a time -------------------------------------------
    def slots(self, name: str) -> dict[str, Any]:
        """The state dict of parameter ``name`` (created empty on first use)."""
        return self.state.setdefault(name, {})

    def step(self, params: dict, grads: dict) -> None:
        """Update ``params`` in place from ``grads``; names missing from ``grads`` are skipped.

        Everything is checked before anything changes: a bad gradient leaves all params and
        the optimizer's state as they were."""
        unknown = [name for name in grads if name not in params]
        if unknown:
            raise ValueError(f"gradients for unknown parameters {unknown}; "
                             f"the parameters are {sorted(params)}")
        work = []
        for name, g in grads.items():
            if g is None:
                continue
            p = params[name]
            xp = array_namespace(p)
            if not is_floating(xp, getattr(p, "dtype", None)):
                raise TypeError(f"parameter {name!r} must be a floating-point array, got "
                                f"{type(p).__name__} {getattr(p, 'dtype', '')}".rstrip())
            g = xp.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"gradient for {name!r} has shape {g.shape}, "
                                 f"but the parameter has shape {p.shape}")
            for key, arr in self.state.get(name, {}).items():
                if arr.ndim and arr.shape != p.shape:
                    raise ValueError(f"optimizer state {key!r} for {name!r} has shape "
                                     f"{arr.shape}, but the parameter has shape {p.shape} "
                                     f"(state loaded from a different model?)")
            work.append((name, p, astype(xp, g, p.dtype), xp))
        group_of = self._group_of(params)
        self._flush_plan()
        d, done = self.__dict__, False
        try:
            for name, p, g, xp in work:
                slots = self.slots(name)
                for key, arr in slots.items():
                    if type(arr) is not type(p) and array_namespace(arr) is not xp:
                        arr = slots[key] = xp.asarray(arr)  # e.g. NumPy state, device params
                    if arr.ndim and arr.dtype != p.dtype:  # e.g. float64 state, float32 params
                        slots[key] = astype(xp, arr, p.dtype)
                d["_active"], d["_active_name"] = self._effective[group_of[name]], name
                self.update(p, g, slots)
                self._count_step(name, slots)
            done = True
        finally:
            d["_active"], d["_active_name"] = self._defaults, None
            if not done:
                self._steps = None  # a counter may or may not have moved: unknown from now on
            if self._bound is not None:
                self._adopt([w[0] for w in work])
        self.step_count += 1

    def update(self, p, g, slots: dict) -> None:
        """Update one parameter in place. Override this (or ``step``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update() or step()")

    def _group_of(self, params: dict) -> dict:
        """name -> group index for the names of ``params`` (bound: the layout's assignment)."""
        if self._bound is not None and all(n in self._bound.layout.segments for n in params):
            return self._bound.group_of
        names = tuple(params)
        if self._assigned is None or self._assigned[0] != names:
            self._assigned = (names, dict(zip(names, assign_groups(self._specs, names))))
        return self._assigned[1]

    def _fusable(self) -> bool:
        """Whether ``step_flat`` may run ``_kernel`` on whole runs: the class has one, and neither
        ``update`` (which the kernel mirrors) nor ``step`` is overridden below the class that
        pairs them (the nearest that defines ``_kernel`` or names its ``record``)."""
        cls = type(self)
        for owner in cls.__mro__:  # (a loop, not next() over a generator: asked twice every step)
            if "_kernel" in owner.__dict__ or "record" in owner.__dict__:
                return (cls.update is owner.update and cls.step is Optimizer.step
                        and callable(getattr(owner, "_kernel", None)))
        return False

    # -- saving and resuming -------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """For pickle and deepcopy: a bound optimizer's copy is unbound (its slots copied out of
        the flat buffers; the array module itself cannot be pickled)."""
        self._flush_plan()
        d = dict(self.__dict__)
        if d["_bound"] is not None:
            d["_bound"] = None
            d["state"] = {n: {k: copy_array(a) for k, a in s.items()} for n, s in self.state.items()}
        return d

    def state_dict(self) -> dict:
        """Everything needed to resume: type, hyperparameters, step counter, slots (copies, in
        the slots' array module), and the groups (only when there are any)."""
        d = {
            "type": type(self).__name__,
            "hyper": dict(self.hyper),
            "step": int(self.step_count),
            "slots": {name: {key: copy_array(arr) for key, arr in slots.items()}
                      for name, slots in self.state.items()},
        }
        if self._specs:
            d["groups"] = [{k: (list(v) if k == "params" else v) for k, v in s.items()}
                           for s in self._specs]
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a ``state_dict()`` of the same optimizer type (copies the arrays). On an error
        the optimizer is left as it was."""
        missing = [k for k in ("type", "hyper", "step", "slots") if k not in d]
        if missing:
            raise ValueError(f"not an optimizer state dict: missing keys {missing}")
        if d["type"] != type(self).__name__:
            raise ValueError(f"state dict is for a {d['type']} optimizer, "
                             f"cannot load it into {type(self).__name__}")
        hyper = dict(d["hyper"])
        unknown = sorted(set(hyper) - set(self._hyper_names))
        if unknown:
            raise ValueError(f"unknown hyperparameters for {type(self).__name__}: {unknown}")
        defaults = self.check_hyper({**self._defaults, **hyper})
        specs = [group_spec(self, g, i, defaults) for i, g in enumerate(d.get("groups", []))]
        old = (self._defaults, self._specs)
        self._set_hyper(defaults, specs)
        try:
            xp = None if self._bound is None else self._bound.xp
            state = {}
            for name, slots in d["slots"].items():
                state[str(name)] = {}
                for key, arr in slots.items():
                    x = xp or array_namespace(arr)
                    state[str(name)][str(key)] = copy_array(x.asarray(arr))
            if self._bound is not None:
                binding, state = self._binding(self._bound.layout, xp, state, self._bound.executor)
        except Exception:
            self._set_hyper(*old)
            raise
        if self._bound is not None:
            self._bound = binding
        self.state = state
        self.step_count = int(d["step"])
        self._plan = None
        self._steps = host_steps(d["slots"])  # read while still host data (None if not)
