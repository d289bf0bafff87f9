"""Issue 18: a training tool people keep using. PyTorch habits get bngraph's spelling (item 4);
a file's folder is never made behind the user's back (item 6). (``predict``'s one meaning, item 5:
tests/test_deploy.py.)"""
from __future__ import annotations

import re

import numpy as np
import pytest

import bngraph as bg
from cli_support import run


def _model():
    return bg.compile(bg.mlp([4, 5, 3]))


# ---- item 4: PyTorch habits ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [bg.optim.SGD, bg.optim.Adam, bg.optim.AdamW, bg.optim.RMSprop])
@pytest.mark.parametrize("how", ["values", "dict", "list", "generator", "keyword"])
def test_passing_the_parameters_says_the_model_passes_them_and_dumps_no_array(cls, how):
    params = _model().params
    arg = {"values": params.values(), "dict": params, "list": list(params.values()),
           "generator": (v for v in params.values()), "keyword": None}[how]
    with pytest.raises(TypeError) as e:
        cls(params=list(params.values()), lr=0.1) if how == "keyword" else cls(arg, lr=0.1) if how == "list" \
            else cls(arg)
    msg = str(e.value)
    assert msg.startswith(f"{cls.__name__}: the first argument is the learning rate, got ")
    assert f"write {cls.__name__}(lr=...) and give it to model.fit(..., optimizer=)" in msg
    assert "\n" not in msg and "array(" not in msg and len(msg) < 400, msg


@pytest.mark.parametrize("cls", [bg.optim.Adam, bg.optim.AdamW])
def test_betas_gets_beta1_and_beta2(cls):
    with pytest.raises(TypeError, match=re.escape(f"{cls.__name__} takes beta1= and beta2=, not PyTorch's betas=: "
                                                  f"write {cls.__name__}(beta1=0.9, beta2=0.98)")):
        cls(lr=1e-3, betas=(0.9, 0.98))


def test_pytorch_only_options_and_unknown_keywords_are_named():
    with pytest.raises(TypeError, match=r"Adam: PyTorch's foreach= has no bngraph counterpart \(bngraph's update is "
                                        r"always one fused pass"):
        bg.optim.Adam(foreach=True)
    with pytest.raises(TypeError, match=r"SGD: PyTorch's maximize= has no bngraph counterpart"):
        bg.optim.SGD(lr=0.1, maximize=True)
    with pytest.raises(TypeError, match=r"RMSprop\(\) got an unexpected keyword argument 'bets'; it takes lr, alpha, "
                                        r"eps, momentum, weight_decay, centered, groups"):
        bg.optim.RMSprop(lr=0.1, bets=1)


def test_a_hyperparameter_error_never_dumps_an_array():
    for value, shown in [(np.ones(1000), "a ndarray of shape (1000,) (float64)"), (list(range(100)),
                                                                                    "a list of 100 items")]:
        with pytest.raises(ValueError) as e:
            bg.optim.SGD(lr=0.1, momentum=value)
        assert str(e.value) == f"momentum must be a number, got {shown}"
    with pytest.raises(ValueError, match=r"^amsgrad must be True or False, got 'no'$"):
        bg.optim.Adam(amsgrad="no")


def test_ordinary_calls_still_work_and_copy():
    import copy
    import pickle
    opt = bg.optim.SGD(0.1, 0.9)  # positional hyperparameters, PyTorch's order after params
    assert (opt.lr, opt.momentum) == (0.1, 0.9)
    assert bg.optim.Adam(np.float32(0.01)).lr == pytest.approx(0.01)
    for o in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert o.hyper == opt.hyper


# ---- item 6: a file's folder must exist ----------------------------------------------------------

def test_save_into_a_missing_folder_is_an_error_and_makes_nothing(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match=r"cannot write .*missing.*x\.npz: the folder .*missing does not "
                                                r"exist \(make it first\)"):
        model.save(tmp_path / "missing" / "x.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--save", "--json"])
def test_the_cli_refuses_a_missing_folder_before_training(tmp_path, capsys, flag):
    code, out, err = run(["train", "--epochs", "1", "--quiet", flag, tmp_path / "nope" / "run.x"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(rf"bngraph: error: cannot write {flag} .*nope.*run\.x: the folder .*nope does not exist", err)
    assert list(tmp_path.iterdir()) == [] and out == ""


def test_a_folder_destination_is_still_made(tmp_path, capsys):
    code, out, err = run(["emit", "examples/mlp.py", "--out", tmp_path / "new" / "dir"], capsys)
    assert code == 0, err
    assert (tmp_path / "new" / "dir" / "mlp_numpy.py").is_file()
    paths = _model().export_inference().save(tmp_path / "made")
    assert all(p.startswith(str(tmp_path / "made")) for p in paths)
