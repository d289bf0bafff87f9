"""The CUDA target's training step with a built-in optimizer: checked on the device, read rarely.

One step is, on the runtime's stream and with no host read: the batch written into the step's
own input buffers; one small copy of the step's scalars (``header``: the global step number and
the slot of its loss; one ``h`` row per optimizer launch: lr, the step count, ...); ``train_step``'s
kernels; ``step_guard`` (is the loss, every gradient and every new running statistic finite?);
the optimizer's kernels; ``step_commit`` (the new running statistics into the state, the
optimizer's step counters + 1). Both the optimizer kernels and ``step_commit`` change nothing once
the guard has flagged, and the flag stays until the host reads it (templates/cuda/step.cu.j2),
so a step stays all-or-nothing although nobody looks at it. With ``cuda_graph=True`` everything
after the scalar copy is one CUDA graph per batch size, captured on the second step of that size
and replayed after (a schedule's lr is data in ``h``, not baked in).

The host keeps its own count of everything (``model.step``, the optimizer's step counts and
slots) and reads the device only in :meth:`GuardedStep.read`: the losses of the steps since the
last read and the status, in one go. ``Model.train_step`` reads after every step; ``fit`` once
per logging interval (a progress-bar redraw, the end of an epoch, :attr:`GuardedStep.CAPACITY`
steps). When the status holds a flag, the step it names changed nothing, nor did any later one:
the host rolls its counts back to just before that step and raises TrainingDiverged, carrying
the losses of the good steps before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import TrainingDiverged
from ..base import FixedStep, Replays
from .optimizers import BLOCK, STATUS_CLEAR, grid_for, make_kernel

FLAG_LOSS, FLAG_GRAD, FLAG_STATE, FLAG_UPDATE = 1, 2, 4, 8


@dataclass
class _Tables:
    """What the guard, the optimizer kernels and the commit read, for one batch size's buffers."""

    checks: object    # device int64 {pointer, length}: the gradients, then each new running statistic
    copies: object    # device int64 {source, destination, length}: new running statistics -> state
    counts: object    # device int64 {pointer, length}: the optimizer's step counters
    n: tuple          # how many entries each table has (int32 kernel arguments)
    grid: tuple       # the guard's and commit's grid
    launches: list    # the optimizer launches: (kernel, grid, offset in the flat buffer, arguments)


class GuardedStep:
    """``submit(X, y)`` enqueues one step; ``read()`` returns the losses since the last read (or
    raises TrainingDiverged after rolling back). Made by ``Model`` for a built-in optimizer."""

    CAPACITY = 1024  # steps whose losses stay on the device between two reads

    def __init__(self, model, optimizer, graphs: bool = False):
        exe = model.executable
        self.model, self.optimizer, self.runtime, self.exe = model, optimizer, model.runtime, exe
        self.launch = exe.launch
        self.steps = Replays(exe, "train_step", graphs)  # per batch size: fixed buffers, tables, graph
        self.update = make_kernel(exe.launch, self.runtime, optimizer)
        if self.update is None:
            raise ValueError(f"{type(optimizer).__name__} is not a built-in optimizer: its steps are checked on the host")
        self.update.counts_steps = True
        model._bind(optimizer, kernel=self.update)
        rt, dtype = self.runtime, model.dtype
        self.status = rt.asarray(np.array(STATUS_CLEAR, np.uint64), np.uint64)
        self.losses = rt.zeros((self.CAPACITY,), dtype)
        self.hyper = None            # device (1 + launches, 8) float64: the header row, then one row per launch
        self.pending = 0             # steps submitted since the last read
        self._snapshot = None        # host bookkeeping before the first unread step
        self._signature = None       # (the optimizer's binding, its launches) the entries were built for

    # ---- one step --------------------------------------------------------------------------------
    def submit(self, X, y) -> None:
        """Enqueue one training step on checked host data (rows are examples); reads nothing."""
        model, opt = self.model, self.optimizer
        if self.pending == self.CAPACITY:
            raise RuntimeError("GuardedStep.submit: read() the losses first (the device keeps CAPACITY of them)")
        if self.pending == 0:
            self._snapshot = (model.step, opt._host_bookkeeping())
        calls = self._record_update()
        m = X.shape[0]
        entry = self._entry(m, calls)
        rows = np.zeros((1 + len(calls), 8), np.float64)
        rows[0, :2] = (model.step + 1, self.pending)
        for i, call in enumerate(calls):
            rows[1 + i, :len(call[4])] = call[4]
        rt = self.runtime
        if self.hyper is None or self.hyper.shape != rows.shape:
            self.hyper = rt.asarray(rows, np.float64)
            self.steps.forget_graphs()  # the launches read rows of the old array
        else:
            rt.write(self.hyper, rows)
        for name, a in model._host_feeds(X, y).items():
            rt.write(entry.inputs[name], a)
        self.steps.run(entry, lambda: self._enqueue(entry, calls))
        model.step += 1
        self.pending += 1

    @classmethod
    def make(cls, model, optimizer, graphs: bool = False):
        """A guarded step for ``optimizer``, or None when it is not a built-in (its steps are then
        checked on the host, one read each)."""
        if make_kernel(model.executable.launch, model.runtime, optimizer) is None:
            return None
        return cls(model, optimizer, graphs)

    def ready(self) -> bool:
        """Bound to the model with this step's kernel, and the optimizer's next step fused (its
        state uniform across each group); else the model takes the host-checked path."""
        opt = self.optimizer
        if opt._bound is None or opt.layout is not self.model.layout or opt._bound.kernel is not self.update:
            self.model._bind(opt, kernel=self.update)
        return opt._plan is not None or opt._make_plan() is not None

    def _record_update(self) -> list:
        """The optimizer's host bookkeeping for one step, its launches recorded, not made."""
        opt = self.optimizer
        if opt._plan is None and opt._make_plan() is None:  # never expected: Model.guarded checks first
            raise RuntimeError("the optimizer's state is not uniform across a group: its step is not fused")
        self.update.recording = calls = []
        try:
            opt.step_flat(self.model._P, self.model._G)
        finally:
            self.update.recording = None
        return calls

    @property
    def entries(self) -> dict:
        """Batch size -> its :class:`~bngraph.backends.base.FixedStep` (buffers, tables, graph)."""
        return self.steps.entries

    @property
    def replays(self) -> int:
        """Steps run by replaying a captured graph."""
        return self.steps.replays

    def _entry(self, m: int, calls: list) -> FixedStep:
        signature = (self.optimizer._bound, len(calls))  # a binding's slots keep their addresses
        if self._signature is None or signature[0] is not self._signature[0] or signature[1] != self._signature[1]:
            self.steps.entries.clear()  # a new binding (slots elsewhere): every table and graph is stale
            self._signature = signature
        return self.steps.entry(m)

    def _tables(self, out: dict, calls: list) -> _Tables:
        """The guard's and commit's tables and the optimizer launches, for the buffers of ``out``
        (what a batch size's train_step returned) and this step's ``calls``."""
        model, rt = self.model, self.runtime
        state_out = [out[k] for k in model._state_keys]
        (grads,) = model._G.buffers.values()  # one dtype: the model's
        checks = [(rt.pointer(grads), grads.size)] + [(rt.pointer(a), a.size) for a in state_out]
        copies = [(rt.pointer(a), rt.pointer(model._S[k.removeprefix("state.")]), a.size)
                  for k, a in zip(model._state_keys, state_out)]
        b = self.optimizer._bound
        counts = [(rt.pointer(b.slots["step"].buffers["int64"][start:stop]), stop - start)
                  for gp in (self.optimizer._plan or []) if gp.t is not None
                  for _, start, stop in b.counter_runs[gp.index]]
        base = rt.pointer(next(iter(model._P.buffers.values())))
        launches = [(f"optim_{kind}", grid_for(p.size), np.int64((rt.pointer(p) - base) // p.itemsize),
                     (p, g, *slots, self.hyper[1 + i], np.int64(p.size)))
                    for i, (kind, p, g, slots, _) in enumerate(calls)]
        table = lambda rows, width: rt.asarray(np.array(rows or [(0,) * width], np.int64).reshape(-1), np.int64)  # noqa: E731
        return _Tables(table(checks, 2), table(copies, 3), table(counts, 2),
                       (np.int32(len(checks)), np.int32(len(copies)), np.int32(len(counts))),
                       grid_for(max(a.size for a in (grads, *state_out))), launches)

    def _enqueue(self, entry: FixedStep, calls: list) -> None:
        """train_step, guard, optimizer, commit: the launches of one step (what a graph captures)."""
        model = self.model
        out = self.exe.call("train_step", entry.inputs, model._P.views, model._S, model._G.views, entry.buffers)
        if entry.tables is None:
            entry.tables = self._tables(out, calls)
        t, header = entry.tables, self.hyper[0]
        n_checks, n_copies, n_counts = t.n
        self.launch("step_guard", t.grid, (BLOCK,), self.status, header, out["loss"], self.losses, t.checks, n_checks)
        for name, grid, offset, args in t.launches:
            self.launch(name, grid, (BLOCK,), self.status, header, offset, *args)
        self.launch("step_commit", t.grid, (BLOCK,), self.status, t.copies, n_copies, t.counts, n_counts)

    # ---- the host's one read -----------------------------------------------------------------
    def read(self) -> list:
        """The losses of the steps since the last read (floats, in order). If one of them
        diverged: the host's counts go back to just before it (the device changed nothing from
        it on), the flag is cleared, and TrainingDiverged says what and where; its ``losses``
        are those of the good steps before it."""
        k, self.pending = self.pending, 0
        if k == 0:
            return []
        rt = self.runtime
        status = np.array(rt.to_numpy(self.status))  # a copy: the status is cleared below
        losses = [float(v) for v in rt.to_numpy(self.losses[:k])]
        if status[0] == 0:
            self._snapshot = None
            return losses
        bad_step = int(status[1])
        first, snapshot = self._snapshot
        good = bad_step - 1 - first
        self._rollback(first, snapshot, good)
        rt.write(self.status, np.array(STATUS_CLEAR, np.uint64))
        e = TrainingDiverged(self._message(status, bad_step, losses[good]))
        e.losses, e.step = losses[:good], bad_step
        raise e

    def _rollback(self, first: int, snapshot, good: int) -> None:
        opt = self.optimizer
        opt._restore_host_bookkeeping(snapshot)
        for _ in range(good):  # the good steps' bookkeeping again (nothing is launched)
            self._record_update()
        self.model.step = first + good
        self._snapshot = None

    def _message(self, status, step: int, loss: float) -> str:
        flags, model = int(status[0]), self.model
        if flags & FLAG_LOSS:
            return f"loss is {loss} at step {step}; nothing was updated"
        if flags & FLAG_GRAD:
            return (f"the gradient of {model.layout.name_at(int(status[2]))} contains NaN or inf at step {step}; "
                    f"nothing was updated")
        if flags & FLAG_STATE:
            name = model._state_keys[int(status[3]) - 1].removeprefix("state.")
            return (f"the new {name} contains NaN or inf at step {step} (a batch variance overflowed?); nothing was "
                    f"updated")
        name = model.layout.name_at(int(status[4]))
        return (f"the update at step {step} made {name} NaN or inf ({model._update_cause(self.optimizer, name)}); "
                f"the parameters are no longer usable: reload a checkpoint")


