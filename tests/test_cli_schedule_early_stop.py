"""``bngraph train --schedule SPEC --early-stop PATIENCE [--keep-best]`` (issue 18): the schedules of
bg.schedules and the early stopping of bg.callbacks from the command line, recorded with the run so
that ``--resume`` continues them exactly; --keep-best ends with the best epoch's weights, even one
from before the resume. Each case runs the command; the validation losses early stopping sees are
scripted (the rest of the run is real)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bngraph as bg
from bngraph.checkpoint import read as read_checkpoint
from bngraph.datasets import split_rows
from bngraph.model import Model
from cli_support import TINY, assert_same_checkpoint, four_feature_npz, run

@pytest.fixture
def data(tmp_path):
    return four_feature_npz(tmp_path)


def _base(data):
    return [TINY, "--dataset", data, "--batch-size", "16", "--quiet"]


@pytest.fixture
def scripted(monkeypatch, data):
    """``scripted(losses)``: the validation split's losses, one per epoch, as fit sees them."""
    ds = bg.load_dataset(data, seed=0)
    n_val = len(split_rows(ds.y_train, 0.1, 0)[1])
    real = Model.evaluate
    plan = []

    def evaluate(self, X, y, *args, **kwargs):
        result = real(self, X, y, *args, **kwargs)
        if len(X) == n_val and plan:
            result["loss"] = plan.pop(0)
        return result

    monkeypatch.setattr(Model, "evaluate", evaluate)
    return plan.extend


def _params(path):
    return {k: v for k, v in read_checkpoint(path)[1].items() if k.startswith(("param/", "state/"))}


def test_a_schedule_sets_each_epochs_lr_and_is_recorded(data, tmp_path, capsys):
    report, ck = tmp_path / "r.json", tmp_path / "s.npz"
    code, out, err = run(["train", *_base(data), "--lr", "0.01", "--schedule", "step:1:0.5", "--epochs", "3",
                          "--json", report, "--save", ck], capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert [r["lr"] for r in doc["history"]] == pytest.approx([0.01, 0.005, 0.0025])
    assert doc["schedule"] == "step:1:0.5"
    assert read_checkpoint(ck)[0]["cli"]["schedule"] == "step:1:0.5"


def test_a_resumed_schedule_continues_as_the_straight_run(data, tmp_path, capsys):
    straight, resumed = tmp_path / "a.npz", tmp_path / "b.npz"
    flags = ["--lr", "0.02", "--schedule", "cosine:4:warmup=1"]  # lengths given: the same in both runs
    code, _, err = run(["train", *_base(data), *flags, "--epochs", "4", "--save", straight], capsys)
    assert code == 0, err
    code, _, err = run(["train", *_base(data), *flags, "--epochs", "2", "--save", resumed], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", resumed, "--epochs", "4", "--quiet"], capsys)  # the schedule: the run's
    assert code == 0, err
    assert_same_checkpoint(straight, resumed)
    code, _, err = run(["train", "--resume", resumed, "--schedule", "step:2", "--epochs", "5"], capsys)
    assert code == 2 and "--schedule step:2 differs from the checkpoint" in err


def test_early_stopping_stops_and_says_why(data, tmp_path, capsys, scripted):
    scripted([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    ck, report = tmp_path / "e.npz", tmp_path / "e.json"
    code, out, err = run(["train", *_base(data)[:-1], "--epochs", "10", "--early-stop", "2", "--save", ck,
                          "--json", report], capsys)
    assert code == 0, err
    assert ("bngraph: early stopping at epoch 4: val_loss has not improved on 0.5 (epoch 2) for 2 epochs "
            "(patience 2)") in err
    assert [ln.split("  ")[0] for ln in err.splitlines()[1:5]] == [f"epoch {i}" for i in range(1, 5)]
    doc = json.loads(report.read_text())
    assert (len(doc["history"]), doc["best_epoch"], doc["restored_epoch"]) == (4, 2, None)
    assert read_checkpoint(ck)[0]["epoch"] == 4
    assert out.splitlines()[1] == f"saved checkpoint {ck} (epoch 4, global step 16)"


def test_keep_best_ends_with_the_best_epochs_weights(data, tmp_path, capsys, scripted):
    two = tmp_path / "two.npz"  # the model after epoch 2, from a run without early stopping
    code, _, err = run(["train", *_base(data), "--epochs", "2", "--save", two], capsys)
    assert code == 0, err
    scripted([1.0, 0.5, 0.6, 0.7])
    ck = tmp_path / "k.npz"
    code, out, err = run(["train", *_base(data), "--epochs", "10", "--early-stop", "2", "--keep-best", "--save", ck],
                         capsys)
    assert code == 0, err
    assert out.splitlines()[1] == (f"saved checkpoint {ck} (epoch 4, global step 16; the weights of epoch 2, the best "
                                   f"val_loss)")
    best, kept = _params(two), _params(ck)
    for k in best:
        np.testing.assert_array_equal(kept[k], best[k], err_msg=k)


def test_a_resumed_run_keeps_counting_and_restores_an_epoch_from_before_the_resume(data, tmp_path, capsys, scripted):
    two = tmp_path / "two.npz"
    code, _, err = run(["train", *_base(data), "--epochs", "2", "--save", two], capsys)
    assert code == 0, err
    scripted([1.0, 0.5, 0.6])
    ck = tmp_path / "r.npz"
    code, _, err = run(["train", *_base(data), "--epochs", "3", "--early-stop", "2", "--keep-best", "--save", ck],
                       capsys)
    assert code == 0, err  # epoch 3: one epoch without progress, no stop yet
    assert read_checkpoint(ck)[0]["cli"]["early_stop_state"] == {"best": 0.5, "best_epoch": 2, "wait": 1}
    scripted([0.7])
    code, out, err = run(["train", "--resume", ck, "--epochs", "10"], capsys)
    assert code == 0, err
    assert "early stopping at epoch 4" in err and read_checkpoint(ck)[0]["epoch"] == 4  # as the straight run
    best, kept = _params(two), _params(ck)
    for k in best:
        np.testing.assert_array_equal(kept[k], best[k], err_msg=k)  # epoch 2's, from before the resume
    before = ck.read_bytes()
    code, out, err = run(["train", "--resume", ck, "--epochs", "10"], capsys)
    assert code == 0 and "nothing left to train: the run stopped early after 2 epochs without a better val_loss" in err
    assert ck.read_bytes() == before


@pytest.mark.parametrize("argv, match", [
    (["--keep-best"], r"--keep-best keeps the best epoch of a run with early stopping: add --early-stop PATIENCE"),
    (["--schedule", "warp:3"], r"--schedule: schedule 'warp:3': unknown schedule 'warp'; expected one of step:"),
    (["--early-stop", "-1"], r"argument --early-stop: must be >= 0, got -1"),
])
def test_bad_flags_are_one_line(data, capsys, argv, match):
    import re

    code, out, err = run(["train", *_base(data), "--epochs", "1", *argv], capsys)
    assert code == 2 and re.search(match, err) and err.count("\n") == 1, err
