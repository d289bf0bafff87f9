"""A run's work is never lost silently (issue 18, item 2): ``--resume PATH`` writes the run back to
PATH unless ``--save OTHER`` or ``--no-save``; ``--resume PATH`` alone trains on the data set the
checkpoint records (a missing or changed file is one line); the last lines say what was written
where, and a run whose model is written nowhere says so. Each case runs the command."""
from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

from bngraph.checkpoint import read as read_checkpoint
from bngraph.step import TrainingStep
from cli_support import TINY, four_feature_npz, run

@pytest.fixture
def data(tmp_path):
    return four_feature_npz(tmp_path)


@pytest.fixture
def started(tmp_path, data, capsys):
    """A 2-epoch run of the tiny model on four.npz, batches of 16, saved in run.npz."""
    ck = tmp_path / "run.npz"
    code, out, err = run(["train", TINY, "--dataset", data, "--epochs", "2", "--save", ck, "--batch-size", "16",
                          "--quiet"], capsys)
    assert code == 0, err  # 65 training rows: 4 steps an epoch (the last row joins the last batch)
    assert out.splitlines()[1:] == [f"saved checkpoint {ck} (epoch 2, global step 8)"]
    return ck


def _epoch(path) -> int:
    return read_checkpoint(path)[0]["epoch"]


def test_resume_without_save_writes_back_to_the_checkpoint_it_resumed(started, capsys):
    code, out, err = run(["train", "--resume", started, "--epochs", "4"], capsys)
    assert code == 0, err
    assert _epoch(started) == 4
    assert out.splitlines()[-1] == f"saved checkpoint {started} (epoch 4, global step 16)"
    assert err.splitlines()[0].endswith(f", saving to {started}")  # said before training, too
    assert "not saved" not in err


def test_no_save_leaves_the_checkpoint_as_it_was_and_says_so(started, capsys):
    before = started.read_bytes()
    code, out, err = run(["train", "--resume", started, "--epochs", "4", "--no-save"], capsys)
    assert code == 0, err
    assert started.read_bytes() == before
    assert len(out.splitlines()) == 1 and out.startswith("test loss ")
    assert err.splitlines()[-1] == f"bngraph: not saved (--no-save): {started} is as it was before this run"


def test_save_elsewhere_leaves_the_resumed_checkpoint_and_says_where(started, tmp_path, capsys):
    before, other, report = started.read_bytes(), tmp_path / "other.npz", tmp_path / "r.json"
    code, out, err = run(["train", "--resume", started, "--epochs", "3", "--save", other, "--json", report,
                          "--quiet"], capsys)
    assert code == 0, err
    assert started.read_bytes() == before and _epoch(other) == 3
    assert out.splitlines()[1:] == [f"saved checkpoint {other} (epoch 3, global step 12)", f"wrote report {report}"]
    assert err == ""


def test_save_and_no_save_together_are_a_usage_error(started, capsys):
    code, out, err = run(["train", "--resume", started, "--save", started, "--no-save"], capsys)
    assert code == 2 and "not allowed with argument" in err and err.count("\n") == 1


def test_resume_alone_trains_on_the_recorded_data_set(started, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path.parent)  # another folder: the record is an absolute path
    code, out, err = run(["train", "--resume", started, "--epochs", "3"], capsys)
    assert code == 0, err
    assert " on four (" in err.splitlines()[0] and _epoch(started) == 3


def test_a_missing_recorded_data_set_is_one_line(started, data, capsys):
    data.rename(data.with_name("moved.npz"))
    before = started.read_bytes()
    code, out, err = run(["train", "--resume", started, "--epochs", "3"], capsys)
    assert code == 2 and out == ""
    assert err == (f"bngraph: error: the data set {data} of the run saved in {started} is missing (moved or "
                   f"deleted?): give the same data with --dataset PATH (checked against the SHA-256 of its arrays)\n")
    assert started.read_bytes() == before
    code, out, err = run(["train", "--resume", started, "--epochs", "3", "--dataset", data.with_name("moved.npz")],
                         capsys)
    assert code == 0, err  # the same arrays under another name
    assert _epoch(started) == 3


def test_a_changed_recorded_data_set_is_one_line(started, data, capsys):
    arrays = dict(np.load(data))
    arrays["X"][5, 1] += 1.0
    np.savez(data, **arrays)
    code, out, err = run(["train", "--resume", started, "--epochs", "3"], capsys)
    assert code == 2 and out == ""
    assert re.fullmatch(r"bngraph: error: the data set .*four\.npz of the run saved in .*run\.npz has changed since "
                        r"\(its arrays are not those it was trained on\); give the run's data with --dataset\n", err)


def test_a_run_that_saves_nothing_says_so_and_one_that_writes_says_what(data, tmp_path, capsys):
    code, out, err = run(["train", TINY, "--dataset", data, "--epochs", "1"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    assert err.splitlines()[-1] == "bngraph: the trained model was not saved: add --save PATH to keep it"
    report = tmp_path / "only.json"
    code, out, err = run(["train", TINY, "--dataset", data, "--epochs", "1", "--json", report], capsys)
    assert code == 0, err
    assert out.splitlines()[1:] == [f"wrote report {report}"] and report.exists()
    assert sorted(os.listdir(tmp_path)) == ["four.npz", "only.json"]  # nothing else written


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a read-only file")
def test_a_resumed_checkpoint_that_cannot_be_written_back_is_refused_before_training(started, capsys):
    started.parent.chmod(0o500)
    try:
        code, out, err = run(["train", "--resume", started, "--epochs", "3"], capsys)
    finally:
        started.parent.chmod(0o700)
    assert code == 2 and "give --save OTHER.npz, or --no-save" in err and _epoch(started) == 2


def test_ctrl_c_while_resuming_saves_into_the_resumed_checkpoint(started, capsys, monkeypatch, sigint_default):
    real_step = TrainingStep.submit

    def step_then_ctrl_c(self, *args):
        loss = real_step(self, *args)
        if self.step == 10:  # epoch 3, step 2
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(TrainingStep, "submit", step_then_ctrl_c)
    code, out, err = run(["train", "--resume", started, "--epochs", "4", "--quiet"], capsys)
    assert code == 130
    assert err == (f"bngraph: interrupted in epoch 3 after step 2 (global step 10); saved {started}: continue with "
                   f"--resume {started}\n")
    assert read_checkpoint(started)[0]["step"] == 10
