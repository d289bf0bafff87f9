"""The `bngraph` command (bngraph/cli.py): train, emit, show, and its errors.

Commands run in-process through ``bngraph.cli.main([...])``; one test runs the installed console
script in a subprocess. Model files live in tests/models/.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.checkpoint import read as read_checkpoint
from cli_support import run
from bngraph.datasets import load_dataset, stratified_split

MODELS = Path(__file__).parent / "models"
SMALL = str(MODELS / "small.py")
ODD = str(MODELS / "odd.py")



def test_train_default_reaches_95_percent(capsys):
    """`bngraph train` with no arguments: the default MLP with batch norm on the built-in digits."""
    code, out, err = run(["train"], capsys)
    assert code == 0, err
    m = re.fullmatch(r"test loss (\d+\.\d{4})  test accuracy (\d+\.\d{4})\n", out)
    assert m, out
    assert float(m.group(2)) >= 0.95
    lines = err.splitlines()
    ds = load_dataset("digits", seed=0)
    assert len(ds.X_train) + len(ds.X_test) == 1797
    train, val = stratified_split(ds.y_train, 0.1, 0)  # validation: 10% of each class of the training split
    assert (len(train), len(val), len(ds.X_test)) == (1295, 143, 359)
    assert lines[0] == ("bngraph: training mlp on digits (1295 train / 143 validation / 359 test examples), "
                        "adam lr=0.003, 15 epochs, batch 64, target numpy")
    assert [ln.split("  ")[0] for ln in lines[1:-1]] == [f"epoch {i}" for i in range(1, 16)]  # one line per epoch
    assert lines[-1] == "bngraph: the trained model was not saved: add --save PATH to keep it"  # never lost silently


def test_train_json_and_save(tmp_path, capsys):
    js, ck = tmp_path / "out" / "run.json", tmp_path / "run.npz"
    js.parent.mkdir()  # a file's folder must exist (tests/test_usability.py)
    code, out, err = run(["train", "--epochs", "2", "--json", js, "--save", ck, "--quiet"], capsys)
    assert code == 0, err
    assert err == ""  # --quiet: only the final metrics
    doc = json.loads(js.read_text())
    assert {"model", "dataset", "optimizer", "lr", "epochs", "batch_size", "seed", "target", "history",
            "stop_reason", "test", "val_fraction", "examples", "resumed_from"} <= set(doc)
    assert doc["examples"] == {"train": 1295, "validation": 143, "test": 359} and doc["resumed_from"] is None
    assert (doc["model"], doc["dataset"], doc["optimizer"], doc["lr"], doc["epochs"]) == ("mlp", "digits", "adam",
                                                                                         0.003, 2)
    assert (doc["batch_size"], doc["seed"], doc["target"], doc["stop_reason"]) == (64, 0, "numpy", None)
    assert [r["epoch"] for r in doc["history"]] == [1, 2]
    for rec in doc["history"]:
        assert {"epoch", "loss", "steps", "lr", "seconds", "val_loss", "val_accuracy"} <= set(rec)
    assert set(doc["test"]) == {"loss", "accuracy"}
    assert out == (f"test loss {doc['test']['loss']:.4f}  test accuracy {doc['test']['accuracy']:.4f}\n"
                   f"saved checkpoint {ck} (epoch 2, global step 42)\nwrote report {js}\n")  # what went where
    assert doc["saved_to"] == str(ck)
    # the checkpoint loads; its validation figures are the validation split's, the test figures the test split's
    model = bg.load(ck)
    ds = load_dataset("digits", seed=0)
    train, val = stratified_split(ds.y_train, 0.1, 0)
    assert (model.epoch, model.step) == (2, 2 * -(-len(train) // 64))
    assert model.evaluate(ds.X_test, ds.y_test) == doc["test"]
    ev = model.evaluate(ds.X_train[val], ds.y_train[val])
    assert (doc["history"][-1]["val_loss"], doc["history"][-1]["val_accuracy"]) == (ev["loss"], ev["accuracy"])
    assert doc["history"][-1]["val_loss"] != doc["test"]["loss"]
    # fit's seed and batch size are in the checkpoint
    fit = read_checkpoint(ck)[0]["fit"]
    assert (fit["seed"], fit["batch_size"], fit["shuffle"], fit["n"], fit["position"]) == (0, 64, True, 1295, None)
    assert type(model.optimizer).__name__ == "Adam"
    assert sorted(os.listdir(tmp_path)) == ["out", "run.npz"] and os.listdir(tmp_path / "out") == ["run.json"]


def test_train_console_script_subprocess():
    exe = Path(sys.executable).with_name("bngraph")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bngraph.cli"]
    p = subprocess.run([*cmd, "train", "--epochs", "3", "--quiet"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    m = re.fullmatch(r"test loss \d+\.\d{4}  test accuracy (\d+\.\d{4})\n", p.stdout)
    assert m and float(m.group(1)) > 0.9


def test_train_model_file_and_options(tmp_path, capsys):
    js = tmp_path / "h.json"
    code, out, err = run([
        "train", f"{SMALL}:make", "--optimizer", "momentum", "--lr", "0.02", "--epochs", "2", "--batch-size", "100",
        "--seed", "3", "--dtype", "float64", "--json", js], capsys)
    assert code == 0, err
    doc = json.loads(js.read_text())
    assert (doc["model"], doc["optimizer"], doc["lr"], doc["batch_size"], doc["seed"]) == ("made", "momentum", 0.02,
                                                                                           100, 3)
    n = len(stratified_split(load_dataset("digits", seed=3).y_train, 0.1, 3)[0])
    assert [r["steps"] for r in doc["history"]] == [-(-n // 100)] * 2
    assert "momentum lr=0.02, 2 epochs, batch 100" in err


def test_train_npz_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "blobs.npz", X=rng.standard_normal((60, 4)), y=np.arange(60) % 3)
    code, out, err = run(["train", f"{SMALL}:tiny", "--dataset", tmp_path / "blobs.npz", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "training tiny on blobs (42 train / 6 validation / 12 test examples)" in err
    assert out.startswith("test loss ")


@pytest.mark.parametrize("lr", ["1e30", "3e38"])
@pytest.mark.parametrize("quiet", [True, False])
def test_train_divergence_is_one_line_exit_2_without_warnings(tmp_path, capsys, lr, quiet):
    """No NumPy warning quoting generated code; one error line saying the epoch and the step."""
    js = tmp_path / "d.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run(["train", f"{SMALL}:nobn", "--optimizer", "sgd", "--lr", lr, "--epochs", "2",
                              "--json", js, *(["--quiet"] if quiet else [])], capsys)
    assert code == 2 and out == ""
    assert [str(w.message) for w in caught] == []
    lines = err.splitlines()
    assert re.fullmatch(r"bngraph: error: training diverged: stopped early at epoch 1, step \d+ of \d+ "
                        r"\(global step \d+\): .*", lines[-1]), lines[-1]
    assert len(lines) == (1 if quiet else 2)  # not quiet: the header line, then the error
    assert "Traceback" not in err and "Warning" not in err
    assert json.loads(js.read_text())["stop_reason"].startswith("stopped early at epoch 1")


def test_an_lr_that_float32_cannot_hold_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run(["train", f"{SMALL}:nobn", "--optimizer", "sgd", "--lr", "1e300", "--epochs", "2",
                          "--save", tmp_path / "c.npz"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == ("bngraph: error: SGD: lr=1e+300 overflows float32, the dtype of the params it "
                                    "updates; nothing was updated")
    assert not (tmp_path / "c.npz").exists()


# --------------------------------------------------------------------------------------------
# emit and show
# --------------------------------------------------------------------------------------------


def test_emit_prints_the_training_module(capsys):
    code, out, err = run(["emit", SMALL], capsys)
    assert code == 0 and err == ""
    assert "def train_step(" in out and "def forward(" in out and "def forward_train(" in out
    from bngraph.cli import load_model_spec

    assert out == bg.emit(load_model_spec(SMALL))["small_numpy.py"]  # exactly what emit makes


@pytest.mark.parametrize("spec, name", [(f"{SMALL}:model", "small"), (f"{SMALL}:make", "made"),
                                        (f"{SMALL}:tiny", "tiny")])
def test_model_spec_graph_or_function(spec, name, capsys):
    code, out, err = run(["emit", spec, "--dtype", "float64"], capsys)
    assert code == 0, err
    assert out.startswith(f'"""Graph {name}, compiled by bngraph') and "DTYPE = np.float64" in out


def test_emit_inference_to_a_folder(tmp_path, capsys):
    out_dir = tmp_path / "gen" / "code"
    code, out, err = run(["emit", SMALL, "--inference", "--out", out_dir], capsys)
    assert code == 0, err
    path = out_dir / "small_numpy_inference.py"
    assert out == f"{path}\n"
    assert os.listdir(out_dir) == ["small_numpy_inference.py"]
    src = path.read_text()
    from bngraph.cli import load_model_spec

    assert src == bg.emit(load_model_spec(SMALL), inference=True)["small_numpy.py"]
    assert "def forward(" in src and "def train_step" not in src and "W_folded" in src
    compile(src, str(path), "exec")


def test_show_print_after_all(capsys):
    code, out, err = run(["show", SMALL, "--print-after-all"], capsys)
    assert code == 0 and err == ""
    headers = [ln for ln in out.splitlines() if ln.startswith("// ")]
    assert headers == ["// IR before the passes", "// IR after fold_bias", "// IR after fuse_bn", "// IR after fuse_bias_act",
                       "// IR after dce",
                       "// what the passes did"]
    # each block is the IR as text: it parses back
    blocks = re.split(r"^// .*\n", out, flags=re.M)[1:]
    graphs = [bg.parse(b) for b in blocks[:5]]
    from bngraph.cli import load_model_spec

    assert graphs[0] == load_model_spec(SMALL)
    assert graphs[4] == bg.compile(load_model_spec(SMALL)).graph
    assert "%fc1.b" in blocks[0] and "%fc1.b" not in blocks[1]  # fold_bias removed it
    assert "batchnorm_act" not in blocks[1] and "batchnorm_act" in blocks[2]  # fuse_bn fused it
    assert "pipeline fold_bias, fuse_bn, fuse_bias_act, dce on graph small" in blocks[5]


def test_show_passes_and_inference(capsys):
    code, out, err = run(["show", SMALL, "--passes", "fold_bias, dce"], capsys)
    assert code == 0, err
    assert "// IR after fold_bias, dce" in out and "batchnorm_act" not in out
    code, out, err = run(["show", SMALL, "--inference", "--print-after-all"], capsys)
    assert code == 0, err
    assert "// IR after fold_bn_into_weights" in out and "W_folded" in out


# --------------------------------------------------------------------------------------------
# Errors: exit code 2, one line on stderr, no traceback
# --------------------------------------------------------------------------------------------


@pytest.fixture
def bad_data(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wrongshape.npz", X=rng.standard_normal((20, 4, 2, 1, 1)), y=np.zeros(20, int))
    np.savez(tmp_path / "negative.npz", X=rng.standard_normal((20, 4)), y=np.full(20, -1))
    np.savez(tmp_path / "fivelabels.npz", X=rng.standard_normal((40, 4)), y=np.arange(40) % 5)
    np.savez(tmp_path / "count.npz", X=rng.standard_normal((20, 4)), y=np.zeros(19, int))
    np.savez(tmp_path / "floaty.npz", X=rng.standard_normal((20, 4)), y=np.linspace(0, 1, 20))  # fractions
    np.savez(tmp_path / "nokey.npz", X=rng.standard_normal((20, 4)))
    (tmp_path / "junk.npz").write_text("not a zip file")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "good.npz", X=rng.standard_normal((40, 4)), y=np.arange(40) % 3)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[:len(good) // 2])
    flipped = bytearray(good)
    flipped[200] ^= 0x10  # inside X's data: the zip's CRC check finds it
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    np.savez(tmp_path / "twoperclass.npz", X=rng.standard_normal((6, 4)), y=np.array([0, 0, 1, 1, 2, 2]))
    np.savez(tmp_path / "fiveperclass.npz", X=rng.standard_normal((15, 4)), y=np.arange(15) % 3)
    huge = np.arange(60) % 3
    huge[17] = 2**40
    np.savez(tmp_path / "hugelabel.npz", X=rng.standard_normal((60, 64)), y=huge)
    np.savez(tmp_path / "fourlabels.npz", X=rng.standard_normal((40, 4)), y=np.arange(40) % 4)
    X = rng.standard_normal((30, 4))
    X[7, 2] = 1e39  # finite in float64, inf in float32
    np.savez(tmp_path / "overflow.npz", X=X, y=np.arange(30) % 3)
    return tmp_path


ERRORS = [
    ("missing-file", ["train", "{tmp}/nope.py"], r"model file not found: .*nope\.py"),
    ("not-py", ["emit", "{tmp}/model.txt"],
     r"MODEL must be path/to/file\.py\[:name\], a checkpoint \.npz or an \.onnx file, got '.*model\.txt'"),
    ("missing-name", ["emit", SMALL + ":missing"],
     r"small\.py defines no 'missing' \(found: broken, make, model, nobn, tiny\)"),
    ("not-a-graph", ["emit", SMALL + ":notgraph"],
     r"small\.py:notgraph is a int, expected a bngraph\.Graph or a function returning one"),
    ("function-raises", ["emit", SMALL + ":broken"], r"small\.py:broken\(\): RuntimeError: cannot build this one"),
    ("file-raises", ["emit", str(MODELS / "raises.py")], r"raises\.py:5: RuntimeError: this model file is broken"),
    ("missing-dataset", ["train", "--dataset", "{tmp}/missing.npz"], r"missing\.npz: no such file"),
    ("unknown-dataset", ["train", "--dataset", "iris.csv"], r"unknown data set 'iris\.csv'"),
    ("dataset-wrong-shape", ["train", "--dataset", "{tmp}/wrongshape.npz"],
     r"wrongshape\.npz: X must be 2-D \(samples, features\), got shape \(20, 4, 2, 1, 1\)"),
    ("dataset-negative-labels", ["train", "--dataset", "{tmp}/negative.npz"],
     r"negative\.npz: y: label -1 at row 0 is out of range: expected label >= 0"),
    ("dataset-label-count", ["train", "--dataset", "{tmp}/count.npz"],
     r"count\.npz: X has 20 rows but y has 19 labels"),
    ("dataset-float-labels", ["train", "--dataset", "{tmp}/floaty.npz"],  # never advised to truncate them
     r"floaty\.npz: y: labels must be integer class indices, got dtype float64 \(row 1: 0\.05263\d*\); real-valued "
     r"targets need a model whose loss takes them: mse \(any values\) or sigmoid_bce \(probabilities in \[0, 1\]\)$"),
    ("dataset-missing-key", ["train", "--dataset", "{tmp}/nokey.npz"], r"nokey\.npz: missing key 'y'"),
    ("dataset-not-npz", ["train", "--dataset", "{tmp}/junk.npz"], r"junk\.npz: cannot read as \.npz"),
    ("more-labels-than-classes", ["train", SMALL + ":tiny", "--dataset", "{tmp}/fivelabels.npz"],
     r"the model has 3 classes but dataset fivelabels has labels up to 4"),
    ("feature-mismatch", ["train", SMALL + ":tiny"],
     r"the model's input takes 4 features but dataset digits has 64"),
    ("unknown-target-train", ["train", "--target", "tpu"],
     r"unknown target 'tpu': available targets are c, cuda, numpy"),
    ("unknown-target-emit", ["emit", SMALL, "--target", "tpu"], r"unknown target 'tpu': available targets are c, cuda, numpy"),
    ("unknown-pass", ["show", SMALL, "--passes", "fold_bias,no_such_pass"],
     r"unknown pass\(es\) no_such_pass; available: fold_bias, fuse_bn, fold_bn_into_weights, fuse_bias_act, dce"),
    ("unwritable-json", ["train", "--epochs", "1", "--quiet", "--json", "{tmp}/junk.npz/h.json"],
     r"cannot write --json .*h\.json: .*junk\.npz is a file, not a folder"),
    # 5: damaged data files
    ("dataset-empty-file", ["train", "--dataset", "{tmp}/empty.npz"],
     r"empty\.npz: cannot read as \.npz: the file is empty \(0 bytes\)"),
    ("dataset-truncated", ["train", "--dataset", "{tmp}/truncated.npz"],
     r"truncated\.npz: cannot read as \.npz: truncated or corrupt"),
    ("dataset-flipped-bit", ["train", "--dataset", "{tmp}/flipped.npz"],
     r"flipped\.npz: cannot read as \.npz: truncated or corrupt .*Bad CRC-32"),
    # 2: values the model's dtype cannot hold
    ("dataset-overflows-float32", ["train", f"{SMALL}:tiny", "--dataset", "{tmp}/overflow.npz"],
     r"overflow\.npz: X row 7 column 2 is 1e\+39, which overflows float32"),
    # 6: sizes checked against the data first, absurd ones refused
    ("dataset-huge-label", ["train", "--dataset", "{tmp}/hugelabel.npz"],
     r"hugelabel\.npz: y row 17 is 1099511627776: labels are class indices"),
    ("feature-mismatch-huge-model", ["train", f"{ODD}:huge_input"],
     r"the model's input takes 1000000000 features but dataset digits has 64"),
    ("model-too-large", ["train", f"{ODD}:too_wide"],
     r"graph too_wide has [\d,]+ parameters \(fc1\.W 1000000000000x64, .*\): [\d,]+ TiB for them and their "
     r"gradients, more than this machine's [\d.,]+ GiB of memory"),
    # 1: targets outside the loss's domain
    ("bce-on-class-labels", ["train", f"{ODD}:bce"],
     r"digits: y row \d+ holds [2-9], outside \[0, 1\]: sigmoid_bce targets are probabilities"),
    # 9: a model file that exits
    ("model-file-exits", ["emit", str(MODELS / "exits.py")],
     r"exits\.py:7: the model file exited \(sys\.exit\(3\)\) while bngraph was loading it"),
    ("model-function-exits", ["train", f"{ODD}:exits"],
     r"odd\.py:exits\(\): the model function exited \(sys\.exit\('no graph today'\)\)"),
    # 10: splits too small to hold an example
    ("empty-test-split", ["train", f"{SMALL}:tiny", "--dataset", "{tmp}/twoperclass.npz"],
     r"test_fraction 0\.2 leaves the test split empty: the largest class has 2 examples"),
    ("empty-validation-split", ["train", f"{SMALL}:tiny", "--dataset", "{tmp}/fiveperclass.npz"],
     r"--val-fraction 0\.1 leaves no validation examples"),
    # labels equal to the number of classes
    ("labels-equal-classes", ["train", f"{SMALL}:tiny", "--dataset", "{tmp}/fourlabels.npz"],
     r"the model has 3 classes but dataset fourlabels has labels up to 3"),
    # 12: destinations checked before training
    ("save-parent-is-a-file", ["train", "--save", "{tmp}/junk.npz/run.npz"],
     r"cannot write --save .*run\.npz: .*junk\.npz is a file, not a folder"),
    ("save-is-a-folder", ["train", "--save", "{tmp}"], r"cannot write --save .*: it is a folder"),
    ("emit-out-is-a-file", ["emit", SMALL, "--out", "{tmp}/junk.npz"],
     r"cannot write --out .*small_numpy\.py: .*junk\.npz is a file, not a folder"),
    # 16: resuming
    ("resume-missing", ["train", "--resume", "{tmp}/none.npz"], r"none\.npz: no such checkpoint"),
    ("resume-not-a-checkpoint", ["train", "--resume", "{tmp}/good.npz"],
     r"good\.npz: not a bngraph checkpoint \(no metadata"),
]


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=i) for i, a, m in ERRORS])
def test_error_paths_exit_2_with_one_line(argv, match, bad_data, capsys):
    code, out, err = run([a.replace("{tmp}", str(bad_data)) for a in argv], capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bngraph: error: ")
    assert re.search(match, lines[0]), lines[0]
    assert "test accuracy" not in out


ARGPARSE_ERRORS = [
    ("unknown-option", ["train", "--bogus"], r"unrecognized arguments: --bogus"),
    ("bad-lr", ["train", "--lr", "abc"], r"argument --lr: expected a number, got 'abc'"),
    ("negative-lr", ["train", "--lr", "-1"], r"argument --lr: must be > 0, got -1"),
    ("zero-epochs", ["train", "--epochs", "0"], r"argument --epochs: must be > 0, got 0"),
    ("bad-optimizer", ["train", "--optimizer", "lbfgs"], r"argument --optimizer: invalid choice: 'lbfgs'"),
    ("bad-dtype", ["emit", SMALL, "--dtype", "float16"], r"argument --dtype: invalid choice: 'float16'"),
    ("no-command", [], r"required: \{train,emit,show\}|the following arguments are required"),
    ("emit-without-model", ["emit"], r"the following arguments are required: model"),
    ("negative-seed", ["train", "--seed", "-1"], r"argument --seed: must be >= 0, got -1"),  # 11
    ("float-seed", ["train", "--seed", "1.5"], r"argument --seed: expected an integer, got '1\.5'"),
    ("val-fraction-one", ["train", "--val-fraction", "1"], r"argument --val-fraction: must be in \[0, 1\), got 1"),
    ("val-fraction-negative", ["train", "--val-fraction", "-0.1"], r"argument --val-fraction: must be in \[0, 1\)"),
    ("zero-batch-size", ["train", "--batch-size", "0"], r"argument --batch-size: must be > 0, got 0"),
    ("bad-dtype-show", ["show", SMALL, "--dtype", "f16"], r"argument --dtype: invalid choice: 'f16'"),
]


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=i) for i, a, m in ARGPARSE_ERRORS])
def test_argument_errors_exit_2_without_traceback(argv, match, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == "" and "Traceback" not in err
    assert re.search(match, err.splitlines()[-1]), err  # the last line says what is wrong


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["train", "--lr", "abc"]], ids=["unknown-option", "bad-lr"])
def test_argument_errors_are_one_line(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err


def test_version_and_help(capsys):
    code, out, err = run(["--version"], capsys)
    assert code == 0 and out == f"bngraph {bg.__version__}\n"
    code, out, err = run(["train", "--help"], capsys)
    assert code == 0 and "--dataset" in out and "--json" in out


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_emitted_files_mode_follows_the_umask(tmp_path, capsys):
    old = os.umask(0)
    os.umask(old)
    code, out, err = run(["emit", SMALL, "--out", tmp_path], capsys)
    assert code == 0, err
    assert ((tmp_path / "small_numpy.py").stat().st_mode & 0o777) == (0o666 & ~old)
