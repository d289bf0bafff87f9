"""The command line against its own files and flags (issue 15, CLI part).

* ``--resume`` continues the recorded run: every setting that shapes it (data, validation share,
  optimizer, lr, batch size, seed, epochs) comes from the checkpoint; a flag that contradicts it is
  one line; the JSON report says what ran; a checkpoint of an optimizer the command line cannot
  build is refused, never resumed as Adam.
* No output overwrites an input or another output (hard links and symbolic links included).
* Standalone files are named safely: never a module that Python could import instead of another,
  never outside ``--out``, never over an unrelated file.
* ``python -m bngraph.cli`` is ``bngraph``.
* ``--val-fraction`` that leaves too few training rows is refused up front.
* Every file the command line and the export APIs write is read back, and nothing else is written.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.checkpoint import read as read_checkpoint
from bngraph.cli import main
from cli_support import assert_same_checkpoint, run
from interop_support import need

MODELS = Path(__file__).parent / "models"
SMALL = str(MODELS / "small.py")
ROOT = Path(__file__).parent.parent



def one_line_error(code, err, pattern):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bngraph: error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def files_under(root) -> set:
    root = Path(root)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """The digits as a .npz of X and y: a data set given by path."""
    ds = bg.load_dataset("digits")
    path = tmp_path_factory.mktemp("data") / "digits_copy.npz"
    np.savez(path, X=np.concatenate([ds.X_train, ds.X_test]), y=np.concatenate([ds.y_train, ds.y_test]))
    return path


# flags only on the first command; the resumed one gives only --resume, --epochs and --save
FIRST = ["--val-fraction", "0.3", "--optimizer", "momentum", "--lr", "0.02", "--batch-size", "50", "--seed", "5",
         "--quiet"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_file):
    """Three epochs in one go with non-default settings: what every resumed run must equal."""
    d = tmp_path_factory.mktemp("straight")
    code = main(["train", "--dataset", str(data_file), "--epochs", "3", *FIRST, "--save", str(d / "a.npz"),
                 "--json", str(d / "a.json")])
    assert code == 0
    return d / "a.npz", json.loads((d / "a.json").read_text())


# ---- 1: --resume continues the recorded run ----------------------------------------------------


@pytest.mark.parametrize("first_epochs", [1, 2])
def test_resume_without_the_flags_equals_the_straight_run(tmp_path, capsys, data_file, straight_run, first_epochs):
    a, report_a = straight_run
    b, js = tmp_path / "b.npz", tmp_path / "b.json"
    code, _, err = run(["train", "--dataset", data_file, "--epochs", first_epochs, *FIRST, "--save", b], capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", b, "--epochs", "3", "--save", b, "--json", js], capsys)
    assert code == 0, err
    assert_same_checkpoint(a, b)  # bit for bit: same data, split, optimizer, lr, batch size
    report = json.loads(js.read_text())
    for key in ("optimizer", "lr", "batch_size", "seed", "val_fraction", "examples", "dataset", "epochs", "target"):
        assert report[key] == report_a[key], key
    assert (report["optimizer"], report["lr"], report["batch_size"], report["val_fraction"]) == ("momentum", 0.02,
                                                                                                 50, 0.3)
    assert report["test"] == report_a["test"]


def test_resume_without_epochs_finishes_the_recorded_run(tmp_path, capsys, data_file, straight_run):
    b = tmp_path / "b.npz"
    code, _, err = run(["train", "--dataset", data_file, "--epochs", "3", *FIRST, "--save", b], capsys)
    assert code == 0, err
    before = b.read_bytes()
    code, out, err = run(["train", "--resume", b, "--save", b], capsys)  # not 15 more epochs: the run's 3
    assert code == 0, err
    assert "nothing left of 3 epochs" in err.splitlines()[0]
    assert b.read_bytes() == before


@pytest.mark.parametrize("extra, pattern", [
    (["--val-fraction", "0.1"], r"--val-fraction 0\.1 differs from the checkpoint .*a\.npz's 0\.3: .*validation"),
    (["--optimizer", "sgd"], r"--optimizer sgd differs from the checkpoint .*a\.npz's momentum"),
    (["--optimizer", "adam"], r"--optimizer adam differs from the checkpoint .*a\.npz's momentum"),
    (["--dataset", "digits"], r"--dataset digits is not the data of the run saved in .*a\.npz"),
    (["--seed", "2"], r"--seed 2 differs from the checkpoint .*a\.npz's 5"),
])
def test_resume_refuses_a_flag_that_contradicts_the_run(capsys, straight_run, extra, pattern):
    a, _ = straight_run
    before = a.read_bytes()
    code, out, err = run(["train", "--resume", a, "--epochs", "4", "--save", a, *extra], capsys)
    one_line_error(code, err, pattern)
    assert a.read_bytes() == before


def test_resume_accepts_the_flags_that_agree_with_the_run(tmp_path, capsys, data_file, straight_run):
    a, _ = straight_run
    code, out, err = run(["train", "--resume", a, "--epochs", "3", "--dataset", data_file, *FIRST,
                          "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err


def test_sgd_checkpoint_refuses_momentum_and_json_says_what_ran(tmp_path, capsys):
    c = tmp_path / "c.npz"
    code, _, err = run(["train", "--epochs", "1", "--optimizer", "sgd", "--batch-size", "100", "--quiet",
                        "--save", c], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", c, "--epochs", "2", "--optimizer", "momentum"], capsys)
    one_line_error(code, err, r"--optimizer momentum differs from the checkpoint .*c\.npz's sgd")
    code, _, err = run(["train", "--resume", c, "--epochs", "2", "--quiet", "--lr", "0.05",
                        "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["optimizer"], report["lr"], report["batch_size"]) == ("sgd", 0.05, 100)


class ProtocolSGD:
    """An optimizer of the protocol only (no state_dict): the command line cannot rebuild it."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, params, grads):
        for k, g in grads.items():
            params[k][...] -= self.lr * g


class MyAdam(bg.optim.Adam):
    """A subclass: its state_dict names a type the command line does not know."""


@pytest.mark.parametrize("opt", [ProtocolSGD(0.05), MyAdam(1e-3)], ids=["protocol", "subclass"])
def test_a_checkpoint_of_a_users_optimizer_is_refused_not_resumed_as_adam(tmp_path, capsys, opt):
    ds = bg.load_dataset("digits")
    model = bg.compile(bg.mlp([64, 16, 10], name="small"), seed=0)
    model.fit(ds.X_train[:300], ds.y_train[:300], optimizer=opt, epochs=1, batch_size=100, verbose=False)
    path = tmp_path / "user.npz"
    model.save(path)
    before = path.read_bytes()
    name = type(opt).__name__
    code, out, err = run(["train", "--resume", path, "--epochs", "2", "--save", path, "--quiet"], capsys)
    one_line_error(code, err, rf"user\.npz was trained with the optimizer {name}, which the command line cannot "
                              rf"rebuild.*Python")
    assert path.read_bytes() == before


def test_a_checkpoint_saved_from_python_resumes_with_its_own_optimizer(tmp_path, capsys):
    """No command-line record in it: the optimizer, lr and batch size still come from the checkpoint."""
    ds = bg.load_dataset("digits")
    model = bg.compile(bg.mlp([64, 128, 64, 10], activation="relu", batchnorm=True, name="mlp"), seed=0)
    model.fit(ds.X_train, ds.y_train, optimizer=bg.optim.make("momentum", lr=0.01), epochs=1, batch_size=80,
              verbose=False)
    path = tmp_path / "py.npz"
    model.save(path)
    code, out, err = run(["train", "--resume", path, "--epochs", "2", "--val-fraction", "0", "--json",
                          tmp_path / "r.json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["optimizer"], report["lr"], report["batch_size"]) == ("momentum", 0.01, 80)


# ---- 2: outputs never clobber inputs ------------------------------------------------------------


@pytest.fixture
def files(tmp_path, capsys):
    """A checkpoint, a data set, a model file; and hard and symbolic links to them."""
    ck = tmp_path / "c.npz"
    code, _, err = run(["train", "--epochs", "1", "--batch-size", "200", "--quiet", "--save", ck], capsys)
    assert code == 0, err
    ds = bg.load_dataset("digits")
    np.savez(tmp_path / "d.npz", X=ds.X_train, y=ds.y_train)
    (tmp_path / "net.py").write_text("import bngraph as bg\nmodel = bg.mlp([64, 16, 10], name='net')\n")
    os.link(tmp_path / "c.npz", tmp_path / "c_hard.npz")
    os.link(tmp_path / "d.npz", tmp_path / "d_hard.npz")
    os.symlink(tmp_path / "c.npz", tmp_path / "c_sym.npz")
    os.symlink(tmp_path / "d.npz", tmp_path / "d_sym.npz")
    return tmp_path


CLOBBER = [
    ("save-is-json", ["train", "--epochs", "1", "--save", "{t}/r.npz", "--json", "{t}/r.npz"],
     r"--json .*r\.npz and --save .*r\.npz are the same file"),
    ("json-is-resume", ["train", "--resume", "{t}/c.npz", "--epochs", "2", "--json", "{t}/c.npz"],
     r"--json .*c\.npz and --resume .*c\.npz are the same file"),
    ("save-is-dataset", ["train", "--dataset", "{t}/d.npz", "--epochs", "1", "--save", "{t}/d.npz"],
     r"--save .*d\.npz and --dataset .*d\.npz are the same file"),
    ("json-is-dataset-hard-link", ["train", "--dataset", "{t}/d.npz", "--epochs", "1", "--json", "{t}/d_hard.npz"],
     r"--json .*d_hard\.npz and --dataset .*d\.npz are the same file"),
    ("save-is-dataset-symlink", ["train", "--dataset", "{t}/d_sym.npz", "--epochs", "1", "--save", "{t}/d.npz"],
     r"--save .*d\.npz and --dataset .*d_sym\.npz are the same file"),
    ("json-is-resume-hard-link", ["train", "--resume", "{t}/c.npz", "--epochs", "2", "--json", "{t}/c_hard.npz"],
     r"--json .*c_hard\.npz and --resume .*c\.npz are the same file"),
    ("save-is-model-file", ["train", "{t}/net.py", "--epochs", "1", "--save", "{t}/net.py"],
     r"--save .*net\.py and MODEL .*net\.py are the same file"),
    ("resume-is-dataset", ["train", "--resume", "{t}/c.npz", "--dataset", "{t}/c_sym.npz", "--epochs", "2"],
     r"--dataset .*c_sym\.npz and --resume .*c\.npz are the same file"),
    ("standalone-over-its-checkpoint", ["emit", "{t}/mlp.npz", "--inference", "--standalone", "--out", "{t}"],
     r"--out .*mlp\.npz and MODEL .*mlp\.npz are the same file"),
    ("emit-over-its-model-file", ["emit", "{t}/net_numpy.py:model", "--out", "{t}"],
     r"--out .*net_numpy\.py and MODEL .*net_numpy\.py are the same file"),
    ("show-over-its-model-file", ["show", "{t}/net.py", "--out", "{t}/net_link.dot"],
     r"--out .*net_link\.dot and MODEL .*net\.py are the same file"),
]


@pytest.mark.parametrize("argv, pattern", [pytest.param(a, p, id=i) for i, a, p in CLOBBER])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_anything_runs(files, capsys, argv, pattern):
    (files / "net_numpy.py").write_text((files / "net.py").read_text())
    os.link(files / "net.py", files / "net_link.dot")
    os.link(files / "c.npz", files / "mlp.npz")  # a checkpoint of graph mlp, where its standalone .npz would go
    before = {p: (files / p).read_bytes() for p in files_under(files)}
    code, out, err = run([a.replace("{t}", str(files)) for a in argv], capsys)
    one_line_error(code, err, pattern)
    assert {p: (files / p).read_bytes() for p in files_under(files)} == before  # nothing written, nothing changed


def test_save_at_the_resumed_checkpoint_is_the_point(files, capsys):
    code, out, err = run(["train", "--resume", files / "c.npz", "--epochs", "2", "--save", files / "c_hard.npz",
                          "--quiet"], capsys)
    assert code == 0, err
    assert read_checkpoint(files / "c_hard.npz")[0]["epoch"] == 2


# ---- 3: standalone file names from untrusted text -------------------------------------------------


def _onnx_named(tmp_path, name):
    onnx = need("onnx")
    rng = np.random.default_rng(0)
    model = bg.compile(bg.mlp([6, 8, 3]), seed=1)
    model.fit(rng.normal(size=(40, 6)), rng.integers(0, 3, 40), optimizer=bg.optim.Adam(1e-2), epochs=1, batch_size=8,
              verbose=False)
    path = tmp_path / "m.onnx"
    bg.to_onnx(model, path)
    proto = onnx.load(str(path))
    proto.graph.name = name
    onnx.save(proto, str(path))
    return model, path


RUN_IN_FOLDER = """
import sys
sys.modules["bngraph"] = None
import importlib, numpy as np
mod = importlib.import_module(sys.argv[1])
assert mod.np is np and np.__file__ != mod.__file__
np.save(sys.argv[3], mod.output(np.load(sys.argv[2])))
"""


def _predict_in(folder, module, X, scratch):
    np.save(scratch / "X.npy", X)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ next to the module: only the written files
    proc = subprocess.run([sys.executable, "-c", RUN_IN_FOLDER, module, str(scratch / "X.npy"),
                           str(scratch / "out.npy")], cwd=folder, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.load(scratch / "out.npy")


@pytest.mark.parametrize("graph_name, module", [("setup", "setup_model"), ("numpy", "numpy_model"),
                                                ("os", "os_model"), ("../x", "x"), ("bngraph", "bngraph_model"),
                                                ("json", "json_model"), ("conftest", "conftest_model")])
def test_standalone_files_never_shadow_a_module_nor_leave_out(tmp_path, capsys, monkeypatch, graph_name, module):
    model, onnx_path = _onnx_named(tmp_path, graph_name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run(["emit", onnx_path, "--inference", "--standalone", "--out", "."], capsys)
    assert code == 0, err
    assert files_under(tmp_path / "work") == {f"{module}.py", f"{module}.npz"}
    assert out.split() == [os.path.join(".", f"{module}.py"), os.path.join(".", f"{module}.npz")]
    assert f"{graph_name}" in err or graph_name == "../x"  # it says why the name is not the graph's
    X = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(_predict_in(work, module, X, tmp_path), model.forward(X), rtol=1e-5, atol=1e-6)


def test_standalone_refuses_to_overwrite_an_unrelated_file(tmp_path, capsys):
    _, onnx_path = _onnx_named(tmp_path, "mlp")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlp.py").write_text("# my own mlp.py\n")
    code, _, err = run(["emit", onnx_path, "--inference", "--standalone", "--out", out], capsys)
    one_line_error(code, err, r"--out: .*mlp\.py exists and is not a bngraph standalone module.*not overwritten")
    assert (out / "mlp.py").read_text() == "# my own mlp.py\n" and files_under(out) == {"mlp.py"}
    (out / "mlp.py").unlink()
    np.savez(out / "mlp.npz", X=np.zeros(3))
    code, _, err = run(["emit", onnx_path, "--inference", "--standalone", "--out", out], capsys)
    one_line_error(code, err, r"--out: .*mlp\.npz exists and is not the weights of a bngraph standalone module")
    (out / "mlp.npz").unlink()
    for _ in range(2):  # its own files, written again: fine
        code, _, err = run(["emit", onnx_path, "--inference", "--standalone", "--out", out], capsys)
        assert code == 0, err
    assert files_under(out) == {"mlp.py", "mlp.npz"}


def test_write_standalone_refuses_a_module_name_that_shadows(tmp_path):
    from bngraph.interop.standalone import write_standalone
    from bngraph.init import init_values

    g = bg.mlp([4, 5, 3]).build()
    with pytest.raises(ValueError, match=r"module name 'numpy' .*shadow"):
        write_standalone(g, init_values(g, 0), tmp_path, module="numpy")
    with pytest.raises(ValueError, match=r"module name '\.\./x' .*identifier"):
        write_standalone(g, init_values(g, 0), tmp_path, module="../x")
    assert files_under(tmp_path) == set()


# ---- 4: python -m bngraph.cli ----------------------------------------------------------------------


def test_python_m_bngraph_cli_is_the_bngraph_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BNGRAPH_DEBUG", None)
    for argv, pattern in [(["emit", "run.npz", "--standalone", "--out", "x"], r"add --inference"),
                          (["emit", "missing.npz", "--inference", "--standalone", "--out", "x"],
                           r"missing\.npz: no such checkpoint"),
                          (["train", "--val-fraction", "0.999", "--quiet"], r"--val-fraction 0\.999")]:
        proc = subprocess.run([sys.executable, "-m", "bngraph.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        one_line_error(proc.returncode, proc.stderr, pattern)
    assert files_under(tmp_path) == set()


# ---- 5: a validation share that leaves no training rows ------------------------------------------


@pytest.mark.parametrize("fraction, pattern", [
    ("0.999", r"--val-fraction 0\.999 leaves 0 training examples of the 1438 in the training split \(1438 held out "
              r"for validation\); training needs at least 2"),
])
def test_a_validation_share_that_leaves_no_training_rows_is_refused(tmp_path, capsys, fraction, pattern):
    code, out, err = run(["train", "--val-fraction", fraction, "--save", tmp_path / "r.npz"], capsys)
    one_line_error(code, err, pattern)
    assert files_under(tmp_path) == set()


def test_a_validation_share_that_leaves_one_training_row_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(4, 4)), y=np.array([0, 1, 1, 1]), X_test=rng.normal(size=(3, 4)),
             y_test=np.array([0, 1, 2]))
    code, out, err = run(["train", f"{SMALL}:tiny", "--dataset", tmp_path / "d.npz", "--val-fraction", "0.6"],
                         capsys)
    one_line_error(code, err, r"--val-fraction 0\.6 leaves 1 training example of the 4 in the training split \(3 held "
                              r"out for validation\); training needs at least 2")


# ---- 7: every file written is read back, and nothing else is written -----------------------------


def test_every_writer_writes_only_its_destinations_and_each_reads_back(tmp_path, capsys, monkeypatch):
    dest, cwd = tmp_path / "dest", tmp_path / "cwd"
    dest.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    spec = dest / "inputs" / "net.py"
    spec.parent.mkdir()
    spec.write_text("import bngraph as bg\nmodel = bg.mlp([64, 16, 10], name='net')\n")
    expected = {"inputs/net.py"}

    def check(*new):
        expected.update(new)
        assert files_under(tmp_path) - {"scratch/X.npy", "scratch/out.npy"} == {f"dest/{p}" for p in expected}

    # train --save --json
    code, out, err = run(["train", spec, "--epochs", "2", "--batch-size", "200", "--quiet", "--save",
                          dest / "run.npz", "--json", dest / "run.json"], capsys)
    assert code == 0, err
    check("run.npz", "run.json")
    model = bg.load(dest / "run.npz")
    assert model.epoch == 2 and json.loads((dest / "run.json").read_text())["epochs"] == 2
    # resume onto itself, a JSON in another folder (made first: a file's folder must exist)
    (dest / "reports").mkdir()
    code, out, err = run(["train", "--resume", dest / "run.npz", "--epochs", "3", "--save", dest / "run.npz",
                          "--json", dest / "reports" / "r.json", "--quiet"], capsys)
    assert code == 0, err
    check("reports/r.json")
    assert bg.load(dest / "run.npz").epoch == 3
    assert json.loads((dest / "reports" / "r.json").read_text())["resumed_from"] == str(dest / "run.npz")
    # emit --out: the training module, the inference module, the CUDA sources
    for extra, names in ([[], ["net_numpy.py"]], [["--inference"], ["net_numpy_inference.py"]],
                         [["--target", "cuda"], ["net_cuda.cu", "net_cuda.py"]]):
        code, out, err = run(["emit", spec, "--out", dest / "emit", *extra], capsys)
        assert code == 0, err
        assert out.split() == [str(dest / "emit" / n) for n in names]
        check(*(f"emit/{n}" for n in names))
    for n in ("net_numpy.py", "net_numpy_inference.py", "net_cuda.py"):
        compile((dest / "emit" / n).read_text(), n, "exec")
    assert "__global__" in (dest / "emit" / "net_cuda.cu").read_text()
    # emit --standalone from the checkpoint
    code, out, err = run(["emit", dest / "run.npz", "--inference", "--standalone", "--out", dest / "sa"], capsys)
    assert code == 0, err
    check("sa/net.py", "sa/net.npz")
    X = bg.load_dataset("digits").X_test[:7].astype(np.float32)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = _predict_in(dest / "sa", "net", X, scratch)  # scratch/: the reader's own files
    np.testing.assert_allclose(got, bg.load(dest / "run.npz").forward(X), rtol=1e-4, atol=1e-5)
    # show --out FILE.dot
    code, out, err = run(["show", spec, "--out", dest / "g.dot"], capsys)
    assert code == 0, err
    check("g.dot")
    assert (dest / "g.dot").read_text().startswith('digraph "net"')
    # the Python APIs: Model.save, InferenceModel.save, write_standalone, to_onnx
    model = bg.load(dest / "run.npz")
    with pytest.raises(FileNotFoundError, match=r"the folder .*api does not exist \(make it first\)"):
        model.save(dest / "api" / "m.npz")  # a file's folder is never made (issue 18, item 6)
    check()
    (dest / "api").mkdir()
    model.save(dest / "api" / "m.npz")
    check("api/m.npz")
    assert_same_checkpoint(dest / "run.npz", dest / "api" / "m.npz")
    inf = model.export_inference()
    paths = inf.save(dest / "api")
    assert paths == [str(dest / "api" / "net_numpy_inference.py"), str(dest / "api" / "net_inference_params.npz")]
    check("api/net_numpy_inference.py", "api/net_inference_params.npz")
    with np.load(dest / "api" / "net_inference_params.npz", allow_pickle=False) as f:
        assert set(f.files) == set(inf.params) | set(inf.state)
    compile((dest / "api" / "net_numpy_inference.py").read_text(), "x", "exec")
    from bngraph.interop.standalone import write_standalone

    values = {k: np.asarray(v) for k, v in {**model.params, **model.state}.items()}
    paths = write_standalone(model.graph, values, dest / "api2", module="deployed")
    assert paths == [os.path.join(dest / "api2", "deployed.py"), os.path.join(dest / "api2", "deployed.npz")]
    check("api2/deployed.py", "api2/deployed.npz")
    np.testing.assert_allclose(_predict_in(dest / "api2", "deployed", X, scratch), model.forward(X), rtol=1e-4,
                               atol=1e-5)
    try:
        import onnx  # noqa: F401
    except ImportError:
        return
    from bngraph.interop.from_onnx import from_onnx

    bg.to_onnx(model, dest / "api" / "m.onnx")
    check("api/m.onnx")
    assert from_onnx(str(dest / "api" / "m.onnx"), loss=None).build().name == "net"
    code, out, err = run(["emit", dest / "api" / "m.onnx", "--inference", "--standalone", "--out", dest / "sa2"],
                         capsys)
    assert code == 0, err
    check("sa2/net.py", "sa2/net.npz")
    np.testing.assert_allclose(_predict_in(dest / "sa2", "net", X, scratch), model.forward(X), rtol=1e-4, atol=1e-5)
    assert files_under(cwd) == set()
