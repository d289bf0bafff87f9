"""How a fused optimizer step runs: update executors.

The optimizer says *what* one fused step updates (:meth:`~bngraph.optim.Optimizer.plan_fused`: per
group the stretches of the flat buffers, each with its slots, hyperparameters, step count and fresh
slots, and the array-module update of one stretch). The runtime says *how*
(:meth:`bngraph.backends.Runtime.update_executor`), with an :class:`UpdateExecutor`: prepared once
per binding (:meth:`UpdateExecutor.prepare`: the pieces and scratch arrays its runs need, allocated
then; ``opt.binding.update``), run once per step (:meth:`Prepared.run`).

* :class:`ArrayPasses` (any array module; the Runtime's default): the update's passes over each
  stretch, optionally in pieces of at most ``block`` elements;
* :class:`KernelLaunches`: a target's kernel launched once per stretch (the CUDA runtime's record kernel);
* the NumPy runtime's :class:`bngraph.backends.numpy_target.update.HostLanes`: cache-sized pieces,
  and host-thread lanes.

``opt.bind(layout, xp)`` without ``executor=`` takes the executor a runtime registered for arrays
of ``xp`` (:func:`register`: the NumPy runtime registers NumPy's), else :class:`ArrayPasses`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

_REGISTERED: list = []  # [(array module, factory(block=, threads=) -> UpdateExecutor)]


class UpdateExecutor(ABC):
    """How a runtime runs fused optimizer steps over flat buffers."""

    @abstractmethod
    def prepare(self, binding) -> "Prepared":
        """Made ready for one :class:`~bngraph.optim.flatstep.Binding` (its layout, array module and
        groups' runs): what every step reuses (pieces, scratch arrays) is made here, once."""


class Prepared(ABC):
    """An executor ready for one binding (``opt.binding.update``)."""

    @abstractmethod
    def run(self, opt, plan) -> None:
        """Run the update of the fused step ``plan`` (:class:`~bngraph.optim.flatstep.FusedPlan`);
        the optimizer does the bookkeeping after it (``commit_fused``)."""


def check_block(block):
    """``block`` as a piece length (None: whole stretches), or a ValueError."""
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ValueError(f"block must be a positive number of elements or None, got {block!r}")
    return block


def cut(runs: list, block: int | None) -> list:
    """For each run ``(dtype, start, stop)`` of a group: its pieces ``[(sub, scratch)]``, ``sub`` the
    slice of the stretch (None: all of it) and ``scratch`` the matching slice of a scratch array."""
    out = []
    for _, start, stop in runs:
        n = stop - start
        if block is None or n <= block:
            out.append([(None, slice(0, n))])
        else:
            out.append([(slice(i, min(i + block, n)), slice(0, min(block, n - i))) for i in range(0, n, block)])
    return out


def stretch_arrays(s, sub):
    """``(p, g, slots)`` of the stretch ``s``, or of its piece ``sub``."""
    if sub is None:
        return s.p, s.g, s.slots
    return s.p[sub], s.g[sub], {k: a[sub] for k, a in s.slots.items()}


class ArrayPasses(UpdateExecutor):
    """The optimizer's array-module update (a few ``out=`` passes) over each stretch, in pieces of
    at most ``block`` elements (None: whole stretches, one pass per operation: a device's kernels),
    with two scratch arrays per dtype, one piece long."""

    def __init__(self, block: int | None = None):
        self.block = check_block(block)

    def prepare(self, binding) -> "Passes":
        return Passes(binding, self.block)


class Passes(Prepared):
    def __init__(self, binding, block):
        xp, self.xp, self.block = binding.xp, binding.xp, block
        self.pieces = [cut(runs, block) for runs in binding.runs]  # group -> stretch -> [(sub, scratch)]
        # one lane (HostLanes has more): its two scratch dicts, dtype -> array
        self.scratch = [tuple({dt: xp.empty(min(n, block or n), dtype=dt) for dt, n in binding.layout.totals.items()}
                              for _ in range(2))]

    def run(self, opt, plan) -> None:
        xp, (D, T), update = self.xp, self.scratch[0], plan.array_update
        for gp in plan.groups:
            for s, pieces in zip(plan.stretches[gp.index], self.pieces[gp.index]):
                for sub, scut in pieces:
                    p, g, slots = stretch_arrays(s, sub)
                    update(xp, p, g, slots, D[s.dtype][scut], T[s.dtype][scut], s.hp, s.t, s.fresh)


class KernelLaunches(UpdateExecutor):
    """A target's fused update, ``kernel(opt, p, g, slots, hp, t, fresh)`` once per stretch (or per
    piece of at most ``block`` elements): the CUDA target launches its record's kernel."""

    def __init__(self, kernel: Callable, block: int | None = None):
        self.kernel, self.block = kernel, check_block(block)

    def prepare(self, binding) -> "Launches":
        return Launches(self.kernel, [cut(runs, self.block) for runs in binding.runs])


class Launches(Prepared):
    def __init__(self, kernel, pieces):
        self.kernel, self.pieces = kernel, pieces

    def run(self, opt, plan) -> None:
        kernel = self.kernel
        for gp in plan.groups:
            for s, pieces in zip(plan.stretches[gp.index], self.pieces[gp.index]):
                for sub, _ in pieces:
                    p, g, slots = stretch_arrays(s, sub)
                    kernel(opt, p, g, slots, s.hp, s.t, s.fresh)


def register(xp, factory: Callable) -> None:
    """Arrays of module ``xp`` are updated by ``factory(block=, threads=)`` when ``bind`` is given
    no executor (what a runtime whose arrays these are registers for its own)."""
    _REGISTERED[:] = [(m, f) for m, f in _REGISTERED if m is not xp] + [(xp, factory)]


def for_arrays(xp, block="auto", threads="auto", kernel=None) -> UpdateExecutor:
    """The executor ``bind(layout, xp, block=, threads=, kernel=)`` uses: ``kernel`` launched per
    stretch; else the one registered for ``xp``; else :class:`ArrayPasses` (``threads`` unused)."""
    if kernel is not None:
        return KernelLaunches(kernel, None if block == "auto" else block)
    factory = next((f for m, f in _REGISTERED if m is xp), None)
    if factory is not None:
        return factory(block=block, threads=threads)
    return ArrayPasses(None if block == "auto" else block)
