"""Checks on data at the public API, shared by the model and the reference interpreter.

Data at the API is samples-by-rows, ``X: (m, n_features)``; every message names what is wrong
and the first bad row.
"""
from __future__ import annotations

import numpy as np

from .errors import DataError


def check_x(X, n_features: int, where: str, input_name: str = "x") -> np.ndarray:
    """A 2-D, real, finite ``(batch, n_features)`` array, or a DataError naming the bad row."""
    X = np.asarray(X)
    if X.ndim == 1 and n_features == X.shape[0]:
        raise DataError(f"{where}: X must be 2-D (batch, {n_features}); got one example of shape "
                        f"{X.shape} (use X[None, :] for a batch of one)")
    if X.ndim != 2:
        raise DataError(f"{where}: X expected shape (batch, {n_features}), got {X.shape}")
    if X.shape[1] != n_features:
        raise DataError(f"{where}: X expected shape (batch, {n_features}) for input %{input_name}, "
                        f"got {X.shape} ({X.shape[1]} features)")
    if X.shape[0] == 0:
        raise DataError(f"{where}: X is empty")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"{where}: X must be real numbers, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{where}: X row {r} contains NaN or inf ({int(bad.sum())} bad rows)")
    return X


def check_labels(y, classes: int, where: str, what: str = "label", at: str = "row", cls=DataError,
                 allow_float: bool = True) -> np.ndarray:
    """Integer class indices in ``[0, classes)``; integral floats are accepted and converted when
    ``allow_float`` (the public API), refused otherwise (the reference interpreter, which takes the
    compiler's i64 values as they are). ``cls`` is the error raised; ``at`` names the position."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        if (allow_float and np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
                and np.all(y == np.round(y))):
            y = y.astype(np.int64)
        else:
            bad = int(np.argmax(~np.isfinite(y) | (y != np.round(y)))) if np.issubdtype(y.dtype, np.floating) else 0
            raise cls(f"{where}: {what}s must be integer class indices, got dtype {y.dtype} "
                      f"({at} {bad}: {y.reshape(-1)[bad].item()!r})")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        r = int(np.argmax(bad.reshape(-1)))
        raise cls(f"{where}: {what} {y.reshape(-1)[r]} at {at} {r} is out of range: expected 0 <= {what} < {classes}")
    return y.astype(np.int64, copy=False)


def check_y(y, m: int, where: str, classes: int | None, n_outputs: int) -> np.ndarray:
    """Labels ``(m,)`` for a classification loss (``classes`` set), else finite targets ``(m, n_outputs)``."""
    y = np.asarray(y)
    if classes is not None:
        if y.ndim != 1 or y.shape[0] != m:
            raise DataError(f"{where}: labels expected shape ({m},) (one class index per row of X), got {y.shape}")
        return check_labels(y, classes, where)
    if y.ndim == 1 and n_outputs == 1:
        y = y[:, None]
    if y.shape != (m, n_outputs):
        raise DataError(f"{where}: targets expected shape ({m}, {n_outputs}), got {y.shape}")
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: targets row {int(np.argmax(bad))} contains NaN or inf")
    return y


def check_batch_size(where, batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
