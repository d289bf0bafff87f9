"""Small built-in and user data sets, samples by rows (as scikit-learn and PyTorch).

``X`` is float64 ``(n, features)`` and ``y`` int64 ``(n,)`` class labels. The compiler's layout is
``(features, m)``: a mini-batch is transposed once when it is fed (see docs/ir.md).

* ``load_digits()``: the 8x8 handwritten digits shipped in ``bngraph/data/digits.npz``
  (1797 samples, 64 pixels in 0..16 scaled to [0, 1], 10 classes; UCI, CC BY 4.0: see
  ``bngraph/data/DIGITS_LICENSE.txt``). No scikit-learn needed.
* ``load_npz(path)``: a user file with arrays ``X`` and ``y`` (and optionally ``X_test``,
  ``y_test``); every problem is a :class:`DatasetError` whose one-line message names the key/row.
* ``load_dataset("digits" | "path/to/file.npz")``.

Splits are stratified (each class keeps its share in the test set) and seeded: the same
``seed`` always gives the same split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .datacheck import check_seed
from .fileio import NpzError, NpzTooLarge, read_npz


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names the file, the key and the row."""


@dataclass(repr=False)
class Dataset:
    """Train and test splits, samples by rows: X float64 (n, features), y int64 (n,) in [0, num_classes)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        """Columns of X: the features per example."""
        return self.X_train.shape[1]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}: train X{self.X_train.shape}, test X{self.X_test.shape}, "
                f"{self.num_features} features, {self.num_classes} classes)")


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _check_fraction(test_fraction) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)) \
            or not 0 <= test_fraction < 1:
        raise DatasetError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _check_seed(seed) -> int:
    try:
        return check_seed("dataset split", seed)
    except ValueError as e:
        raise DatasetError(str(e)) from None


def stratified_split(y: np.ndarray, test_fraction: float, seed=0) -> tuple:
    """(train indices, test indices): from each class, round(test_fraction * its count) samples go to
    the test set, chosen by a seeded permutation; both index arrays are shuffled (not class-sorted)."""
    test_fraction = _check_fraction(test_fraction)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        is_test[members[: int(round(test_fraction * len(members)))]] = True
    return rng.permutation(np.flatnonzero(~is_test)), rng.permutation(np.flatnonzero(is_test))


# --------------------------------------------------------------------------------------------
# Validation: one clear line per problem
# --------------------------------------------------------------------------------------------


def _check_X(where: str, key: str, X: np.ndarray) -> np.ndarray:
    if X.ndim != 2:
        raise DatasetError(f"{where}: {key} must be 2-D (samples, features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {key} must hold numbers, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DatasetError(f"{where}: {key} is empty, shape {X.shape}")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: {key} row {row} column {col} is {X[row, col]} "
                           f"({int(bad.any(axis=1).sum())} rows with NaN/inf); expected finite numbers")
    return X


def _check_y(where: str, key: str, y: np.ndarray, x_key: str, n: int) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        hint = "; convert float labels with y.astype(int)" if y.ndim == 1 and y.dtype.kind == "f" else ""
        raise DatasetError(f"{where}: {key} must be a 1-D array of integer class labels, "
                           f"got dtype {y.dtype} shape {y.shape}{hint}")
    if len(y) != n:
        raise DatasetError(f"{where}: {x_key} has {n} rows but {key} has {len(y)} labels; expected one label per row")
    if y.dtype.kind == "i" and (y < 0).any():
        row = int(np.argmax(y < 0))
        raise DatasetError(f"{where}: {key} row {row} is {y[row]}; labels must be integers >= 0")
    if y.dtype.kind == "u" and len(y) and y.max() > np.iinfo(np.int64).max:  # int64 would wrap it negative
        row = int(np.argmax(y))
        raise DatasetError(f"{where}: {key} row {row} is {int(y[row])}: labels are class indices 0..C-1, and this "
                           f"one is beyond any int64 (is this column an ID?)")
    return y.astype(np.int64)


def _read_npz(path, dtype=None) -> dict:
    """The arrays of ``path`` (X, y and, when present, X_test, y_test), checked and converted.
    With ``dtype`` (the model's, e.g. float32), X must also be finite in it."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise DatasetError(f"{where}: no such file (expected a .npz with arrays X and y)")
    try:
        found = read_npz(where)
    except NpzError as e:
        if str(e).startswith("is a single .npy"):
            raise DatasetError(f"{where}: is a single .npy array, expected a .npz archive with arrays X and y") \
                from None
        raise DatasetError(f"{where}: {e}" if e.key or isinstance(e, NpzTooLarge) else
                           f"{where}: cannot read as .npz: {e}") from None
    keys = set(found)
    for k in ("X", "y"):
        if k not in keys:
            raise DatasetError(f"{where}: missing key {k!r} (found keys: {', '.join(sorted(keys)) or 'none'})")
    if ("X_test" in keys) != ("y_test" in keys):
        have, missing = ("X_test", "y_test") if "X_test" in keys else ("y_test", "X_test")
        raise DatasetError(f"{where}: key {have!r} given without {missing!r}")
    arrays = {k: found[k] for k in ("X", "y", "X_test", "y_test") if k in keys}
    arrays["X"] = _check_X(where, "X", arrays["X"])
    arrays["y"] = _check_y(where, "y", arrays["y"], "X", len(arrays["X"]))
    if "X_test" in arrays:
        arrays["X_test"] = _check_X(where, "X_test", arrays["X_test"])
        if arrays["X_test"].shape[1] != arrays["X"].shape[1]:
            raise DatasetError(f"{where}: X_test has {arrays['X_test'].shape[1]} features but X has "
                               f"{arrays['X'].shape[1]}; expected the same number")
        arrays["y_test"] = _check_y(where, "y_test", arrays["y_test"], "X_test", len(arrays["X_test"]))
    if dtype is not None:
        for k in ("X", "X_test"):
            if k in arrays:
                _check_fits(where, k, arrays[k], dtype)
    _check_classes(where, arrays)
    return arrays


def _check_fits(where: str, key: str, X: np.ndarray, dtype):
    """Every value of ``X`` is finite in ``dtype`` (the model's): a finite float64 can overflow float32."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(X.astype(dtype))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: {key} row {row} column {col} is {X[row, col].item()!r}, which overflows "
                           f"{dtype.name} (the model's dtype; its largest value is {np.finfo(dtype).max:.4g})")


def _check_classes(where: str, arrays: dict):
    """Labels are class indices 0..C-1 and the model gets C outputs: a label far beyond the number
    of examples (a typo, an ID column) would size the model absurdly. Refused, naming the row."""
    n = sum(len(arrays[k]) for k in ("y", "y_test") if k in arrays)
    for k in ("y", "y_test"):
        y = arrays.get(k)
        if y is not None and len(y) and int(y.max()) >= n:
            row = int(np.argmax(y))
            raise DatasetError(f"{where}: {k} row {row} is {int(y[row])}: labels are class indices 0..C-1, and "
                               f"{int(y[row]) + 1} classes for {n} examples leaves most classes without one "
                               f"(is this column an ID?)")


def _check_split(where: str, y, train, test, test_fraction):
    """Neither split empty, and every class left in the training split: else a DatasetError
    saying which and why (``round(test_fraction x count)`` examples of each class go to test)."""
    f = float(test_fraction)
    if f == 0:
        raise DatasetError(f"{where}: test_fraction 0 leaves the test split empty; expected a share in (0, 1), e.g. "
                           f"the default 0.2 (or give X_test and y_test in the file)")
    counts = np.bincount(y)
    if len(test) == 0:
        largest = int(counts.max())
        raise DatasetError(f"{where}: test_fraction {f:g} leaves the test split empty: the "
                           f"largest class has {largest} example{'s' if largest != 1 else ''} and "
                           f"round({f:g} x {largest}) = 0; add examples, raise test_fraction, or give "
                           f"X_test and y_test in the file")
    if len(train) == 0:
        smallest = int(counts[counts > 0].min())
        raise DatasetError(f"{where}: test_fraction {f:g} leaves the training split empty: the smallest class has "
                           f"{smallest} example{'s' if smallest != 1 else ''} and round({f:g} x {smallest}) = "
                           f"{smallest} of them go to the test split; lower test_fraction")
    left_out = np.setdiff1d(np.flatnonzero(counts), np.unique(y[train]))
    if len(left_out):
        c = int(left_out[0])
        k = int(counts[c])
        raise DatasetError(f"{where}: test_fraction {f:g} leaves class {c} out of the training split: its "
                           f"{k} example{'s go' if k != 1 else ' goes'} to the test split (round({f:g} x {k}) = {k}); "
                           f"lower test_fraction, add examples of it, or give X_test and y_test in the file")


def _make(name: str, arrays: dict, test_fraction, seed, where: str | None = None) -> Dataset:
    X, y = arrays["X"], arrays["y"]
    if "X_test" in arrays:  # the file fixes the split; test_fraction and seed are not used
        X_train, y_train, X_test, y_test = X, y, arrays["X_test"], arrays["y_test"]
        _check_fraction(test_fraction)
    else:
        train, test = stratified_split(y, test_fraction, seed)
        _check_split(where or name, y, train, test, test_fraction)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    return Dataset(name, X_train, y_train, X_test, y_test, num_classes)


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def load_npz(path, test_fraction: float = 0.2, seed=0, dtype=None) -> Dataset:
    """A data set from a .npz file with ``X`` (n, features) numbers and ``y`` (n,) integer labels >= 0.

    With ``X_test`` and ``y_test`` in the file they are the test split; otherwise a stratified,
    seeded split keeps ``test_fraction`` of each class for testing. X is converted to float64, y to
    int64; ``num_classes = max label + 1`` (at most the number of examples). ``dtype``: the model's
    (e.g. ``"float32"``): X must be finite in it too. Problems raise :class:`DatasetError`: an
    empty, damaged or non-.npz file, a missing key, a wrong shape, NaN/inf, negative labels, an
    empty test split.
    """
    _check_seed(seed)
    arrays = _read_npz(path, dtype)
    return _make(os.path.splitext(os.path.basename(os.fspath(path)))[0], arrays, test_fraction, seed,
                 where=os.fspath(path))


def load_digits(test_fraction: float = 0.2, seed=0, dtype=None) -> Dataset:
    """The 8x8 handwritten digits: 1797 samples x 64 pixels scaled from 0..16 to [0, 1], 10 classes.

    The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998, CC BY 4.0),
    as scikit-learn ships it; stored in ``bngraph/data/digits.npz``.
    """
    _check_seed(seed)
    with resources.as_file(resources.files("bngraph.data").joinpath("digits.npz")) as path:
        arrays = _read_npz(path, dtype)
    arrays["X"] = arrays["X"] / 16.0
    return _make("digits", arrays, test_fraction, seed)


def load_dataset(name_or_path, test_fraction: float = 0.2, seed=0, dtype=None) -> Dataset:
    """``"digits"`` (the built-in set) or a path to a ``.npz`` file, split into train and test.

    ``test_fraction``: the share of each class kept for testing (stratified) when the file has no
    ``X_test``/``y_test``; ``seed``: the split's seed; ``dtype``: the model's dtype (e.g.
    ``"float32"``), in which X must be finite too."""
    kw = {"test_fraction": test_fraction, "seed": seed, "dtype": dtype}
    if isinstance(name_or_path, str) and name_or_path == "digits":
        return load_digits(**kw)
    if isinstance(name_or_path, (str, os.PathLike)) and os.fspath(name_or_path).endswith(".npz"):
        return load_npz(name_or_path, **kw)
    raise DatasetError(f"unknown data set {name_or_path!r}: expected 'digits' or a path ending in .npz")
