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

The step is one implementation of the training step (:mod:`bngraph.step`): it works against a
:class:`~bngraph.step.StepContext` (the flat buffers, the state, the feeds) and the optimizer's
public fused-step interface (``plan_fused`` -> the stretches and their hyperparameters,
``commit_fused`` -> the host's bookkeeping, ``host_state``/``restore_host_state``), never against
the model. The host keeps its own count of everything (the step count, which the owner derives
from ``pending``; the optimizer's step counts and slots) and reads the device only in
:meth:`GuardedStep.read`: the losses of the steps since the last read and the status, in one go.
``Model.train_step`` reads after every step; ``fit`` once per logging interval (a progress-bar
redraw, the end of an epoch, :attr:`GuardedStep.CAPACITY` steps). When the status holds a flag,
the step it names changed nothing, nor did any later one: the host rolls the optimizer's
bookkeeping back to just before that step and raises TrainingDiverged, carrying the losses of the
good steps before it (the owner's count follows them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import TrainingDiverged
from ...optim.base import update_message
from ..base import FixedStep, Replays
from .optimizers import (BLOCK, MODE_CHECK, MODE_COMMIT, STATUS_CLEAR, RecordKernels, grid_for, launch_args,
                         record_of, targets)

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
    raises TrainingDiverged after rolling back). Made by the runtime (``guarded_step``) for a
    built-in optimizer."""

    CAPACITY = 1024  # steps whose losses stay on the device between two reads

    def __init__(self, context, optimizer, graphs: bool = False):
        self.context, self.optimizer = context, optimizer
        self.runtime, self.exe = context.runtime, context.executable
        self.record = record_of(optimizer)
        if self.record is None:
            raise ValueError(f"{type(optimizer).__name__} has no optimizer record: its steps are checked on the host")
        self.launch = self.exe.launch  # the model's kernels (train_step, step_guard, step_commit)
        self.update = RecordKernels(self.runtime, self.record, context.dtype)  # the record's kernel
        self.steps = Replays(self.exe, "train_step", graphs)  # per batch size: fixed buffers, tables, graph
        rt = self.runtime
        self.status = rt.asarray(np.array(STATUS_CLEAR, np.uint64), np.uint64)
        self.losses = rt.zeros((self.CAPACITY,), context.dtype)
        self.hyper = None            # device (1 + launches, 8) float64: the header row, then one row per launch
        self.pending = 0             # steps submitted since the last read
        self._snapshot = None        # (step count, optimizer's host state) before the first unread step
        self._signature = None       # (the optimizer's binding, its launches) the entries were built for

    @property
    def model(self):
        """The model's side of the step: the :class:`~bngraph.step.StepContext` (``.step``: the count)."""
        return self.context

    @classmethod
    def make(cls, context, optimizer, graphs: bool = False):
        """A guarded step for ``optimizer``, or None when it is not a built-in (its steps are then
        checked on the host, one read each)."""
        return None if record_of(optimizer) is None else cls(context, optimizer, graphs)

    # ---- one step --------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Bound to the model, and the optimizer's next step fused (its state uniform across each
        group); else the model takes the host-checked path."""
        ctx, opt = self.context, self.optimizer
        if opt.binding is None or opt.layout is not ctx.layout:
            ctx.bind(opt)
        return opt.plan_fused(ctx.params, ctx.grads) is not None

    def submit(self, X, y) -> None:
        """Enqueue one training step on checked host data (rows are examples); reads nothing."""
        ctx, opt = self.context, self.optimizer
        if self.pending == self.CAPACITY:
            raise RuntimeError("GuardedStep.submit: read() the losses first (the device keeps CAPACITY of them)")
        plan = opt.plan_fused(ctx.params, ctx.grads)
        if plan is None:  # never expected: the owner asks ready() first
            raise RuntimeError("the optimizer's state is not uniform across a group: its step is not fused")
        calls = [(s, *launch_args(self.record, s)) for gp in plan.groups for s in plan.stretches[gp.index]]
        entry = self._entry(X.shape[0], calls)
        rows = np.zeros((1 + len(calls), 8), np.float64)
        rows[0, :2] = (ctx.step + 1, self.pending)
        for i, (_, _, h) in enumerate(calls):
            rows[1 + i, :len(h)] = h
        rt = self.runtime
        if self.hyper is None or self.hyper.shape != rows.shape:
            self.hyper = rt.asarray(rows, np.float64)
            self.steps.forget_graphs()  # the launches read rows of the old array
        else:
            rt.write(self.hyper, rows)
        for name, a in ctx.host_feeds(X, y).items():
            rt.write(entry.inputs[name], a)
        if self.pending == 0:
            self._snapshot = (ctx.step, opt.host_state())
        self.steps.run(entry, lambda: self._enqueue(entry, calls, plan.counters))
        opt.commit_fused(plan, counters=False)  # the host's bookkeeping; step_commit counts on the device
        self.pending += 1

    @property
    def entries(self) -> dict:
        """Batch size -> its :class:`~bngraph.backends.base.FixedStep` (buffers, tables, graph)."""
        return self.steps.entries

    @property
    def replays(self) -> int:
        """Steps run by replaying a captured graph."""
        return self.steps.replays

    def _entry(self, m: int, calls: list) -> FixedStep:
        # a binding's slots keep their addresses, but a slot can appear (amsgrad or momentum turned on):
        # the launches then pass another array, so the slots each launch reads are part of the key
        signature = (self.optimizer.binding, tuple(tuple(s.slots) for s, _, _ in calls))
        if self._signature is None or signature[0] is not self._signature[0] or signature[1] != self._signature[1]:
            self.steps.entries.clear()  # a new binding or new slots: every table and graph is stale
            self._signature = signature
        return self.steps.entry(m)

    def _tables(self, out: dict, calls: list, counters: list) -> _Tables:
        """The guard's and commit's tables and the optimizer launches, for the buffers of ``out``
        (what a batch size's train_step returned), this step's ``calls`` and step ``counters``."""
        ctx, rt = self.context, self.runtime
        state_out = [out[k] for k in ctx.outputs]
        (grads,) = ctx.grads.buffers.values()  # one dtype: the model's
        checks = [(rt.pointer(grads), grads.size)] + [(rt.pointer(a), a.size) for a in state_out]
        copies = [(rt.pointer(a), rt.pointer(ctx.state[k]), a.size) for k, a in zip(ctx.updated, state_out)]
        counts = [(rt.pointer(c), c.size) for c in counters]
        base = rt.pointer(next(iter(ctx.params.buffers.values())))
        launches = [(self.update.name, grid_for(s.p.size), np.int64((rt.pointer(s.p) - base) // s.p.itemsize),
                     (s.p, s.g, *slots, self.hyper[1 + i], np.int64(s.p.size)))
                    for i, (s, slots, _) in enumerate(calls)]
        table = lambda rows, width: rt.asarray(np.array(rows or [(0,) * width], np.int64).reshape(-1), np.int64)  # noqa: E731
        return _Tables(table(checks, 2), table(copies, 3), table(counts, 2),
                       (np.int32(len(checks)), np.int32(len(copies)), np.int32(len(counts))),
                       grid_for(max(a.size for a in (grads, *state_out))), launches)

    def _enqueue(self, entry: FixedStep, calls: list, counters: list) -> None:
        """train_step, guard, optimizer, commit: the launches of one step (what a graph captures)."""
        ctx = self.context
        out = self.exe.call("train_step", entry.inputs, ctx.params.views, ctx.state, ctx.grads.views, entry.buffers)
        if entry.tables is None:
            entry.tables = self._tables(out, calls, counters)
        t, header = entry.tables, self.hyper[0]
        n_checks, n_copies, n_counts = t.n
        self.launch("step_guard", t.grid, (BLOCK,), self.status, header, out["loss"], self.losses, t.checks, n_checks)
        for mode in (MODE_CHECK, MODE_COMMIT):  # every new value checked before any is stored
            for name, grid, offset, args in t.launches:
                self.update.launch(name, grid, (BLOCK,), self.status, header, offset, *args, mode)
        self.launch("step_commit", t.grid, (BLOCK,), self.status, t.copies, n_copies, t.counts, n_counts)

    # ---- the host's one read -----------------------------------------------------------------
    def read(self) -> list:
        """The losses of the steps since the last read (floats, in order). If one of them
        diverged: the optimizer's host bookkeeping goes back to just before it (the device changed
        nothing from it on), the flag is cleared, and TrainingDiverged says what and where; its
        ``losses`` are those of the good steps before it, ``step`` the step that diverged."""
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
        self._rollback(snapshot, good)
        rt.write(self.status, np.array(STATUS_CLEAR, np.uint64))
        e = TrainingDiverged(self._message(status, bad_step, losses[good]))
        e.losses, e.step = losses[:good], bad_step
        raise e

    def _rollback(self, snapshot, good: int) -> None:
        ctx, opt = self.context, self.optimizer
        opt.restore_host_state(snapshot)
        for _ in range(good):  # the good steps' bookkeeping again (nothing is launched)
            opt.commit_fused(opt.plan_fused(ctx.params, ctx.grads), counters=False)
        self._snapshot = None

    def _message(self, status, step: int, loss: float) -> str:
        flags, ctx = int(status[0]), self.context
        if flags & FLAG_LOSS:
            return f"loss is {loss} at step {step}; nothing was updated"
        if flags & FLAG_GRAD:
            return (f"the gradient of {ctx.layout.name_at(int(status[2]))} contains NaN or inf at step {step}; "
                    f"nothing was updated")
        if flags & FLAG_STATE:
            name = ctx.updated[int(status[3]) - 1]
            return (f"the new {name} contains NaN or inf at step {step} (a batch variance overflowed?); nothing was "
                    f"updated")
        which, element = divmod(int(status[4]), 1 << 56)  # optim.cu.j2's check_update
        name, array = ctx.layout.name_at(element), targets(self.record)[which]
        return update_message(step, name, None if array == "p" else array, ctx.dtype,
                              lambda: ctx.update_cause(self.optimizer, name))
