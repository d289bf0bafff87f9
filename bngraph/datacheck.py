"""Checks on data and arguments at the public API, shared by the model, the training loop, the
reference interpreter and the command line.

Data at the API is samples-by-rows, ``X: (m, n_features)``; every message names what is wrong
and the first bad row. Values are checked *as the model will see them*: cast to the model's dtype
first, so a finite float64 that overflows float32 is refused like a NaN, naming its row.
"""
from __future__ import annotations

import numbers
import os

import numpy as np

from .errors import DataError, ModelSizeError


def _cast(A, dtype):
    """``A`` in ``dtype`` (no copy when it already is); overflow becomes inf, checked by the caller."""
    if dtype is None or A.dtype == dtype:
        return A
    with np.errstate(over="ignore", invalid="ignore"):
        return A.astype(dtype)


def _first_bad_row(A) -> int | None:
    bad = ~np.isfinite(A).reshape(A.shape[0], -1).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _nonfinite_message(orig, cast, row, dtype, what) -> str:
    """Why row ``row`` is refused: NaN/inf as given, or a finite value ``dtype`` cannot hold."""
    given = orig[row].reshape(-1)
    if np.issubdtype(orig.dtype, np.inexact) and not np.isfinite(given).all():
        n = int((~np.isfinite(orig.reshape(orig.shape[0], -1)).all(axis=1)).sum())
        return f"{what} row {row} contains NaN or inf ({n} bad rows)"
    col = int(np.argmax(~np.isfinite(cast[row].reshape(-1))))
    return (f"{what} row {row} holds {given[col].item()!r}, which overflows {np.dtype(dtype).name} (the model's dtype; "
            f"its largest value is {np.finfo(dtype).max:.4g})")


def check_x(X, n_features, where: str, input_name: str = "x", dtype=None) -> np.ndarray:
    """A real ``(batch, n_features)`` array (``n_features`` an int), or ``(batch, *n_features)``
    for a spatial input (``n_features`` its shape per example, (C, L) or (C, H, W)), finite in
    ``dtype`` (when given, X is returned cast to it), or a DataError naming the bad row."""
    X = np.asarray(X)
    shape = (n_features,) if isinstance(n_features, numbers.Integral) else tuple(n_features)
    want = ", ".join(str(d) for d in ("batch", *shape))
    if X.ndim == len(shape) and X.shape == shape:
        raise DataError(f"{where}: X must be {len(shape) + 1}-D ({want}); got one example of shape "
                        f"{X.shape} (use X[None] for a batch of one)")
    if X.ndim != len(shape) + 1:
        raise DataError(f"{where}: X expected shape ({want}), got {X.shape}")
    if X.shape[1:] != shape:
        got = f"{X.shape[1]} features" if len(shape) == 1 else f"examples of shape {X.shape[1:]}"
        raise DataError(f"{where}: X expected shape ({want}) for input %{input_name}, got {X.shape} ({got})")
    if X.shape[0] == 0:
        raise DataError(f"{where}: X is empty")
    return _real_and_finite(X, dtype, where, "X")


def check_labels(y, classes: int | None, where: str, what: str = "label", at: str = "row", cls=DataError,
                 allow_float: bool = True, ignore_index: int | None = None) -> np.ndarray:
    """Integer class indices in ``[0, classes)`` (``classes`` None: the data set reader, which does
    not know the model: ``>= 0``), or ``ignore_index`` (a class loss's label that counts for nothing,
    e.g. -100: never used as an index); integral floats are accepted and converted when
    ``allow_float`` (the public API and the data set reader), refused otherwise (the reference
    interpreter, which takes the compiler's i64 values as they are). ``cls`` is the error raised;
    ``at`` names the position. A fractional label is refused, never rounded: it names the losses
    that take real-valued targets instead."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        floating = np.issubdtype(y.dtype, np.floating)
        if allow_float and floating and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = _integral_floats(y, where, what, at, cls)
        else:
            bad = int(np.argmax(~np.isfinite(y) | (y != np.round(y)))) if floating else 0
            hint = ("; real-valued targets need a model whose loss takes them: mse (any values) or sigmoid_bce "
                    "(probabilities in [0, 1])" if allow_float and floating else "")
            raise cls(f"{where}: {what}s must be integer class indices, got dtype {y.dtype} "
                      f"({at} {bad}: {y.reshape(-1)[bad].item()!r}){hint}")
    if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:  # int64 would wrap it negative
        r = int(np.argmax(y.reshape(-1)))
        raise cls(f"{where}: {what} {int(y.reshape(-1)[r])} at {at} {r} is beyond any int64: {what}s are class "
                  f"indices 0..C-1 (is this column an ID?)")
    bad = (y < 0) if classes is None else (y < 0) | (y >= classes)
    if ignore_index is not None:
        bad &= y != ignore_index
    if bad.any():
        r = int(np.argmax(bad.reshape(-1)))
        also = "" if ignore_index is None else f" or the loss's ignore_index {ignore_index}"
        expected = f"{what} >= 0" if classes is None else f"0 <= {what} < {classes}"
        raise cls(f"{where}: {what} {y.reshape(-1)[r]} at {at} {r} is out of range: expected {expected}{also}")
    return y.astype(np.int64, copy=False)


def _integral_floats(y, where, what, at, cls) -> np.ndarray:
    """Whole-number floats as int64, refusing one beyond int64 (the cast would wrap it)."""
    big = np.abs(y) >= 2.0 ** 63
    if big.any():
        r = int(np.argmax(big.reshape(-1)))
        raise cls(f"{where}: {what} {y.reshape(-1)[r].item()!r} at {at} {r} is beyond any int64: {what}s are class "
                  f"indices 0..C-1 (is this column an ID?)")
    return y.astype(np.int64)


def check_targets(y, m: int, where: str, loss: str, *, classes: int | None = None, n_outputs: int | None = None,
                  dtype=None, ignore_index: int | None = None, cls=DataError, what: str | None = None) -> np.ndarray:
    """The one check of a loss's targets, shared by ``fit`` (and every model entry point, through
    :func:`check_y`) and the data set reader (:mod:`bngraph.datasets`), so that they accept the
    same data. ``loss`` is the loss op: a class loss (``OPS[loss].class_labels``) takes class
    indices ``(m,)`` (see :func:`check_labels`); any other takes real-valued targets ``(m,)`` or
    ``(m, k)``, finite in ``dtype`` (returned cast to it) and inside the loss's ``target_range``
    (sigmoid_bce: [0, 1]). ``classes``/``n_outputs``: the model's, where known (None: the reader,
    before there is a model: any width, labels >= 0). ``what`` names the array in messages
    (default "labels" or "targets"; the reader says "y")."""
    from .ops import OPS

    op = OPS[loss]
    y = np.asarray(y)
    if op.class_labels:
        what = what or "labels"
        if y.ndim != 1 or y.shape[0] != m:
            hint = (" (real-valued targets of several columns need a model whose loss is mse or sigmoid_bce)"
                    if y.ndim == 2 and y.shape[0] == m else "")
            raise cls(f"{where}: {what} expected shape ({m},) (one class index per row of X), got {y.shape}{hint}")
        return check_labels(y, classes, where if what == "labels" else f"{where}: {what}", cls=cls,
                            ignore_index=ignore_index)
    what = what or "targets"
    if n_outputs is None:  # the reader: any width
        if y.ndim not in (1, 2) or y.shape[0] != m or (y.ndim == 2 and y.shape[1] == 0):
            raise cls(f"{where}: {what} expected shape ({m},) or ({m}, outputs) (one row of targets per row of X), "
                      f"got {y.shape}")
    else:
        if y.ndim == 1 and n_outputs == 1:
            y = y[:, None]
        if y.shape != (m, n_outputs):
            raise cls(f"{where}: {what} expected shape ({m}, {n_outputs}), got {y.shape}")
    yc = _real_and_finite(y, dtype, where, what, cls)
    if op.target_range is not None:
        lo, hi = op.target_range
        rows = yc.reshape(yc.shape[0], -1)
        outside = (rows < lo) | (rows > hi)
        bad = outside.any(axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            v = y.reshape(y.shape[0], -1)[r][outside[r]][0].item()
            raise cls(f"{where}: {what} row {r} holds {v!r}, outside [{lo:g}, {hi:g}]: {loss} targets are "
                      f"probabilities ({int(bad.sum())} bad rows); class labels need softmax_cross_entropy")
    return yc


def check_y(y, m: int, where: str, classes: int | None, n_outputs: int, dtype=None, target_range=None,
            loss: str = "mse", ignore_index: int | None = None) -> np.ndarray:
    """A model's targets (``model.inputs.check_y``): :func:`check_targets` with the model's sizes.
    Labels ``(m,)`` for a classification loss (``classes`` set), else targets ``(m, n_outputs)``,
    finite in ``dtype`` (returned cast to it) and inside the loss's domain (``target_range`` is
    the loss's own, ``OPS[loss].target_range``, kept in the signature for its callers)."""
    return check_targets(y, m, where, loss, classes=classes, n_outputs=n_outputs, dtype=dtype,
                         ignore_index=ignore_index)


def check_assignments(values: dict, shapes: dict, where: str, what: str, dtype, nonnegative=(),
                      hint=lambda name: "") -> dict:
    """``values`` (name -> host data) as arrays in ``dtype``, for ``set_params``/``set_state`` and a
    checkpoint's restore: every name known (``shapes``: name -> shape; ``hint(name)`` explains a
    missing one), every shape right, real numbers, finite *in dtype* (1e39 overflows float32), and
    >= 0 for the names in ``nonnegative`` (a running variance: a negative one makes eval-mode
    outputs NaN). KeyError for a name, ValueError for the rest; all checked before anything is
    written (the caller writes)."""
    out = {}
    for k, v in values.items():
        if k not in shapes:
            raise KeyError(f"{where}: {k!r} is not a {what} of this model{hint(k)}; expected one of "
                           f"{', '.join(shapes)}")
        a = np.asarray(v)  # user data, on the host
        if a.shape != tuple(shapes[k]):
            raise ValueError(f"{where}: {k} expected shape {tuple(shapes[k])}, got {a.shape}")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{where}: {k} must be real numbers, got dtype {a.dtype}")
        c = _cast(a, np.dtype(dtype))
        if not np.all(np.isfinite(c)):
            if np.all(np.isfinite(a)):
                big = a.reshape(-1)[np.argmax(~np.isfinite(c.reshape(-1)))].item()
                raise ValueError(f"{where}: {k} holds {big!r}, which overflows {np.dtype(dtype).name} (the model's "
                                 f"dtype)")
            raise ValueError(f"{where}: {k} contains NaN or inf")
        if k in nonnegative and (c < 0).any():
            i = int(np.argmax(c.reshape(-1) < 0))
            raise ValueError(f"{where}: {k} must be >= 0 (a variance), got {a.reshape(-1)[i].item()!r} at index {i}")
        out[k] = c
    return out


def check_int(where: str, name: str, value, minimum: int = 0) -> int:
    """``value`` as a Python int >= ``minimum`` (NumPy integers welcome; bools and floats are not)."""
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{where}: {name} must be {kind}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be {kind}, got {int(value)}")
    return int(value)


def check_batch_size(where, batch_size) -> int:
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_seed(where, seed) -> int:
    """A seed for NumPy's generators: a non-negative integer (they refuse negative ones)."""
    return check_int(where, "seed", seed, 0)


# ---- sizes: refuse what cannot be allocated, before trying ------------------------------------


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**40:,.0f} TiB" if n >= 2**40 else f"{n / 2**30:,.1f} GiB"


def check_model_size(graph, itemsize: int, limit: int | None = None):
    """Refuse a graph whose params and their gradients alone (2 arrays per param, ``itemsize``
    bytes each) would not fit in memory: a clear line instead of a failed huge allocation."""
    limit = memory_bytes() if limit is None else limit
    if limit is None:
        return
    n = sum(int(np.prod(v.type.shape, dtype=object)) for v in (*graph.params, *graph.state))
    need = 2 * n * itemsize
    if need > limit:
        widths = ", ".join(f"{v.name} {'x'.join(str(d) for d in v.type.shape)}"
                           for v in sorted(graph.params, key=lambda v: -int(np.prod(v.type.shape, dtype=object)))[:2])
        raise ModelSizeError(f"graph {graph.name} has {n:,} parameters ({widths}, ...): {_gib(need)} for them and "
                             f"their gradients, more than this machine's {_gib(limit)} of memory")


def _real_and_finite(a, dtype, where: str, what: str, cls=DataError) -> np.ndarray:
    """``a`` as the model will see it (cast to ``dtype``), refused unless real and finite there:
    the message names the first bad row and, for a value that overflows the dtype, the value."""
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise cls(f"{where}: {what} must be real numbers, got dtype {a.dtype}")
    ac = _cast(a, dtype)
    r = _first_bad_row(ac) if ac.dtype.kind == "f" else None
    if r is not None:
        raise cls(f"{where}: {_nonfinite_message(a, ac, r, ac.dtype, what)}")
    return ac
