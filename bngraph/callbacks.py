"""Callbacks for ``fit(callbacks=[...])``: a small protocol, Keras's in spirit.

A callback is an object with any of these methods (subclass :class:`Callback` and override what
you need); ``fit`` calls them in the order the callbacks are given:

* ``on_train_begin(model, logs)``: before the first step; ``logs``: ``epochs`` (this call's),
  ``steps`` (per epoch), ``metrics`` (the keys each epoch's record will have: ``loss``,
  ``val_loss``, ``val_accuracy``...), ``validation`` (bool). Raise here to refuse the fit.
* ``on_epoch_begin(model, epoch, logs)``: ``epoch`` counts from 1, as the records do.
* ``on_step_end(model, step, logs)``: after each step; ``step``: its number in the epoch (from 1);
  ``logs``: ``epoch``, ``step``, ``steps``, ``global_step``, ``loss`` (this step's), ``lr``.
  Defining it makes ``fit`` read every step's loss as it happens (on a GPU, a wait per step).
* ``on_epoch_end(model, epoch, logs)``: after the epoch's validation; ``logs`` is the epoch's
  record (a key added to it is kept in the history).
* ``on_train_end(model, logs)``: when ``fit`` returns (not when it raises); ``logs``:
  ``history``, ``stop_reason``.

``on_step_end`` and ``on_epoch_end`` stop training by returning True or, better, a sentence
saying why: it becomes ``History.stop_reason`` and is printed. A stop after a step leaves the
model mid-epoch, with ``model.fit_state`` saying where (a checkpoint saved then resumes there).
"""
import math
import os

import numpy as np

from .fileio import check_writable

__all__ = ["Callback", "LambdaCallback", "EarlyStopping", "ModelCheckpoint", "HOOKS"]

HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_epoch_end", "on_train_end")


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def on_train_begin(self, model, logs):
        pass

    def on_epoch_begin(self, model, epoch, logs):
        pass

    def on_step_end(self, model, step, logs):
        pass

    def on_epoch_end(self, model, epoch, logs):
        pass

    def on_train_end(self, model, logs):
        pass


class LambdaCallback(Callback):
    """A callback made of functions, e.g. ``LambdaCallback(on_epoch_end=lambda model, epoch, logs: ...)``."""

    def __init__(self, on_train_begin=None, on_epoch_begin=None, on_step_end=None, on_epoch_end=None,
                 on_train_end=None):
        given = dict(on_train_begin=on_train_begin, on_epoch_begin=on_epoch_begin, on_step_end=on_step_end,
                     on_epoch_end=on_epoch_end, on_train_end=on_train_end)
        for name, fn in given.items():
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"LambdaCallback: {name} must be a function, got {type(fn).__name__}")
                setattr(self, name, fn)


def _hooks(cb) -> set:
    """The hooks ``cb`` defines (for a Callback: those it overrides)."""
    return {h for h in HOOKS if callable(getattr(cb, h, None))
            and not (isinstance(cb, Callback) and getattr(type(cb), h, None) is getattr(Callback, h)
                     and h not in vars(cb))}


class CallbackList:
    """fit's callbacks: each hook called on every callback that defines it; a stop is the first
    truthy answer (a sentence, or True: then one is made)."""

    def __init__(self, callbacks):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        for cb in callbacks:
            if not _hooks(cb) and not isinstance(cb, Callback):
                raise TypeError(f"fit: a callback is an object with any of {', '.join(HOOKS)} (bg.callbacks.Callback, "
                                f"or LambdaCallback(on_epoch_end=fn) for a function), got {type(cb).__name__}")
        self.callbacks = list(callbacks)
        self.hooks = [_hooks(cb) for cb in self.callbacks]
        self.per_step = any("on_step_end" in h for h in self.hooks)

    def call(self, hook, model, *args):
        reason = None
        for cb, hooks in zip(self.callbacks, self.hooks):
            if hook in hooks:
                answer = getattr(cb, hook)(model, *args)
                if answer and reason is None:
                    reason = answer if isinstance(answer, str) else f"stopped by {type(cb).__name__}"
        return reason


def _mode(cls, monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{cls}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


class _Monitor(Callback):
    """What EarlyStopping and ModelCheckpoint share: a metric of the epoch records, its direction,
    and the best value so far."""

    def __init__(self, monitor, mode, min_delta=0.0):
        cls = type(self).__name__
        if not isinstance(monitor, str):
            raise ValueError(f"{cls}: monitor must be the name of a metric, e.g. 'val_loss', got {monitor!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta):
            raise ValueError(f"{cls}: min_delta must be a finite number, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, _mode(cls, monitor, mode), abs(float(min_delta))
        self.best, self.best_epoch = None, None

    def on_train_begin(self, model, logs):
        if self.monitor not in logs["metrics"]:
            hint = "; it needs validation_data=, or monitor='loss'" if self.monitor.startswith("val_") else ""
            raise ValueError(f"fit: {type(self).__name__} monitors {self.monitor!r}, which this fit does not report "
                             f"(it reports {', '.join(logs['metrics'])}){hint}")
        self.best, self.best_epoch = None, None

    def improved(self, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop after ``patience`` epochs in a row in which ``monitor`` has not improved by more than
    ``min_delta`` on its best (Keras's rule: ``patience=0`` stops at the first such epoch, and
    never at the fit's first epoch). ``mode``: "min", "max", or "auto" (max for an accuracy, min
    otherwise). ``restore_best`` (Keras's ``restore_best_weights``): when fit returns, the params
    and the running statistics are those at the end of the best epoch, exactly (the counters
    ``model.epoch`` and ``model.step`` and the optimizer's state are not rewound). After fit:
    ``best``, ``best_epoch``, ``stopped_epoch`` (None if it did not stop), ``restored_epoch``
    (None if nothing was restored)."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best=True, *,
                 restore_best_weights=None):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        self.patience = patience
        self.restore_best = bool(restore_best if restore_best_weights is None else restore_best_weights)
        self.wait, self.stopped_epoch, self.restored_epoch, self.weights, self.last_epoch = 0, None, None, None, None
        self.seen = 0

    def on_train_begin(self, model, logs):
        super().on_train_begin(model, logs)
        self.wait, self.stopped_epoch, self.restored_epoch, self.weights, self.last_epoch = 0, None, None, None, None
        self.seen = 0  # epochs of this fit

    def on_epoch_end(self, model, epoch, logs):
        value = logs.get(self.monitor)
        self.last_epoch, self.seen = epoch, self.seen + 1
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                rt = model.runtime
                self.weights = ({k: np.array(rt.to_numpy(v), copy=True) for k, v in model.params.items()},
                                {k: np.array(rt.to_numpy(v), copy=True) for k, v in model.state.items()})
            return None
        self.wait += 1
        if self.wait < self.patience or self.seen == 1:  # Keras's: patience epochs without improvement
            return None  # (and never at the fit's first epoch)
        self.stopped_epoch = epoch
        best = "no finite value yet" if self.best is None else f"{self.best:.6g} (epoch {self.best_epoch})"
        restored = (f"; restored the weights of epoch {self.best_epoch}"
                    if self.restore_best and self.weights is not None else "")
        return (f"early stopping at epoch {epoch}: {self.monitor} has not improved on {best} for {self.wait} "
                f"epoch{'s' if self.wait != 1 else ''} (patience {self.patience}){restored}")

    def on_train_end(self, model, logs):
        if self.restore_best and self.weights is not None and self.best_epoch != self.last_epoch:
            params, state = self.weights
            model.set_params(params)
            model.set_state(state)
            self.restored_epoch = self.best_epoch


class ModelCheckpoint(_Monitor):
    """Save the model (``model.save``: atomic, a checkpoint that resumes) to ``path`` after an
    epoch: every epoch, or (``save_best_only``) only when ``monitor`` improved (``mode`` as
    EarlyStopping's). ``path`` may name record keys, Keras's way: ``"run-{epoch:03d}.npz"``,
    ``"best-{val_loss:.3f}.npz"``. Its folder must exist (checked before the first step).
    ``saved``: the (epoch, path) written."""

    def __init__(self, path, monitor="val_loss", save_best_only=True, mode="auto"):
        super().__init__(monitor, mode)
        self.path, self.save_best_only = os.fspath(path), bool(save_best_only)
        self.saved = []

    def on_train_begin(self, model, logs):
        if self.save_best_only:
            super().on_train_begin(model, logs)
        probe = self.path if "{" not in self.path else os.path.join(os.path.dirname(self.path) or ".", "probe")
        check_writable(probe, "ModelCheckpoint")
        self.saved = []

    def on_epoch_end(self, model, epoch, logs):
        value = logs.get(self.monitor)
        if self.save_best_only and not self.improved(value):
            return None
        if self.save_best_only:
            self.best, self.best_epoch = value, epoch
        try:
            path = self.path.format(epoch=epoch, **{k: v for k, v in logs.items() if k != "epoch"})
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: cannot make a file name from {self.path!r} ({e!r}); it may name "
                             f"{', '.join(logs)}") from None
        model.save(path)
        self.saved.append((epoch, path))
        return None
