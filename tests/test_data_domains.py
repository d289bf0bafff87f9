"""Values are checked as the model will see them, in every entry point: targets inside the loss's
domain (item 1), values finite *after the cast* to the model's dtype (item 2), running variances
>= 0 (item 4), absurd sizes refused before allocating (item 6), labels equal to the number of
classes, NumPy integers accepted and negative seeds named (item 13)."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import bngraph as bg
from bngraph.datacheck import check_model_size
from bngraph.errors import ModelSizeError


def data(n=20, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def values(model):
    return {k: np.array(v) for k, v in {**model.params, **model.state}.items()}


def assert_same(model, before):
    for k, v in {**model.params, **model.state}.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def _calls(model, X, y):
    """Every entry point that takes data, as (name, call)."""
    return [
        ("train_step", lambda: model.train_step(X, y, bg.optim.SGD(lr=0.1))),
        ("fit", lambda: model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=5, verbose=False)),
        ("fit validation_data", lambda: model.fit(*GOOD[model.loss_kind](len(X), model.n_features),
                                                   optimizer=bg.optim.SGD(lr=0.1), validation_data=(X, y),
                                                   verbose=False)),
        ("evaluate", lambda: model.evaluate(X, y)),
    ]


GOOD = {  # good training data for a model with this loss: (n, features) -> (X, y)
    "softmax_cross_entropy": lambda n, f=4: data(n, f),
    "sigmoid_bce": lambda n, f=4: (data(n, f)[0], np.random.default_rng(1).integers(0, 2, (n, 1)).astype(float)),
    "mse": lambda n, f=4: (data(n, f)[0], np.random.default_rng(1).standard_normal((n, 1))),
}


# ---- item 1: each loss's target domain ---------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.5, 1.5, 2.0, 9.0, -1e-3, 1 + 1e-3])
def test_bce_targets_outside_0_1_are_refused_everywhere(bad):
    X, t = GOOD["sigmoid_bce"](10)
    t = t.copy()
    t[6, 0] = bad
    model = bg.compile(bg.mlp([4, 5, 1], loss="sigmoid_bce"))
    before = values(model)
    for where, call in _calls(model, X, t):
        with pytest.raises(bg.DataError, match=rf"^{where}: targets row 6 holds {bad!r}, outside \[0, 1\]: "
                                               r"sigmoid_bce targets are probabilities"):
            call()
        assert_same(model, before)
        assert model.step == 0


def test_bce_accepts_its_whole_domain_and_mse_any_finite_target():
    X, _ = data(8)
    bce = bg.compile(bg.mlp([4, 5, 1], loss="sigmoid_bce"))
    assert np.isfinite(bce.train_step(X, np.array([0, 1, 0.5, 0.25, 1, 0, 0.999, 1e-9]), bg.optim.SGD(lr=0.1)))
    mse = bg.compile(bg.mlp([4, 5, 1], loss="mse"))
    assert np.isfinite(mse.train_step(X, np.array([-1e3, 1e3, 5, -7, 0, 9, 2.5, 1e15]), bg.optim.SGD(lr=0.0)))


def test_digits_labels_with_a_bce_model_are_refused_not_a_negative_loss():
    """The issue's case: bg.mlp([64, 16, 1], loss="sigmoid_bce") on the digits labels 0..9."""
    ds = bg.load_dataset("digits")
    model = bg.compile(bg.mlp([64, 16, 1], loss="sigmoid_bce"))
    with pytest.raises(bg.DataError, match=r"fit: targets row \d+ holds [2-9], outside \[0, 1\]"):
        model.fit(ds.X_train, ds.y_train, optimizer=bg.optim.Adam(), epochs=1, verbose=False)


# ---- item 2: finite after the cast to the model's dtype ---------------------------------------


@pytest.mark.parametrize("big", [1e39, -1e39, 3.5e38, float(np.finfo(np.float64).max)])
def test_a_finite_value_that_overflows_float32_is_refused_with_its_row(big):
    X, y = data(6, features=8)
    X[1, 0] = big
    model = bg.compile(bg.mlp([8, 16, 3]))
    before = values(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow warning either
        for where, call in [("forward", lambda: model.forward(X)), ("forward", lambda: model.predict(X)),
                            *_calls(model, X, y)]:
            with pytest.raises(bg.DataError, match=rf"^{where}: X row 1 holds {re.escape(repr(big))}, which "
                                                   r"overflows float32 \(the model's dtype"):
                call()
    assert_same(model, before)
    out = bg.compile(bg.mlp([8, 16, 3]), dtype="float64").forward(X)  # float64 holds it
    assert np.isfinite(out[0]).all()


def test_values_float32_holds_are_accepted():
    X, y = data(6, features=8)
    X[1, 0] = 3e38
    assert bg.compile(bg.mlp([8, 16, 3])).forward(X).shape == (6, 3)


def test_regression_targets_that_overflow_are_refused():
    X, _ = data(6)
    t = np.zeros((6, 2))
    t[4, 1] = -1e39
    model = bg.compile(bg.mlp([4, 5, 2], loss="mse"))
    with pytest.raises(bg.DataError, match=r"train_step: targets row 4 holds -1e\+39, which overflows float32"):
        model.train_step(X, t, bg.optim.SGD(lr=0.1))


@pytest.mark.parametrize("what, name, value, match", [
    ("params", "fc1.W", 1e39, r"set_params: fc1\.W holds 1e\+39, which overflows float32"),
    ("state", "bn1.running_mean", -1e39, r"set_state: bn1\.running_mean holds -1e\+39, which overflows float32"),
    ("params", "fc1.W", "x", r"set_params: fc1\.W must be real numbers, got dtype <U1"),
])
def test_set_params_and_state_check_values_in_the_models_dtype(what, name, value, match):
    model = bg.compile(bg.mlp([4, 5, 3]))
    before = values(model)
    live = getattr(model, what)[name]
    with pytest.raises(ValueError, match=match):
        getattr(model, f"set_{what}")({name: np.full(live.shape, value)})
    assert_same(model, before)


# ---- item 4: state in its domain ---------------------------------------------------------------


@pytest.mark.parametrize("graph", [bg.mlp([4, 5, 3]), bg.mlp([4, 5, 6, 3], activation="tanh")], ids=["1bn", "2bn"])
@pytest.mark.parametrize("bad", [-1.0, -1e-30, -float(np.finfo(np.float32).max)])
def test_a_negative_running_variance_is_refused(graph, bad):
    model = bg.compile(graph)
    before = values(model)
    name = list(model.state)[-1]  # the last batch norm's running_var
    assert name.endswith("running_var")
    rv = np.ones(model.state[name].shape)
    rv[2] = bad
    mean = name.replace("running_var", "running_mean")
    with pytest.raises(ValueError, match=rf"set_state: {name} must be >= 0 \(a variance\), got "
                                         rf"{re.escape(repr(bad))} at index 2"):
        model.set_state({mean: np.zeros(rv.shape), name: rv})  # the valid mean is not written either
    assert_same(model, before)
    model.set_state({name: np.zeros(rv.shape)})  # 0 is a variance; eps keeps eval mode finite
    assert np.isfinite(model.forward(data(4)[0])).all()
    model.set_state({mean: -np.ones(rv.shape)})  # a mean may be negative


# ---- item 6: sizes -----------------------------------------------------------------------------


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(ModelSizeError, match=r"graph mlp has [\d,]+ parameters \(fc1\.W 1000000000000x4, .*\): "
                                             r"[\d,.]+ TiB for them and their gradients, more than this machine's"):
        bg.compile(bg.mlp([4, 10**12, 3]))
    assert issubclass(ModelSizeError, ValueError)


def test_model_size_limit_is_params_and_gradients():
    g = bg.mlp([4, 5, 3]).build()
    n = sum(int(np.prod(v.type.shape)) for v in (*g.params, *g.state))
    check_model_size(g, 4, limit=2 * n * 4)  # exactly fits
    with pytest.raises(ModelSizeError):
        check_model_size(g, 4, limit=2 * n * 4 - 1)


# ---- labels equal to the number of classes -------------------------------------------------------


def test_a_label_equal_to_the_number_of_classes_is_refused_everywhere():
    X, y = data(10)
    y = y.copy()
    y[4] = 3  # classes are 0, 1, 2
    model = bg.compile(bg.mlp([4, 5, 3]))
    for where, call in _calls(model, X, y):
        with pytest.raises(bg.DataError, match=rf"^{where}: label 3 at row 4 is out of range: expected 0 <= label < 3"):
            call()
    y[4] = 2
    model.train_step(X, y, bg.optim.SGD(lr=0.1))  # the largest class is fine
    g = model.programs["train_step"]
    feeds = {"x": X.T, "y": np.where(np.arange(10) == 7, 3, y)}
    with pytest.raises(bg.IRError, match=r"input %y: label 3 at index 7 is out of range: expected 0 <= label < 3"):
        bg.interpret(g, feeds, values(model))


# ---- item 13: NumPy integers, seeds, dtypes, a graph without a loss ----------------------------------


def test_numpy_integers_are_accepted_everywhere_and_saved_as_json(tmp_path):
    X, y = data(20)
    model = bg.compile(bg.mlp([np.int64(4), np.int32(5), 3]), seed=np.int64(3))
    hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=np.float32(0.1)), epochs=np.int64(2),
                     batch_size=np.int32(8), seed=np.uint8(1), verbose=False,
                     lr_schedule=lambda e, s: np.float32(0.1))
    assert hist.column("epoch") == [1, 2] and json.dumps(list(hist))
    model.forward(X, batch_size=np.int64(4))
    model.evaluate(X, y, batch_size=np.int16(7))
    model.save(tmp_path / "np.npz")  # the JSON metadata takes them as plain numbers
    loaded = bg.load(tmp_path / "np.npz")
    assert (loaded.seed, loaded.fit_state["seed"], loaded.fit_state["batch_size"]) == (3, 1, 8)
    ds = bg.load_dataset("digits", seed=np.int64(2), test_fraction=np.float32(0.25))
    assert len(ds.X_test) > 0


@pytest.mark.parametrize("call", [
    lambda: bg.compile(bg.mlp([4, 5, 3]), seed=-1),
    lambda: bg.compile(bg.mlp([4, 5, 3])).fit(*data(), optimizer=bg.optim.SGD(lr=0.1), seed=-1, verbose=False),
    lambda: bg.load_dataset("digits", seed=-1),
    lambda: bg.compile(bg.mlp([4, 5, 3]), seed=1.5),
    lambda: bg.compile(bg.mlp([4, 5, 3])).fit(*data(), optimizer=bg.optim.SGD(lr=0.1), seed=True, verbose=False),
], ids=["compile", "fit", "load_dataset", "compile-float", "fit-bool"])
def test_a_bad_seed_is_named(call):
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got (-1|1\.5|True)"):
        call()


@pytest.mark.parametrize("epochs", [True, 1.0, -1, "2"])
def test_epochs_must_be_an_integer(epochs):
    with pytest.raises(ValueError, match=r"fit: epochs must be a non-negative integer"):
        bg.compile(bg.mlp([4, 5, 3])).fit(*data(), optimizer=bg.optim.SGD(lr=0.1), epochs=epochs, verbose=False)


@pytest.mark.parametrize("dtype, match", [
    ("f16", r"unsupported dtype 'f16': NumPy reads that spelling as float128 \(the number counts bytes"),
    ("f2", r"unsupported dtype 'f2': NumPy reads that spelling as float16"),
    (np.float16, r"unsupported dtype .*\(numpy float16\)"),
    ("int64", r"dtype must be float32 or float64, got 'int64'"),
])
def test_unsupported_dtypes_say_what_numpy_made_of_them(dtype, match):
    with pytest.raises(bg.IRError, match=match):
        bg.compile(bg.mlp([4, 5, 3]), dtype=dtype)


def test_a_graph_without_a_loss_says_so():
    g = bg.Graph("noloss")
    g.matmul(g.input("x", 3), 2, name="fc")
    with pytest.raises(bg.IRError, match=r"graph noloss: the graph has no outputs: a model needs a loss, e\.g\. "
                                         r"g\.softmax_cross_entropy\(logits, y\)"):
        bg.compile(g)
