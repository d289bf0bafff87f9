"""Optimizers defined by a record alone (:class:`RecordOptimizer`): see :mod:`bngraph.optim.records`."""
from __future__ import annotations

from ..flat import array_namespace
from .base import Optimizer
from .records import OptimizerRecord
from .render_numpy import numpy_update


class RecordUpdate:
    """What an optimizer class whose body names its ``record`` gets from it: its slots and its
    fused update on the flat buffers, rendered from the record (the built-ins and
    :class:`RecordOptimizer`). The class's ``update`` is the reference the rendered update mirrors:
    a subclass that overrides ``update`` is not fused (:meth:`Optimizer.fused`)."""

    record: OptimizerRecord = None

    def _slot_keys(self, hp: dict) -> tuple:
        return self.record.slot_keys(hp)

    def _kernel(self, xp, p, g, slots, d, tmp, hp, t, fresh) -> None:
        numpy_update(self.record)(xp, p, g, slots, d, tmp, self.record.values(hp, t, fresh))


class RecordOptimizer(RecordUpdate, Optimizer):
    """An optimizer that is its record: subclass it, set ``record`` and pass the hyperparameters
    to ``super().__init__`` (names as in ``record.hyper``). Its fused update on the flat buffers,
    its per-parameter ``update`` and every target's kernel (the CUDA target: one launch per
    stretch, in its guarded step and CUDA graphs) are all rendered from the record. Slots start at
    zero when they appear (``Fresh(slot)`` is true on that step)."""

    def update(self, p, g, slots: dict) -> None:
        xp, hp = array_namespace(p), self._active
        fresh = tuple(k for k in self._slot_keys(hp) if k != "step" and k not in slots)
        for key in fresh:
            slots[key] = xp.zeros_like(p)
        t = None
        if self.record.counter:
            step = slots.setdefault("step", xp.zeros((), dtype=xp.int64))
            xp.add(step, 1, out=step)
            t = self._step_number(step)
        self._kernel(xp, p, g, slots, xp.empty_like(p), xp.empty_like(p), hp, t, fresh)
