"""Parameter groups: hyperparameter overrides for the params whose names match a pattern.

A group is ``{"params": pattern or [patterns], <hyperparameter>: value, ...}`` (``fnmatch``
patterns, case-sensitive: ``"*.gamma"``, ``"fc1.*"``). The first group with a matching pattern owns
a name; names no group matches belong to the default group, whose values are the optimizer's own
(its constructor arguments). A group stores only what it overrides, so changing an optimizer
hyperparameter (``opt.lr = x``) changes it for every group that does not set its own.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase


def group_spec(opt, spec, index: int, defaults: dict) -> dict:
    """``spec`` checked and normalized: ``{"params": [patterns], **overrides}`` with the overrides
    validated like the constructor's arguments (JSON-serialisable: str, float, bool)."""
    where = f"{type(opt).__name__} group {index}"
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where}: a group is a dict like {{'params': ['*.gamma'], 'lr': 0.1}}, "
                        f"got {spec!r}")
    if "params" not in spec:
        raise ValueError(f"{where}: no 'params' (the name patterns the group applies to)")
    patterns = spec["params"]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{where}: 'params' must be a name pattern or a non-empty list of them, "
                         f"got {spec['params']!r}")
    overrides = {k: v for k, v in spec.items() if k != "params"}
    names = list(defaults)  # every hyperparameter, lr first
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; a group sets 'params' and any of "
                         f"{', '.join(names)}")
    try:
        checked = opt.check_hyper({**defaults, **overrides})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return {"params": patterns, **{k: checked[k] for k in overrides}}


def assign_groups(specs: list, names) -> list:
    """The index of the group that owns each name (``len(specs)``: the default group). A group
    that owns no name is an error (a typo in a pattern, or one shadowed by an earlier group)."""
    owner = []
    for name in names:
        owner.append(next((i for i, s in enumerate(specs)
                           if any(fnmatchcase(name, p) for p in s["params"])), len(specs)))
    empty = [i for i in range(len(specs)) if i not in owner]
    if empty:
        i = empty[0]
        raise ValueError(f"parameter group {i} ({specs[i]['params']}) matches no parameter "
                         f"that an earlier group does not own; the parameters are {list(names)}")
    return owner


@dataclass(frozen=True)
class SlotPlan:
    """What an optimizer keeps for some params under given hyperparameters and groups
    (:meth:`bngraph.optim.Optimizer.slot_plan`): what a state dict of it may hold."""

    hyper: list           # each group's hyperparameters, validated; the default group last
    owner: dict           # param name -> the index of the group that owns it
    keeps: dict           # param name -> the slots its group keeps for it
    lazy: dict            # param name -> those of them that update creates when they are missing
    reserved: frozenset   # the slots of any group (those that live in the flat buffers)
