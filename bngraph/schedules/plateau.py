"""ReduceLROnPlateau: the schedule driven by a metric at the end of each epoch."""
from __future__ import annotations

import math

from ..optim.base import check_lr
from .base import Schedule, _choice, _float, _int, _json, _not_an_optimizer


class ReduceLROnPlateau(Schedule):
    """Multiply the lr by ``factor`` when ``monitor`` (a key of fit's epoch records: ``val_loss``,
    ``loss``, ``val_accuracy``...) has not improved for more than ``patience`` epochs; ``mode``
    "min"/"max", ``threshold`` with ``threshold_mode`` "rel"/"abs", ``cooldown`` epochs,
    ``min_lr``, ``eps`` as PyTorch's. Steps once per epoch, after validation."""

    ARGS = ("monitor", "mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    metric_driven = True

    def __init__(self, monitor="val_loss", mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        super().__init__("epoch")
        c = "ReduceLROnPlateau"
        _not_an_optimizer(c, monitor)
        if not isinstance(monitor, str):
            raise ValueError(f"{c}: monitor must be the name of a metric of fit's records, e.g. 'val_loss', "
                             f"got {monitor!r}")
        self.monitor = monitor
        self.mode = _choice(c, "mode", mode, ("min", "max"))
        self.factor = _float(c, "factor", factor, 0.0, 1.0, high_open=True)
        self.patience = _int(c, "patience", patience, 0)
        self.threshold = _float(c, "threshold", threshold, 0.0)
        self.threshold_mode = _choice(c, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = _int(c, "cooldown", cooldown, 0)
        self.min_lr = _float(c, "min_lr", min_lr, 0.0)
        self.eps = _float(c, "eps", eps, 0.0)
        self.reset(None)

    def config(self):
        return _json({name: getattr(self, name) for name in self.ARGS})

    def reset(self, lr):
        self.lr_now = lr
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0

    def start(self, base_lr, epochs_done, steps_done, length):
        super().start(base_lr, epochs_done, steps_done, length)
        self.reset(self.base_lr)

    def lr(self, epochs_done, steps_done):
        return self.lr_now

    def is_better(self, a, best) -> bool:
        if self.mode == "min":
            return a < best * (1.0 - self.threshold) if self.threshold_mode == "rel" else a < best - self.threshold
        return a > best * (self.threshold + 1.0) if self.threshold_mode == "rel" else a > best + self.threshold

    def step(self, metric):
        """One epoch's ``metric`` (PyTorch's ``scheduler.step(metrics)``); the lr is ``self.lr_now``."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr_now * self.factor, self.min_lr)
            if self.lr_now - new_lr > self.eps:
                self.lr_now = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self):
        best = None if math.isinf(self.best) else self.best  # JSON has no inf
        return {**super().state_dict(), "lr": self.lr_now, "best": best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        c = "ReduceLROnPlateau"
        self.reset(None if state.get("lr") is None else check_lr(state["lr"]))
        if state.get("best") is not None:
            self.best = _float(c, "recorded best", state["best"])
        for key in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
            setattr(self, key, _int(c, f"recorded {key}", state.get(key), 0))
