"""`bngraph train` as a resumable job (bngraph/cli_train.py): a checkpoint every epoch, Ctrl-C saves
and exits 130, --resume continues exactly (mid-epoch too) with the checkpoint's seed and batch
size, conflicting settings are refused; the README documents every option."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

import bngraph.checkpoint as checkpoint_mod
from bngraph.checkpoint import read as read_checkpoint
from bngraph.cli import build_parser, main
from cli_support import assert_same_checkpoint, run
from bngraph.step import TrainingStep

ROOT = Path(__file__).parent.parent
SMALL = str(Path(__file__).parent / "models" / "small.py")
BASE = ["--batch-size", "100", "--seed", "2", "--quiet"]  # 1295 training rows: 13 steps per epoch



@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Three epochs in one go: the run every resumed run must equal, bit for bit."""
    path = tmp_path_factory.mktemp("straight") / "a.npz"
    try:
        code = main(["train", "--epochs", "3", "--save", str(path), *BASE])
    except SystemExit as e:
        code = e.code
    assert code == 0
    return path


def test_save_writes_an_atomic_checkpoint_after_every_epoch(tmp_path, capsys, monkeypatch):
    saved = []
    real = checkpoint_mod.save
    monkeypatch.setattr(checkpoint_mod, "save", lambda model, path: saved.append(
        (model.epoch, model.step, (model.fit_state or {}).get("position"))) or real(model, path))
    code, out, err = run(["train", "--epochs", "3", "--save", tmp_path / "run.npz", *BASE], capsys)
    assert code == 0, err
    assert saved == [(1, 13, None), (2, 26, None), (3, 39, None)]  # at the end of each epoch
    assert os.listdir(tmp_path) == ["run.npz"]  # no temporary file left
    fit = read_checkpoint(tmp_path / "run.npz")[0]["fit"]
    assert (fit["seed"], fit["batch_size"], fit["shuffle"], fit["n"]) == (2, 100, True, 1295)


@pytest.mark.parametrize("stop_after", [17, 26, 1])  # mid-epoch 2, the end of epoch 2, the first step
def test_ctrl_c_saves_exits_130_and_resume_is_exact(tmp_path, capsys, monkeypatch, straight, stop_after,
                                                     sigint_default):
    real_step = TrainingStep.submit  # fit's step

    def step_then_ctrl_c(self, *args):
        loss = real_step(self, *args)
        if self.step == stop_after:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C in the terminal: honoured after this step
        return loss

    monkeypatch.setattr(TrainingStep, "submit", step_then_ctrl_c)
    path = tmp_path / "b.npz"
    code, out, err = run(["train", "--epochs", "3", "--save", path, *BASE], capsys)
    assert code == 130 and out == ""
    epoch, done = (stop_after - 1) // 13 + 1, (stop_after - 1) % 13 + 1
    where = f"after epoch {epoch}" if done == 13 else f"in epoch {epoch} after step {done}"
    assert err == (f"bngraph: interrupted {where} (global step {stop_after}); "
                   f"saved {path}: continue with --resume {path}\n")
    meta = read_checkpoint(path)[0]
    if done == 13:  # between two epochs: no place inside one to record
        assert (meta["step"], meta["epoch"], meta["fit"]["position"]) == (stop_after, epoch, None)
    else:
        assert (meta["step"], meta["epoch"]) == (stop_after, epoch - 1)
        assert meta["fit"]["position"]["epoch"] == epoch and meta["fit"]["position"]["done"] == done
        assert len(meta["fit"]["position"]["losses"]) == done
    monkeypatch.setattr(TrainingStep, "submit", real_step)
    # no --seed, --batch-size: the checkpoint's
    code, out, err = run(["train", "--resume", path, "--epochs", "3", "--save", path, "--quiet"], capsys)
    assert code == 0, err
    assert_same_checkpoint(straight, path)
    code, out_a, _ = run(["train", "--resume", straight, "--epochs", "3", "--quiet"], capsys)
    assert out.splitlines()[0] == out_a.splitlines()[0] and out.startswith("test loss ")
    assert out.splitlines()[1:] == [f"saved checkpoint {path} (epoch 3, global step 39)"]  # where the work went
    assert out_a.splitlines()[1:] == []  # nothing left to train: nothing written


def test_ctrl_c_without_save_says_nothing_was_saved(tmp_path, capsys, monkeypatch, sigint_default):
    real_step = TrainingStep.submit  # fit's step

    def step_then_ctrl_c(self, *args):
        loss = real_step(self, *args)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(TrainingStep, "submit", step_then_ctrl_c)
    code, out, err = run(["train", "--epochs", "2", *BASE, "--json", tmp_path / "r.json"], capsys)
    assert code == 130
    assert err == ("bngraph: interrupted in epoch 1 after step 3 (global step 3); nothing saved (no --save)\n"
                   f"bngraph: wrote report {tmp_path / 'r.json'}\n")
    assert "interrupted in epoch 1" in (tmp_path / "r.json").read_text()


def test_resume_after_whole_epochs_equals_the_straight_run(tmp_path, capsys, straight):
    path = tmp_path / "c.npz"
    code, _, err = run(["train", "--epochs", "2", "--save", path, *BASE], capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", path, "--epochs", "3", "--save", path], capsys)
    assert code == 0, err
    header = err.splitlines()[0]
    assert header == (f"bngraph: resuming mlp from {path} after epoch 2 (global step 26) on digits (1295 train / "
                      f"143 validation / 359 test examples), adam lr=0.003, epochs 3 to 3, batch 100, target numpy, "
                      f"saving to {path}")
    assert [ln.split("  ")[0] for ln in err.splitlines()[1:]] == ["epoch 3"]
    assert_same_checkpoint(straight, path)


def test_resuming_a_finished_run_trains_nothing(tmp_path, capsys, straight):
    before = straight.read_bytes()
    code, out, err = run(["train", "--resume", straight, "--epochs", "3", "--save", straight], capsys)
    assert code == 0, err
    assert "nothing left of 3 epochs" in err.splitlines()[0] and out.startswith("test loss ")
    assert straight.read_bytes() == before


def test_an_explicit_lr_wins_over_the_checkpoint(tmp_path, capsys, straight):
    code, out, err = run(["train", "--resume", straight, "--epochs", "4", "--lr", "0.0005",
                          "--save", tmp_path / "d.npz"], capsys)
    assert code == 0, err
    assert "adam lr=0.0005" in err.splitlines()[0]
    assert read_checkpoint(tmp_path / "d.npz")[0]["optimizer"]["hyper"]["lr"] == 0.0005


@pytest.mark.parametrize("extra, match", [
    (["--seed", "3"], r"--seed 3 differs from the checkpoint .*'s 2: the data split and the shuffling depend on it"),
    (["--dtype", "float64"], r"--dtype float64 differs from the checkpoint .*'s float32"),
    (["--optimizer", "sgd"], r"--optimizer sgd differs from the checkpoint .*'s adam"),
    ([f"{SMALL}:model"], r"small\.py:model is not the model saved in .*a\.npz \(line 1 in the checkpoint: graph mlp"),
])
def test_resume_refuses_settings_that_are_not_the_runs(capsys, straight, extra, match):
    before = straight.read_bytes()
    code, out, err = run(["train", "--resume", straight, "--epochs", "5", *extra], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert straight.read_bytes() == before


def test_emit_inference_does_not_overwrite_the_training_module(tmp_path, capsys):
    assert run(["emit", SMALL, "--out", tmp_path], capsys)[0] == 0
    assert run(["emit", SMALL, "--inference", "--out", tmp_path], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["small_numpy.py", "small_numpy_inference.py"]
    assert "def train_step(" in (tmp_path / "small_numpy.py").read_text()
    assert "W_folded" in (tmp_path / "small_numpy_inference.py").read_text()


def test_readme_lists_every_command_line_option():
    """The README's synopsis names each option of each command (emit and show's --dtype included)."""
    readme = (ROOT / "README.md").read_text()
    synopsis = readme[readme.index("## The command line"):readme.index("## Layout of the repository")]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        line = next(ln for ln in synopsis.split("bngraph ")[1:] if ln.startswith(name))
        for action in p._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in line, f"README: bngraph {name} does not list {opt}"
    assert "bg.load_dataset" in readme and "export_inference" in readme


def test_a_save_that_fails_midway_is_one_line_and_the_report_is_written(tmp_path, capsys, monkeypatch):
    """Disk full at the second epoch's checkpoint: exit 2, the first epoch's checkpoint intact, and
    the --json report says how far training got."""
    real = np.savez
    calls = []

    def full_disk(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez", full_disk)
    path, js = tmp_path / "run.npz", tmp_path / "r.json"
    code, out, err = run(["train", "--epochs", "3", "--save", path, "--json", js, *BASE], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"bngraph: error: cannot write {path}: No space left on device; wrote report {js}"]
    assert read_checkpoint(path)[0]["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["r.json", "run.npz"]
    doc = json.loads(js.read_text())
    assert [r["epoch"] for r in doc["history"]] == [1, 2]
    assert doc["stop_reason"] == f"stopped: cannot write {path}: No space left on device"
