"""Checkpoints (Model.save, bg.load, Model.load_checkpoint): round trips, exact resumption,
atomic writes, and clear errors for the wrong file or the wrong graph."""
from __future__ import annotations

import fnmatch
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
from bngraph.checkpoint import FORMAT

ROOT = Path(__file__).resolve().parents[1]


def data(n=37, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def assert_same_model(a, b):
    assert list(a.params) == list(b.params) and list(a.state) == list(b.state)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype, k
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=k)
    assert (a.step, a.epoch) == (b.step, b.epoch)


def assert_same_optimizer(a, b):
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["type"] == sb["type"] and sa["hyper"] == sb["hyper"] and sa["step"] == sb["step"]
    assert sa["slots"].keys() == sb["slots"].keys()
    for p in sa["slots"]:
        assert sa["slots"][p].keys() == sb["slots"][p].keys()
        for s in sa["slots"][p]:
            np.testing.assert_array_equal(sa["slots"][p][s], sb["slots"][p][s], err_msg=f"{p}/{s}")


OPTIMIZERS = {
    "adam": lambda: bg.optim.Adam(lr=1e-2),
    "sgd-momentum": lambda: bg.optim.SGD(lr=0.05, momentum=0.9),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-3, momentum=0.5),
    "adamw": lambda: bg.optim.AdamW(lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip(tmp_path, opt, dtype):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]), dtype=dtype, seed=3)
    model.fit(X, y, optimizer=OPTIMIZERS[opt](), epochs=2, batch_size=8, verbose=False)
    path = tmp_path / "run.npz"
    assert model.save(path) == str(path)
    loaded = bg.load(path)
    assert_same_model(model, loaded)
    assert (loaded.step, loaded.epoch) == (10, 2)
    assert loaded.dtype == np.dtype(dtype) and loaded.seed == 3 and loaded.target == "numpy"
    assert str(loaded.source_graph) == str(model.source_graph) and loaded.source == model.source
    assert_same_optimizer(model.optimizer, loaded.optimizer)
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
    # only the folder's checkpoint: no temporary file left
    assert os.listdir(tmp_path) == ["run.npz"]


def test_load_checkpoint_into_an_existing_model(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, verbose=False)
    model.save(tmp_path / "a.npz")
    other = bg.compile(bg.mlp([4, 6, 3]), seed=5)
    assert other.load_checkpoint(tmp_path / "a.npz") is other
    assert_same_model(model, other)
    assert_same_optimizer(model.optimizer, other.optimizer)
    held = other.params["fc1.W"]
    other.load_checkpoint(tmp_path / "a.npz")
    assert other.params["fc1.W"] is held  # restored into the live arrays


def test_model_without_optimizer_saves_and_loads(tmp_path):
    model = bg.compile(bg.mlp([4, 6, 3]), seed=2)
    model.save(tmp_path / "fresh.npz")
    loaded = bg.load(tmp_path / "fresh.npz")
    assert_same_model(model, loaded)
    assert loaded.optimizer is None


def test_checkpoint_is_an_npz_with_readable_metadata(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    model.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        files = set(z.files)
        meta = json.loads(str(z["meta"]))
    assert {f"param/{k}" for k in model.params} <= files and {f"state/{k}" for k in model.state} <= files
    assert any(f.startswith("optim/") for f in files)
    assert meta["format"] == "bngraph-checkpoint-1" and meta["step"] == model.step and meta["epoch"] == 1
    assert meta["optimizer"]["type"] == "Adam" and meta["graph"] == str(model.source_graph)


@pytest.mark.parametrize("opt", ["adam", "sgd-momentum"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_is_exact(tmp_path, opt, dtype):
    """fit 2 epochs, save, load, fit 2 more == fit 4 epochs straight (shuffled, merged last batch)."""
    X, y = data(37)  # 37 = 4*8 + 5: a short last batch
    Xv, yv = data(10, seed=1)
    kw = dict(batch_size=8, shuffle=True, seed=7, verbose=False, validation_data=(Xv, yv))

    straight = bg.compile(bg.mlp([4, 6, 5, 3]), dtype=dtype, seed=1)
    h_straight = straight.fit(X, y, optimizer=OPTIMIZERS[opt](), epochs=4, **kw)

    first = bg.compile(bg.mlp([4, 6, 5, 3]), dtype=dtype, seed=1)
    h1 = first.fit(X, y, optimizer=OPTIMIZERS[opt](), epochs=2, **kw)
    first.save(tmp_path / "half.npz")
    del first
    resumed = bg.load(tmp_path / "half.npz")
    h2 = resumed.fit(X, y, epochs=2, **kw)  # the restored optimizer

    assert_same_model(straight, resumed)
    assert_same_optimizer(straight.optimizer, resumed.optimizer)
    assert h1.column("epoch") + h2.column("epoch") == [1, 2, 3, 4]
    assert h1.column("loss") + h2.column("loss") == h_straight.column("loss")
    assert h1.column("val_loss") + h2.column("val_loss") == h_straight.column("val_loss")


def test_resume_with_the_fit_checkpoint_argument(tmp_path):
    X, y = data(37)
    path = tmp_path / "every_epoch.npz"
    straight = bg.compile(bg.mlp([4, 6, 3]))
    straight.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, verbose=False)
    a = bg.compile(bg.mlp([4, 6, 3]))
    a.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=8, verbose=False, checkpoint=str(path))
    assert bg.load(path).epoch == 2
    b = bg.load(path)
    b.fit(X, y, epochs=1, batch_size=8, verbose=False, checkpoint=str(path))
    assert_same_model(straight, b)
    assert_same_model(b, bg.load(path))
    assert sorted(os.listdir(tmp_path)) == ["every_epoch.npz"]


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    path = tmp_path / "ckpt.npz"
    model.save(path)
    old_bytes = path.read_bytes()
    old = bg.load(path)

    model.fit(X, y, epochs=1, verbose=False)  # newer values, then a crash while writing them
    real_savez = np.savez

    def crashing_savez(file, *args, **kw):
        file.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk...
        raise OSError("disk full")  # ...then the write fails

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.setattr(np, "savez", real_savez)

    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    assert path.read_bytes() == old_bytes
    assert_same_model(old, bg.load(path))
    # and a save that succeeds replaces it
    model.save(path)
    assert_same_model(model, bg.load(path))
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_interrupt_while_saving_cleans_up(tmp_path, monkeypatch):
    model = bg.compile(bg.mlp([4, 6, 3]))

    def interrupted(file, *args, **kw):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []  # neither a half checkpoint nor a temporary file


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_loading_into_a_different_graph_is_a_clear_error(tmp_path):
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.save(tmp_path / "a.npz")
    other = bg.compile(bg.mlp([4, 7, 3]))
    snap = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(bg.CheckpointError, match="the checkpoint is of a different graph") as info:
        other.load_checkpoint(tmp_path / "a.npz")
    msg = str(info.value)
    assert "line 2 in the checkpoint: param %fc1.W: f32[6,4]" in msg
    assert "line 2 in this model:     param %fc1.W: f32[7,4]" in msg
    for k, v in snap.items():
        np.testing.assert_array_equal(other.params[k], v)
    # another dtype is another graph too
    with pytest.raises(bg.CheckpointError, match="different graph"):
        bg.compile(bg.mlp([4, 6, 3]), dtype="float64").load_checkpoint(tmp_path / "a.npz")
    # as is another activation
    with pytest.raises(bg.CheckpointError, match="different graph"):
        bg.compile(bg.mlp([4, 6, 3], activation="tanh")).load_checkpoint(tmp_path / "a.npz")


def test_loading_into_a_model_compiled_with_other_passes_is_a_clear_error(tmp_path):
    bg.compile(bg.mlp([4, 6, 3])).save(tmp_path / "a.npz")
    unfolded = bg.compile(bg.mlp([4, 6, 3]), passes=[])  # keeps fc1.b
    with pytest.raises(bg.CheckpointError, match="params/state do not match this model's"):
        unfolded.load_checkpoint(tmp_path / "a.npz")


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(bg.CheckpointError, match="no such checkpoint"):
        bg.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "data.npz", X=np.zeros((3, 2)), y=np.zeros(3, int))
    with pytest.raises(bg.CheckpointError, match="not a bngraph checkpoint"):
        bg.load(tmp_path / "data.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(bg.CheckpointError, match="not a bngraph checkpoint"):
        bg.load(tmp_path / "notes.txt")
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(bg.CheckpointError, match="not a bngraph checkpoint \\(format 'something-else'\\)"):
        bg.load(tmp_path / "other.npz")
    model = bg.compile(bg.mlp([4, 6, 3]))
    with pytest.raises(bg.CheckpointError, match="no such checkpoint"):
        model.load_checkpoint(tmp_path / "missing.npz")
    assert issubclass(bg.CheckpointError, ValueError)


# --------------------------------------------------------------------------------------------
# Custom optimizers
# --------------------------------------------------------------------------------------------


class HeavyBall(bg.optim.Optimizer):
    """A custom optimizer with per-parameter state (through the base class's update/slots)."""

    def __init__(self, lr=0.05, mu=0.8):
        super().__init__(lr=lr, mu=mu)

    def update(self, p, g, slots):
        v = slots.get("v")
        if v is None:
            v = slots["v"] = np.zeros_like(p)
        v *= self.mu
        v += g
        p -= self.lr * v


class Bare:
    """Only the protocol: no state_dict, so nothing of it is saved."""

    def __init__(self, lr=0.1):
        self.lr = lr

    def step(self, params, grads):
        for k, g in grads.items():
            params[k] -= self.lr * g


def test_load_with_a_custom_optimizer_resumes_exactly(tmp_path):
    X, y = data()
    straight = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    straight.fit(X, y, optimizer=HeavyBall(), epochs=4, batch_size=8, verbose=False)
    half = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    half.fit(X, y, optimizer=HeavyBall(), epochs=2, batch_size=8, verbose=False)
    half.save(tmp_path / "hb.npz")

    with pytest.raises(ValueError, match="unknown optimizer type 'HeavyBall'.*load_state_dict"):
        bg.load(tmp_path / "hb.npz")  # a custom type cannot be rebuilt from its name

    mine = HeavyBall(lr=123.0, mu=0.0)
    with pytest.warns(UserWarning, match=r"hb\.npz: the given HeavyBall's hyperparameters were replaced by the "
                                         r"checkpoint's \(lr 123\.0 -> 0\.05, mu 0\.0 -> 0\.8\), so that training "
                                         r"resumes exactly; set them after loading"):
        resumed = bg.load(tmp_path / "hb.npz", optimizer=mine)
    assert resumed.optimizer is mine
    assert (mine.lr, mine.mu, mine.step_count) == (0.05, 0.8, 10)  # its saved state was loaded into it
    assert set(mine.state) == set(resumed.params)
    resumed.fit(X, y, epochs=2, batch_size=8, verbose=False)
    assert_same_model(straight, resumed)
    assert_same_optimizer(straight.optimizer, resumed.optimizer)


def test_load_with_a_protocol_only_optimizer(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=Bare(), epochs=1, verbose=False)
    model.save(tmp_path / "bare.npz")
    assert bg.load(tmp_path / "bare.npz").optimizer is None  # nothing to rebuild it from
    opt = Bare(lr=0.2)
    loaded = bg.load(tmp_path / "bare.npz", optimizer=opt)
    assert loaded.optimizer is opt and loaded.step == model.step
    loaded.fit(X, y, epochs=1, verbose=False)
    assert loaded.epoch == 2


def test_load_into_a_built_in_optimizer_of_another_type_is_refused(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    model.save(tmp_path / "adam.npz")
    with pytest.raises(ValueError, match="Adam"):
        bg.load(tmp_path / "adam.npz", optimizer=bg.optim.SGD(lr=0.1))


def test_failed_load_checkpoint_changes_nothing(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    model.save(tmp_path / "adam.npz")
    other = bg.compile(bg.mlp([4, 6, 3]), seed=4)
    before = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(ValueError, match="Adam"):
        other.load_checkpoint(tmp_path / "adam.npz", optimizer=bg.optim.SGD(lr=0.1))
    for k, v in before.items():
        np.testing.assert_array_equal(other.params[k], v, err_msg=k)
    assert (other.step, other.epoch) == (0, 0)


def test_model_compiled_with_pass_objects_saves(tmp_path):
    from bngraph.passes import PASSES

    model = bg.compile(bg.mlp([4, 6, 3]), passes=[PASSES["fold_bias"], "dce"])
    model.save(tmp_path / "p.npz")
    loaded = bg.load(tmp_path / "p.npz")
    assert_same_model(model, loaded)
    assert "fc1.b" not in loaded.params


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    path = tmp_path / "m.npz"
    bg.compile(bg.mlp([4, 6, 3])).save(path)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())


def test_a_model_stopped_before_a_bad_update_can_be_saved_and_loaded(tmp_path):
    X, y = data(40)
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    opt = bg.optim.SGD(lr=0.1)
    model.fit(X, y, optimizer=opt, epochs=1, batch_size=8, verbose=False)
    bad = X.copy()
    bad[3] = 3e38  # finite in float32; with these weights fc1 overflows and the loss is NaN
    model.set_params({"fc1.W": np.ones((5, 4))})
    with np.errstate(all="ignore"), pytest.raises(bg.TrainingDiverged, match="nothing was updated"):
        model.train_step(bad[:8], y[:8], opt)
    assert all(np.isfinite(v).all() for v in model.params.values())
    model.save(tmp_path / "stopped.npz")
    assert_same_model(model, bg.load(tmp_path / "stopped.npz"))


def test_a_model_whose_update_would_overflow_keeps_its_params_and_saves(tmp_path):
    X, y = data(40)
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=8, verbose=False)
    model.save(tmp_path / "good.npz")
    before = (tmp_path / "good.npz").read_bytes()
    with np.errstate(all="ignore"):
        hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=3e38, weight_decay=100.0), epochs=2, batch_size=8,
                         verbose=False)  # lr*(g + 100*p) overflows float32
    assert "step 6 made" in hist.stop_reason and hist.stop_reason.endswith("nothing was updated")
    model.save(tmp_path / "after.npz")  # nothing changed: the stop leaves the model as the good checkpoint
    assert_same_model(model, bg.load(tmp_path / "good.npz"))
    assert (tmp_path / "good.npz").read_bytes() == before


def test_loading_into_an_optimizer_with_the_same_hyperparameters_warns_nothing(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    model.save(tmp_path / "a.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = bg.load(tmp_path / "a.npz", optimizer=bg.optim.Adam(lr=1e-2))
    assert loaded.optimizer.lr == 1e-2
    with pytest.warns(UserWarning, match=r"lr 0\.5 -> 0\.01"):
        bg.load(tmp_path / "a.npz", optimizer=bg.optim.Adam(lr=0.5))


# --------------------------------------------------------------------------------------------
# Damaged checkpoints (item 7): one CheckpointError naming the file, the model unchanged
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    path = tmp_path_factory.mktemp("ck") / "good.npz"
    model.save(path)
    return path


def _load_damaged(path, original):
    """Loading a damaged file raises CheckpointError (naming it) and leaves the model alone, or, where
    the damage hit bytes no check covers (zip timestamps), restores exactly the original."""
    model = bg.compile(bg.mlp([4, 6, 3]), seed=9)
    before = {k: v.copy() for k, v in {**model.params, **model.state}.items()}
    try:
        model.load_checkpoint(path)
    except bg.CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
        for k, v in {**model.params, **model.state}.items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
        assert (model.step, model.epoch, model.optimizer) == (0, 0, None)
        return "refused"
    assert_same_model(original, model)
    return "loaded"


def test_a_truncated_checkpoint_is_refused_at_any_offset(saved, tmp_path):
    data_ = saved.read_bytes()
    original = bg.load(saved)
    cuts = sorted({*range(0, len(data_), max(1, len(data_) // 60)), *range(len(data_) - 40, len(data_))})
    outcomes = set()
    for cut in cuts:
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(data_[:cut])
        outcomes.add(_load_damaged(p, original))
    assert outcomes == {"refused"}


def test_a_flipped_bit_is_refused_or_harmless(saved, tmp_path):
    data_ = saved.read_bytes()
    original = bg.load(saved)
    refused = 0
    for i, pos in enumerate(range(0, len(data_), max(1, len(data_) // 80))):
        flipped = bytearray(data_)
        flipped[pos] ^= 1 << (i % 8)
        p = tmp_path / f"flip{pos}.npz"
        p.write_bytes(bytes(flipped))
        refused += _load_damaged(p, original) == "refused"
    assert refused > 60  # nearly every byte is covered by a CRC or a structural check


def _npz(path, meta=None, **arrays):
    if meta is not None:
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, match", [
    (lambda m, a: m.pop("graph"), r"damaged checkpoint: the metadata has no 'graph'"),
    (lambda m, a: m.pop("step"), r"the metadata has no 'step'"),
    (lambda m, a: m.update(step=-1), r"metadata 'step' is -1, expected a non-negative integer"),
    (lambda m, a: m.update(epoch="2"), r"metadata 'epoch' is '2', expected a non-negative integer"),
    (lambda m, a: m.update(dtype="float16"), r"metadata 'dtype' is 'float16', expected 'float32' or 'float64'"),
    (lambda m, a: m.update(seed=True), r"metadata 'seed' is True"),
    (lambda m, a: m.update(graph="graph broken {"), r"its graph does not parse"),
    (lambda m, a: m.update(target="nowhere"), r"cannot rebuild the model: unknown target 'nowhere'"),
    (lambda m, a: m.update(optimizer=[1]), r"metadata 'optimizer' is \[1\]"),
    (lambda m, a: m.update(fit={"seed": 0, "batch_size": 0, "n": 5, "shuffle": True}), r"'fit' has batch_size 0"),
    (lambda m, a: m.update(fit={"seed": 0, "batch_size": 8, "n": 5, "shuffle": True,
                                "position": {"epoch": 1, "done": 2, "losses": [1.0]}}), r"'fit' has position"),
    (lambda m, a: a.update({"param/fc1.W": np.array([["a"] * 4] * 6)}), r"param/fc1\.W holds <U1 values, expected numbers"),
    (lambda m, a: a.update({"state/bn1.running_var": np.array(["x"] * 6)}), r"state/bn1\.running_var holds <U1"),
    (lambda m, a: a.update({"junk": np.zeros(2)}), r"unexpected array 'junk'"),
    (lambda m, a: a.update({"state/bn1.running_var": -np.ones(6, np.float32)}),
     r"bn1\.running_var must be >= 0 \(a variance\), got -1\.0 at index 0"),  # item 4, from a checkpoint
    (lambda m, a: a.update({"param/fc1.W": np.full((6, 4), 1e39)}), r"fc1\.W holds 1e\+39, which overflows float32"),
    (lambda m, a: a.update({"param/fc1.W": np.zeros((4, 6), np.float32)}), r"fc1\.W expected shape \(6, 4\)"),
], ids=["no-graph", "no-step", "negative-step", "string-epoch", "bad-dtype", "bool-seed", "graph-does-not-parse",
        "unknown-target", "optimizer-not-a-dict", "fit-batch-size", "fit-position", "string-param", "string-state",
        "unknown-array", "negative-running-var", "overflowing-param", "wrong-shape"])
def test_damaged_metadata_and_arrays_are_one_clear_error(saved, tmp_path, change, match):
    meta, arrays = bg.model.read_checkpoint(saved)
    change(meta, arrays)
    path = _npz(tmp_path / "bad.npz", meta, **arrays)
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: .*{match}"):
        bg.load(path)
    if meta.get("graph") == str(bg.compile(bg.mlp([4, 6, 3])).source_graph) and meta.get("target") == "numpy":
        model = bg.compile(bg.mlp([4, 6, 3]), seed=9)
        before = {k: v.copy() for k, v in {**model.params, **model.state}.items()}
        with pytest.raises(bg.CheckpointError):
            model.load_checkpoint(path)
        for k, v in {**model.params, **model.state}.items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)"),
    (lambda p: p.write_text("hello"), r"not a \.npz archive"),
    (lambda p: np.save(open(p, "wb"), np.zeros(3)), r"is a single \.npy array"),
    (lambda p: _npz(p, X=np.zeros(3)), r"no metadata; its arrays are X"),
    (lambda p: np.savez(p, meta=np.zeros(3)), r"the metadata is a float64 array of shape \(3,\), not text"),
    (lambda p: np.savez(p, meta=np.zeros(())), r"the metadata is a float64 array of shape \(\), not text"),
    (lambda p: _npz(p, "{not json"), r"the metadata is not valid JSON"),
    (lambda p: _npz(p, "[1, 2]"), r"the metadata is a list, not an object"),
    (lambda p: _npz(p, {"format": FORMAT}, **{"param/x": np.array([{"a": 1}], dtype=object)}),
     r"cannot read key 'param/x': it holds Python objects"),
], ids=["empty", "text", "npy", "no-meta", "meta-array", "meta-number", "meta-not-json", "meta-list", "objects"])
def test_files_that_are_not_checkpoints_are_one_clear_error(tmp_path, make, match):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: .*{match}"):
        bg.load(path)


# --------------------------------------------------------------------------------------------
# Temporary files (item 14): recognisable, and those of killed saves cleaned up
# --------------------------------------------------------------------------------------------


def _ignored(name):
    patterns = [ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines() if ln.strip()]
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def test_temporary_files_are_named_after_the_target_and_ignored_by_git(tmp_path, monkeypatch):
    import bngraph.fileio as fileio

    names = []
    real = fileio.tempfile.mkstemp

    def spy(**kw):
        fd, path = real(**kw)
        names.append(os.path.basename(path))
        return fd, path

    monkeypatch.setattr(fileio.tempfile, "mkstemp", spy)
    bg.compile(bg.mlp([4, 6, 3])).save(tmp_path / "run.npz")
    (name,) = names
    assert re.fullmatch(rf"run\.npz\.{os.getpid()}-\w+\.bngraph-tmp", name), name
    assert _ignored(name) and not _ignored("run.npz")


def test_a_killed_save_leaves_a_temporary_file_that_the_next_save_removes(tmp_path):
    """A child process is killed (SIGKILL) while writing; the next save of the same path cleans up
    after it, and leaves other files (another target's temporary, a live process's) alone."""
    path = tmp_path / "run.npz"
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE)
    child.stdout.readline()  # it is writing now
    child.kill()
    child.wait()
    (left,) = [n for n in os.listdir(tmp_path) if n.endswith(".bngraph-tmp")]
    assert left.startswith(f"run.npz.{child.pid}-")
    live = tmp_path / f"run.npz.{os.getppid()}-x.bngraph-tmp"  # a process that is alive: maybe writing
    other = tmp_path / f"other.npz.{child.pid}-y.bngraph-tmp"  # another target's
    live.write_bytes(b"")
    other.write_bytes(b"")
    bg.compile(bg.mlp([4, 6, 3])).save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["run.npz", live.name, other.name])


KILLED_SAVE = """
import sys, time
import numpy as np
import bngraph as bg
def slow(f, **arrays):
    f.write(b"PK\\x03\\x04 part of a zip")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
np.savez = slow
bg.compile(bg.mlp([4, 6, 3])).save(sys.argv[1])
"""


def test_an_unwritable_destination_names_the_target_not_a_temporary_file(tmp_path):
    (tmp_path / "file").write_text("x")
    model = bg.compile(bg.mlp([4, 6, 3]))
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(tmp_path))}/file/run\.npz") as info:
        model.save(tmp_path / "file" / "run.npz")
    assert "bngraph-tmp" not in str(info.value)
    with pytest.raises(IsADirectoryError, match=rf"^cannot write {re.escape(str(tmp_path))}: it is a folder$"):
        model.save(tmp_path)
    X, y = data()
    with pytest.raises(OSError, match=r"cannot write fit checkpoint .*: .*file is a file, not a folder"):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), verbose=False, checkpoint=str(tmp_path / "file" / "c.npz"))
    assert model.step == 0  # refused before training


# --------------------------------------------------------------------------------------------
# fit's settings travel with the checkpoint (item 16)
# --------------------------------------------------------------------------------------------


def test_fit_seed_batch_size_and_shuffle_are_saved_and_used_on_resume(tmp_path):
    X, y = data(37)
    straight = bg.compile(bg.mlp([4, 6, 3]))
    straight.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=5, seed=11, verbose=False)
    half = bg.compile(bg.mlp([4, 6, 3]))
    half.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, batch_size=5, seed=11, verbose=False)
    half.save(tmp_path / "h.npz")
    meta = bg.model.read_checkpoint(tmp_path / "h.npz")[0]
    assert meta["fit"] == {"seed": 11, "batch_size": 5, "shuffle": True, "n": 37, "position": None}
    resumed = bg.load(tmp_path / "h.npz")
    resumed.fit(X, y, epochs=2, verbose=False)  # no seed, no batch size: the checkpoint's
    assert_same_model(straight, resumed)
