"""The mini-batch training loop (``Model.fit``), its history and progress bar.

For each epoch the data is reshuffled from (seed, epoch number), so that the same seed gives the
same run and a resumed run continues exactly; each mini-batch is one ``train_step`` (forward with
that batch's own statistics, backward, optimizer update, running statistics).
"""
from __future__ import annotations

import io
import sys
import time

import numpy as np

from .datacheck import check_batch_size
from .errors import DataError, TrainingDiverged


class History(list):
    """Per-epoch records (dicts: epoch, loss, val_loss, val_accuracy, lr, seconds...).

    ``stop_reason`` is None when every epoch ran, else a sentence saying why training stopped."""

    stop_reason: str | None = None

    def column(self, key):
        return [r.get(key) for r in self]


def fit(model, X, y, optimizer=None, epochs: int = 1, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
        validation_data=None, verbose=None, lr_schedule=None, checkpoint: str | None = None) -> History:
    """``Model.fit``: see its docstring."""
    X = model._check_x(X, "fit")
    y = model._check_y(y, X.shape[0], "fit")
    if validation_data is not None:
        Xv, yv = validation_data
        Xv = model._check_x(Xv, "fit validation_data")
        yv = model._check_y(yv, Xv.shape[0], "fit validation_data")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    check_batch_size("fit", batch_size)
    optimizer = model._optimizer(optimizer)
    X = X.astype(model.dtype, copy=False)  # cast once, not per batch
    n = X.shape[0]
    if model._batch_statistics and (n < 2 or batch_size < 2):
        raise DataError(f"fit: batch norm needs at least 2 examples per batch (got {n} examples, "
                        f"batch_size {batch_size})")
    bar = Progress(verbose)
    history = History()
    final = model.epoch + int(epochs)
    for _ in range(int(epochs)):
        ep = model.epoch + 1
        order = np.random.default_rng([seed, ep]).permutation(n) if shuffle else np.arange(n)
        bounds = batch_bounds(n, batch_size, merge_single=model._batch_statistics)
        t0, losses = time.perf_counter(), []
        for t, (a, b) in enumerate(bounds, start=1):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(ep, model.step + 1))
            idx = order[a:b]
            try:
                losses.append(model._step(X[idx], y[idx], optimizer))
            except TrainingDiverged as e:
                history.stop_reason = (f"stopped early at epoch {ep}, step {t} of {len(bounds)} "
                                       f"(global step {model.step + 1}): {e}")
                bar.close()
                bar.line(history.stop_reason)
                return history
            bar.update(ep, final, t, len(bounds), losses[-1])
        rec = {"epoch": ep, "loss": float(np.mean(losses)), "steps": len(bounds),
               "lr": float(getattr(optimizer, "lr", float("nan"))), "seconds": time.perf_counter() - t0}
        if validation_data is not None:
            for k, v in model._evaluate(Xv, yv).items():
                rec[f"val_{k}"] = v
        model.epoch = ep
        history.append(rec)
        bar.close()
        bar.line(format_record(rec))
        if checkpoint:
            model.save(checkpoint)
    return history


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
    if "val_loss" in rec:
        parts.append(f"val_loss {rec['val_loss']:.4f}")
    if "val_accuracy" in rec:
        parts.append(f"val_accuracy {rec['val_accuracy']:.4f}")
    parts.append(f"{rec['seconds']:.2f}s")
    return "  ".join(parts)


class Progress:
    """A one-line progress bar on a terminal (stderr); lines per epoch otherwise; nothing if quiet."""

    def __init__(self, verbose, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = verbose is False or verbose == 0
        self.bar = not self.quiet and _isatty(self.stream)
        self.open = False
        self.last = 0.0

    def update(self, epoch, epochs, t, T, loss):
        now = time.perf_counter()
        if not self.bar or (t < T and now - self.last < 0.1):  # redraw at most 10 times a second
            return
        self.last = now
        width = 24
        done = int(width * t / T)
        self.stream.write(f"\repoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] {t}/{T} loss {loss:.4f}")
        self.stream.flush()
        self.open = True

    def close(self):
        if self.open:
            self.stream.write("\r" + " " * 72 + "\r")
            self.open = False

    def line(self, text):
        if not self.quiet:
            print(text, file=self.stream, flush=True)


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
