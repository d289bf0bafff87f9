"""Every command takes a model file, a checkpoint or an ONNX file (issue 18, item 3): ``show``,
``emit`` and ``train`` read MODEL through one loader (bngraph.cliutil.load_model, which ``emit
--standalone`` uses too); a model file imports the modules beside it; ``train --passes`` exists
like ``show --passes``. Each case runs the command."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import bngraph as bg
import bngraph.training as training_mod
from bngraph.checkpoint import read as read_checkpoint
from bngraph.cliutil import load_model
from cli_support import run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """own.npz: a 64-16-10 MLP trained one epoch on the digits; own.onnx: that model with its
    Softmax (it imports as a classifier); net.py: a model file importing widths.py beside it."""
    d = tmp_path_factory.mktemp("models")
    ds = bg.load_dataset("digits")
    model = bg.compile(bg.mlp([64, 16, 10], name="own"))
    model.fit(ds.X_train, ds.y_train, optimizer=bg.optim.Adam(lr=3e-3), epochs=1, verbose=False)
    model.save(d / "own.npz")
    (d / "widths.py").write_text("WIDTHS = [64, 20, 10]\n")
    (d / "net.py").write_text("import bngraph as bg\nfrom widths import WIDTHS\n\n\ndef model():\n"
                              "    from widths import WIDTHS as late  # imported while the graph is built, too\n"
                              "    return bg.mlp(late, name='sibling')\n")
    return d


@pytest.fixture(scope="module")
def onnx_file(files):
    pytest.importorskip("onnx")
    bg.to_onnx(bg.load(files / "own.npz"), files / "own.onnx", probabilities=True)
    return files / "own.onnx"


def test_show_a_checkpoint_shows_its_graph_and_the_passes_it_was_compiled_with(files, capsys):
    code, out, err = run(["show", files / "own.npz"], capsys)
    assert code == 0, err
    graph = bg.load(files / "own.npz").source_graph
    assert out.startswith(f"// IR before the passes\n{graph}\n")
    assert "pipeline fold_bias, fuse_bn, fuse_bias_act, dce on graph own" in out


def test_a_checkpoint_compiled_with_other_passes_shows_and_emits_them(files, tmp_path, capsys):
    ck = tmp_path / "p.npz"
    code, _, err = run(["train", "--passes", "fold_bias,dce", "--epochs", "1", "--save", ck, "--quiet"], capsys)
    assert code == 0, err
    assert read_checkpoint(ck)[0]["passes"] == ["fold_bias", "dce"]
    code, out, err = run(["show", ck], capsys)
    assert code == 0 and "pipeline fold_bias, dce on graph mlp" in out
    code, out, err = run(["emit", ck], capsys)
    assert code == 0 and out == bg.emit(load_model(str(ck)).graph, passes=["fold_bias", "dce"])["mlp_numpy.py"]


def test_emit_a_checkpoint_is_the_code_of_its_graph(files, capsys):
    code, out, err = run(["emit", files / "own.npz", "--inference"], capsys)
    assert code == 0, err
    assert out == bg.emit(bg.load(files / "own.npz").source_graph, inference=True)["own_numpy.py"]


def test_show_and_emit_an_onnx_file(onnx_file, capsys):
    imported = bg.from_onnx(onnx_file)
    code, out, err = run(["show", onnx_file], capsys)
    assert code == 0, err
    assert out.startswith(f"// IR before the passes\n{imported.build()}\n")
    code, out, err = run(["emit", onnx_file], capsys)
    assert code == 0, err
    assert out == bg.emit(imported)["own_numpy.py"]
    code, out, err = run(["emit", onnx_file, "--inference"], capsys)
    assert code == 0 and out == bg.emit(imported, inference=True)["own_numpy.py"]


def _starting_params(monkeypatch):
    """The params of the model ``bngraph train`` hands to fit, as they are before the first step."""
    seen = []
    real = training_mod.fit

    def spy(model, *args, **kwargs):
        seen.append({k: np.array(v) for k, v in model.params.items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training_mod, "fit", spy)
    return seen


def test_train_a_checkpoint_starts_a_new_run_from_its_weights(files, tmp_path, capsys, monkeypatch):
    seen = _starting_params(monkeypatch)
    report = tmp_path / "r.json"
    code, out, err = run(["train", files / "own.npz", "--epochs", "2", "--save", tmp_path / "n.npz",
                          "--json", report], capsys)
    assert code == 0, err
    trained = {k[6:]: v for k, v in read_checkpoint(files / "own.npz")[1].items() if k.startswith("param/")}
    assert seen[0].keys() == trained.keys()
    for k in trained:
        np.testing.assert_array_equal(seen[0][k], trained[k], err_msg=k)
    assert err.splitlines()[0].startswith(f"bngraph: training own from the weights of {files / 'own.npz'} on digits")
    new = read_checkpoint(tmp_path / "n.npz")[0]
    assert (new["epoch"], new["step"]) == (2, 42)  # a new run: its own counters and optimizer
    assert json.loads(report.read_text())["model_file"] == str(files / "own.npz")


def test_train_a_checkpoint_with_other_passes_is_refused(files, capsys):
    code, out, err = run(["train", files / "own.npz", "--passes", "dce", "--epochs", "1"], capsys)
    assert code == 2
    assert f"--passes dce differs from the checkpoint {files / 'own.npz'}'s fold_bias,fuse_bn,fuse_bias_act,dce" in err


def test_train_an_onnx_file_starts_from_its_weights(files, onnx_file, tmp_path, capsys, monkeypatch):
    seen = _starting_params(monkeypatch)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    code, _, err = run(["train", onnx_file, "--epochs", "2", "--json", a, "--quiet"], capsys)
    assert code == 0, err
    imported = bg.from_onnx(onnx_file)
    start = bg.compile(imported).params
    for k in start:
        np.testing.assert_array_equal(seen[0][k], start[k], err_msg=k)
    # the same weights as the checkpoint it was exported from: the same run, figure for figure
    code, _, err = run(["train", files / "own.npz", "--epochs", "2", "--json", b, "--quiet"], capsys)
    assert code == 0, err
    ha, hb = json.loads(a.read_text())["history"], json.loads(b.read_text())["history"]
    assert [r["val_loss"] for r in ha] == pytest.approx([r["val_loss"] for r in hb], rel=1e-5)


def test_a_resumed_run_refuses_another_passes_list(tmp_path, capsys):
    ck = tmp_path / "c.npz"
    code, _, err = run(["train", "--passes", "fold_bias,dce", "--epochs", "1", "--save", ck, "--quiet"], capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", ck, "--passes", "fuse_bn", "--epochs", "2"], capsys)
    assert code == 2
    assert err == (f"bngraph: error: --passes fuse_bn differs from the checkpoint {ck}'s fold_bias,dce: they made the "
                   f"model; leave --passes out to resume\n")
    code, out, err = run(["train", "--resume", ck, "--passes", "fold_bias,dce", "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err  # the same list is no contradiction
    code, out, err = run(["train", "--passes", "fold_bias,nope", "--epochs", "1"], capsys)
    assert code == 2 and "unknown pass(es) nope; available: " in err


def test_a_model_file_imports_the_modules_beside_it_and_sys_path_is_put_back(files, capsys):
    before = list(sys.path)
    code, out, err = run(["train", files / "net.py", "--epochs", "1", "--quiet", "--no-save"], capsys)
    assert code == 0, err
    assert sys.path == before
    code, out, err = run(["show", files / "net.py"], capsys)
    assert code == 0 and "graph sibling(" in out and "f32[20,64]" in out
    assert sys.path == before
    sys.modules.pop("widths", None)  # another test's widths.py must not find this one


def test_a_model_argument_of_another_kind_names_the_three_forms(tmp_path, capsys):
    (tmp_path / "m.txt").write_text("")
    code, out, err = run(["show", tmp_path / "m.txt"], capsys)
    assert code == 2
    assert err == (f"bngraph: error: MODEL must be path/to/file.py[:name], a checkpoint .npz or an .onnx file, got "
                   f"'{tmp_path / 'm.txt'}'\n")
    code, out, err = run(["show", tmp_path / "none.npz"], capsys)
    assert code == 2 and err == f"bngraph: error: {tmp_path / 'none.npz'}: no such checkpoint\n"
    code, out, err = run(["show", tmp_path / "none.onnx"], capsys)
    assert code == 2 and err == f"bngraph: error: model file not found: {tmp_path / 'none.onnx'}\n"
