"""The Model API (bngraph/model.py): live params and state, set_params/set_state checks, data checks
before any change, forward/predict/evaluate, divergence, and the fit loop (determinism, the merged
last batch, validation, lr schedules, printing, custom optimizers)."""
from __future__ import annotations

import io

import numpy as np
import pytest

import bngraph as bg
import bngraph.training as training_mod


def data(n=40, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features))
    y = rng.integers(0, classes, n)
    return X, y


def snapshot(model) -> dict:
    """Copies of everything training may change."""
    opt = model.optimizer
    return {
        "params": {k: v.copy() for k, v in model.params.items()},
        "state": {k: v.copy() for k, v in model.state.items()},
        "step": model.step,
        "epoch": model.epoch,
        "opt": None if opt is None or not hasattr(opt, "state_dict") else opt.state_dict(),
    }


def assert_unchanged(model, snap):
    for k, v in snap["params"].items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)
    for k, v in snap["state"].items():
        np.testing.assert_array_equal(model.state[k], v, err_msg=k)
    assert model.step == snap["step"] and model.epoch == snap["epoch"]
    if snap["opt"] is not None:
        now = model.optimizer.state_dict()
        assert now["step"] == snap["opt"]["step"] and now["hyper"] == snap["opt"]["hyper"]
        assert now["slots"].keys() == snap["opt"]["slots"].keys()
        for p, slots in snap["opt"]["slots"].items():
            for s, a in slots.items():
                np.testing.assert_array_equal(now["slots"][p][s], a)


def trained(model, X, y, steps=2):
    """A model that has taken a few Adam steps (so the optimizer has state)."""
    opt = bg.optim.Adam(lr=1e-2)
    for _ in range(steps):
        model.train_step(X[:8], y[:8], opt)
    return model


# --------------------------------------------------------------------------------------------
# Params and state
# --------------------------------------------------------------------------------------------


def test_params_are_live_arrays():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    p = model.params
    held = p["fc1.W"]
    before = held.copy()
    s_held = model.state["bn1.running_mean"]
    model.train_step(X[:8], y[:8], bg.optim.SGD(lr=0.1))
    assert model.params["fc1.W"] is held  # the same array, updated in place
    assert not np.array_equal(held, before)
    assert model.state["bn1.running_mean"] is s_held and np.any(s_held != 0)
    # writing into the live array changes the model
    held[...] = 0
    np.testing.assert_array_equal(model.params["fc1.W"], 0)


def test_folded_params_are_absent_and_names_are_in_order():
    model = bg.compile(bg.mlp([4, 5, 3]))
    assert list(model.params) == ["fc1.W", "bn1.gamma", "bn1.beta", "out.W", "out.b"]
    assert "fc1.b" not in model.params  # cancelled by bn1's mean subtraction (fold_bias)
    assert list(model.state) == ["bn1.running_mean", "bn1.running_var"]
    # without the passes the bias stays
    assert "fc1.b" in bg.compile(bg.mlp([4, 5, 3]), passes=[]).params
    # and without batch norm nothing is folded
    assert "fc1.b" in bg.compile(bg.mlp([4, 5, 3], batchnorm=False)).params


def test_initial_values_follow_pytorch_defaults_and_seed():
    a = bg.compile(bg.mlp([4, 5, 3]), seed=0)
    b = bg.compile(bg.mlp([4, 5, 3]), seed=0)
    c = bg.compile(bg.mlp([4, 5, 3]), seed=1)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["fc1.W"], c.params["fc1.W"])
    np.testing.assert_array_equal(a.params["bn1.gamma"], 1)
    np.testing.assert_array_equal(a.params["bn1.beta"], 0)
    np.testing.assert_array_equal(a.state["bn1.running_var"], 1)
    # the graph as written starts with running_mean = 0; fold_bias moves the folded bias into it
    # (eval mode: (z + b) - 0 == z - (0 - b)), so the compiled model's running_mean is -fc1.b
    unfolded = bg.compile(bg.mlp([4, 5, 3]), seed=0, passes=[])
    np.testing.assert_array_equal(unfolded.state["bn1.running_mean"], 0)
    np.testing.assert_array_equal(a.state["bn1.running_mean"], -unfolded.params["fc1.b"])
    np.testing.assert_array_equal(a.params["fc1.W"], unfolded.params["fc1.W"])
    X, _ = data()
    np.testing.assert_allclose(a.forward(X), unfolded.forward(X), rtol=1e-5, atol=1e-6)
    assert np.abs(a.params["fc1.W"]).max() <= 1 / np.sqrt(4)
    assert np.abs(a.params["out.W"]).max() <= 1 / np.sqrt(5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_of_params_state_and_outputs(dtype):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), dtype=dtype)
    assert model.dtype == np.dtype(dtype)
    assert all(v.dtype == np.dtype(dtype) for v in (*model.params.values(), *model.state.values()))
    loss = model.train_step(X[:8], y[:8], bg.optim.Adam(lr=1e-2))
    assert isinstance(loss, float) and np.isfinite(loss)
    assert all(v.dtype == np.dtype(dtype) for v in (*model.params.values(), *model.state.values()))
    out = model.forward(X)
    assert out.shape == (40, 3) and out.dtype == np.dtype(dtype)
    assert f"DTYPE = np.{dtype}" in model.source
    assert f"dtype={dtype}" in repr(model)


def test_graph_prints_and_source_is_a_str():
    model = bg.compile(bg.mlp([4, 5, 3]))
    text = str(model.graph)
    assert text.startswith("graph mlp(") and "batchnorm_act[act=relu" in text and "%fc1.b" not in text
    assert bg.parse(text) == model.graph
    assert "%fc1.b" in str(model.source_graph)  # the graph as written
    assert isinstance(model.source, str) and "def train_step(" in model.source
    assert "48 parameters" in repr(model)


def test_set_params_and_set_state_copy_values_in():
    model = bg.compile(bg.mlp([4, 5, 3]))
    held = model.params["fc1.W"]
    new = np.arange(20, dtype=np.float64).reshape(5, 4)
    model.set_params({"fc1.W": new, "out.b": [1, 2, 3]})
    assert model.params["fc1.W"] is held  # copied into the live array
    np.testing.assert_array_equal(held, new)
    assert held.dtype == np.float32
    np.testing.assert_array_equal(model.params["out.b"], [1, 2, 3])
    new[0, 0] = 99  # a copy: the caller's array is not kept
    assert held[0, 0] == 0
    model.set_state({"bn1.running_var": np.full(5, 2.0)})
    np.testing.assert_array_equal(model.state["bn1.running_var"], 2.0)


@pytest.mark.parametrize("what, values, exc, match", [
    ("params", {"nope": np.zeros(3)}, KeyError, r"'nope' is not a param of this model; expected one of fc1\.W, "),
    ("params", {"fc1.b": np.zeros(5)}, KeyError,
     r"'fc1\.b' is not a param .*folded away by the passes: removed fc1\.b"),
    ("params", {"fc1.W": np.zeros((4, 5))}, ValueError, r"set_params: fc1\.W expected shape \(5, 4\), got \(4, 5\)"),
    ("params", {"out.b": np.zeros(4)}, ValueError, r"out\.b expected shape \(3,\), got \(4,\)"),
    ("params", {"fc1.W": np.full((5, 4), np.nan)}, ValueError, r"fc1\.W contains NaN or inf"),
    ("params", {"out.b": [0.0, np.inf, 0.0]}, ValueError, r"out\.b contains NaN or inf"),
    ("params", {"bn1.running_mean": np.zeros(5)}, KeyError, r"'bn1\.running_mean' is not a param"),
    ("state", {"bn1.gamma": np.zeros(5)}, KeyError, r"set_state: 'bn1\.gamma' is not a state of this model"),
    ("state", {"bn1.running_var": np.zeros(6)}, ValueError, r"bn1\.running_var expected shape \(5,\), got \(6,\)"),
    ("state", {"bn1.running_var": np.full(5, np.nan)}, ValueError, r"bn1\.running_var contains NaN or inf"),
])
def test_set_errors_are_clear_and_write_nothing(what, values, exc, match):
    model = bg.compile(bg.mlp([4, 5, 3]))
    snap = snapshot(model)
    # a valid entry first: it must not be written when a later one is refused
    good = {"out.W": np.ones((3, 5))} if what == "params" else {"bn1.running_mean": np.ones(5)}
    with pytest.raises(exc, match=match):
        getattr(model, f"set_{what}")({**good, **values})
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------------------------
# Data checks: refused before anything changes
# --------------------------------------------------------------------------------------------


def _bad_inputs():
    X, y = data(10)
    Xnan = X.copy()
    Xnan[6, 2] = np.nan
    Xinf = X.copy()
    Xinf[3, 0] = -np.inf
    ynan = y.astype(float)
    ynan[4] = np.nan
    yhalf = y.astype(float)
    yhalf[7] = 1.5
    yneg = y.copy()
    yneg[5] = -1
    ybig = y.copy()
    ybig[8] = 3
    return [
        pytest.param(X[:, :3], y, r"X expected shape \(batch, 4\) for input %x, got \(10, 3\) \(3 features\)",
                     id="feature-count"),
        pytest.param(X[0], y[:1], r"X must be 2-D \(batch, 4\); got one example of shape \(4,\)", id="1-D-X"),
        pytest.param(X[None], y, r"X expected shape \(batch, 4\), got \(1, 10, 4\)", id="3-D-X"),
        pytest.param(X[:0], y[:0], r"X is empty", id="empty"),
        pytest.param(X.astype(str), y, r"X must be real numbers",
                     id="string-X"),
        pytest.param(Xnan, y, r"X row 6 contains NaN or inf", id="nan-X"),
        pytest.param(Xinf, y, r"X row 3 contains NaN or inf", id="inf-X"),
        pytest.param(X, yneg, r"label -1 at row 5 is out of range: expected 0 <= label < 3", id="negative-label"),
        pytest.param(X, ybig, r"label 3 at row 8 is out of range: expected 0 <= label < 3", id="label-too-big"),
        pytest.param(X, yhalf, r"labels must be integer class indices, got dtype float64 \(row 7", id="float-label"),
        pytest.param(X, ynan, r"labels must be integer class indices.*\(row 4", id="nan-label"),
        pytest.param(X, y[:9], r"labels expected shape \(10,\) \(one class index per row of X\), got \(9,\)",
                     id="label-count"),
        pytest.param(X, y[:, None], r"labels expected shape \(10,\)", id="2-D-labels"),
        pytest.param(X[:1], y[:1], r"at least 2 examples: batch norm", id="single-example-bn"),
    ]


@pytest.mark.parametrize("X, y, match", _bad_inputs())
def test_train_step_refuses_bad_data_before_any_change(X, y, match):
    Xg, yg = data()
    model = trained(bg.compile(bg.mlp([4, 5, 3])), Xg, yg)
    snap = snapshot(model)
    with pytest.raises(bg.DataError, match=match) as info:
        model.train_step(X, y)
    assert str(info.value).startswith("train_step: ")
    assert isinstance(info.value, ValueError)  # DataError is a ValueError
    assert_unchanged(model, snap)


@pytest.mark.parametrize("X, y, match", [p for p in _bad_inputs() if p.id != "single-example-bn"])
def test_fit_refuses_bad_data_before_any_change(X, y, match):
    Xg, yg = data()
    model = trained(bg.compile(bg.mlp([4, 5, 3])), Xg, yg)
    snap = snapshot(model)
    with pytest.raises(bg.DataError, match=match):
        model.fit(X, y, epochs=2, verbose=False)
    assert_unchanged(model, snap)


def test_fit_checks_all_rows_and_the_validation_data_first():
    X, y = data(200)
    y = y.copy()
    y[187] = 7  # deep in the last batch: nothing may be trained before it is found
    model = trained(bg.compile(bg.mlp([4, 5, 3])), X, np.clip(y, 0, 2))
    snap = snapshot(model)
    with pytest.raises(bg.DataError, match="label 7 at row 187"):
        model.fit(X, y, batch_size=8, verbose=False)
    assert_unchanged(model, snap)
    Xv, yv = data(10)
    Xv = Xv.copy()
    Xv[9, 1] = np.inf
    with pytest.raises(bg.DataError, match=r"fit validation_data: X row 9 contains NaN or inf"):
        model.fit(X, np.clip(y, 0, 2), validation_data=(Xv, yv), verbose=False)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kw, exc, match", [
    ({"epochs": -1}, ValueError, "epochs must be a non-negative integer"),
    ({"epochs": 1.5}, ValueError, "epochs must be a non-negative integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"batch_size": 1}, bg.DataError, "batch norm needs at least 2 examples per batch"),
])
def test_fit_argument_errors(kw, exc, match):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), verbose=False, **kw)
    assert_unchanged(model, snap)


def test_single_example_error_mentions_batch_norm_and_no_bn_model_accepts_it():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(bg.DataError, match="batch norm"):
        model.train_step(X[:1], y[:1], bg.optim.SGD(lr=0.1))
    with pytest.raises(bg.DataError, match="at least 2 examples"):
        model.forward(X[:1], training=True)
    assert model.forward(X[:1]).shape == (1, 3)  # eval mode: running statistics, one example is fine
    nobn = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    assert np.isfinite(nobn.train_step(X[:1], y[:1], bg.optim.SGD(lr=0.1)))


def test_float_labels_that_are_integers_are_accepted():
    X, y = data()
    a = bg.compile(bg.mlp([4, 5, 3]))
    b = bg.compile(bg.mlp([4, 5, 3]))
    la = a.train_step(X[:8], y[:8], bg.optim.SGD(lr=0.1))
    lb = b.train_step(X[:8], y[:8].astype(np.float64), bg.optim.SGD(lr=0.1))
    assert la == lb


def test_no_optimizer_and_bad_optimizer():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(ValueError, match="no optimizer"):
        model.train_step(X[:8], y[:8])
    with pytest.raises(TypeError, match=r"optimizer must have a step\(params, grads\) method, got str"):
        model.train_step(X[:8], y[:8], "adam")
    opt = bg.optim.SGD(lr=0.1)
    model.train_step(X[:8], y[:8], opt)
    assert model.optimizer is opt
    model.train_step(X[:8], y[:8])  # the last optimizer is kept
    assert model.step == 2 and opt.step_count == 2


def test_regression_targets_are_checked():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3))
    model = bg.compile(bg.mlp([3, 4, 2], loss="mse", activation="tanh"))
    T = rng.standard_normal((10, 2))
    snap = snapshot(model)
    with pytest.raises(bg.DataError, match=r"targets expected shape \(10, 2\), got \(10, 3\)"):
        model.train_step(X, rng.standard_normal((10, 3)), bg.optim.SGD(lr=0.1))
    T2 = T.copy()
    T2[4, 1] = np.nan
    with pytest.raises(bg.DataError, match="targets row 4 contains NaN or inf"):
        model.train_step(X, T2, bg.optim.SGD(lr=0.1))
    assert_unchanged(model, snap)
    assert np.isfinite(model.train_step(X, T, bg.optim.SGD(lr=0.1)))
    one = bg.compile(bg.mlp([3, 4, 1], loss="mse"))
    assert np.isfinite(one.train_step(X, T[:, 0], bg.optim.SGD(lr=0.1)))  # (m,) for one output


# --------------------------------------------------------------------------------------------
# forward, predict, evaluate
# --------------------------------------------------------------------------------------------


def test_forward_predict_evaluate():
    X, y = data(50)
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, verbose=False)
    out = model.forward(X)
    assert out.shape == (50, 3)
    np.testing.assert_array_equal(model.predict(X), out.argmax(axis=1))
    # chunked evaluation gives the same result
    np.testing.assert_allclose(model.forward(X, batch_size=7), out, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X, batch_size=3), out.argmax(axis=1))
    ev = model.evaluate(X, y)
    shifted = out - out.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert ev["loss"] == pytest.approx(-logp[np.arange(50), y].mean(), rel=1e-10)
    assert ev["accuracy"] == pytest.approx((out.argmax(axis=1) == y).mean())


def test_forward_output_is_a_copy_not_the_reused_buffer():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    a = model.forward(X[:10])
    a_before = a.copy()
    model.forward(X[10:20])  # same batch size: the same buffers
    np.testing.assert_array_equal(a, a_before)


def test_forward_training_mode_uses_batch_statistics_and_keeps_state():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=2, batch_size=8, verbose=False)
    snap = snapshot(model)
    train_out = model.forward(X, training=True)
    assert_unchanged(model, snap)
    eval_out = model.forward(X)
    assert not np.allclose(train_out, eval_out)
    # with running statistics equal to this batch's statistics, eval mode equals training mode
    z = X @ model.params["fc1.W"].T
    model.set_state({"bn1.running_mean": z.mean(axis=0), "bn1.running_var": z.var(axis=0)})
    np.testing.assert_allclose(model.forward(X), train_out, rtol=1e-10, atol=1e-12)


def test_many_batch_sizes_keep_working():
    X, y = data(30)
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    ref = {m: model.forward(X[:m]) for m in range(2, 12)}  # more sizes than buffer sets kept
    assert len(model.executable._buffers) <= model.executable.MAX_BUFFER_SETS
    for m in range(2, 12):
        np.testing.assert_array_equal(model.forward(X[:m]), ref[m])


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------


def test_train_step_divergence_changes_nothing():
    X, y = data()
    model = trained(bg.compile(bg.mlp([4, 5, 3])), X, y)
    snap = snapshot(model)
    # finite but huge weights: the logits overflow float32, the loss is NaN
    with np.errstate(all="ignore"):
        model.set_params({"out.W": np.full((3, 5), 1e38)})
        snap["params"]["out.W"] = model.params["out.W"].copy()
        with pytest.raises(bg.TrainingDiverged, match=r"loss is nan at step 3; nothing was updated"):
            model.train_step(X[:8], y[:8])
    assert_unchanged(model, snap)


@pytest.mark.parametrize("dtype, lr", [("float32", 1e6), ("float32", 1e20), ("float64", 1e200)])
def test_fit_stops_early_on_divergence(dtype, lr):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False), dtype=dtype)
    with np.errstate(all="ignore"):
        hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=lr), epochs=5, batch_size=8, verbose=False)
    assert hist.stop_reason is not None
    assert hist.stop_reason.startswith("stopped early at epoch 1, step ")
    assert f"of 5 (global step {model.step + 1})" in hist.stop_reason
    # a NaN/inf loss or gradient is caught before the update; an update that overflows is caught
    # right after it (the optimizer's state has moved on, so there is nothing to roll back to)
    assert "nothing was updated" in hist.stop_reason or "no longer usable" in hist.stop_reason
    assert len(hist) == 0 and model.epoch == 0 and model.step < 5
    for k, v in model.params.items():
        assert not np.isnan(v).any(), k


def test_fit_divergence_in_a_later_epoch_keeps_the_history():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False), dtype="float64")
    opt = bg.optim.SGD(lr=0.01)
    # a schedule that blows up from epoch 3 on
    with np.errstate(all="ignore"):
        hist = model.fit(X, y, optimizer=opt, epochs=5, batch_size=8, verbose=False,
                         lr_schedule=lambda epoch, step: 0.01 if epoch < 3 else 1e200)
    assert len(hist) == 2 and model.epoch == 2
    assert hist.stop_reason.startswith("stopped early at epoch 3, step ")
    assert not any(np.isnan(v).any() for v in model.params.values())


def test_history_without_divergence_has_no_stop_reason():
    X, y = data()
    hist = bg.compile(bg.mlp([4, 5, 3])).fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, verbose=False)
    assert hist.stop_reason is None and len(hist) == 2
    assert hist.column("epoch") == [1, 2]


# --------------------------------------------------------------------------------------------
# The fit loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_is_deterministic(dtype):
    X, y = data(50)

    def run(seed, init_seed=0):
        m = bg.compile(bg.mlp([4, 6, 3]), dtype=dtype, seed=init_seed)
        m.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, seed=seed, verbose=False)
        return m

    a, b, c, d = run(0), run(0), run(1), run(0, init_seed=1)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k])
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)  # another shuffle
    assert any(not np.array_equal(a.params[k], d.params[k]) for k in a.params)  # another init


def test_fit_without_shuffle_is_the_train_step_loop():
    X, y = data(20)
    a = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    b = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    hist = a.fit(X, y, optimizer=bg.optim.SGD(lr=0.1, momentum=0.9), epochs=2, batch_size=6, shuffle=False,
                 verbose=False)
    opt = bg.optim.SGD(lr=0.1, momentum=0.9)
    losses = []
    for _ in range(2):
        losses.append([b.train_step(X[i:i + 6], y[i:i + 6], opt) for i in range(0, 20, 6)])
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert hist.column("loss") == [float(np.mean(ls)) for ls in losses]
    assert hist.column("steps") == [4, 4] and a.step == 8 and a.epoch == 2


def test_last_batch_of_one_example_is_merged():
    bs = 8
    X, y = data(2 * bs + 1)
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=bs, verbose=False)
    assert hist.column("steps") == [2, 2, 2]
    assert model.step == 6
    for k, v in (*model.state.items(), *model.params.items()):
        assert np.all(np.isfinite(v)), k
    # without batch norm the batch of one is kept as it is
    nobn = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    hist = nobn.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, batch_size=bs, verbose=False)
    assert hist.column("steps") == [3]


def test_last_batch_merge_uses_every_example():
    """The merged last batch holds bs + 1 rows: every example is used each epoch."""
    bs = 4
    X, y = data(2 * bs + 1)
    seen = []

    class Spy:
        lr = 0.0

        def step(self, params, grads):
            pass

    model = bg.compile(bg.mlp([4, 5, 3]))
    real_run = model._run

    def spy_run(program, feeds, m):
        seen.append(m)
        return real_run(program, feeds, m)

    model._run = spy_run
    model.fit(X, y, optimizer=Spy(), epochs=1, batch_size=bs, verbose=False)
    assert seen == [bs, bs + 1]


def test_validation_metrics_per_epoch():
    X, y = data(40)
    Xv, yv = data(15, seed=1)
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, validation_data=(Xv, yv),
                     verbose=False)
    assert len(hist) == 3
    for i, rec in enumerate(hist, start=1):
        assert rec["epoch"] == i
        assert {"epoch", "loss", "steps", "lr", "seconds", "val_loss", "val_accuracy"} <= set(rec)
        assert np.isfinite(rec["val_loss"]) and 0 <= rec["val_accuracy"] <= 1
        assert rec["lr"] == 1e-2 and rec["steps"] == 5 and rec["seconds"] >= 0
    ev = model.evaluate(Xv, yv)
    assert hist[-1]["val_loss"] == ev["loss"] and hist[-1]["val_accuracy"] == ev["accuracy"]
    # no validation data: no val_ keys
    hist = model.fit(X, y, epochs=1, verbose=False)
    assert not any(k.startswith("val_") for k in hist[0])
    assert hist[0]["epoch"] == 4  # epochs continue


def test_validation_metrics_for_regression_have_no_accuracy():
    rng = np.random.default_rng(0)
    X, T = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))
    model = bg.compile(bg.mlp([3, 4, 2], loss="mse", activation="tanh"))
    hist = model.fit(X, T, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, batch_size=5, validation_data=(X, T),
                     verbose=False)
    assert "val_loss" in hist[0] and "val_accuracy" not in hist[0]


def test_lr_schedule_sets_the_optimizer_lr_before_each_step():
    X, y = data(20)
    calls = []

    def schedule(epoch, step):
        calls.append((epoch, step))
        return 0.1 / step

    opt = bg.optim.SGD(lr=1.0)
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=opt, epochs=2, batch_size=8, lr_schedule=schedule, verbose=False)
    # 20 rows in batches of 8: 8, 8, 4 -> 3 steps per epoch; steps are global
    assert calls == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert opt.lr == pytest.approx(0.1 / 6)
    assert hist.column("lr") == [pytest.approx(0.1 / 3), pytest.approx(0.1 / 6)]


def test_lr_schedule_is_used_by_the_updates():
    X, y = data(20)
    model = bg.compile(bg.mlp([4, 5, 3]))
    before = {k: v.copy() for k, v in model.params.items()}
    model.fit(X, y, optimizer=bg.optim.SGD(lr=1.0), epochs=2, batch_size=8, lr_schedule=lambda e, s: 0.0,
              verbose=False)
    for k in before:  # lr 0: no param moves (the running statistics still do)
        np.testing.assert_array_equal(model.params[k], before[k])
    assert np.any(model.state["bn1.running_mean"] != 0)
    with pytest.raises(ValueError, match="learning rate"):
        model.fit(X, y, epochs=1, lr_schedule=lambda e, s: -1.0, verbose=False)


def test_verbose_false_prints_nothing(capsys):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, validation_data=(X, y), verbose=False)
    with np.errstate(all="ignore"):
        hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=3e38), epochs=2, verbose=False)
    assert hist.stop_reason
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_non_tty_prints_one_line_per_epoch(capsys):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, validation_data=(X, y))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3 and "\r" not in err
    for i, ln in enumerate(lines, start=1):
        assert ln.startswith(f"epoch {i}  loss ") and "val_loss " in ln and "val_accuracy " in ln


def test_tty_shows_a_progress_bar(monkeypatch):
    X, y = data()
    stream = io.StringIO()
    monkeypatch.setattr(training_mod.sys, "stderr", stream)
    monkeypatch.setattr(training_mod, "_isatty", lambda s: True)
    model = bg.compile(bg.mlp([4, 5, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=8)
    text = stream.getvalue()
    assert "\repoch 1/2 [" in text and "5/5 loss " in text
    finals = [ln.split("\r")[-1] for ln in text.split("\n") if ln]
    assert [f.split("  ")[0] for f in finals] == ["epoch 1", "epoch 2"]


def test_divergence_reason_is_printed_unless_quiet(capsys):
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3], batchnorm=False))
    with np.errstate(all="ignore"):
        hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=3e38), epochs=2)
    err = capsys.readouterr().err
    assert hist.stop_reason in err


class ProtocolSGD:
    """Not an Optimizer subclass: just the protocol (step(params, grads) and lr)."""

    def __init__(self, lr):
        self.lr = lr
        self.calls = 0

    def step(self, params, grads):
        self.calls += 1
        assert set(params) == set(grads)
        for name, g in grads.items():
            params[name] -= self.lr * g


class SignSGD(bg.optim.Optimizer):
    def __init__(self, lr=0.01):
        super().__init__(lr=lr)

    def step(self, params, grads):
        for name, g in grads.items():
            params[name] -= self.lr * np.sign(g)
        self.step_count += 1


@pytest.mark.parametrize("make", [lambda: ProtocolSGD(0.2), lambda: SignSGD(0.02)], ids=["protocol", "subclass"])
def test_custom_optimizer_trains(make):
    X, y = data(60)
    model = bg.compile(bg.mlp([4, 8, 3]), dtype="float64")
    opt = make()
    first = model.evaluate(X, y)["loss"]
    hist = model.fit(X, y, optimizer=opt, epochs=15, batch_size=10, verbose=False,
                     lr_schedule=lambda e, s: opt.lr)
    assert model.optimizer is opt and model.step == 90
    assert hist[-1]["loss"] < hist[0]["loss"] and model.evaluate(X, y)["loss"] < first
    assert hist[-1]["lr"] == opt.lr


def test_custom_optimizer_matches_sgd():
    X, y = data(30)
    a = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    b = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    a.fit(X, y, optimizer=ProtocolSGD(0.1), epochs=2, batch_size=8, verbose=False)
    b.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=2, batch_size=8, verbose=False)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-12, atol=1e-15)


def test_a_graph_with_two_feature_inputs_is_refused_clearly():
    g = bg.Graph("two")
    a, b = g.input("a", 3), g.input("b", 3)
    y = g.labels("y", 2)
    s = g.add_node("add", [g.matmul(a, 4, name="fa"), g.matmul(b, 4, name="fb")], {}, ["sum"]).out
    g.softmax_cross_entropy(g.matmul(s, 2, name="out"), y)
    with pytest.raises(bg.IRError, match=r"one feature input .* got inputs %a, %b, %y"):
        bg.compile(g)


def test_building_on_the_graph_after_compile_changes_nothing_in_the_model(tmp_path):
    g = bg.mlp([4, 6, 3])
    model = bg.compile(g)
    g.input("extra", 5)  # the user goes on building g
    model.save(tmp_path / "m.npz")
    assert "extra" not in str(bg.load(tmp_path / "m.npz").source_graph)


def test_refused_data_does_not_replace_the_optimizer():
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    adam = bg.optim.Adam(lr=1e-2)
    model.fit(X, y, optimizer=adam, epochs=1, verbose=False)
    with pytest.raises(bg.DataError):
        model.train_step(X[:8, :3], y[:8], bg.optim.SGD(lr=0.1))
    with pytest.raises(bg.DataError):
        model.fit(X, y + 10, optimizer=bg.optim.SGD(lr=0.1), verbose=False)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), batch_size=0, verbose=False)
    assert model.optimizer is adam


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_forward_predict_evaluate_check_batch_size(bs):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    for call in (lambda: model.forward(X, batch_size=bs), lambda: model.predict(X, batch_size=bs),
                 lambda: model.evaluate(X, y, batch_size=bs)):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bs!r}"):
            call()


def test_loading_optimizer_state_into_an_object_without_load_state_dict(tmp_path):
    X, y = data()
    model = bg.compile(bg.mlp([4, 6, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=1, verbose=False)
    model.save(tmp_path / "m.npz")

    class Bare:
        lr = 0.1

        def step(self, params, grads):
            pass

    with pytest.raises(bg.CheckpointError, match="Adam state but the given Bare has no load_state_dict"):
        bg.load(tmp_path / "m.npz", optimizer=Bare())
