"""bngraph.datasets: the built-in digits, user .npz files, and the errors for bad files."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bngraph import datasets
from bngraph.datasets import Dataset, DatasetError, load_dataset, load_digits, load_npz, stratified_split

DATA = Path(datasets.__file__).parent / "data"

# --------------------------------------------------------------------------------------------
# The built-in digits
# --------------------------------------------------------------------------------------------


def test_digits_file_is_the_uci_test_set():
    with np.load(DATA / "digits.npz") as f:
        assert sorted(f.files) == ["X", "y"]
        X, y = f["X"], f["y"]
    assert X.shape == (1797, 64) and X.dtype == np.uint8 and X.min() == 0 and X.max() == 16
    assert y.shape == (1797,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    license_text = (DATA / "DIGITS_LICENSE.txt").read_text()
    assert "CC BY 4.0" in license_text and "Alpaydin" in license_text and "Kaynak" in license_text


def test_load_digits_shapes_types_and_scaling():
    ds = load_digits()
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10 and ds.num_features == 64
    assert ds.X_train.shape == (1438, 64) and ds.X_test.shape == (359, 64)
    assert ds.y_train.shape == (1438,) and ds.y_test.shape == (359,)
    assert ds.X_train.dtype == ds.X_test.dtype == np.float64
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    X = np.concatenate([ds.X_train, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.all(np.isin(X * 16, np.arange(17)))  # pixel counts 0..16, divided by 16
    assert "digits" in repr(ds) and "10 classes" in repr(ds)


def test_digits_split_is_a_partition_and_stratified():
    ds = load_digits(test_fraction=0.25, seed=3)
    rows = {r.tobytes() for r in np.concatenate([ds.X_train, ds.X_test])}
    with np.load(DATA / "digits.npz") as f:
        assert len(rows) == len({r.tobytes() for r in f["X"] / 16.0})
        counts = np.bincount(f["y"])
    assert len(ds.y_train) + len(ds.y_test) == 1797
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.round(0.25 * counts).astype(int))
    assert not np.all(np.diff(ds.y_train) >= 0), "the training set should not be sorted by class"


def test_split_is_deterministic_and_depends_on_the_seed():
    a, b, c = load_digits(seed=7), load_digits(seed=7), load_digits(seed=8)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("fraction, n_test", [(0.1, 180), (0.5, 898)])  # 0: refused (test_reliability3_files.py)
def test_test_fraction(fraction, n_test):
    ds = load_digits(test_fraction=fraction)
    assert abs(len(ds.y_test) - n_test) <= 5 and len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.X_test.shape == (len(ds.y_test), 64)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 2, "0.2", None, True])
def test_bad_test_fraction(fraction):
    with pytest.raises(DatasetError, match=r"test_fraction must be a number in \[0, 1\)"):
        load_digits(test_fraction=fraction)


def test_stratified_split_indices():
    y = np.array([0] * 10 + [1] * 20 + [2] * 5)
    train, test = stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(35))
    assert np.bincount(y[test]).tolist() == [2, 4, 1]


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset("digits", seed=1).name == "digits"
    p = tmp_path / "toy.npz"
    np.savez(p, X=np.ones((10, 2)), y=np.arange(10) % 2)
    assert load_dataset(p).name == "toy" and load_dataset(str(p), test_fraction=0.4).X_test.shape == (4, 2)
    for bad in ("mnist", "data.csv", 3):
        with pytest.raises(DatasetError, match="expected 'digits' or a path ending in .npz"):
            load_dataset(bad)


def test_datasets_do_not_need_scikit_learn():
    import ast

    tree = ast.parse(Path(datasets.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "sklearn" not in imported


# --------------------------------------------------------------------------------------------
# User .npz files
# --------------------------------------------------------------------------------------------


def _save(tmp_path, name="data.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_load_npz_converts_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 5, (40, 3)).astype(np.int32)
    y = np.repeat(np.arange(4, dtype=np.uint8), 10)
    ds = load_npz(_save(tmp_path, X=X, y=y), test_fraction=0.2, seed=1)
    assert ds.name == "data" and ds.num_classes == 4 and ds.num_features == 3
    assert ds.X_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    assert ds.X_train.shape == (32, 3) and ds.X_test.shape == (8, 3)
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2, 2]
    again = load_npz(_save(tmp_path, X=X, y=y), test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(ds.X_train, again.X_train)


def test_load_npz_with_a_given_test_split(tmp_path):
    p = _save(tmp_path, X=np.zeros((6, 2)), y=np.array([0, 1, 0, 1, 0, 1]),
              X_test=np.ones((3, 2)), y_test=np.array([2, 0, 1]))
    ds = load_npz(p, test_fraction=0.5)
    assert ds.X_train.shape == (6, 2) and ds.X_test.shape == (3, 2)
    np.testing.assert_array_equal(ds.y_test, [2, 0, 1])
    assert ds.num_classes == 3  # from both splits


@pytest.mark.parametrize("arrays, match", [
    (dict(y=np.zeros(3, int)), r"missing key 'X' \(found keys: y\)"),
    (dict(X=np.zeros((3, 2))), r"missing key 'y' \(found keys: X\)"),
    (dict(), r"missing key 'X' \(found keys: none\)"),
    (dict(X=np.zeros(3), y=np.zeros(3, int)), r"X must be 2-D \(samples, features\), got shape \(3,\)"),
    (dict(X=np.zeros((3, 2, 2, 1, 1)), y=np.zeros(3, int)),
     r"X must be 2-D \(samples, features\), got shape \(3, 2, 2, 1, 1\); or images"),
    (dict(X=np.zeros((0, 2)), y=np.zeros(0, int)), r"X is empty, shape \(0, 2\)"),
    (dict(X=np.array([["a", "b"]]), y=np.zeros(1, int)), "X must hold numbers, got dtype <U1"),
    (dict(X=np.zeros((3, 2)), y=np.zeros((3, 1), int)),
     r"y expected shape \(3,\) \(one class index per row of X\), got \(3, 1\) \(real-valued targets of several "
     r"columns need a model whose loss is mse or sigmoid_bce\)$"),
    (dict(X=np.zeros((3, 2)), y=np.array([0.0, 1.5, 1.0])),  # a fraction is never rounded, nor advised to be
     r"y: labels must be integer class indices, got dtype float64 \(row 1: 1\.5\); real-valued targets need a "
     r"model whose loss takes them: mse \(any values\) or sigmoid_bce \(probabilities in \[0, 1\]\)$"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(4, int)), "X has 3 rows but y has 4 labels; expected one per row"),
    (dict(X=np.zeros((3, 2)), y=np.array([0, 2, -1])), "y: label -1 at row 2 is out of range: expected label >= 0"),
    (dict(X=np.array([[0.0, 1.0], [2.0, np.nan], [np.nan, 0.0]]), y=np.zeros(3, int)),
     r"X row 1 column 1 is nan \(2 rows with NaN/inf\); expected finite numbers"),
    (dict(X=np.array([[0.0, np.inf]]), y=np.zeros(1, int)), r"X row 0 column 1 is inf \(1 rows with NaN/inf\)"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((2, 2))), "key 'X_test' given without 'y_test'"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), y_test=np.zeros(2, int)), "key 'y_test' given without 'X_test'"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((2, 5)), y_test=np.zeros(2, int)),
     "X_test has 5 features but X has 2; expected the same number"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((2, 2)), y_test=np.array([0, -4])),
     "y_test: label -4 at row 1 is out of range: expected label >= 0"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.full((2, 2), np.nan), y_test=np.zeros(2, int)),
     "X_test row 0 column 0 is nan"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((2, 2)), y_test=np.zeros(3, int)),
     "X_test has 2 rows but y_test has 3 labels"),
])
def test_load_npz_errors_name_the_key_and_row(tmp_path, arrays, match):
    p = _save(tmp_path, **arrays)
    with pytest.raises(DatasetError, match=match) as info:
        load_npz(p)
    msg = str(info.value)
    assert msg.startswith(str(p) + ": ") and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_load_npz_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.npz: no such file \(expected a .npz with arrays X and y\)"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "nope.npz"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(DatasetError, match=r"garbage.npz: cannot read as .npz"):
        load_npz(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="is a single .npy array, expected a .npz archive"):
        load_npz(single)
    objects = tmp_path / "objects.npz"
    np.savez(objects, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DatasetError, match="cannot read key 'X'"):
        load_npz(objects)


# --------------------------------------------------------------------------------------------
# Damaged files (item 5), absurd labels (item 6), splits too small (item 10), values the model's
# dtype cannot hold (item 2): one DatasetError each, naming the file
# --------------------------------------------------------------------------------------------


def _good_bytes(tmp_path):
    rng = np.random.default_rng(0)
    return _save(tmp_path, "good.npz", X=rng.standard_normal((30, 3)), y=np.arange(30) % 3).read_bytes()


@pytest.mark.parametrize("damage, match", [
    (lambda b: b"", r"cannot read as \.npz: the file is empty \(0 bytes\)"),
    (lambda b: b"hello, not an archive", r"cannot read as \.npz: not a \.npz archive"),
    (lambda b: b[:10], r"cannot read as \.npz: truncated or corrupt"),
    (lambda b: b[:len(b) // 2], r"cannot read as \.npz: truncated or corrupt"),
    (lambda b: b[:-1], r"cannot read as \.npz: truncated or corrupt"),
    (lambda b: b[:150] + bytes([b[150] ^ 4]) + b[151:], r"cannot read as \.npz: truncated or corrupt .*CRC"),
], ids=["empty", "text", "10-bytes", "half", "last-byte-missing", "flipped-bit"])
def test_damaged_npz_files_are_one_clear_error(tmp_path, damage, match):
    p = tmp_path / "d.npz"
    p.write_bytes(damage(_good_bytes(tmp_path)))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(p))}: {match}") as info:
        load_npz(p)
    assert "\n" not in str(info.value)


def test_a_folder_named_npz_is_one_clear_error(tmp_path):
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DatasetError, match=r"dir\.npz: no such file"):
        load_npz(tmp_path / "dir.npz")


@pytest.mark.parametrize("label", [60, 61, 2**40, 2**62])
def test_a_label_beyond_the_number_of_examples_is_refused(tmp_path, label):
    y = np.arange(60) % 3
    y[17] = label
    p = _save(tmp_path, X=np.zeros((60, 2)), y=y)
    with pytest.raises(DatasetError, match=rf"y row 17 is {label}: labels are class indices 0\.\.C-1, and {label + 1} "
                                           rf"classes for 60 examples"):
        load_npz(p)
    y[17] = 59  # as many classes as examples: allowed (the file fixes the split: class 59's one example trains)
    p = _save(tmp_path, X=np.zeros((57, 2)), y=y[:57], X_test=np.zeros((3, 2)), y_test=np.arange(3))
    assert load_npz(p).num_classes == 60


@pytest.mark.parametrize("per_class", [1, 2])
def test_a_test_split_left_empty_is_refused(tmp_path, per_class):
    p = _save(tmp_path, X=np.zeros((3 * per_class, 2)), y=np.repeat(np.arange(3), per_class))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(p))}: test_fraction 0\.2 leaves the test split empty: "
                                           rf"the largest class has {per_class} examples? and "
                                           rf"round\(0\.2 x {per_class}\) = 0"):
        load_npz(p)
    if per_class == 2:
        assert len(load_npz(p, test_fraction=0.6).X_test) == 3  # round(0.6 x 2) = 1 per class
    else:  # round(0.6 x 1) = 1 per class: nothing left to train on
        with pytest.raises(DatasetError, match=r"test_fraction 0\.6 leaves the training split empty"):
            load_npz(p, test_fraction=0.6)
    with pytest.raises(DatasetError, match=r"test_fraction 0 leaves the test split empty"):  # issue 15
        load_npz(p, test_fraction=0)


@pytest.mark.parametrize("dtype, ok", [("float32", False), ("float64", True), (None, True)])
def test_values_are_checked_in_the_models_dtype(tmp_path, dtype, ok):
    X = np.zeros((20, 3))
    X[4, 1] = -1e39
    p = _save(tmp_path, X=X, y=np.arange(20) % 2)
    if ok:
        assert load_npz(p, dtype=dtype).X_train.dtype == np.float64
    else:
        with pytest.raises(DatasetError, match=r"X row 4 column 1 is -1e\+39, which overflows float32"):
            load_npz(p, dtype=dtype)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_a_bad_seed_is_named(seed):
    with pytest.raises(DatasetError, match=r"seed must be a non-negative integer"):
        load_digits(seed=seed)


def test_an_npz_with_an_unsupported_compression_method_is_one_clear_error(tmp_path):
    """zipfile raises NotImplementedError for a compression method it cannot read: one line."""
    import io
    import zipfile

    from bngraph.fileio import NpzError, read_npz

    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", buf.getvalue())
    raw = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # the local and central headers: method field -> 99
        at = raw.index(sig)
        off = 8 if sig == b"PK\x03\x04" else 10
        raw[at + off:at + off + 2] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(NpzError, match=r"truncated or corrupt \.npz archive \(NotImplementedError"):
        read_npz(str(path))
    with pytest.raises(DatasetError, match="odd.npz"):
        load_npz(path)
