"""Deployment: standalone inference code (NumPy only, run in a subprocess where bngraph cannot be
imported) and graph pictures (``bngraph show --format dot``, ``--out FILE.svg``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import bngraph as bg
from bngraph.cli import main

RUN_WITHOUT_BNGRAPH = """
import sys
sys.modules["bngraph"] = None  # importing bngraph now fails, installed or not
import importlib, numpy as np
mod = importlib.import_module(sys.argv[1])
np.save(sys.argv[3], mod.output(np.load(sys.argv[2])))
"""


def _trained(tmp_path, activation="relu"):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 6)).astype(np.float32), rng.integers(0, 3, 60)
    model = bg.compile(bg.mlp([6, 8, 5, 3], activation=activation), seed=1)
    model.fit(X, y, optimizer=bg.optim.Adam(1e-2), epochs=3, batch_size=8, verbose=False)
    path = tmp_path / "run.npz"
    model.save(str(path))
    return model, X, str(path)


def _predict_standalone(out_dir, module, X, tmp_path):
    np.save(tmp_path / "X.npy", X)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_BNGRAPH, module, str(tmp_path / "X.npy"),
                           str(tmp_path / "out.npy")], cwd=out_dir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp_path / "out.npy")


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_emit_standalone_from_a_checkpoint(tmp_path, capsys, activation):
    model, X, ckpt = _trained(tmp_path, activation)
    out_dir = tmp_path / "deploy"
    assert main(["emit", ckpt, "--inference", "--standalone", "--out", str(out_dir)]) == 0
    assert sorted(os.listdir(out_dir)) == ["mlp.npz", "mlp.py"]
    src = (out_dir / "mlp.py").read_text()
    assert "bngraph" not in src.split('"""', 2)[2].replace("bngraph emit", "")  # only the docstring names it
    got = _predict_standalone(out_dir, "mlp", X, tmp_path)
    np.testing.assert_allclose(got, model.forward(X), rtol=1e-5, atol=1e-6)
    with np.load(out_dir / "mlp.npz", allow_pickle=False) as f:
        assert "fc1.W_folded" in f.files  # batch norm folded into the weights


def test_emit_standalone_from_a_model_file_and_an_onnx_file(tmp_path):
    spec = tmp_path / "net.py"
    spec.write_text("import bngraph as bg\nmodel = bg.mlp([4, 6, 2], activation='tanh')\n")
    assert main(["emit", str(spec), "--inference", "--standalone", "--out", str(tmp_path / "a")]) == 0
    X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    expected = bg.compile(bg.mlp([4, 6, 2], activation="tanh"), seed=0).forward(X)  # untrained: seed 0's values
    np.testing.assert_allclose(_predict_standalone(tmp_path / "a", "mlp", X, tmp_path), expected, rtol=1e-5,
                               atol=1e-6)
    pytest.importorskip("onnx")
    model, X6, _ = _trained(tmp_path)
    bg.to_onnx(model, tmp_path / "m.onnx")
    assert main(["emit", str(tmp_path / "m.onnx"), "--inference", "--standalone", "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_allclose(_predict_standalone(tmp_path / "b", "mlp", X6, tmp_path), model.forward(X6),
                               rtol=1e-5, atol=1e-6)


def test_standalone_code_of_an_onnx_file_ending_in_softmax_returns_its_probabilities(tmp_path):
    """An ONNX model's trailing Softmax is bngraph's output head (the graph ends with the logits):
    the standalone module applies it, so it returns what the ONNX model returns."""
    pytest.importorskip("onnx")
    model, X6, _ = _trained(tmp_path)
    bg.to_onnx(model, tmp_path / "p.onnx", probabilities=True)
    assert main(["emit", str(tmp_path / "p.onnx"), "--inference", "--standalone", "--out", str(tmp_path / "c")]) == 0
    got = _predict_standalone(tmp_path / "c", "mlp", X6, tmp_path)
    z = model.forward(X6).astype(np.float64)
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_standalone_needs_out_and_inference(tmp_path, capsys):
    _, _, ckpt = _trained(tmp_path)
    assert main(["emit", ckpt, "--standalone", "--out", str(tmp_path)]) == 2
    assert "add --inference" in capsys.readouterr().err
    assert main(["emit", ckpt, "--inference", "--standalone"]) == 2
    assert "--out DIR" in capsys.readouterr().err


@pytest.fixture
def model_file(tmp_path):
    spec = tmp_path / "net.py"
    spec.write_text("import bngraph as bg\nmodel = bg.mlp([4, 6, 3])\n")
    return str(spec)


def test_show_format_dot(model_file, capsys):
    assert main(["show", model_file, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "mlp" {') and dot.rstrip().endswith("}")
    assert "batchnorm + relu (fused)" in dot  # the fused node says what it fused
    assert '"param:fc1.W" [label="%fc1.W: f32[6,4]", shape=box' in dot
    assert '"state:bn1.running_var" [label="%bn1.running_var: f32[6]", shape=cylinder' in dot
    assert '"input:x" -> "node:0" [penwidth=2];' in dot  # batch-sized: bold; named once, by its node
    assert '"node:0" [label="%fc1.matmul: f32[6,m]\\nmatmul", shape=box' in dot  # no ta=False, tb=False
    assert '"node:1" -> "node:2" [label="%bn1.mean"];' in dot  # a node making several values: which one
    assert main(["show", model_file, "--format", "dot", "--inference"]) == 0
    assert "bias_add + relu (fused)" in capsys.readouterr().out  # BN folded: the bias and ReLU in one pass


def test_show_out_without_graphviz_is_a_clear_error(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["show", model_file, "--out", str(tmp_path / "g.svg")]) == 2
    err = capsys.readouterr().err
    assert "needs Graphviz's 'dot' program" in err and "--format dot" in err
    assert main(["show", model_file, "--out", str(tmp_path / "g.dot")]) == 0  # DOT text needs no Graphviz
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_show_out_calls_dot(model_file, tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nout = sys.argv[sys.argv.index('-o') + 1]\n"
                    "open(out, 'w').write(sys.argv[1] + '\\n' + sys.stdin.read())\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert main(["show", model_file, "--out", str(tmp_path / "g.png")]) == 0
    fmt, text = (tmp_path / "g.png").read_text().split("\n", 1)
    assert fmt == "-Tpng" and text.startswith('digraph "mlp"')


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_show_out_svg_with_graphviz(model_file, tmp_path):
    assert main(["show", model_file, "--out", str(tmp_path / "g.svg")]) == 0
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "batchnorm + relu (fused)" in svg


PREDICT_EVERYWHERE = """
import sys, json
sys.modules["bngraph"] = None
import importlib, numpy as np
mod = importlib.import_module(sys.argv[1])
X = np.load(sys.argv[2])
out = {"output": mod.output(X), "predict": mod.predict(X)}
if hasattr(mod, "predict_proba"):
    out["predict_proba"] = mod.predict_proba(X)
np.savez(sys.argv[3], **out)
"""


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "sigmoid_bce", "mse", "onnx-softmax"])
def test_predict_means_what_model_predict_means_in_the_standalone_module(tmp_path, loss):
    """Issue 18, item 5: one meaning of ``predict`` everywhere. The standalone module's ``predict`` is
    ``model.predict`` (class indices, 0/1, values), ``output`` is ``model.forward`` and
    ``predict_proba`` the probabilities where there are classes."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    width = {"sigmoid_bce": 1, "mse": 2}.get(loss, 3)
    y = {"sigmoid_bce": rng.integers(0, 2, (40, 1)).astype(np.float32), "mse": rng.normal(size=(40, 2))}.get(
        loss, rng.integers(0, 3, 40))
    model = bg.compile(bg.mlp([5, 7, width], loss="softmax_cross_entropy" if loss == "onnx-softmax" else loss))
    model.fit(X, y, optimizer=bg.optim.Adam(1e-2), epochs=2, batch_size=8, verbose=False)
    source = tmp_path / "run.npz"
    model.save(source)
    if loss == "onnx-softmax":
        pytest.importorskip("onnx")
        source = tmp_path / "p.onnx"
        bg.to_onnx(model, source, probabilities=True)
    assert main(["emit", str(source), "--inference", "--standalone", "--out", str(tmp_path / "d")]) == 0
    np.save(tmp_path / "X.npy", X)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PREDICT_EVERYWHERE, "mlp", str(tmp_path / "X.npy"),
                           str(tmp_path / "got.npz")], cwd=tmp_path / "d", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(tmp_path / "got.npz"))
    z = model.forward(X).astype(np.float64)
    if loss == "mse":  # the values themselves (batch norm folded into the weights: float32 rounding apart)
        assert "predict_proba" not in got
        np.testing.assert_allclose(got["predict"], model.predict(X), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["output"], z, rtol=1e-5, atol=1e-6)
        return
    np.testing.assert_array_equal(got["predict"], model.predict(X))
    if loss == "sigmoid_bce":
        np.testing.assert_allclose(got["predict_proba"], 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
        return
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(got["predict_proba"], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["output"], p if loss == "onnx-softmax" else z, rtol=1e-5, atol=1e-6)
