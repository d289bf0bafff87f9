"""``bngraph train --schedule SPEC --early-stop PATIENCE [--keep-best]``: a learning-rate schedule
(:mod:`bngraph.schedules`) and early stopping (:class:`bngraph.callbacks.EarlyStopping`) that
survive ``--resume``, so that a resumed run stops, and keeps, what the straight run would.

* the schedule: its spelling is recorded with the run (``model.cli_run["schedule"]``); ``fit``
  records its place (``model.fit_state["schedule"]``), so the same spelling continues it exactly;
* early stopping watches ``val_loss`` (``loss`` without a validation split); its count (best value,
  best epoch, epochs without progress) is recorded after every epoch, before the checkpoint is
  written, and put back on resume;
* ``--keep-best``: the best epoch's params and running statistics are restored when training
  ends (early stopping's ``restore_best``); they travel in the checkpoint too (``best/param/...``,
  ``best/state/...``: ``model.kept_best``), so a resumed run can still restore an epoch it did
  not see.
(This module imports no part of the command line.)
"""
from __future__ import annotations

import numpy as np

from .callbacks import EarlyStopping


def monitor_of(validation) -> str:
    """What early stopping and a plateau schedule watch: the validation loss, else the training loss."""
    return "val_loss" if validation is not None else "loss"


def schedule_of(spec: str | None, monitor: str):
    """``--schedule SPEC`` as a schedule object (None: no schedule); a bad SPEC is a ValueError
    naming the flag and the spellings."""
    if spec is None:
        return None
    from . import schedules

    try:
        return schedules.parse(spec, monitor=monitor)
    except ValueError as e:
        raise ValueError(f"--schedule: {e}") from None


class ResumableEarlyStopping(EarlyStopping):
    """EarlyStopping whose count goes on across ``--resume``: ``recorded`` (the checkpoint's
    ``cli_run["early_stop_state"]``) and ``kept`` (its best weights, ``(params, state)``) are put
    back when training begins; after every epoch the count goes into ``model.cli_run`` and the best
    weights into ``model.kept_best``, which the checkpoint written after the epoch carries."""

    def __init__(self, monitor, patience, keep_best, recorded=None, kept=None):
        super().__init__(monitor=monitor, patience=patience, restore_best=keep_best)
        self.recorded, self.kept = recorded or {}, kept

    def on_train_begin(self, model, logs):
        super().on_train_begin(model, logs)
        if self.recorded.get("best_epoch") is not None:
            self.best, self.best_epoch = self.recorded["best"], self.recorded["best_epoch"]
            self.wait = self.recorded.get("wait", 0)
            self.seen = 1  # the run has seen epochs: Keras's "never at the first epoch" is the run's, not the session's
            self.weights = self.kept if self.restore_best else None

    def on_epoch_end(self, model, epoch, logs):
        reason = super().on_epoch_end(model, epoch, logs)
        model.cli_run["early_stop_state"] = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        if self.restore_best and self.weights is not None:
            model.kept_best = self.weights
        return reason

    def stopped_before(self, patience) -> bool:
        """Did the recorded run already stop (``patience`` epochs without progress)?"""
        return self.recorded.get("best_epoch") is not None and self.recorded.get("wait", 0) >= max(patience, 1)


def kept_weights(arrays: dict):
    """The best weights a checkpoint carries (``best/param/...``, ``best/state/...``), or None."""
    params = {k[len("best/param/"):]: np.asarray(v) for k, v in arrays.items() if k.startswith("best/param/")}
    state = {k[len("best/state/"):]: np.asarray(v) for k, v in arrays.items() if k.startswith("best/state/")}
    return (params, state) if params else None
