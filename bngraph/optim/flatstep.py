"""Optimizer slots in flat buffers, and the fused whole-buffer step (``bind`` / ``step_flat``).

``bind(layout, xp)`` allocates each slot kind (``exp_avg``, ``momentum_buffer``, ...) as one
:class:`~bngraph.flat.FlatArrays` of the params' layout, and the per-parameter step counters as
one int64 per param; ``opt.state[name][key]`` becomes a view into them. So the reference path
(``step`` -> ``update``, one parameter at a time) and the fused path (``_kernel`` on whole runs of a
group's params) read and write the same memory, and ``state_dict`` is unchanged.

The optimizer says *what* a fused step updates (:meth:`FlatStepMixin.plan_fused`); how it runs (in
pieces, on host threads, as a target's kernel) is the runtime's :mod:`~bngraph.optim.executors`
executor, given to ``bind``.

A slot appears in ``opt.state`` only when the reference path would have created it: slots are
lazy in PyTorch (SGD's momentum buffer starts as a copy of the first gradient, Adam's state appears
on the first step). The flat storage of a slot that has not appeared yet is zero. The fused step
needs every param of a group in the same condition (a slot there for all or for none; one shared
step count); anything else, e.g. after a step where some gradients were missing, takes the
reference path, which gives the same numbers.

The step counters live in device memory, and the host never reads them back: it keeps its own
copy (``_steps``, name -> count), set from host arrays when a state dict is loaded and counted
along with every step; the fused path passes the count to the update as an argument. When that
copy is unknown (state loaded from device arrays), every step takes the reference path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..flat import FlatArrays, FlatLayout, array_namespace
from . import executors
from .groups import assign_groups

#: The slot that holds a parameter's step counter (an int64 scalar, not a parameter-shaped array).
COUNTER = "step"


@dataclass
class Binding:
    """What ``bind`` set up: the layout, the array module, where each group's params lie, the slots'
    flat buffers, and how a fused step runs (``executor``, prepared for this binding: ``update``)."""

    layout: FlatLayout
    xp: Any
    executor: Any                 # the runtime's UpdateExecutor (bngraph.optim.executors)
    counters: FlatLayout          # one int64 per param, same order: the per-param step counters
    names: list                   # group index -> the names it owns (the default group last)
    group_of: dict                # name -> group index
    runs: list                    # group index -> [(dtype, start, stop)]: its maximal contiguous runs
    counter_runs: list            # group index -> counters.runs(names)
    slots: dict = field(default_factory=dict)  # slot key -> FlatArrays (allocated on first need)
    update: Any = None            # executor.prepare(self) (a fused optimizer only): runs each fused step
    intervals: dict | None = None  # (slot key, dtype) -> (lo, hi) of its values after the last proved
    #                                fused step (bngraph.optim.bounds); None: unknown, measure them

    def slot(self, key: str) -> FlatArrays:
        """The flat storage of slot ``key`` (zeros when first asked for)."""
        if key not in self.slots:
            self.slots[key] = (self.counters if key == COUNTER else self.layout).allocate(self.xp)
        return self.slots[key]


@dataclass(slots=True)
class Stretch:
    """One contiguous run of one group's params (one dtype) in a fused step: what one launch of a
    target's update kernel, or one call of the array-module update, works on (an executor may cut
    it into pieces)."""

    group: int
    dtype: str
    p: Any                        # the params' stretch (updated in place)
    g: Any                        # the gradients' stretch
    slots: dict                   # slot key -> its stretch (the step counter excluded)
    hp: dict                      # the group's hyperparameters
    t: int | None                 # this step's count (None: the optimizer keeps no counters)
    fresh: tuple                  # slot keys this step creates (SGD's first momentum buffer)


@dataclass(slots=True)
class FusedPlan:
    """The next fused step (:meth:`FlatStepMixin.plan_fused`): per group its stretches
    (``stretches[g][k]`` is ``binding.runs[g][k]``), the per-param step counters it increments
    (int64 stretches), and the array-module update of one stretch or piece of one."""

    groups: list                  # [GroupPlan]
    stretches: dict               # group index -> [Stretch]
    counters: list
    array_update: Callable = None  # (xp, p, g, slots, d, tmp, hp, t, fresh), d and tmp scratch like p


@dataclass(slots=True)
class GroupPlan:
    """One group's share of the next fused step."""

    index: int
    fresh: tuple                  # slot keys no param of the group has yet (this step creates them)
    t: int | None                 # the shared step count before this step (None: no counters)
    new: bool                     # some params have no state entry yet (step() makes one, even empty)


@dataclass(slots=True)
class _CachedPlan:
    """The last fused plan and what it was made from (:meth:`FlatStepMixin.plan_fused` reuses it
    while all of these are the same objects)."""

    plan: FusedPlan
    groups: list                  # the optimizer's _plan it was made for
    binding: Binding
    P: Any
    G: Any
    effective: list               # the optimizer's _effective (each group's hyperparameters)
    per_group: tuple              # ((GroupPlan, (Stretch, ...)), ...): what each step updates (t, fresh)


class FlatStepMixin:
    """``bind``, ``step_flat`` and what they need; mixed into :class:`~bngraph.optim.Optimizer`."""

    _fused = None  # _CachedPlan of the last plan_fused (dropped with the plan: _flush_plan)

    def bind(self, layout: FlatLayout, xp, *, executor=None, block: int | None | str = "auto",
             threads: int | str = "auto", kernel=None) -> None:
        """Keep every slot in flat buffers of ``layout`` (one per dtype, from the array module
        ``xp``), with ``self.state[name][key]`` views into them; existing slots are copied in.
        Call it again for another model (another layout).

        ``executor``: how ``step_flat`` runs the fused update (:mod:`bngraph.optim.executors`), the
        runtime's choice (``runtime.update_executor``: NumPy's cache-sized pieces on host-thread
        lanes, the CUDA target's kernel). Without it, the one registered for arrays of ``xp``,
        configured by ``block`` and ``threads``; or with ``kernel``, that kernel per stretch:

        ``block``: pieces of at most this many elements, so a piece's arrays stay in the CPU's
        cache from one pass to the next; None: whole runs; "auto": the executor's default (NumPy:
        :data:`bngraph.backends.numpy_target.update.NUMPY_BLOCK`; other modules: whole runs).

        ``threads``: NumPy splits a group's update into up to this many contiguous lanes on host
        threads (:class:`bngraph.backends.numpy_target.update.HostLanes`); other modules: one.

        ``kernel``: a target's fused update, ``kernel(opt, p, g, slots, hp, t, fresh)`` on one
        stretch, in place of the array-module passes (:class:`~bngraph.optim.executors.KernelLaunches`)."""
        if executor is None:
            executor = executors.for_arrays(xp, block, threads, kernel)
        elif (block, threads, kernel) != ("auto", "auto", None):
            raise TypeError("bind: block=, threads= and kernel= choose an executor; with executor= given, "
                            "configure that executor instead")
        self._flush_plan()
        self._bound, self.state = self._binding(layout, xp, self.state, executor)

    @property
    def layout(self) -> FlatLayout | None:
        """The layout ``bind`` was given (None before)."""
        return None if self._bound is None else self._bound.layout

    def _slot_keys(self, hp: dict) -> tuple:
        """The slots a group with hyperparameters ``hp`` keeps per parameter (built-ins override)."""
        return ()

    def _lazy_slots(self, hp: dict) -> tuple:
        """The slots of ``_slot_keys(hp)`` that ``update`` creates when a param's state lacks them
        while holding others (SGD's momentum buffer once momentum is raised from 0); the others must
        all be there once any is (a checkpoint is checked against this)."""
        return self._slot_keys(hp)

    def _reserved(self) -> set:
        """Slot keys that live in flat buffers: those of any group's hyperparameters."""
        return {k for hp in self._effective for k in self._slot_keys(hp)}

    def _binding(self, layout: FlatLayout, xp, state: dict, executor) -> tuple:
        """A new binding (run by ``executor``) and ``state`` moved into it; everything is checked
        before anything is allocated, and nothing of ``self`` changes (load_state_dict relies on that)."""
        names = layout.names
        groups = assign_groups(self._specs, names)
        reserved = self._reserved()
        for name, slots in state.items():
            seg = layout.segments.get(name)
            if seg is None:
                raise ValueError(f"optimizer state for {name!r}, which is not a parameter of this "
                                 f"model (state loaded from a different model?)")
            for key, arr in slots.items():
                shape = tuple(arr.shape)
                if key not in reserved:  # an optimizer's own slot: 0-d or parameter-shaped
                    bad = len(shape) > 0 and shape != seg.shape
                else:
                    bad = shape != (() if key == COUNTER else seg.shape)
                if bad:
                    raise ValueError(f"optimizer state {key!r} for {name!r} has shape {shape}, "
                                     f"but the parameter has shape {seg.shape} "
                                     f"(state loaded from a different model?)")
        owned = [[n for n, i in zip(names, groups) if i == k] for k in range(len(self._specs) + 1)]
        counters = FlatLayout([(n, (), "int64") for n in names])
        b = Binding(layout, xp, executor, counters, owned, dict(zip(names, groups)),
                    [layout.runs(o) for o in owned], [counters.runs(o) for o in owned])
        if self._fusable():
            b.update = executor.prepare(b)
        for key in reserved:
            b.slot(key)
        moved = {}
        for name, slots in state.items():
            moved[name] = {}
            for key, arr in slots.items():
                if key in reserved:
                    view = b.slot(key).views[name]
                    view[...] = xp.asarray(arr)
                    moved[name][key] = view
                else:
                    moved[name][key] = xp.asarray(arr)
        return b, moved

    def _adopt(self, names) -> None:
        """After the reference path: move the slots it created (new arrays) into the flat buffers."""
        b, reserved = self._bound, None
        for name in names:
            slots = self.state.get(name, {})
            for key, arr in slots.items():
                flat = b.slots.get(key)
                if flat is None:
                    reserved = self._reserved() if reserved is None else reserved
                    if key not in reserved:
                        continue  # the optimizer's own slot: kept as it is
                    flat = b.slot(key)
                view = flat.views[name]
                if arr is not view:
                    view[...] = arr
                    slots[key] = view  # replacing a value while iterating is fine

    @property
    def binding(self) -> Binding | None:
        """What ``bind`` set up (the layout, the groups' runs, the slots' flat buffers, the
        executor and what it prepared: ``binding.update``), None before."""
        return self._bound

    @property
    def fused(self) -> bool:
        """True when ``step_flat`` runs the class's fused update (a built-in whose ``update`` and
        ``step`` are not overridden): its record can be proved not to overflow
        (:mod:`bngraph.optim.bounds`), and a target may run it itself (:meth:`plan_fused`)."""
        return self._fusable()

    def step_flat(self, P: FlatArrays, G: FlatArrays) -> None:
        """Update the params ``P`` in place from the grads ``G`` (same layout; every param has a
        gradient). Built-ins: a few whole-buffer passes per group and dtype. Otherwise, and when
        the per-parameter state is not uniform, this is ``self.step(P.views, G.views)``.
        Binds to ``P``'s layout first if the optimizer is not bound yet."""
        if self._bound is None:
            self.bind(P.layout, array_namespace(next(iter(P.buffers.values()), None)))
        plan = self.plan_fused(P, G)
        if plan is None:
            self.step(P.views, G.views)
            return
        self._bound.update.run(self, plan)  # the runtime's executor: how the stretches are updated
        self.commit_fused(plan)

    def plan_fused(self, P: FlatArrays, G: FlatArrays) -> FusedPlan | None:
        """The next fused step as data, nothing changed: per group, the stretches of the flat
        buffers it updates (``binding.runs``) with their slots, hyperparameters, step count and
        fresh slots, the step counters it increments, and the array-module update of a stretch
        (``array_update``); None when the next step cannot be fused
        (not a built-in, or per-parameter state that is not uniform: then ``step`` does it).
        A hyperparameter the params' dtype cannot hold is a ValueError here. A target that runs
        the update itself (the CUDA guarded step) launches the stretches, then :meth:`commit_fused`.
        While nothing it was made from changes (the groups' plan, the binding, ``P`` and ``G``, the
        groups' hyperparameter dicts), the next call returns the same plan, its stretches' ``t``
        and ``fresh`` those of the next step."""
        b = self._bound
        if b is None:
            raise ValueError("plan_fused: bind(layout, xp) first")
        groups = self._plan
        c = self._fused
        if (groups is not None and c is not None and c.groups is groups and c.binding is b and c.P is P
                and c.G is G and c.effective is self._effective):
            # the plan of the last step, its stretches reused (hp: the group's live dict, which an lr
            # schedule sets in place); only this step's count and fresh slots are new
            for gp, stretches in c.per_group:
                t = None if gp.t is None else gp.t + 1
                for s in stretches:
                    s.t, s.fresh = t, gp.fresh
            return c.plan
        for what, X in (("params", P), ("grads", G)):
            if X.layout is not b.layout and X.layout != b.layout:
                raise ValueError(f"step_flat: the {what} are not in the layout this optimizer is "
                                 f"bound to; call bind(layout, xp) for the new model first")
        if groups is None:  # the hyperparameters may have changed since the last step
            self._check_representable(b)
            groups = self._make_plan()
        if groups is None:
            return None
        stretches, counters = {}, []
        for gp in groups:
            hp = self._effective[gp.index]
            keys = [k for k in self._slot_keys(hp) if k != COUNTER]
            t = None if gp.t is None else gp.t + 1
            stretches[gp.index] = [Stretch(gp.index, dt, P.buffers[dt][start:stop], G.buffers[dt][start:stop],
                                           {k: b.slots[k].buffers[dt][start:stop] for k in keys}, hp, t, gp.fresh)
                                   for dt, start, stop in b.runs[gp.index]]  # where it lies: binding.runs
            if gp.t is not None:
                counters += [b.slots[COUNTER].buffers["int64"][start:stop]
                             for _, start, stop in b.counter_runs[gp.index]]
        plan = FusedPlan(groups, stretches, counters, self._kernel)
        # kept for the next steps while nothing it captured changes: the groups' plan (a new list
        # whenever it is dropped or restored: _flush_plan, load_state_dict, restore_host_state), the
        # binding (bind, load_state_dict), the flat params and grads, the groups' hyperparameters
        self._fused = _CachedPlan(plan, groups, b, P, G, self._effective,
                                  tuple((gp, tuple(stretches[gp.index])) for gp in groups))
        return plan

    def commit_fused(self, plan: FusedPlan, counters: bool = True) -> None:
        """The bookkeeping of the fused step ``plan`` once its update has run: the step counters
        + 1 (``counters=False``: the target that ran it increments them on its device), the host's
        counts, the slots the step created appear in ``state``, ``step_count`` + 1."""
        b = self._bound
        if counters:
            for c in plan.counters:
                b.xp.add(c, 1, out=c)
        for gp in plan.groups:
            if gp.t is not None:
                gp.t += 1
            if gp.new or gp.fresh:  # the first step of these slots: they appear in the state now
                for name in b.names[gp.index]:
                    slots = self.slots(name)
                    for key in gp.fresh:
                        slots[key] = b.slots[key].views[name]
                gp.fresh, gp.new = (), False
        if self._plan is not plan.groups:
            self._plan = plan.groups
        self.step_count += 1

    def _check_representable(self, b: Binding) -> None:
        """Every numeric hyperparameter is finite in the dtype of the params it updates, or a
        ValueError before anything changes: ``lr=1e39`` is inf in float32, and the update would
        make every param inf."""
        import numpy as np

        for i, names in enumerate(b.names):
            for dt in sorted({b.layout.segments[n].dtype for n in names}):
                for key, value in self._effective[i].items():
                    if isinstance(value, float) and math.isfinite(value) and not np.isfinite(np.array(value, dt)):
                        group = "" if i == len(b.names) - 1 else f" (parameter group {i})"
                        raise ValueError(f"{type(self).__name__}: {key}={value!r}{group} overflows {dt}, the dtype "
                                         f"of the params it updates; nothing was updated")

    def host_state(self):
        """What a fused step changes on the host (the plan's counts and fresh slots, the step
        count, the host copy of the counters, which slots ``state`` shows): a snapshot for
        :meth:`restore_host_state`. A target that runs steps ahead of its checks (the CUDA
        target's guarded step) rolls back to it when a step turns out to have diverged."""
        plan = None if self._plan is None else [replace(gp) for gp in self._plan]
        return (plan, self.step_count, None if self._steps is None else dict(self._steps),
                {name: dict(slots) for name, slots in self.state.items()})

    def restore_host_state(self, snapshot) -> None:
        """Back to a :meth:`host_state` snapshot (the device arrays are the caller's to keep as they were)."""
        plan, self.step_count, steps, state = snapshot
        self._plan = None if plan is None else [replace(gp) for gp in plan]
        if self._bound is not None:
            self._bound.intervals = None
        self._steps = None if steps is None else dict(steps)
        self.state = {name: dict(slots) for name, slots in state.items()}

    def _make_plan(self) -> list | None:
        """Per group: the fresh slots and the shared step count; None when the state is not
        uniform (or the optimizer has no fused update), so the step takes the reference path."""
        if not self._fusable():
            return None
        b, plan = self._bound, []
        for i, names in enumerate(b.names):
            if not names:
                continue
            keys = self._slot_keys(self._effective[i])
            fresh = []
            for key in keys:
                b.slot(key)
                have = sum(key in self.state.get(n, {}) for n in names)
                if have == 0:
                    fresh.append(key)
                elif have < len(names):
                    return None
            t = None
            if COUNTER in keys:
                if self._steps is None:
                    return None
                counts = {self._steps.get(n, 0) for n in names}
                if len(counts) > 1:
                    return None
                t = counts.pop()
            plan.append(GroupPlan(i, tuple(fresh), t, any(n not in self.state for n in names)))
        return plan

    def _flush_plan(self) -> None:
        """Drop the plan (the state is about to change), keeping the counts it carried."""
        plan, self._plan = self._plan, None
        self._fused = None
        if self._bound is not None:
            self._bound.intervals = None  # the slots' values are about to change outside a fused step
        if plan and self._steps is not None:
            for gp in plan:
                if gp.t is not None:
                    for name in self._bound.names[gp.index]:
                        self._steps[name] = gp.t

    def _count_step(self, name, slots) -> None:
        """The reference path stepped ``name`` (whose slots are ``slots``): count it."""
        if self._steps is not None and COUNTER in slots:
            self._steps[name] = self._steps.get(name, 0) + 1

    def _step_number(self, counter) -> int:
        """This step's count for the parameter ``update`` is working on, whose ``counter`` it
        has just incremented: from the host copy, else (unknown) read back from ``counter``."""
        if self._steps is not None:
            return self._steps.get(self._active_name, 0) + 1
        return int(counter)

