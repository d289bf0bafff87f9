"""The training step: one declared thing with one owner.

A step is: the generated ``train_step`` program on the model's flat buffers (params ``P``,
gradients ``G``, state ``S``), the checks that keep it all or nothing (the loss, every gradient,
every new running statistic finite), the optimizer's update, the params' check, and the commit of
the new running statistics. :class:`TrainingStep` owns it for one model: the step count, capture
(``cuda_graph``), which implementation runs the next step, and reading the losses.

Two implementations, one protocol (``optimizer``, ``submit(X, y)``, ``read()``, ``pending``,
``CAPACITY``, ``ready()``):

* :class:`HostStep`, any target and any optimizer: each step checked on the host as it runs, its
  loss kept until read. With capture, ``train_step`` is one graph per batch size and the
  optimizer runs after it.
* a target's own guarded step for a built-in optimizer (``runtime.guarded_step(context,
  optimizer, capture)``; the CUDA target's :mod:`bngraph.backends.cuda_target.step`): the whole
  step enqueued with its checks on the device, captured whole, read only when asked.

Both work against a :class:`StepContext`, what of the model a step may touch, and never against
the model itself. The step count is ``settled + pending``: steps read and found good, plus steps
submitted and not read yet; only :class:`TrainingStep` settles, so nobody else writes the count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .backends.base import GraphedPrograms
from .errors import ProgramError, TrainingDiverged
from .flat import FlatArrays, FlatLayout
from .optim.base import COUNTER, Optimizer, update_cause
from .optim.bounds import prove
from .snapshot import update_on_snapshot


@dataclass
class StepContext:
    """What a training step works on, declared: a target's step reads and writes these and
    nothing else of the model."""

    runtime: Any                  # the model's runtime (arrays, copies, reductions)
    executable: Any               # its loaded programs (``train_step``)
    layout: FlatLayout            # the params' flat layout
    params: FlatArrays            # P: updated in place by the optimizer
    grads: FlatArrays             # G: written by train_step
    state: dict                   # S: name -> live state array
    updated: tuple                # the state a step updates (running statistics), in order
    dtype: np.dtype               # the model's dtype
    feeds: Callable               # (X, y) -> device arrays by input name, (features, m) layout
    host_feeds: Callable          # (X, y) -> the same as contiguous host arrays
    run: Callable                 # (program, feeds, m) -> its outputs, run on these buffers
    owner: Any = None             # the TrainingStep whose count ``step`` reads
    replicas: Any = None          # data parallel: the communicator (bngraph.distributed), else None
    _outputs: tuple = field(default=(None, ()), init=False, repr=False, compare=False)  # (updated, outputs)

    @property
    def step(self) -> int:
        """Steps taken, those submitted and not read yet included (the owner's count)."""
        return self.owner.step

    @property
    def outputs(self) -> tuple:
        """The program outputs a step commits: ``state.<name>`` of each updated state."""
        updated, outputs = self._outputs  # made once per ``updated`` (read every step)
        if updated is not self.updated:
            outputs = tuple(f"state.{k}" for k in self.updated)
            self._outputs = (self.updated, outputs)
        return outputs

    def bind(self, optimizer) -> None:
        """Bind an Optimizer to the model's flat layout, its fused steps run the runtime's way
        (``update_executor``: NumPy's cache-sized pieces on host-thread lanes, one kernel launch
        per stretch on the CUDA target)."""
        optimizer.bind(self.layout, self.runtime.xp, executor=self.executable.update_executor(optimizer))

    def bounds(self, flat: FlatArrays) -> dict:
        """dtype -> an upper bound of ``|x|`` over that buffer of ``flat``, ``math.inf`` where it holds
        NaN or inf: one reduction per dtype buffer (the finite check, and the update's proof's input)."""
        rt = self.runtime
        return {dt: rt.abs_bound(b) for dt, b in flat.buffers.items()}

    def first_nonfinite(self, flat: FlatArrays, bounds: dict | None = None) -> str | None:
        """The first name whose array in ``flat`` holds NaN or inf, else None: one reduction per
        dtype buffer (or ``bounds``, already made); the per-name search runs only when that finds something."""
        rt = self.runtime
        if all(math.isfinite(v) for v in (self.bounds(flat) if bounds is None else bounds).values()):
            return None
        return next((name for name, v in flat.views.items() if not math.isfinite(rt.abs_bound(v))), "?")

    def first_nonfinite_slot(self, optimizer) -> tuple | None:
        """``(slot, param)`` for the first slot of a bound Optimizer holding NaN or inf (the slots in
        its record's order, as the CUDA target reports them), else None."""
        b = optimizer.binding if isinstance(optimizer, Optimizer) else None
        if b is None:
            return None
        record = getattr(type(optimizer), "record", None)
        order = [s.name for s in getattr(record, "slots", ())]
        for key in sorted(b.slots, key=lambda k: (order.index(k) if k in order else len(order), k)):
            if key != COUNTER:
                bad = self.first_nonfinite(b.slots[key])
                if bad is not None:
                    return key, bad
        return None

    def update_cause(self, optimizer, name: str) -> str:
        """Why the update made param ``name`` NaN/inf (its slots, eps=0 over a zero gradient, or lr)."""
        return update_cause(optimizer, name, self.grads.views.get(name, np.zeros(0)), self.dtype,
                            self.runtime.to_numpy)


class HostStep:
    """The step checked on the host, for any target and optimizer: ``submit`` runs it at once;
    its loss (or its TrainingDiverged) waits for ``read``."""

    CAPACITY = 1  # read after every step (a diverged one included): nothing is gained by waiting

    def __init__(self, context: StepContext, capture: bool = False):
        self.context = context
        self.optimizer = None  # set by the owner before each submit
        self.graphs = GraphedPrograms(context.executable) if capture else None  # train_step per batch size
        self._unread, self._diverged = [], None
        self._keys = (None, None)  # (ctx.outputs, {"loss", *ctx.outputs}): what run checks the program returned

    @property
    def pending(self) -> int:
        """Good steps not read yet."""
        return len(self._unread)

    def ready(self) -> bool:
        return True

    def submit(self, X, y) -> None:
        try:
            self._unread.append(self.run(X, y, self.optimizer))
        except TrainingDiverged as e:
            self._diverged = e  # raised by read, after the losses of the steps before it

    def run_read(self, X, y) -> float | None:
        """``submit(X, y)`` and ``read()`` of one step when nothing is unread: its loss, or its
        TrainingDiverged (``losses`` empty), without queueing the loss to read it back; None, and
        nothing run, when something is unread (then submit and read)."""
        if self._unread or self._diverged is not None:
            return None
        try:
            return self.run(X, y, self.optimizer)
        except TrainingDiverged as e:
            e.losses = []
            raise

    def read(self) -> list:
        losses, self._unread = self._unread, []
        e, self._diverged = self._diverged, None
        if e is not None:
            e.losses = losses
            raise e
        return losses

    def run(self, X, y, optimizer) -> float:
        """One step (:meth:`_run`); data parallel, all or nothing on every replica: a step refused
        on one is refused on all (bngraph.distributed.step)."""
        if self.context.replicas is None:
            return self._run(X, y, optimizer)
        from .distributed.step import replicated_run

        return replicated_run(self, X, y, optimizer)

    def _run(self, X, y, optimizer, hook=None) -> float:
        """One step on checked data. All or nothing: the program writes only gradients and
        buffers; its outputs, the loss, the gradients and the new running statistics are checked
        before the update; an optimizer that is not a built-in updates a snapshot it is rolled back
        to; the state is committed last."""
        ctx = self.context  # this step's number, ctx.step + 1, is only needed to say what went wrong
        outputs, required = self._keys
        if outputs is not ctx.outputs:  # made once (ctx.outputs is kept while ctx.updated is)
            outputs = ctx.outputs
            required = frozenset(("loss", *outputs))
            self._keys = (outputs, required)
        if self.graphs is not None:
            out = self.graphs.run("train_step", ctx.feeds(X, y), ctx.params.views, ctx.state, ctx.grads.views,
                                  X.shape[0])
        else:
            out = ctx.run("train_step", ctx.feeds(X, y), X.shape[0])
        if hook is not None:  # data parallel: the gradient hook, then the checks are agreed on
            hook("gradients")
        if not required <= out.keys():
            missing = [k for k in ("loss", *outputs) if k not in out]
            raise ProgramError(f"the generated train_step returned no {', '.join(missing)} (it returned "
                               f"{', '.join(out) or 'nothing'}); nothing was updated")
        loss = ctx.runtime.to_float(out["loss"])
        if not np.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {ctx.step + 1}; nothing was updated")
        g_bound = ctx.bounds(ctx.grads)
        bad = ctx.first_nonfinite(ctx.grads, g_bound)
        if bad is not None:
            raise TrainingDiverged(f"the gradient of {bad} contains NaN or inf at step {ctx.step + 1}; "
                                   f"nothing was updated")
        new_state = [out[k] for k in outputs]
        if new_state:  # one small reduction and host read for all running statistics (their sum is NaN/inf
            xp = ctx.runtime.xp  # when one of them is; a sum that overflows counts as divergence too)
            if not math.isfinite(ctx.runtime.to_float(xp.sum(xp.concatenate(new_state)))):
                bad = next((k for k, v in zip(ctx.updated, new_state) if not ctx.runtime.all_finite(v)),
                           "running statistics (their sum overflows)")
                raise TrainingDiverged(f"the new {bad} contains NaN or inf at step {ctx.step + 1} (a batch variance "
                                       f"overflowed?); nothing was updated")
        if hook is not None:
            hook("checked")
        self.update(optimizer, g_bound)
        for k, new in zip(ctx.updated, new_state):
            ctx.state[k][...] = new
        return loss

    def update(self, optimizer, g_bound: dict) -> None:
        """The optimizer's update of the flat params, all or nothing (``g_bound``: the gradients'
        bounds, :meth:`StepContext.bounds`).

        A built-in (``optimizer.fused``) runs in place, without a copy, when the step is proved not
        to overflow (:func:`bngraph.optim.bounds.prove`, from the params' bounds measured here, the
        gradients' and the slots' tracked intervals); anything else, and a built-in's step that is
        not proved, runs on a snapshot of params and slots it is rolled back to when it makes a
        param or slot NaN/inf (:mod:`bngraph.snapshot`)."""
        ctx = self.context
        if isinstance(optimizer, Optimizer) and optimizer.fused:
            if optimizer.layout is not ctx.layout:
                ctx.bind(optimizer)
            verdict = prove(optimizer, ctx.params, ctx.grads, ctx.bounds(ctx.params), g_bound, ctx.runtime)
            if verdict.proved:
                optimizer.step_flat(ctx.params, ctx.grads)  # whole-buffer passes
                optimizer.binding.intervals = verdict.slots
                return
            try:
                update_on_snapshot(ctx, optimizer, ctx.step + 1)
            finally:  # the slots moved without a proof (or were restored): measure them next time
                if optimizer.binding is not None:
                    optimizer.binding.intervals = None
            return
        update_on_snapshot(ctx, optimizer, ctx.step + 1)


class TrainingStep:
    """A model's training step, the one owner of the step count and of capture: ``run`` (one
    step, read at once: ``Model.train_step``), ``submit``/``collect`` (``fit``: losses read once
    per logging interval where the target allows it)."""

    def __init__(self, context: StepContext, capture: bool = False):
        self.context = context
        context.owner = self
        self.capture = bool(capture)
        self.host = HostStep(context, self.capture)
        self.guarded = None  # the target's guarded step for the current optimizer, if it has one
        self._settled = 0    # steps read and found good

    @property
    def step(self) -> int:
        """Optimizer steps taken, those not read yet included (``Model.step``)."""
        return self._settled + self.host.pending + (self.guarded.pending if self.guarded is not None else 0)

    @step.setter
    def step(self, value: int) -> None:  # a checkpoint's count
        self._settled = int(value) - (self.step - self._settled)

    @property
    def pending(self) -> int:
        """Steps submitted and not read yet."""
        return self.step - self._settled

    def run(self, X, y, optimizer) -> float:
        """One step on checked data, read at once: its loss, or TrainingDiverged (nothing changed)."""
        with self.context.runtime.queue():  # every array operation of the step in the model's queue
            impl = self._implementation(optimizer)
            if impl is self.host and (self.guarded is None or not self.guarded.pending):
                loss = impl.run_read(X, y)  # submit and collect in one, when nothing else is unread
                if loss is not None:
                    self._settled += 1
                    return loss
            impl.submit(X, y)
            return self.collect()[-1]

    def submit(self, X, y, optimizer) -> bool:
        """One step on checked data, enqueued; True when the losses must be collected before the
        next one (always for a host-checked step)."""
        with self.context.runtime.queue():
            impl = self._implementation(optimizer)
            impl.submit(X, y)
        return impl is self.host or impl.pending >= impl.CAPACITY

    def collect(self) -> list:
        """The losses of the steps submitted since the last collect, in order. If one diverged
        (it and any later one changed nothing), TrainingDiverged with ``losses``: the good ones."""
        got = []
        try:
            for impl in (self.host, self.guarded):
                if impl is not None:
                    with self.context.runtime.queue():
                        more = impl.read()
                    self._settled += len(more)
                    got += more
        except TrainingDiverged as e:
            self._settled += len(e.losses)
            e.losses = got + e.losses
            raise
        return got

    def _implementation(self, optimizer):
        """The target's guarded step for ``optimizer`` when its next step can be one, else the host step."""
        self.host.optimizer = optimizer
        if not (isinstance(optimizer, Optimizer) and optimizer.fused) or self.context.replicas is not None:
            return self.host  # data parallel: the host step, whose gradient hook sums over the replicas
        g = self.guarded
        if g is None or g.optimizer is not optimizer:
            if g is not None and g.pending:
                raise RuntimeError("a new optimizer while steps of the old one are unread")
            g = self.guarded = self.context.runtime.guarded_step(self.context, optimizer, self.capture)
        return g if g is not None and g.ready() else self.host
