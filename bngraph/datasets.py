"""Small built-in and user data sets, samples by rows (as scikit-learn and PyTorch).

``X`` is float64 ``(n, features)``, or ``(n, C, L)`` / ``(n, C, H, W)`` images for a convolutional
model (channels first, as PyTorch); ``y`` is read as the model's loss takes it (``loss=``, as
``fit`` checks it: one checker, :func:`bngraph.datacheck.check_targets`): int64 ``(n,)`` class
labels for a class loss (the default), float64 ``(n,)`` or ``(n, k)`` targets for ``mse``, and the
same in [0, 1] for ``sigmoid_bce``. The compiler's layout is ``(features, m)``: a mini-batch is
transposed once when it is fed (see docs/ir.md).

* ``load_digits()``: the 8x8 handwritten digits shipped in ``bngraph/data/digits.npz``
  (1797 samples, 64 pixels in 0..16 scaled to [0, 1], 10 classes; UCI, CC BY 4.0: see
  ``bngraph/data/DIGITS_LICENSE.txt``). No scikit-learn needed.
* ``load_npz(path)``: a user file with arrays ``X`` and ``y`` (and optionally ``X_test``,
  ``y_test``); every problem is a :class:`DatasetError` whose one-line message names the key/row.
* ``load_dataset("digits" | "path/to/file.npz")``.
* ``Dataset.reshaped(shape)``: the same data with each example reshaped to a model's input shape,
  e.g. the digits' 64 pixels as ``(1, 8, 8)`` images for a convolutional model (``bngraph train``
  does this itself when the sizes match).

Splits are seeded (the same ``seed`` always gives the same split) and stratified where the targets
have classes (each class keeps its share in the test set; binary targets by their side of 0.5);
real-valued targets are split at random.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .datacheck import check_seed, check_targets
from .fileio import NpzError, NpzTooLarge, read_npz


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names the file, the key and the row."""


# What a loss's targets are: "classes" (int64 labels), "probabilities" (floats in [0, 1]) or
# "values" (any finite floats).
TARGETS = ("classes", "probabilities", "values")


def target_kind(loss: str | None) -> str:
    """The kind of targets ``loss`` (a loss op's name; None: a class loss) takes: one of :data:`TARGETS`."""
    from .ops import LOSS_OPS, OPS

    if loss is None:
        return "classes"
    if loss not in LOSS_OPS:
        raise DatasetError(f"loss must be None or one of {', '.join(LOSS_OPS)}, got {loss!r}")
    op = OPS[loss]
    return "classes" if op.class_labels else "probabilities" if op.target_range == (0.0, 1.0) else "values"


@dataclass(repr=False)
class Dataset:
    """Train and test splits, samples by rows: X float64 (n, features), or (n, C, L) / (n, C, H, W)
    images; y int64 (n,) in [0, num_classes) (``targets == "classes"``), else float64 (n,) or
    (n, outputs)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None  # None: real-valued targets
    targets: str = "classes"  # see TARGETS

    @property
    def num_features(self) -> int:
        """Columns of X: the features per example (of an image: channels x positions)."""
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def example_shape(self) -> tuple:
        """One example's shape: ``(features,)``, or an image's ``(C, L)`` / ``(C, H, W)``."""
        return tuple(self.X_train.shape[1:])

    def reshaped(self, shape) -> "Dataset":
        """The same data with each example of X as ``shape`` (an int: flat features; or an image's
        ``(C, L)`` / ``(C, H, W)``, a model's ``n_features``), in row-major order: a flat row of
        C*H*W features becomes the image whose channels, rows and columns it lists, PyTorch's
        ``X.reshape(n, C, H, W)`` (and an image becomes its flat row). ``self`` when the shape is
        already ``shape``; a :class:`DatasetError` when the sizes differ or both are images of
        different shapes (no silent re-layout of one image shape into another)."""
        want = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
        have = self.example_shape
        if want == have:
            return self
        if int(np.prod(want)) != self.num_features or (len(want) > 1 and len(have) > 1):
            raise DatasetError(f"dataset {self.name}: examples of shape {have} ({self.num_features} values) cannot be "
                               f"read as {shape_words(want)}; expected {int(np.prod(want))} features per example"
                               f"{'' if len(want) == 1 else f' or images of shape {want}'}")
        X_train, X_test = (X.reshape(len(X), *want) for X in (self.X_train, self.X_test))
        return Dataset(self.name, X_train, self.y_train, X_test, self.y_test, self.num_classes, self.targets)

    @property
    def num_outputs(self) -> int:
        """What a model of this data outputs: the classes, or the columns of the targets."""
        if self.targets == "classes":
            return self.num_classes
        return 1 if self.y_train.ndim == 1 else self.y_train.shape[1]

    def __repr__(self) -> str:
        what = (f"{self.num_classes} classes" if self.targets == "classes" else
                f"{self.num_outputs} target{'s' if self.num_outputs != 1 else ''} "
                f"({'in [0, 1]' if self.targets == 'probabilities' else 'real-valued'})")
        per = (f"{self.num_features} features" if len(self.example_shape) == 1 else
               f"{'x'.join(map(str, self.example_shape))} images")
        return f"Dataset({self.name!r}: train X{self.X_train.shape}, test X{self.X_test.shape}, {per}, {what})"


def shape_words(shape) -> str:
    """'64 features' or 'images of shape (1, 8, 8)'."""
    return f"{shape[0]} features" if len(shape) == 1 else f"images of shape {tuple(shape)}"


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


def strata(y: np.ndarray, targets: str = "classes") -> np.ndarray | None:
    """What a split keeps the shares of: the class labels, a single column of binary targets'
    side of 0.5, or None (real-valued or several columns: a plain seeded split)."""
    if targets == "classes":
        return y
    if targets == "probabilities" and (y.ndim == 1 or y.shape[1] == 1):
        return (y.reshape(-1) >= 0.5).astype(np.int64)
    return None


def split_rows(y: np.ndarray, fraction: float, seed=0, targets: str = "classes") -> tuple:
    """(kept indices, held-out indices) for a test or validation split of targets ``y`` of kind
    ``targets``: :func:`stratified_split` of their :func:`strata`, else round(fraction * n) rows
    chosen by a seeded permutation."""
    groups = strata(y, targets)
    if groups is None:
        groups = np.zeros(len(y), dtype=np.int64)  # one stratum: a seeded random split
    return stratified_split(groups, fraction, seed)


# --------------------------------------------------------------------------------------------
# Validation: one clear line per problem
# --------------------------------------------------------------------------------------------


def _check_X(where: str, key: str, X: np.ndarray) -> np.ndarray:
    if X.ndim not in (2, 3, 4):
        raise DatasetError(f"{where}: {key} must be 2-D (samples, features), got shape {X.shape}; or images: "
                           f"(samples, channels, length) / (samples, channels, height, width)")
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {key} must hold numbers, got dtype {X.dtype}")
    if 0 in X.shape:
        raise DatasetError(f"{where}: {key} is empty, shape {X.shape}")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f"column {first[1]}" if X.ndim == 2 else f"at {first[1:]} (channel, position)"
        raise DatasetError(f"{where}: {key} row {first[0]} {at} is {X[first]} "
                           f"({int(bad.reshape(len(X), -1).any(axis=1).sum())} rows with NaN/inf); expected finite numbers")
    return X


def _check_y(where: str, key: str, y: np.ndarray, x_key: str, n: int, loss: str | None, dtype,
             ignore_index=None) -> np.ndarray:
    """``y`` as ``loss`` takes it, checked by the checker ``fit`` uses (one row per row of X first)."""
    if y.ndim == 0 or len(y) != n:
        raise DatasetError(f"{where}: {x_key} has {n} rows but {key} has {len(y) if y.ndim else 'no'} "
                           f"{'labels' if target_kind(loss) == 'classes' else 'rows'}; expected one per row")
    checked = check_targets(y, n, where, loss or "softmax_cross_entropy", dtype=dtype, ignore_index=ignore_index,
                            cls=DatasetError, what=key)
    return checked.astype(np.int64 if target_kind(loss) == "classes" else np.float64)


def _read_npz(path, dtype=None, loss=None, ignore_index=None, where=None) -> dict:
    """The arrays of ``path`` (X, y and, when present, X_test, y_test), checked and converted; y as
    ``loss`` takes it. With ``dtype`` (the model's, e.g. float32), X and y must also be finite in it.
    ``where`` names the file in messages (default: its path)."""
    where = where or os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{where}: no such file (expected a .npz with arrays X and y)")
    try:
        found = read_npz(path)
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
    arrays["y"] = _check_y(where, "y", arrays["y"], "X", len(arrays["X"]), loss, dtype, ignore_index)
    if "X_test" in arrays:
        arrays["X_test"] = _check_X(where, "X_test", arrays["X_test"])
        test_shape, train_shape = arrays["X_test"].shape[1:], arrays["X"].shape[1:]
        if test_shape != train_shape:
            if len(test_shape) == len(train_shape) == 1:
                raise DatasetError(f"{where}: X_test has {test_shape[0]} features but X has {train_shape[0]}; "
                                   f"expected the same number")
            raise DatasetError(f"{where}: X_test has {shape_words(test_shape)} but X has "
                               f"{shape_words(train_shape)}; expected the same shape per example")
        arrays["y_test"] = _check_y(where, "y_test", arrays["y_test"], "X_test", len(arrays["X_test"]), loss, dtype,
                                    ignore_index)
        if arrays["y_test"].shape[1:] != arrays["y"].shape[1:]:
            raise DatasetError(f"{where}: y_test has shape {arrays['y_test'].shape} but y {arrays['y'].shape}; "
                               f"expected the same number of targets per row")
    if dtype is not None:
        for k in ("X", "X_test"):
            if k in arrays:
                _check_fits(where, k, arrays[k], dtype)
    if target_kind(loss) == "classes":
        _check_classes(where, arrays)
    return arrays


def _check_fits(where: str, key: str, X: np.ndarray, dtype):
    """Every value of ``X`` is finite in ``dtype`` (the model's): a finite float64 can overflow float32."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(X.astype(dtype))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f"column {first[1]}" if X.ndim == 2 else f"at {first[1:]}"
        raise DatasetError(f"{where}: {key} row {first[0]} {at} is {X[first].item()!r}, which overflows "
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


def _check_split(where: str, groups, train, test, test_fraction, targets="classes"):
    """Neither split empty, and every class (stratum) left in the training split: else a DatasetError
    saying which and why (``round(test_fraction x count)`` examples of each go to test)."""
    f = float(test_fraction)
    if f == 0:
        raise DatasetError(f"{where}: test_fraction 0 leaves the test split empty; expected a share in (0, 1), e.g. "
                           f"the default 0.2 (or give X_test and y_test in the file)")
    values, counts = np.unique(groups, return_counts=True)
    noun = _STRATUM[targets] if len(values) > 1 or targets == "classes" else "data set"
    if len(test) == 0:
        largest = int(counts.max())
        raise DatasetError(f"{where}: test_fraction {f:g} leaves the test split empty: the "
                           f"largest {noun} has {largest} example{'s' if largest != 1 else ''} and "
                           f"round({f:g} x {largest}) = 0; add examples, raise test_fraction, or give "
                           f"X_test and y_test in the file")
    if len(train) == 0:
        smallest = int(counts.min())
        raise DatasetError(f"{where}: test_fraction {f:g} leaves the training split empty: the smallest {noun} has "
                           f"{smallest} example{'s' if smallest != 1 else ''} and round({f:g} x {smallest}) = "
                           f"{smallest} of them go to the test split; lower test_fraction")
    left_out = np.setdiff1d(values, np.unique(groups[train]))
    if len(left_out):
        c = int(left_out[0])
        k = int(counts[np.searchsorted(values, c)])
        which = f"class {c}" if targets == "classes" else f"the targets {'>=' if c else '<'} 0.5"
        raise DatasetError(f"{where}: test_fraction {f:g} leaves {which} out of the training split: its "
                           f"{k} example{'s go' if k != 1 else ' goes'} to the test split (round({f:g} x {k}) = {k}); "
                           f"lower test_fraction, add examples of it, or give X_test and y_test in the file")


_STRATUM = {"classes": "class", "probabilities": "group of targets (>= 0.5, < 0.5)", "values": "data set"}


def _make(name: str, arrays: dict, test_fraction, seed, where: str | None = None, targets="classes") -> Dataset:
    X, y = arrays["X"], arrays["y"]
    if "X_test" in arrays:  # the file fixes the split; test_fraction and seed are not used
        X_train, y_train, X_test, y_test = X, y, arrays["X_test"], arrays["y_test"]
        _check_fraction(test_fraction)
    else:
        train, test = split_rows(y, test_fraction, seed, targets)
        groups = strata(y, targets)
        _check_split(where or name, np.zeros(len(y), np.int64) if groups is None else groups, train, test,
                     test_fraction, targets)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    num_classes = None
    if targets == "classes":
        num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    return Dataset(name, X_train, y_train, X_test, y_test, num_classes, targets)


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def load_npz(path, test_fraction: float = 0.2, seed=0, dtype=None, loss=None, ignore_index=None) -> Dataset:
    """A data set from a .npz file with ``X`` (n, features) numbers (or images (n, C, L) / (n, C, H, W))
    and targets ``y`` as ``loss`` takes them.

    ``loss``: the model's loss op (None: a class loss). A class loss (softmax_cross_entropy, nll)
    takes ``y`` (n,) integer labels >= 0 (whole-number floats are accepted, a fraction is refused;
    ``ignore_index``: the loss's label that counts for nothing); ``mse`` real-valued ``y`` (n,) or
    (n, k); ``sigmoid_bce`` the same in [0, 1]. With ``X_test`` and ``y_test`` in the file they are
    the test split; otherwise a seeded split keeps ``test_fraction`` of the rows for testing,
    stratified by class (binary targets: by their side of 0.5). X is converted to float64, labels to
    int64 and targets to float64; ``num_classes = max label + 1`` (at most the number of examples;
    None for targets). ``dtype``: the model's (e.g. ``"float32"``): X and targets must be finite in
    it too. Problems raise :class:`DatasetError`: an empty, damaged or non-.npz file, a missing
    key, a wrong shape, NaN/inf, negative or fractional labels, targets outside the loss's range,
    an empty test split. These are the checks ``fit`` runs (:func:`bngraph.datacheck.check_targets`).
    """
    _check_seed(seed)
    targets = target_kind(loss)
    arrays = _read_npz(path, dtype, loss, ignore_index)
    return _make(os.path.splitext(os.path.basename(os.fspath(path)))[0], arrays, test_fraction, seed,
                 where=os.fspath(path), targets=targets)


def load_digits(test_fraction: float = 0.2, seed=0, dtype=None, loss=None) -> Dataset:
    """The 8x8 handwritten digits: 1797 samples x 64 pixels scaled from 0..16 to [0, 1], 10 classes.

    The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998, CC BY 4.0),
    as scikit-learn ships it; stored in ``bngraph/data/digits.npz``. ``loss``: as for
    :func:`load_npz` (``mse`` reads the digit as a number; ``sigmoid_bce`` refuses labels above 1).
    """
    _check_seed(seed)
    targets = target_kind(loss)
    with resources.as_file(resources.files("bngraph.data").joinpath("digits.npz")) as path:
        arrays = _read_npz(path, dtype, loss, where="digits")
    arrays["X"] = arrays["X"] / 16.0
    return _make("digits", arrays, test_fraction, seed, targets=targets)


def load_dataset(name_or_path, test_fraction: float = 0.2, seed=0, dtype=None, loss=None,
                 ignore_index=None) -> Dataset:
    """``"digits"`` (the built-in set) or a path to a ``.npz`` file, split into train and test.

    ``test_fraction``: the share of the rows kept for testing (stratified by class) when the file
    has no ``X_test``/``y_test``; ``seed``: the split's seed; ``dtype``: the model's dtype (e.g.
    ``"float32"``), in which X and the targets must be finite too; ``loss``: the model's loss op,
    which says how ``y`` is read (None: class labels; see :func:`load_npz`)."""
    kw = {"test_fraction": test_fraction, "seed": seed, "dtype": dtype, "loss": loss}
    if isinstance(name_or_path, str) and name_or_path == "digits":
        return load_digits(**kw)
    if isinstance(name_or_path, (str, os.PathLike)) and os.fspath(name_or_path).endswith(".npz"):
        return load_npz(name_or_path, ignore_index=ignore_index, **kw)
    raise DatasetError(f"unknown data set {name_or_path!r}: expected 'digits' or a path ending in .npz")
