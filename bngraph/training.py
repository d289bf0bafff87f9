"""The mini-batch training loop (``Model.fit``), its history and progress bar.

For each epoch the data is reshuffled from (seed, epoch number), so that the same seed gives the
same run and a resumed run continues exactly; each mini-batch is one ``train_step`` (forward with
that batch's own statistics, backward, optimizer update, running statistics). ``model.fit_state``
records the seed, batch size, shuffle, the number of examples and the place in the current epoch;
checkpoints carry it, so a run resumes where it stopped, even mid-epoch after a Ctrl-C. The lr
schedule (:mod:`bngraph.schedules`) sets ``optimizer.lr`` before each step and records its place
there too; the callbacks (:mod:`bngraph.callbacks`) are called around epochs and steps and may
stop training, which ``History.stop_reason`` then says.
"""
from __future__ import annotations

import io
import signal
import sys
import threading
import time

import numpy as np

from .callbacks import CallbackList
from .datacheck import check_batch_size, check_int, check_seed
from .errors import DataError, TrainingDiverged
from .fileio import check_writable
from .metrics import names as metric_names
from .schedules.fit import FitSchedule, kind as schedule_kind


class StepBoundaryInterrupt(KeyboardInterrupt):
    """Ctrl-C, raised by ``fit`` between two steps: the model is exactly as after a whole step, and
    ``model.fit_state`` says where (a checkpoint saved now resumes there). ``history``: the epochs
    completed by this call."""

    history: list = []


class History(list):
    """Per-epoch records (dicts: epoch, loss, val_loss, val_accuracy, lr, seconds...).

    ``stop_reason`` is None when every epoch ran, else a sentence saying why training stopped;
    ``diverged`` is True when that was a NaN/inf step (not a callback)."""

    stop_reason: str | None = None
    diverged: bool = False

    def column(self, key):
        """One key across the epochs, e.g. ``hist.column("val_accuracy")`` (None where an epoch lacks it)."""
        return [r.get(key) for r in self]

    @property
    def history(self) -> dict:
        """Keras's ``History.history``: metric -> its list across the epochs (every key but ``epoch``)."""
        keys = dict.fromkeys(k for r in self for k in r if k != "epoch")
        return {k: self.column(k) for k in keys}

    @property
    def epoch(self) -> list:
        """The epoch numbers of the records (from 1)."""
        return self.column("epoch")


def fit(model, X, y, optimizer=None, epochs: int = 1, batch_size: int | None = None, shuffle: bool | None = None,
        seed: int | None = None, validation_data=None, verbose=None, lr_schedule=None, checkpoint: str | None = None,
        announce_stop: bool = True, callbacks=None, report=None) -> History:
    """``Model.fit``: see its docstring. ``announce_stop=False``: a stop (a divergence, a callback's)
    is not printed (the caller reports ``history.stop_reason`` itself, as the command line does)."""
    inputs = model.inputs
    X = inputs.check_x(X, "fit")  # cast once to the model's dtype, not per batch
    y = inputs.check_y(y, X.shape[0], "fit")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(f"fit: validation_data must be a pair (X_val, y_val), got "
                             f"{type(validation_data).__name__}")
        Xv = inputs.check_x(validation_data[0], "fit validation_data")
        yv = inputs.check_y(validation_data[1], Xv.shape[0], "fit validation_data")
    epochs = check_int("fit", "epochs", epochs, 0)
    last = model.fit_state or {}
    batch_size = check_batch_size("fit", last.get("batch_size", 64) if batch_size is None else batch_size)
    seed = check_seed("fit", last.get("seed", 0) if seed is None else seed)
    shuffle = bool(last.get("shuffle", True) if shuffle is None else shuffle)
    if lr_schedule is not None:
        schedule_kind(lr_schedule)  # a schedule object, fn(epoch) or fn(epoch, step): else a ValueError
    callbacks = CallbackList(callbacks)
    if checkpoint:
        check_writable(checkpoint, "fit checkpoint")
    if report:
        check_writable(report, "fit report")
    n = X.shape[0]
    if inputs.batch_statistics and (n < 2 or batch_size < 2):
        raise DataError(f"fit: batch norm needs at least 2 examples per batch (got {n} examples, "
                        f"batch_size {batch_size})")
    optimizer = use_optimizer(model, optimizer)
    rep = model.trainer.context.replicas  # data parallel: rank 0 alone prints and writes files
    if rep is not None and not rep.is_root:
        verbose, checkpoint, report = False, None, None
    bar = Progress(verbose)
    config = {"seed": seed, "batch_size": batch_size, "shuffle": shuffle, "n": n}
    position = last.get("position")
    if position and (position.get("epoch") != model.epoch + 1 or {k: last.get(k) for k in config} != config):
        bar.line(f"epoch {position.get('epoch')} starts again from its first batch: it was interrupted with other "
                 f"data, seed, batch size or shuffle")
        position = None
    steps = len(batch_bounds(n, batch_size, merge_single=inputs.batch_statistics))
    if position and not (isinstance(position.get("done"), int) and 0 <= position["done"] <= steps):
        bar.line(f"epoch {position.get('epoch')} starts again from its first batch: its recorded place (step "
                 f"{position.get('done')!r}) is not one of its {steps} steps")  # a tampered fit_state: no epoch skipped
        position = None
    metrics = ["loss"] + ([f"val_{k}" for k in metric_names(inputs)] if validation_data is not None else [])
    done = position["done"] if position else 0
    schedule = None if lr_schedule is None else FitSchedule(lr_schedule, model, optimizer, steps, epochs, done, metrics)
    callbacks.call("on_train_begin", model, {"epochs": epochs, "steps": steps, "metrics": metrics,
                                             "validation": validation_data is not None})
    model.fit_state = {**config, "position": position,
                       **({"schedule": last["schedule"]} if last.get("schedule") else {})}
    if schedule is not None:
        schedule.commit(model)
    history = History()
    validation = None if validation_data is None else (Xv, yv)
    try:
        _loop(model, X, y, optimizer, epochs, batch_size, shuffle, seed, validation, bar, schedule, checkpoint,
              history, callbacks)
    except BaseException as e:
        bar.end_line()  # what is printed next (a Ctrl-C's message) starts on a line of its own
        if isinstance(e, (StepBoundaryInterrupt, OSError)):  # Ctrl-C, or a checkpoint that could not be written
            e.history = history  # the epochs done, for the caller's report
        raise
    callbacks.call("on_train_end", model, {"history": history, "stop_reason": history.stop_reason})
    if history.stop_reason and announce_stop:
        bar.line(history.stop_reason)
    if report:
        from .htmlreport import report as write_report

        bar.line(f"wrote report {write_report(model, report, target=model.target)}")
    return history


def use_optimizer(model, optimizer):
    """The optimizer a step uses: ``optimizer``, which becomes ``model.optimizer``, or (None) the
    model's last one."""
    if optimizer is None:
        if model.optimizer is None:
            raise ValueError("no optimizer: pass one, e.g. bg.optim.Adam(lr=1e-3)")
        return model.optimizer
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must have a step(params, grads) method, got {type(optimizer).__name__}")
    model.optimizer = optimizer
    return optimizer


def _loop(model, X, y, optimizer, epochs, batch_size, shuffle, seed, validation, bar, schedule, checkpoint,
          history, callbacks):
    n = X.shape[0]
    final = model.epoch + epochs
    with _StepBoundaryInterrupts() as interrupts, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(epochs):  # the steps check for NaN/inf themselves: no NumPy warnings
            ep = model.epoch + 1
            order = np.random.default_rng([seed, ep]).permutation(n) if shuffle else np.arange(n)
            bounds = batch_bounds(n, batch_size, merge_single=model.inputs.batch_statistics)
            T = len(bounds)
            pos = model.fit_state["position"]
            if pos is None:
                pos = model.fit_state["position"] = {"epoch": ep, "done": 0, "losses": []}
            callbacks.call("on_epoch_begin", model, ep, {})
            t0, first = time.perf_counter(), pos["done"]
            steps = _Unread(model, optimizer, pos, schedule is not None)
            for t in range(pos["done"] + 1, T + 1):
                if model.trainer.context.replicas is not None:  # a Ctrl-C on one rank stops them all here
                    interrupts.agree(model.trainer.context.replicas)
                if interrupts.requested and steps.collect():
                    break
                interrupts.check(model, T)
                a, b = bounds[t - 1]
                old_lr = getattr(optimizer, "lr", None)
                try:
                    if schedule is not None:
                        optimizer.lr = schedule.lr(ep, model.step + 1)
                    rows = order[a:b] if model.trainer.context.replicas is None else \
                        model.trainer.context.replicas.shard(order[a:b])  # this rank's part of the global batch
                    due = model.trainer.submit(X[rows], y[rows], optimizer)
                except BaseException:
                    if schedule is not None and old_lr is not None:
                        optimizer.lr = old_lr  # the failed step changed nothing, its lr included
                    steps.collect()  # the position counts the steps before it
                    raise
                steps.add(t, old_lr)
                if (due or callbacks.per_step or bar.due(t, T)) and steps.collect():
                    break
                if callbacks.per_step:
                    logs = {"epoch": ep, "step": t, "steps": T, "global_step": model.step, "loss": pos["losses"][-1],
                            "lr": getattr(optimizer, "lr", None)}
                    history.stop_reason = callbacks.call("on_step_end", model, t, logs)
                    if history.stop_reason:
                        bar.close()
                        return
                bar.update(ep, final, pos["done"], T, pos["losses"], time.perf_counter() - t0, pos["done"] - first)
            if steps.collect():
                history.stop_reason = (f"stopped early at epoch {ep}, step {steps.stopped_at} of {T} "
                                       f"(global step {model.step + 1}): {steps.stop_reason}")
                history.diverged = True
                _remember(model, None, history.stop_reason)
                bar.close()
                return
            rec = {"epoch": ep, "loss": float(np.mean(pos["losses"])), "steps": T,
                   "lr": float(getattr(optimizer, "lr", float("nan"))), "seconds": time.perf_counter() - t0}
            if validation is not None:  # a non-finite figure shows as inf/nan in the record
                for k, v in model.evaluate(*validation).items():
                    rec[f"val_{k}"] = v
            model.epoch = ep
            model.fit_state["position"] = None
            history.append(rec)
            _remember(model, rec, None)
            if schedule is not None:
                schedule.epoch_end(model, rec)  # ReduceLROnPlateau takes its metric
            history.stop_reason = callbacks.call("on_epoch_end", model, ep, rec)
            _remember(model, None, history.stop_reason)
            bar.close()
            bar.line(format_record(rec))
            if checkpoint:
                model.save(checkpoint)
            if history.stop_reason:
                break
        interrupts.check(model, None)  # a Ctrl-C during the last validation or save


def _remember(model, record, stop_reason):
    """The model's own history of every epoch (``model.history``, which checkpoints carry): the
    epoch's record, or how its last fit stopped."""
    log = getattr(model, "history", None)
    if not isinstance(log, History):
        return
    if record is not None:
        log.append(record)
        log.stop_reason = None
    else:
        log.stop_reason = stop_reason


class _Unread:
    """fit's steps whose losses have not been read yet: a target that checks its steps on the
    device (CUDA) is read once per logging interval, not once per step (``model.trainer``:
    :class:`bngraph.step.TrainingStep`). ``collect()`` moves the losses into the epoch's position; when a step
    diverged it sets ``stop_reason`` and ``stopped_at`` (the step's number in the epoch), puts
    that step's lr back, and returns True."""

    def __init__(self, model, optimizer, pos, scheduled):
        self.model, self.optimizer, self.pos, self.scheduled = model, optimizer, pos, scheduled
        self.records = []  # (step number in the epoch, lr before it) of each unread step
        self.stop_reason = self.stopped_at = None

    def add(self, t, old_lr):
        self.records.append((t, old_lr))

    def collect(self) -> bool:
        if self.stop_reason is not None:
            return True
        try:
            losses = self.model.trainer.collect()
        except TrainingDiverged as e:
            losses = e.losses
            t, old_lr = self.records[len(losses)]
            if self.scheduled and old_lr is not None:
                self.optimizer.lr = old_lr  # the diverged step changed nothing, its lr included
            self.stop_reason, self.stopped_at = str(e), t
        for (t, _), loss in zip(self.records, losses):
            self.pos["losses"].append(loss)
            self.pos["done"] = t
        self.records = []
        return self.stop_reason is not None


class _StepBoundaryInterrupts:
    """Ctrl-C during ``fit`` takes effect between steps, so that it never cuts a step (or a
    checkpoint write) in half: the first SIGINT is remembered and raised as KeyboardInterrupt at
    the next step boundary, where the model is exactly as after a whole step and
    ``model.fit_state`` says where in the epoch it stopped (a checkpoint saved then resumes
    there). A second SIGINT interrupts at once. Only in the main thread, and only where SIGINT has
    Python's default handler; anything else is left alone."""

    def __init__(self):
        self.requested = False
        self.where = ""  # data parallel: " (Ctrl-C on rank r)"
        self._old = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped at once")
        self.requested = True

    def agree(self, replicas):
        """Data parallel: every rank learns of a Ctrl-C on any rank, at the same step boundary."""
        got = replicas.gather_messages(b"1" if self.requested else b"")
        if any(got):
            self.requested, self.where = True, f" (Ctrl-C on rank {next(r for r, m in enumerate(got) if m)})"

    def check(self, model, steps):
        if self.requested:
            self.requested = False
            pos = (model.fit_state or {}).get("position")
            if pos and pos["done"] == 0:  # between two epochs: nothing of the next one is done
                pos = model.fit_state["position"] = None
            where = (f"epoch {pos['epoch']}, after step {pos['done']} of {steps}" if pos and steps
                     else f"the end of epoch {model.epoch}")
            raise StepBoundaryInterrupt(f"fit: interrupted{self.where} at {where} (global step {model.step}); the "
                                        f"model is as after that step")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def batch_bounds(n, batch_size, merge_single):
    """``[(start, stop)]`` of the mini-batches; a last batch of one example is merged into the one
    before it when ``merge_single`` (batch norm cannot normalize a single example)."""
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def format_record(rec):
    parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("val_") and isinstance(v, float)]
    parts.append(duration(rec["seconds"]))
    return "  ".join(parts)


def duration(seconds: float) -> str:
    """A time as people read it: ``0.84ms``, ``12ms``, ``3.21s``, ``2m05s``, ``1h02m`` (never ``0.00s``)."""
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.2f}ms" if ms < 10 else f"{ms:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """A one-line progress bar on a terminal (stderr); lines per epoch otherwise; nothing if quiet."""

    def __init__(self, verbose, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = verbose is False or verbose == 0
        self.bar = not self.quiet and _isatty(self.stream)
        self.open = False
        self.last = 0.0
        self.width = 0  # of the text drawn last: a shorter one blanks the rest

    def due(self, t, T) -> bool:
        """Will ``update`` redraw now? (Then fit reads the losses first.) At most 10 times a second."""
        return self.bar and (t == T or time.perf_counter() - self.last >= 0.1)

    def update(self, epoch, epochs, t, T, losses, elapsed, stepped):
        """Redraw: step ``t`` of ``T``, the mean of the epoch's ``losses`` so far, and the time left
        in the epoch from this call's ``stepped`` steps in ``elapsed`` seconds."""
        if not self.due(t, T):
            return
        self.last = time.perf_counter()
        width = 24
        done = int(width * t / T)
        mean = sum(losses) / len(losses) if losses else float("nan")
        eta = f"  ETA {duration(elapsed / stepped * (T - t))}" if stepped and t < T else ""
        text = f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] {t}/{T} loss {mean:.4f}{eta}"
        self.stream.write(f"\r{text}{' ' * max(0, self.width - len(text))}")
        self.stream.flush()
        self.open, self.width = True, len(text)

    def close(self):
        if self.open:
            self.stream.write("\r" + " " * max(72, self.width) + "\r")
            self.open = False

    def end_line(self):
        """Leave the bar as it is and start a new line (before an interrupt's message)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False

    def line(self, text):
        if not self.quiet:
            print(text, file=self.stream, flush=True)


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
