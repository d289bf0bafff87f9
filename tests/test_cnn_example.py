"""examples/cnn.py trained from the command line on the built-in digits (read as (1, 8, 8) images)
reaches >= 98.5% test accuracy; and the data a convolutional model reads: the digits as images,
.npz files with X of shape (N, C, L) or (N, C, H, W), and one clear line when data and model do
not fit."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.datasets import DatasetError, load_npz
from cli_support import run

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~5-15 s on two cores
def test_cnn_example_reaches_98_5_percent_on_the_digits(tmp_path):
    report = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "bngraph.cli", "train", "examples/cnn.py", "--quiet",
                           "--json", str(report)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(report.read_text())
    assert (got["model"], got["dataset"], got["epochs"], got["optimizer"]) == ("cnn", "digits", 15, "adam")
    assert got["test"]["accuracy"] >= 0.985, got["test"]
    assert f"test accuracy {got['test']['accuracy']:.4f}" in proc.stdout
    assert got["history"][-1]["val_accuracy"] >= 0.97


def test_the_example_is_a_cnn_whose_conv_biases_fold_away():
    from bngraph.cliutil import load_model_spec

    g = load_model_spec(str(REPO / "examples" / "cnn.py"))
    assert g.inputs[0].type.shape == (1, "m", 8, 8)
    assert [n.op for n in g.nodes].count("conv") == 2
    res = bg.run_pipeline(g, bg.TRAINING_PIPELINE)
    assert [c for c in res.changes if "over the batch and positions" in c] == [
        "fold_bias: removed conv1.b (64 parameters): cancelled by bn1's mean subtraction over the batch and "
        "positions; bn1.running_mean absorbs it",
        "fold_bias: removed conv2.b (128 parameters): cancelled by bn2's mean subtraction over the batch and "
        "positions; bn2.running_mean absorbs it"]
    assert [n.attr["act"] for n in res.graph.nodes if n.op == "batchnorm_act"] == ["relu", "relu"]


# ------------------------------------------------------------------------------------------------
# The data as images
# ------------------------------------------------------------------------------------------------


def test_digits_as_images():
    flat = bg.load_dataset("digits", seed=3)
    ds = flat.reshaped((1, 8, 8))
    assert ds.X_train.shape == (len(flat.X_train), 1, 8, 8) and ds.example_shape == (1, 8, 8)
    np.testing.assert_array_equal(ds.X_test[5, 0], flat.X_test[5].reshape(8, 8))  # row-major: rows of pixels
    np.testing.assert_array_equal(ds.y_train, flat.y_train)
    assert ds.num_features == 64 and "1x8x8 images" in repr(ds)
    assert flat.reshaped(64) is flat
    np.testing.assert_array_equal(ds.reshaped(64).X_train, flat.X_train)  # and back to flat rows
    with pytest.raises(DatasetError, match=r"examples of shape \(64,\) \(64 values\) cannot be read as images of "
                                           r"shape \(1, 9, 9\); expected 81 features per example"):
        flat.reshaped((1, 9, 9))
    with pytest.raises(DatasetError, match=r"examples of shape \(1, 8, 8\) .* cannot be read as images of shape "
                                           r"\(4, 16\)"):
        ds.reshaped((4, 16))  # both images: never re-laid out silently


def test_npz_images_are_read_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2, 3, 3))
    y = np.arange(40) % 2
    np.savez(tmp_path / "img.npz", X=X, y=y)
    ds = load_npz(tmp_path / "img.npz", seed=0)
    assert ds.X_train.shape[1:] == (2, 3, 3) and len(ds.X_train) + len(ds.X_test) == 40
    bad = X.copy()
    bad[7, 1, 2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", X=bad, y=y)
    with pytest.raises(DatasetError, match=r"X row 7 at \(1, 2, 0\) \(channel, position\) is nan"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "test.npz", X=X, y=y, X_test=X[:4, :, :2], y_test=y[:4])
    with pytest.raises(DatasetError, match=r"X_test has images of shape \(2, 2, 3\) but X has images of shape "
                                           r"\(2, 3, 3\); expected the same shape per example"):
        load_npz(tmp_path / "test.npz")
    np.savez(tmp_path / "5d.npz", X=X[:, :, :, :, None], y=y)
    with pytest.raises(DatasetError, match=r"X must be 2-D \(samples, features\), got shape \(40, 2, 3, 3, 1\); "
                                           r"or images"):
        load_npz(tmp_path / "5d.npz")


CONV1D = """
import bngraph as bg

def model():
    g = bg.Graph("conv1d")
    x, y = g.input("x", (2, 6)), g.labels("y", 2)
    h = g.relu(g.batchnorm(g.conv(x, 4, 3, padding=1, name="conv1"), name="bn1"))
    g.softmax_cross_entropy(g.matmul(g.flatten(h, name="flat"), 2, name="out"), y)
    return g
"""


def _signals(path, shape, n=60):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, *shape))
    y = (X.reshape(n, -1)[:, 0] > 0).astype(int)
    np.savez(path, X=X, y=y)
    return path


@pytest.mark.parametrize("shape", [(2, 6), (12,)], ids=["images", "flat-rows"])
def test_cli_trains_a_conv1d_model_on_npz_signals(tmp_path, capsys, shape):
    model = tmp_path / "conv1d.py"
    model.write_text(CONV1D)
    data = _signals(tmp_path / "sig.npz", shape)  # (N, 2, 6), or flat (N, 12) rows read as (2, 6)
    code, out, err = run(["train", model, "--dataset", data, "--epochs", "2", "--quiet",
                          "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert "test accuracy" in out
    assert json.loads((tmp_path / "r.json").read_text())["examples"]["test"] == 12


@pytest.mark.parametrize("shape,says", [
    ((6, 2), r"the model's input takes images of shape \(2, 6\) \(12 values per example\) but dataset sig has "
             r"images of shape \(6, 2\)"),
    ((10,), r"the model's input takes images of shape \(2, 6\) \(12 values per example\) but dataset sig has "
            r"10 features"),
    ((1, 3, 4), r"but dataset sig has images of shape \(1, 3, 4\)"),
])
def test_cli_refuses_data_that_does_not_fit_the_conv_model(tmp_path, capsys, shape, says):
    model = tmp_path / "conv1d.py"
    model.write_text(CONV1D)
    code, out, err = run(["train", model, "--dataset", _signals(tmp_path / "sig.npz", shape), "--quiet"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(says, err), err


def test_cli_default_model_reads_images_as_flat_rows(tmp_path, capsys):
    """Without MODEL the default MLP is sized by the data: images are its flat rows (C*H*W features)."""
    code, out, err = run(["train", "--dataset", _signals(tmp_path / "sig.npz", (2, 2, 3)), "--epochs", "1",
                          "--quiet", "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert "test accuracy" in out
