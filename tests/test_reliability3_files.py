"""Files that lie (issue 15): a checkpoint whose optimizer state is damaged, archives that inflate
far beyond their size, labels and fractions at the edges, a tampered fit position, and the data
check's NaN/inf test on data already in the model's dtype."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = shutil.which("g++") is not None
needs_emulator = pytest.mark.skipif(not EMULATOR, reason="the CUDA emulator needs g++")


def data(n=37, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def snapshot(model):
    """Everything a load could change: params, state, counters, fit's place, the optimizer's state."""
    opt = model.optimizer
    sd = None if opt is None else opt.state_dict()
    return {"values": {k: np.array(v) for k, v in {**model.params, **model.state}.items()},
            "counters": (model.step, model.epoch, json.dumps(model.fit_state)), "optimizer": opt,
            "opt_state": sd}


def assert_unchanged(model, before):
    for k, v in {**model.params, **model.state}.items():
        np.testing.assert_array_equal(v, before["values"][k], err_msg=k)
    assert (model.step, model.epoch, json.dumps(model.fit_state)) == before["counters"]
    assert model.optimizer is before["optimizer"]
    if before["opt_state"] is not None:
        assert_same_state(model.optimizer.state_dict(), before["opt_state"])


def assert_same_state(a, b):
    assert (a["type"], a["hyper"], a["step"], a.get("groups")) == (b["type"], b["hyper"], b["step"], b.get("groups"))
    assert {p: sorted(s) for p, s in a["slots"].items()} == {p: sorted(s) for p, s in b["slots"].items()}
    for p, slots in a["slots"].items():
        for k, v in slots.items():
            np.testing.assert_array_equal(v, b["slots"][p][k], err_msg=f"{p}/{k}")


# --------------------------------------------------------------------------------------------
# Item 1: the optimizer's state is checked at load, like params and state
# --------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-momentum": lambda: bg.optim.SGD(lr=0.05, momentum=0.9),
    "sgd-nesterov-groups": lambda: bg.optim.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                                groups=[{"params": "*.gamma", "lr": 0.01}]),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-3),
    "rmsprop-centered-momentum": lambda: bg.optim.RMSprop(lr=1e-3, centered=True, momentum=0.5),
    "adam": lambda: bg.optim.Adam(lr=1e-2),
    "adam-amsgrad": lambda: bg.optim.Adam(lr=1e-2, amsgrad=True),
    "adamw": lambda: bg.optim.AdamW(lr=1e-2, weight_decay=0.1),
    # groups with their own slots: only fc1.* keeps AMSGrad's max_exp_avg_sq
    "adamw-groups": lambda: bg.optim.AdamW(lr=1e-2, groups=[{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0},
                                                            {"params": "fc1.*", "amsgrad": True}]),
}
GRAPH = bg.mlp([4, 6, 3])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> a checkpoint of GRAPH trained two epochs with that optimizer."""
    X, y = data()
    folder, out = tmp_path_factory.mktemp("opt"), {}
    for name, make in OPTIMIZERS.items():
        model = bg.compile(GRAPH, seed=3)
        model.fit(X, y, optimizer=make(), epochs=2, batch_size=8, verbose=False)
        out[name] = model.save(folder / f"{name}.npz")
    return out


def _rewrite(path, meta, arrays):
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def _damages(name, meta, arrays):
    """(id, change, what the message must say) for a checkpoint of optimizer ``name``."""
    slots = sorted(k for k in arrays if k.startswith("optim/"))
    out = []
    for key in sorted({k.rpartition("/")[2] for k in slots}):  # every kind of slot, missing
        entry = next(k for k in slots if k.endswith("/" + key))
        if key == "max_exp_avg_sq" and name == "adamw-groups":
            continue  # fc1.W alone keeps it: without it, the state is that of amsgrad just turned on (below)
        out.append((f"missing-{key}", lambda m, a, e=entry: a.pop(e), rf"{re.escape(entry)} is missing"))
    if any(k.endswith("/step") for k in slots):
        out += [
            ("negative-counter", lambda m, a: a.update({"optim/out.b/step": np.array(-1)}),
             r"optim/out\.b/step is -1, expected a non-negative integer"),
            ("fractional-counter", lambda m, a: a.update({"optim/out.b/step": np.array(2.5)}),
             r"optim/out\.b/step is 2\.5 \(float64\), expected a non-negative integer"),
            ("counter-not-a-scalar", lambda m, a: a.update({"optim/out.b/step": np.array([5])}),
             r"optim/out\.b/step expected shape \(\), got \(1,\)"),
        ]
    first = slots[-1] if not slots[-1].endswith("/step") else slots[0]
    p = first.split("/")[1]
    shape = arrays[f"param/{p}"].shape
    out += [
        ("wrong-shape", lambda m, a: a.update({first: np.zeros(shape + (2,), np.float32)}),
         rf"{re.escape(first)} expected shape {re.escape(str(shape))} \(that of {re.escape(p)}\), got"),
        ("nan", lambda m, a: a.update({first: np.full(shape, np.nan, np.float32)}),
         rf"{re.escape(first)} contains NaN or inf"),
        ("overflows", lambda m, a: a.update({first: np.full(shape, 1e39)}),
         rf"{re.escape(first)} holds 1e\+39, which overflows float32"),
        ("integers", lambda m, a: a.update({first: np.zeros(shape, np.int64)}),
         rf"{re.escape(first)} holds int64 values, expected floating-point numbers"),
        ("unknown-param", lambda m, a: a.update({"optim/fc9.W/" + first.rpartition("/")[2]: np.zeros(3, np.float32)}),
         r"optim/fc9\.W/\w+ is the state of 'fc9\.W', which is not a parameter of this model"),
        ("negative-step", lambda m, a: m["optimizer"].update(step=-3),
         r"metadata 'optimizer' step is -3, expected a non-negative integer"),
        ("fractional-step", lambda m, a: m["optimizer"].update(step=1.5),
         r"metadata 'optimizer' step is 1\.5, expected a non-negative integer"),
        ("no-step", lambda m, a: m["optimizer"].pop("step"),
         r"metadata 'optimizer' step is None, expected a non-negative integer"),
        ("group-matches-nothing", lambda m, a: m["optimizer"].update(groups=[{"params": ["nothing.*"], "lr": 0.1}]),
         r"cannot restore the optimizer: parameter group 0 \(\['nothing\.\*'\]\) matches no parameter"),
    ]
    return out


ADAM = ["exp_avg", "exp_avg_sq", "step"]
SLOTS = {  # the slots each keeps per param (docs/training.md lists them)
    "sgd-momentum": ["momentum_buffer"], "sgd-nesterov-groups": ["momentum_buffer"], "rmsprop": ["square_avg"],
    "rmsprop-centered-momentum": ["grad_avg", "momentum_buffer", "square_avg"], "adam": ADAM,
    "adam-amsgrad": ADAM + ["max_exp_avg_sq"], "adamw": ADAM, "adamw-groups": ADAM + ["max_exp_avg_sq"],
}
OTHER_DAMAGES = ["wrong-shape", "nan", "overflows", "integers", "unknown-param", "negative-step", "fractional-step",
                 "no-step", "group-matches-nothing"]
COUNTER_DAMAGES = ["negative-counter", "fractional-counter", "counter-not-a-scalar"]
CASES = [(opt, d) for opt in sorted(OPTIMIZERS)
         for d in [f"missing-{k}" for k in SLOTS[opt] if (opt, k) != ("adamw-groups", "max_exp_avg_sq")] + (COUNTER_DAMAGES if "step" in SLOTS[opt] else [])
         + OTHER_DAMAGES]


def _damage(checkpoints, name, case, tmp_path):
    meta, arrays = bg.model.read_checkpoint(checkpoints[name])
    assert sorted({k.rpartition("/")[2] for k in arrays if k.startswith("optim/")}) == sorted(SLOTS[name])
    _, change, match = next(d for d in _damages(name, meta, arrays) if d[0] == case)
    change(meta, arrays)
    return _rewrite(tmp_path / "damaged.npz", meta, arrays), match


@pytest.mark.parametrize("opt, damage", CASES, ids=[f"{o}-{d}" for o, d in CASES])
def test_a_damaged_optimizer_state_is_refused_at_load(checkpoints, tmp_path, opt, damage):
    path, match = _damage(checkpoints, opt, damage, tmp_path)
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: .*{match}") as e:
        bg.load(path)
    assert "\n" not in str(e.value)

    # loaded into a trained model: nothing changes, neither in the model nor in its optimizer
    X, y = data()
    model = bg.compile(GRAPH, seed=5)
    model.fit(X[:20], y[:20], optimizer=OPTIMIZERS[opt](), epochs=1, batch_size=8, verbose=False)
    before = snapshot(model)
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: .*{match}"):
        model.load_checkpoint(path)
    assert_unchanged(model, before)
    given = OPTIMIZERS[opt]()
    given_before = given.state_dict()
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: .*{match}"):
        model.load_checkpoint(path, optimizer=given)
    assert_unchanged(model, before)
    assert_same_state(given.state_dict(), given_before)
    model.train_step(X[:8], y[:8])  # and it still trains


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_an_intact_optimizer_state_loads_and_resumes_exactly(checkpoints, opt):
    X, y = data()
    loaded = bg.load(checkpoints[opt])
    straight = bg.compile(GRAPH, seed=3)
    straight.fit(X, y, optimizer=OPTIMIZERS[opt](), epochs=3, batch_size=8, verbose=False)
    loaded.fit(X, y, epochs=1, batch_size=8, verbose=False)
    for k, v in straight.params.items():
        np.testing.assert_array_equal(loaded.params[k], v, err_msg=k)
    assert_same_state(loaded.optimizer.state_dict(), straight.optimizer.state_dict())


def test_an_optimizer_that_has_not_stepped_yet_loads(tmp_path):
    model = bg.compile(GRAPH)
    model.optimizer = bg.optim.Adam(lr=1e-2, amsgrad=True, groups=[{"params": "*.b", "lr": 0.1}])
    loaded = bg.load(model.save(tmp_path / "fresh.npz"))
    assert loaded.optimizer.state_dict()["slots"] == {} and loaded.optimizer.step_count == 0


@pytest.mark.parametrize("make, name, value", [
    pytest.param(lambda: bg.optim.Adam(lr=1e-2), "amsgrad", True, id="amsgrad"),
    pytest.param(lambda: bg.optim.SGD(lr=0.05), "momentum", 0.9, id="momentum"),
    pytest.param(lambda: bg.optim.RMSprop(lr=1e-3), "centered", True, id="centered")])
def test_a_slot_that_appears_at_the_next_step_may_be_missing(tmp_path, make, name, value):
    """A slot a new hyperparameter asks for (amsgrad, momentum raised from 0, centered) appears at
    the next step: a checkpoint saved in between is intact and resumes exactly."""
    X, y = data()
    model = bg.compile(GRAPH, seed=1)
    opt = make()
    model.fit(X, y, optimizer=opt, epochs=1, batch_size=8, verbose=False)
    setattr(opt, name, value)
    resumed = bg.load(model.save(tmp_path / "c.npz"))
    assert resumed.optimizer.hyper[name] == value
    for m in (model, resumed):
        m.fit(X, y, epochs=2, verbose=False)
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], resumed.params[k], err_msg=k)


def test_a_custom_optimizers_own_slots_are_checked_too(tmp_path):
    class HeavyBall(bg.optim.Optimizer):
        def __init__(self, lr=0.05, mu=0.8):
            super().__init__(lr=lr, mu=mu)

        def update(self, p, g, slots):
            v = slots.setdefault("v", np.zeros_like(p))
            v *= self.mu
            v += g
            p -= self.lr * v

    X, y = data()
    model = bg.compile(GRAPH)
    model.fit(X, y, optimizer=HeavyBall(), epochs=1, batch_size=8, verbose=False)
    path = model.save(tmp_path / "hb.npz")
    meta, arrays = bg.model.read_checkpoint(path)
    bg.load(path, optimizer=HeavyBall())  # intact: fine
    arrays["optim/fc1.W/v"] = np.full((6, 4), np.inf, np.float32)
    _rewrite(path, meta, arrays)
    mine = HeavyBall(lr=0.3)
    with pytest.raises(bg.CheckpointError, match=r"optim/fc1\.W/v contains NaN or inf"):
        bg.load(path, optimizer=mine)
    assert mine.lr == 0.3 and mine.state == {}
    arrays["optim/fc1.W/v"] = np.zeros((6,), np.float32)  # its own shapes (a factored moment): its business
    _rewrite(path, meta, arrays)
    assert bg.load(path, optimizer=HeavyBall()).optimizer.state["fc1.W"]["v"].shape == (6,)


def test_an_extra_slot_of_a_built_in_must_fit_its_flat_buffers(checkpoints, tmp_path):
    meta, arrays = bg.model.read_checkpoint(checkpoints["adam"])
    arrays["optim/fc1.W/extra"] = np.zeros((6,), np.float32)
    path = _rewrite(tmp_path / "extra.npz", meta, arrays)
    with pytest.raises(bg.CheckpointError, match=r"optim/fc1\.W/extra expected shape \(\) or \(6, 4\) \(that of "
                                                 r"fc1\.W\), got \(6,\)"):
        bg.load(path)
    arrays["optim/fc1.W/extra"] = np.zeros((6, 4), np.float32)  # e.g. amsgrad's, after amsgrad was turned off
    _rewrite(path, meta, arrays)
    bg.load(path).fit(*data(), epochs=1, verbose=False)


# --------------------------------------------------------------------------------------------
# Item 3: labels beyond int64, splits left empty, a fit position beyond its epoch
# --------------------------------------------------------------------------------------------


def _save(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize("key", ["y", "y_test"])
@pytest.mark.parametrize("label", [2**63, 2**63 + 5, 2**64 - 1])
def test_a_uint64_label_beyond_int64_is_refused_with_its_value(tmp_path, key, label):
    y = np.arange(10, dtype=np.uint64) % 2
    y[3] = label
    arrays = {"X": np.zeros((10, 2)), "y": np.arange(10, dtype=np.uint64) % 2, "X_test": np.zeros((10, 2))}
    arrays[key] = y
    arrays.setdefault("y_test", np.arange(10, dtype=np.uint64) % 2)
    p = _save(tmp_path, **arrays)
    with pytest.raises(bg.DatasetError, match=rf"^{re.escape(str(p))}: {key}: label {label} at row 3 is beyond any "
                                              rf"int64: labels are class indices 0\.\.C-1"):
        bg.load_dataset(p)


def test_uint64_labels_that_fit_load_exactly(tmp_path):
    y = np.arange(12, dtype=np.uint64) % 3
    ds = bg.load_dataset(_save(tmp_path, X=np.zeros((12, 2)), y=y), test_fraction=0.25)
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 3
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == sorted(y.astype(int).tolist())


@pytest.mark.parametrize("fraction, match", [
    (0.0, r"test_fraction 0 leaves the test split empty; expected a share in \(0, 1\)"),
    (0, r"test_fraction 0 leaves the test split empty; expected a share in \(0, 1\)"),
    (0.999, r"test_fraction 0\.999 leaves the training split empty: the smallest class has 4 examples and "
            r"round\(0\.999 x 4\) = 4 of them go to the test split"),
], ids=["0.0", "int-0", "0.999"])
def test_a_split_left_empty_is_refused(tmp_path, fraction, match):
    p = _save(tmp_path, X=np.zeros((12, 2)), y=np.arange(12) % 3)
    with pytest.raises(bg.DatasetError, match=rf"^{re.escape(str(p))}: {match}"):
        bg.load_dataset(p, test_fraction=fraction)
    with pytest.raises(bg.DatasetError, match=match.split(";")[0].split(":")[0]):
        bg.load_dataset("digits", test_fraction=fraction)


def test_a_class_left_out_of_the_training_split_is_refused(tmp_path):
    # class 2 has one example: round(0.6 x 1) = 1 sends it to the test split, none left to learn it from
    p = _save(tmp_path, X=np.zeros((9, 2)), y=np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]))
    with pytest.raises(bg.DatasetError, match=rf"^{re.escape(str(p))}: test_fraction 0\.6 leaves class 2 out of the "
                                              rf"training split: its 1 example goes to the test split"):
        bg.load_dataset(p, test_fraction=0.6)


def test_a_file_with_its_own_test_split_ignores_test_fraction(tmp_path):
    p = _save(tmp_path, X=np.zeros((6, 2)), y=np.arange(6) % 2, X_test=np.zeros((2, 2)), y_test=np.array([0, 1]))
    assert len(bg.load_dataset(p, test_fraction=0.2).X_test) == 2


def _position_checkpoint(tmp_path, graph, n, done):
    X, y = data(n)
    model = bg.compile(graph)
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=8, verbose=False)
    path = model.save(tmp_path / "fit.npz")
    meta, arrays = bg.model.read_checkpoint(path)
    meta["fit"]["position"] = {"epoch": 2, "done": done, "losses": [1.0] * done}
    return _rewrite(path, meta, arrays), (X, y)


@pytest.mark.parametrize("graph, n, steps", [(bg.mlp([4, 6, 3]), 37, 5), (bg.mlp([4, 6, 3]), 33, 4),
                                             (bg.mlp([4, 6, 3], batchnorm=False), 33, 5)],
                         ids=["37-examples", "33-examples-bn-merges-the-last", "33-examples-no-bn"])
def test_a_fit_position_beyond_its_epoch_is_refused(tmp_path, graph, n, steps):
    path, _ = _position_checkpoint(tmp_path, graph, n, steps + 1)
    with pytest.raises(bg.CheckpointError, match=rf"^{re.escape(str(path))}: damaged checkpoint: metadata 'fit' "
                                                 rf"position has done {steps + 1}, but an epoch of {n} examples in "
                                                 rf"batches of 8 has {steps} steps"):
        bg.load(path)
    model = bg.compile(graph, seed=4)
    before = snapshot(model)
    with pytest.raises(bg.CheckpointError):
        model.load_checkpoint(path)
    assert_unchanged(model, before)
    path, (X, y) = _position_checkpoint(tmp_path, graph, n, steps - 1)  # inside the epoch: resumes there
    model = bg.load(path)
    hist = model.fit(X, y, epochs=1, verbose=False)
    assert model.epoch == 2 and model.step == 2 * steps - steps + 1 and len(hist) == 1


def test_fit_given_a_position_beyond_the_epoch_starts_the_epoch_again(capsys):
    X, y = data(37)
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=8, verbose=False)
    model.fit_state["position"] = {"epoch": 2, "done": 9, "losses": [1.0] * 9}
    model.fit(X, y, epochs=1, verbose=True)
    assert model.epoch == 2 and model.step == 10  # a whole epoch of 5 steps: none skipped
    assert "epoch 2 starts again from its first batch" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Item 4: NaN/inf in data already in the model's dtype (no cast) is refused too, on every target
# --------------------------------------------------------------------------------------------

TARGETS = [("numpy", None), pytest.param("cuda", "emulator", marks=needs_emulator)]


@pytest.mark.parametrize("what", ["X", "targets"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target, device", TARGETS)
def test_nan_and_inf_in_the_models_own_dtype_are_refused(target, device, dtype, what):
    model = bg.compile(bg.mlp([4, 5, 2], loss="mse"), target=target, device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    X, t = rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal((6, 2)).astype(dtype)
    before = snapshot(model)
    for bad in (np.nan, np.inf, -np.inf):
        Xb, tb = X.copy(), t.copy()
        if what == "X":
            Xb[2, 1] = bad
        else:
            tb[2, 0] = bad
        assert Xb.dtype == tb.dtype == model.dtype  # no cast: the check must not depend on one
        calls = [("train_step", lambda: model.train_step(Xb, tb, bg.optim.SGD(lr=0.1))),
                 ("fit", lambda: model.fit(Xb, tb, optimizer=bg.optim.SGD(lr=0.1), batch_size=3, verbose=False)),
                 ("evaluate", lambda: model.evaluate(Xb, tb))]
        if what == "X":
            calls += [("forward", lambda: model.forward(Xb)), ("forward", lambda: model.predict(Xb))]
        for where, call in calls:
            with pytest.raises(bg.DataError, match=rf"^{where}: {what} row 2 contains NaN or inf \(1 bad rows\)"):
                call()
    model.optimizer = None
    before["optimizer"] = None
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# Item 2: archives that inflate far beyond their size: sizes checked before inflating
# --------------------------------------------------------------------------------------------

MiB = 1 << 20


def _npy_header(shape, dtype="<f8") -> bytes:
    import io

    import numpy.lib.format as npformat
    f = io.BytesIO()
    npformat.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return f.getvalue()


def _bomb(path, members: dict) -> Path:
    """A .npz of ``{name: (npy header, bytes of zeros after it)}``, deflated (zeros shrink ~1000x)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        for name, (header, zeros) in members.items():
            with z.open(name, "w", force_zip64=zeros > 1 << 30) as f:
                f.write(header)
                block = bytes(MiB)
                for _ in range(zeros // MiB):
                    f.write(block)
                f.write(bytes(zeros % MiB))
    return Path(path)


def _peak(code: str, limit=None) -> dict:
    """Run ``code`` (it sets ``result``) in a fresh Python; its result and its peak resident memory
    during the code, in MiB beyond what it had before (ru_maxrss: the process's high-water mark)."""
    prog = textwrap.dedent(f"""
        import json, resource, sys
        import numpy as np
        import bngraph as bg, bngraph.fileio as fileio
        if {limit!r} is not None:
            fileio.NPZ_LIMIT = {limit!r}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except Exception as e:
            result = f"{type(e).__name__}: {e}"
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({"result": result, "grown_mib": grown}))
    """)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    big = 256 * MiB
    return {
        # honest: the header and the archive both say 256 MiB (a 256 KiB file)
        "honest": _bomb(d / "honest.npz", {"X.npy": (_npy_header((big // 8,)), big),
                                           "y.npy": (_npy_header((4,), "<i8"), 32)}),
        # the header says 10 numbers, the member inflates to 256 MiB
        "lying-header": _bomb(d / "lying.npz", {"X.npy": (_npy_header((10,)), big),
                                                "y.npy": (_npy_header((4,), "<i8"), 32)}),
        # the header claims 8 TiB; the member holds 80 bytes
        "huge-shape": _bomb(d / "huge.npz", {"X.npy": (_npy_header((2**20, 2**20)), 80),
                                             "y.npy": (_npy_header((4,), "<i8"), 32)}),
    }


@pytest.mark.parametrize("loader", ["load_dataset", "load"])
def test_an_archive_inflating_beyond_the_limit_is_refused_before_inflating(bombs, loader):
    path = bombs["honest"]
    assert path.stat().st_size < 2 * MiB
    out = _peak(f"result = bg.{loader}({str(path)!r})", limit=64 * MiB)
    err = "DatasetError" if loader == "load_dataset" else "CheckpointError"
    assert re.match(rf"{err}: {re.escape(str(path))}: cannot read key 'X': it would inflate to 256\.0 MiB, more than "
                    rf"the 64\.0 MiB allowed \(bngraph\.fileio\.NPZ_LIMIT\); nothing was inflated$", out["result"]), out
    assert out["grown_mib"] < 32, out  # nothing inflated


def test_the_default_limit_is_the_memory_available(bombs, monkeypatch):
    import bngraph.fileio as fileio
    assert fileio.NPZ_LIMIT is None and fileio.npz_limit() > 0
    monkeypatch.setattr(fileio, "_available_memory", lambda: 100 * MiB)
    with pytest.raises(bg.DatasetError, match=r"more than the 100\.0 MiB allowed \(the memory available now"):
        bg.load_dataset(bombs["honest"])


@pytest.mark.parametrize("loader", ["load_dataset", "load"])
def test_a_member_holding_more_than_its_header_declares_is_refused_without_inflating_it(bombs, loader):
    path = bombs["lying-header"]
    out = _peak(f"result = bg.{loader}({str(path)!r})")  # the default limit: this machine's memory
    err = "DatasetError" if loader == "load_dataset" else "CheckpointError"
    assert re.match(rf"{err}: {re.escape(str(path))}: .*key 'X': it holds more data than its header declares "
                    rf"\(shape \(10,\) float64, 80 bytes\)", out["result"]), out
    assert out["grown_mib"] < 32, out


@pytest.mark.parametrize("loader", ["load_dataset", "load"])
def test_a_header_claiming_a_huge_shape_is_refused_without_allocating(bombs, loader):
    path = bombs["huge-shape"]
    out = _peak(f"result = bg.{loader}({str(path)!r})")
    err = "DatasetError" if loader == "load_dataset" else "CheckpointError"
    assert re.match(rf"{err}: {re.escape(str(path))}: .*key 'X': truncated \(its header says shape "
                    rf"\(1048576, 1048576\) float64", out["result"]), out
    assert out["grown_mib"] < 32, out


def test_read_npz_still_reads_every_kind_of_array(tmp_path):
    from bngraph.fileio import read_npz
    arrays = {"f": np.arange(12.0).reshape(3, 4), "F": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
              "i": np.array([1, -2], np.int16), "u": np.array([2**64 - 1], np.uint64), "empty": np.zeros((0, 3)),
              "scalar": np.array(3.5), "text": np.array("hi"), "b": np.array([True, False]),
              "big-endian": np.arange(3, dtype=">f8")}
    for compress in (np.savez, np.savez_compressed):
        compress(tmp_path / "a.npz", **arrays)
        got = read_npz(tmp_path / "a.npz")
        assert list(got) == list(arrays)
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got["F"].flags.f_contiguous


def test_the_limit_counts_every_member_of_the_archive(tmp_path):
    p = tmp_path / "two.npz"
    np.savez(p, X=np.zeros((1000, 4)), y=np.zeros(1000, np.int64))  # 32,000 + 8,000 bytes of data
    from bngraph.fileio import NpzTooLarge, read_npz
    assert set(read_npz(p, limit=50_000)) == {"X", "y"}
    with pytest.raises(NpzTooLarge, match=r"^its 2 arrays would inflate to 39\.3 KiB, more than the 39\.1 KiB allowed"):
        read_npz(p, limit=40_000)
    with pytest.raises(NpzTooLarge, match=r"^cannot read key 'X': it would inflate to 31\.4 KiB"):
        read_npz(p, limit=30_000)
    import bngraph.fileio as fileio
    fileio.NPZ_LIMIT = 40_000
    try:
        with pytest.raises(bg.DatasetError, match=rf"^{re.escape(str(p))}: its 2 arrays would inflate to 39\.3 KiB, "
                                                  r"more than the 39\.1 KiB allowed \(bngraph\.fileio\.NPZ_LIMIT\)"):
            bg.load_dataset(p)
    finally:
        fileio.NPZ_LIMIT = None
