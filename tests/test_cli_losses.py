"""`bngraph train` for every loss (issue 18, item 1): the targets of a .npz are read as the model's
loss takes them (class labels; real values of any width for mse; values in [0, 1] for sigmoid_bce),
the figures that fit the loss are reported (accuracy; RMSE and MAE for mse; accuracy at 0.5 for
sigmoid_bce) in the last line and the --json report, and the data set reader and ``fit`` accept
exactly the same targets, with messages that never advise truncating them."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import bngraph as bg
from bngraph.datacheck import check_targets
from bngraph.datasets import load_npz
from bngraph.errors import DataError
from cli_support import run

MODELS = '''import bngraph as bg
reg = bg.mlp([6, 16, 1], loss="mse", name="reg")
reg2 = bg.mlp([6, 16, 3], loss="mse", name="reg2")
bce = bg.mlp([6, 16, 1], loss="sigmoid_bce", name="bce")
bce2 = bg.mlp([6, 16, 2], loss="sigmoid_bce", name="bce2")
cls = bg.mlp([6, 16, 3], name="cls")
nll = bg.mlp([6, 16, 3], loss="nll", name="nll")
'''
# model name -> (the targets of its data set from X, the figures its report has)
CASES = {
    "reg": (lambda X: X @ [1.0, -2.0, 0.5, 0.0, 1.5, -1.0] + 3.0, {"loss", "rmse", "mae"}),
    "reg2": (lambda X: np.c_[X[:, 0] - X[:, 1], 2 * X[:, 2], X[:, 3] + X[:, 4]], {"loss", "rmse", "mae"}),
    "bce": (lambda X: (X[:, 0] + X[:, 1] > 0).astype(np.float64), {"loss", "accuracy"}),
    "bce2": (lambda X: np.c_[X[:, 0] > 0, X[:, 1] + X[:, 2] > 0].astype(np.float64), {"loss", "accuracy"}),
    "cls": (lambda X: np.digitize(X[:, 0] + X[:, 1], [-0.7, 0.7]), {"loss", "accuracy"}),
    "nll": (lambda X: np.digitize(X[:, 0] + X[:, 1], [-0.7, 0.7]), {"loss", "accuracy"}),
}
LOSS = {"reg": "mse", "reg2": "mse", "bce": "sigmoid_bce", "bce2": "sigmoid_bce", "cls": "softmax_cross_entropy",
        "nll": "nll"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("losses")
    (d / "models.py").write_text(MODELS)
    X = np.random.default_rng(0).standard_normal((400, 6))
    for name, (targets, _) in CASES.items():
        np.savez(d / f"{name}.npz", X=X, y=targets(X))
    return d


@pytest.mark.parametrize("name", list(CASES))
def test_every_loss_trains_from_the_command_line_and_reports_its_figures(files, tmp_path, capsys, name):
    report, ck = tmp_path / "r.json", tmp_path / "r.npz"
    code, out, err = run(["train", f"{files / 'models.py'}:{name}", "--dataset", files / f"{name}.npz",
                          "--epochs", "12", "--lr", "0.02", "--json", report, "--save", ck], capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert set(doc["test"]) == CASES[name][1] and doc["loss"] == LOSS[name]
    shown = "  ".join(f"test {k} {doc['test'][k]:.4f}" for k in ["loss", *sorted(CASES[name][1] - {"loss"},
                                                                                   key=list(doc["test"]).index)])
    assert out.splitlines()[0] == shown
    # the figures are those of the saved model on the test split, read as the model's loss reads it
    model = bg.load(ck)
    ds = bg.load_dataset(files / f"{name}.npz", loss=LOSS[name], seed=0)
    pred = model.forward(ds.X_test)
    if "rmse" in doc["test"]:
        err_ = pred - ds.y_test.reshape(pred.shape)
        assert doc["test"]["rmse"] == pytest.approx(np.sqrt(np.mean(err_ ** 2)), rel=1e-5)
        assert doc["test"]["mae"] == pytest.approx(np.mean(np.abs(err_)), rel=1e-5)
        assert doc["test"]["rmse"] ** 2 == pytest.approx(doc["test"]["loss"], rel=1e-4)  # mse: the mean square
        # it fits: far better than predicting the mean
        assert doc["test"]["rmse"] < 0.5 * np.sqrt(np.mean((ds.y_test - ds.y_train.mean(axis=0)) ** 2))
    else:
        assert doc["test"]["accuracy"] >= 0.75  # it fits
        if LOSS[name] == "sigmoid_bce":  # accuracy at probability 0.5: a logit above 0 is a 1
            right = (pred > 0) == (ds.y_test.reshape(pred.shape) > 0.5)
            assert doc["test"]["accuracy"] == pytest.approx(right.mean())
    # the per-epoch validation figures are the same ones, in the report and in each epoch's line
    assert all({f"val_{k}" for k in CASES[name][1]} <= set(rec) for rec in doc["history"])
    epochs = err.splitlines()[1:13]
    assert [ln.split("  ")[0] for ln in epochs] == [f"epoch {i}" for i in range(1, 13)]
    assert all(f"  val_{k} " in ln for ln in epochs for k in CASES[name][1])


def test_a_regression_run_resumes_on_its_recorded_targets(files, tmp_path, capsys):
    ck = tmp_path / "r.npz"
    spec = f"{files / 'models.py'}:reg2"
    code, _, err = run(["train", spec, "--dataset", files / "reg2.npz", "--epochs", "1", "--save", ck, "--quiet"],
                       capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", ck, "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err
    assert re.fullmatch(r"test loss [\d.]+  test rmse [\d.]+  test mae [\d.]+", out.splitlines()[0])


@pytest.mark.parametrize("targets, model, match", [
    # fractional targets with the default classifier: never advised to truncate them
    ("reg", None, r"reg\.npz: y: labels must be integer class indices, got dtype float64 \(row 0: .*\); real-valued "
                  r"targets need a model whose loss takes them: mse \(any values\) or sigmoid_bce"),
    ("reg", "bce", r"reg\.npz: y row 0 holds .*, outside \[0, 1\]: sigmoid_bce targets are probabilities"),
    ("reg2", "reg", r"the model predicts 1 target per example \(mse against %y\) but dataset reg2 has 3$"),
    ("reg2", "cls", r"reg2\.npz: y expected shape \(400,\) \(one class index per row of X\), got \(400, 3\) "
                    r"\(real-valued targets of several columns need a model whose loss is mse or sigmoid_bce\)"),
])
def test_targets_the_model_cannot_take_are_one_line(files, capsys, targets, model, match):
    argv = ["train", *([f"{files / 'models.py'}:{model}"] if model else []), "--dataset", files / f"{targets}.npz",
            "--epochs", "1", "--quiet"]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert re.search(match, err), err
    assert err.count("\n") == 1 and "astype" not in err and "Traceback" not in err


# ---- one checker: the reader accepts exactly what fit accepts ------------------------------------

_Y = {  # name -> targets for 8 rows (2 columns where 2-D)
    "int labels": np.array([0, 1, 2, 0, 1, 2, 0, 1]),
    "uint labels": np.array([0, 1, 2, 0, 1, 2, 0, 1], np.uint8),
    "whole floats": np.array([0.0, 1, 2, 0, 1, 2, 0, 1]),
    "fractions": np.array([0.0, 0.5, 1, 0, 1, 0.25, 0, 1]),
    "negative": np.array([0, -1, 2, 0, 1, 2, 0, 1]),
    "nan": np.array([0.0, np.nan, 1, 0, 1, 0, 0, 1]),
    "inf": np.array([0.0, 1, np.inf, 0, 1, 0, 0, 1]),
    "big for float32": np.array([0.0, 1, 1e39, 0, 1, 0, 0, 1]),
    "probabilities": np.array([0.0, 0.2, 1, 0.7, 1, 0, 0.5, 1]),
    "two columns": np.tile([[0.0, 1.0]], (8, 1)),
    "two columns, one above 1": np.r_[np.tile([[0.0, 1.0]], (7, 1)), [[0.5, 1.5]]],
    "strings": np.array(list("01201201")),
    "one label short": np.array([0, 1, 2, 0, 1, 2, 0]),
}
_MODELS = {"softmax_cross_entropy": bg.mlp([2, 4, 3]), "nll": bg.mlp([2, 4, 3], loss="nll"),
           "mse": bg.mlp([2, 4, 1], loss="mse"), "mse, 2 outputs": bg.mlp([2, 4, 2], loss="mse"),
           "sigmoid_bce": bg.mlp([2, 4, 1], loss="sigmoid_bce"),
           "sigmoid_bce, 2 outputs": bg.mlp([2, 4, 2], loss="sigmoid_bce")}


@pytest.fixture(scope="module")
def compiled():
    return {k: bg.compile(g) for k, g in _MODELS.items()}


@pytest.mark.parametrize("model", list(_MODELS))
@pytest.mark.parametrize("y", list(_Y))
def test_the_reader_and_fit_accept_the_same_targets(tmp_path, compiled, model, y):
    m = compiled[model]
    X = np.zeros((8, 2))
    try:
        m.inputs.check_y(_Y[y], 8, "fit")
        fit_ok, fit_msg = True, ""
    except DataError as e:
        fit_ok, fit_msg = False, str(e)
    width = m.inputs.n_outputs if m.inputs.classes is None else None
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=_Y[y], X_test=X, y_test=_Y[y])
    try:
        ds = load_npz(path, loss=m.inputs.loss, dtype="float32")
        shape_ok = width is None or ds.num_outputs == width  # the command line checks the width against the model
        read_ok, read_msg = shape_ok, ""
    except bg.DatasetError as e:
        read_ok, read_msg = False, str(e)
    assert read_ok == fit_ok, (read_msg, fit_msg)
    for msg in (fit_msg, read_msg):
        assert "astype" not in msg and "\n" not in msg


def test_one_checker_names_the_key_and_the_row_for_the_reader():
    with pytest.raises(bg.DatasetError, match=r"^f\.npz: y_test: labels must be integer class indices, got dtype "
                                              r"float64 \(row 1: 0\.5\); real-valued targets need"):
        check_targets(np.array([0, 0.5]), 2, "f.npz", "softmax_cross_entropy", cls=bg.DatasetError, what="y_test")
    with pytest.raises(DataError, match=r"^fit: targets row 1 holds 2\.0, outside \[0, 1\]: sigmoid_bce targets"):
        check_targets(np.array([0.0, 2.0]), 2, "fit", "sigmoid_bce", n_outputs=1)


def test_whole_number_float_labels_load_as_the_integers_they_are(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((12, 2)), y=np.arange(12.0) % 3)
    ds = load_npz(path, test_fraction=0.25)
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 3 and ds.targets == "classes"


def test_real_valued_targets_load_as_float64_of_their_width_and_split_at_random(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(1)
    y = rng.standard_normal((40, 3)).astype(np.float32)
    np.savez(path, X=rng.standard_normal((40, 5)), y=y)
    ds = load_npz(path, loss="mse", test_fraction=0.25, seed=3)
    assert (ds.num_classes, ds.num_outputs, ds.targets) == (None, 3, "values")
    assert ds.y_train.dtype == np.float64 and ds.y_train.shape == (30, 3) and ds.X_test.shape == (10, 5)
    rows = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.sort(y[:, 0].astype(np.float64)))  # every row, once
    assert repr(ds) == "Dataset('d': train X(30, 5), test X(10, 5), 5 features, 3 targets (real-valued))"
    again = load_npz(path, loss="mse", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(ds.y_test, again.y_test)  # seeded


def test_binary_targets_split_keeping_each_sides_share(tmp_path):
    path = tmp_path / "d.npz"
    y = np.r_[np.zeros(30), np.ones(10)]
    np.savez(path, X=np.arange(80.0).reshape(40, 2), y=y)
    ds = load_npz(path, loss="sigmoid_bce", test_fraction=0.2)
    assert ds.targets == "probabilities" and sorted(ds.y_test.tolist()) == [0.0] * 6 + [1.0] * 2
