"""Reliability round 3 (issue 15), the compiler and training core: a graph that carries weights
starts from them in ``bg.compile``; hyperparameters are checked exactly (no truthy strings, no lr a
float32 model cannot hold); an update that overflows is TrainingDiverged at that step on every
target, with a message that names the cause; IR text cannot give a param the batch dimension."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import bngraph as bg
from interop_support import need

EMULATOR = shutil.which("g++") is not None
TARGETS = [pytest.param({"target": "numpy"}, id="numpy"),
           pytest.param({"target": "cuda", "device": "emulator"}, id="cuda-emulator",
                        marks=pytest.mark.skipif(not EMULATOR, reason="the CUDA emulator needs g++")),
           pytest.param({"target": "cuda", "device": "emulator", "cuda_graph": True}, id="cuda-emulator-graph",
                        marks=pytest.mark.skipif(not EMULATOR, reason="the CUDA emulator needs g++"))]


def _data(n=16, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


# ---- item 2: bg.compile of a graph that carries weights ----------------------------------------

def _torch_net():
    torch = need("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 3)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 2)
    return torch, net


def test_compile_of_an_imported_graph_starts_from_its_weights():
    torch, net = _torch_net()
    g = bg.from_torch(net, 6, loss="softmax_cross_entropy")
    X = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    expected = net(torch.tensor(X)).detach().numpy()
    model = bg.compile(g)  # what a user naturally writes
    np.testing.assert_allclose(model.forward(X, training=False), expected, atol=1e-5)
    # the method and the function agree, and both know the file's names for export
    by_method = g.compile()
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], by_method.params[k], err_msg=k)
    assert model.original_names == by_method.original_names != {}


def test_compile_of_an_onnx_graph_starts_from_its_weights():
    need("onnx")
    X, y = _data(24, 6)
    trained = bg.compile(bg.mlp([6, 8, 3]), seed=3)
    trained.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=8, verbose=False)
    imported = bg.from_onnx(bg.to_onnx(trained))
    model = bg.compile(imported)
    np.testing.assert_allclose(model.forward(X, training=False), trained.forward(X, training=False), atol=1e-5)


def test_reinitializing_an_imported_graph_is_an_explicit_choice():
    torch, net = _torch_net()
    g = bg.from_torch(net, 6, loss="softmax_cross_entropy")
    fresh = bg.compile(g, weights="init", seed=4)
    plain = bg.compile(bg.from_torch(net, 6, loss="softmax_cross_entropy").build(), seed=4)  # a frozen graph: no weights
    for k in fresh.params:
        np.testing.assert_array_equal(fresh.params[k], plain.params[k], err_msg=k)
    assert not np.allclose(fresh.params["bn_1.gamma"], net[1].weight.detach().numpy())
    assert fresh.original_names == {}


def test_compile_takes_starting_weights_as_a_dict_checked_like_set_params():
    g = bg.mlp([4, 5, 3])
    W = np.arange(20, dtype=np.float64).reshape(5, 4) / 10
    model = bg.compile(g, weights={"fc1.W": W})
    np.testing.assert_array_equal(model.params["fc1.W"], W.astype(np.float32))
    other = bg.compile(g)  # the rest are drawn as usual
    np.testing.assert_array_equal(model.params["out.W"], other.params["out.W"])
    with pytest.raises(ValueError, match=r"compile: weights: fc1.W expected shape \(5, 4\), got \(4, 5\)"):
        bg.compile(g, weights={"fc1.W": W.T})
    with pytest.raises(ValueError, match="fc1.W contains NaN or inf"):
        bg.compile(g, weights={"fc1.W": W * np.nan})
    with pytest.raises(ValueError, match="bn1.running_var must be >= 0"):
        bg.compile(g, weights={"bn1.running_var": -np.ones(5)})
    with pytest.raises(KeyError, match="'nope' is not a param or state value"):
        bg.compile(g, weights={"nope": W})
    with pytest.raises(ValueError, match="weights must be None .* got 'random'"):
        bg.compile(g, weights="random")


def test_a_bias_given_to_compile_is_folded_into_the_running_mean():
    """Starting values go through the passes' remap, as an import's do."""
    g = bg.mlp([4, 5, 3])
    b = np.linspace(-1, 1, 5)
    model = bg.compile(g, weights={"fc1.b": b, "bn1.running_mean": np.zeros(5)})
    assert "fc1.b" not in model.params
    np.testing.assert_allclose(model.state["bn1.running_mean"], -b.astype(np.float32))


# ---- item 8: hyperparameters are checked exactly ------------------------------------------------

@pytest.mark.parametrize("make, name", [(lambda v: bg.optim.Adam(amsgrad=v), "amsgrad"),
                                        (lambda v: bg.optim.AdamW(amsgrad=v), "amsgrad"),
                                        (lambda v: bg.optim.SGD(momentum=0.9, nesterov=v), "nesterov"),
                                        (lambda v: bg.optim.RMSprop(centered=v), "centered")])
@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, [True]])
def test_a_flag_must_be_a_bool(make, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be True or False, got {value!r}")):
        make(value)
    assert make(np.bool_(False)).hyper[name] is False


@pytest.mark.parametrize("value", [True, "0.1", None, float("nan"), -1.0])
def test_an_lr_schedule_must_return_a_learning_rate(value):
    X, y = _data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    before = {k: np.array(v) for k, v in model.params.items()}
    opt = bg.optim.Adam(lr=1e-3)
    with pytest.raises(ValueError, match=r"lr_schedule\(1, 1\) returned .*; it must return the learning rate"):
        model.fit(X, y, optimizer=opt, epochs=1, batch_size=8, lr_schedule=lambda e, s: value, verbose=False)
    assert model.step == 0 and opt.lr == 1e-3
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


# ---- item 10: an update that overflows float32, on every target ---------------------------------

def _snapshot(model):
    return ({k: np.array(v) for k, v in model.params.items()}, {k: np.array(v) for k, v in model.state.items()})


@pytest.mark.parametrize("kw", TARGETS)
@pytest.mark.parametrize("lr", [1e39, 1e300])
def test_an_lr_that_float32_cannot_hold_is_refused_with_nothing_changed(kw, lr):
    X, y = _data()
    model = bg.compile(bg.mlp([4, 5, 3]), **kw)
    params, state = _snapshot(model)
    opt = bg.optim.Adam(lr=lr)
    with pytest.raises(ValueError, match=re.escape(f"Adam: lr={lr!r} overflows float32, the dtype of the params it "
                                                   f"updates; nothing was updated")):
        model.fit(X, y, optimizer=opt, epochs=1, batch_size=16, verbose=False)
    assert model.step == 0 and opt.step_count == 0
    after = _snapshot(model)
    for k in params:
        np.testing.assert_array_equal(after[0][k], params[k], err_msg=k)
    for k in state:
        np.testing.assert_array_equal(after[1][k], state[k], err_msg=k)
    f64 = bg.compile(bg.mlp([4, 5, 3]), dtype="float64", **kw)  # float64 holds it: no refusal there
    if lr < 1e300:
        f64.train_step(X, y, bg.optim.SGD(lr=lr))


def _opt_state(opt):
    d = opt.state_dict()
    return d["step"], {n: {k: np.array(a) for k, a in slots.items()} for n, slots in d["slots"].items()}


def _same_opt_state(a, b):
    assert a[0] == b[0] and a[1].keys() == b[1].keys()
    for n in a[1]:
        assert a[1][n].keys() == b[1][n].keys(), n
        for k in a[1][n]:
            np.testing.assert_array_equal(a[1][n][k], b[1][n][k], err_msg=f"{n}.{k}")


# (optimizer, the absurd setting its update overflows with, what overflows)
OVERFLOWS = [
    (lambda: bg.optim.SGD(lr=0.1), {"lr": 3e38, "weight_decay": 100.0},
     r"made (fc1|out)\.\w+ NaN or inf \(finite loss and gradients: is the learning rate \(lr=3e\+38\) too large"),
    (lambda: bg.optim.Adam(lr=1e-2), {"weight_decay": 1e25},   # (g + 1e25*p)**2: exp_avg_sq overflows
     r"made the optimizer's 'exp_avg_sq' of (fc1|out|bn1)\.\w+ NaN or inf"),
    (lambda: bg.optim.RMSprop(lr=1e-2, momentum=0.5), {"weight_decay": 1e25},
     r"made the optimizer's 'square_avg' of (fc1|out|bn1)\.\w+ NaN or inf"),
]


@pytest.mark.parametrize("kw", TARGETS)
@pytest.mark.parametrize("how", ["train_step", "fit"])
@pytest.mark.parametrize("case", range(len(OVERFLOWS)), ids=["sgd-param", "adam-slot", "rmsprop-slot"])
def test_an_update_that_overflows_float32_is_training_diverged_with_nothing_changed(kw, how, case):
    """Issue 15, item 10, on every target: after two good steps an absurd setting makes the update
    overflow a param or a slot in float32. The step is TrainingDiverged at that step and changes
    nothing: params, running statistics, the optimizer's slots and counts, the step count. The
    model saves, and with the setting undone it trains on exactly like a model that never took the
    failed step."""
    make, absurd, match = OVERFLOWS[case]
    X, y = _data()
    model, twin = (bg.compile(bg.mlp([4, 5, 3]), **kw) for _ in range(2))
    opt, twin_opt = make(), make()
    for _ in range(2):
        model.train_step(X, y, opt)
        twin.train_step(X, y, twin_opt)
    params, state = _snapshot(model)
    slots = _opt_state(opt)
    sane = {k: getattr(opt, k) for k in absurd}
    for k, v in absurd.items():
        setattr(opt, k, v)
    if how == "train_step":
        with pytest.raises(bg.TrainingDiverged, match="the update at step 3 " + match[:0]) as e:
            model.train_step(X, y, opt)
        assert re.search(match, str(e.value)) and str(e.value).endswith("nothing was updated"), str(e.value)
    else:
        hist = model.fit(X, y, optimizer=opt, epochs=1, batch_size=16, verbose=False)
        assert hist.stop_reason is not None and re.search(match, hist.stop_reason), hist.stop_reason
    assert model.step == 2
    after = _snapshot(model)
    for k in params:
        np.testing.assert_array_equal(after[0][k], params[k], err_msg=k)
    for k in state:
        np.testing.assert_array_equal(after[1][k], state[k], err_msg=k)
    _same_opt_state(_opt_state(opt), slots)
    for k, v in sane.items():
        setattr(opt, k, v)
    model.train_step(X, y, opt)
    twin.train_step(X, y, twin_opt)
    for k, v in _snapshot(twin)[0].items():
        np.testing.assert_array_equal(_snapshot(model)[0][k], v, err_msg=k)
    _same_opt_state(_opt_state(opt), _opt_state(twin_opt))


def test_the_proof_keeps_ordinary_steps_in_place_and_sends_unproved_ones_to_a_snapshot(monkeypatch):
    """The step proves ordinary updates (no copy: the snapshot is never taken) and takes the
    snapshot for one it cannot prove: eps=0 while a slot ``exp_avg_sq`` may be 0 (the first step;
    later every entry is positive, measured, and the division is proved), centered RMSprop's
    ``sqrt(square_avg - grad_avg**2)`` (always)."""
    import bngraph.step as step_mod
    taken = []
    real = step_mod.update_on_snapshot
    monkeypatch.setattr(step_mod, "update_on_snapshot", lambda *a: (taken.append(1), real(*a)))
    X, y = _data()
    for opt, copies in [(bg.optim.Adam(lr=1e-3), 0), (bg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True), 0),
                        (bg.optim.AdamW(lr=1e-3, amsgrad=True), 0), (bg.optim.RMSprop(lr=1e-3), 0),
                        (bg.optim.Adam(lr=1e-3, eps=0.0), 1), (bg.optim.RMSprop(lr=1e-3, centered=True), 3)]:
        taken.clear()
        model = bg.compile(bg.mlp([4, 5, 3]))
        for _ in range(3):
            model.train_step(X, y, opt)
        assert len(taken) == copies, opt


@pytest.mark.parametrize("kw", TARGETS)
def test_eps_zero_over_a_zero_gradient_says_so(kw):
    X, y = _data()
    model = bg.compile(bg.mlp([4, 5, 3]), **kw)
    model.set_params({"out.W": np.zeros((3, 5))})  # fc1.W's gradient is exactly 0
    with pytest.raises(bg.TrainingDiverged, match=r"made fc1\.W NaN or inf \(eps=0 and a gradient of exactly 0 "
                                                  r"give 0/0 in Adam's update: use eps > 0"):
        model.train_step(X, y, bg.optim.Adam(eps=0))


@pytest.mark.parametrize("kw", TARGETS[:2])
def test_a_nan_optimizer_slot_is_named(kw):
    X, y = _data()
    model = bg.compile(bg.mlp([4, 5, 3]), **kw)
    opt = bg.optim.SGD(lr=0.1, momentum=0.9)
    model.train_step(X, y, opt)
    buf = opt.state["fc1.W"]["momentum_buffer"]
    buf[...] = model.runtime.asarray(np.full(buf.shape, np.nan), model.dtype)
    with pytest.raises(bg.TrainingDiverged, match=r"made fc1\.W NaN or inf \(its optimizer state 'momentum_buffer' "
                                                  r"holds NaN or inf"):
        model.train_step(X, y, opt)


def test_your_optimizer_overflowing_is_named_and_rolled_back():
    class Boom(bg.optim.Optimizer):
        def update(self, p, g, slots):
            p *= 1e30
            p *= 1e30

    X, y = _data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    params, _ = _snapshot(model)
    with pytest.raises(bg.TrainingDiverged, match=r"is the learning rate \(lr=0.001\) too large for float32\?\); "
                                                  r"nothing was updated"):
        model.train_step(X, y, Boom(lr=1e-3))
    for k, v in params.items():
        np.testing.assert_array_equal(model.params[k], v)


# ---- IR text: a param or state value has no batch dimension -------------------------------------

@pytest.mark.parametrize("line, fixed", [("param %fc1.b: f32[5]", "param %fc1.b: f32[m]"),
                                         ("state %bn1.running_var: f32[5]", "state %bn1.running_var: f32[m]"),
                                         ("param %fc1.W: f32[5,4]", "param %fc1.W: f32[5,m]")])
def test_ir_text_with_a_batch_sized_param_is_refused_at_parse(line, fixed):
    text = str(bg.mlp([4, 5, 3]))
    assert line in text
    kind, name = fixed.split()[:2]
    with pytest.raises(bg.IRError, match=f"{kind} {name.rstrip(':')}: .* has the batch dimension m; a {kind}'s shape "
                                         f"is fixed numbers"):
        bg.parse(text.replace(line, fixed))


def test_a_batch_sized_param_built_by_hand_is_refused_by_the_verifier():
    from bngraph.ir import TensorType, Value

    g = bg.mlp([4, 5, 3]).build()
    params = [Value(p.name, TensorType(p.type.dtype, ("m",)), p.kind) if p.name == "fc1.b" else p for p in g.params]
    with pytest.raises(bg.IRError, match=r"param %fc1.b: f32\[m\] has the batch dimension m"):
        bg.compile(g.rebuild(params=params))


# ---- a slot that appears mid-run, on the CUDA target's guarded step -----------------------------

@pytest.mark.parametrize("kw", TARGETS[1:])
@pytest.mark.parametrize("make, name, value", [
    pytest.param(lambda: bg.optim.Adam(lr=1e-2), "amsgrad", True, id="amsgrad"),
    pytest.param(lambda: bg.optim.AdamW(lr=1e-2), "amsgrad", True, id="adamw-amsgrad"),
    pytest.param(lambda: bg.optim.SGD(lr=0.05), "momentum", 0.9, id="momentum"),
    pytest.param(lambda: bg.optim.RMSprop(lr=1e-3), "centered", True, id="centered"),
    pytest.param(lambda: bg.optim.RMSprop(lr=1e-3), "momentum", 0.5, id="rmsprop-momentum")])
def test_a_slot_turned_on_mid_run_is_read_by_the_device_update(kw, make, name, value):
    """A hyperparameter that adds a slot mid-run (amsgrad, momentum from 0, centered): the guarded
    step's launch tables must pass the new slot, not the stand-in they had for it (it passed the
    params themselves, and AMSGrad's running max was written into them: a silent wrong result)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(48, 4)), rng.integers(0, 3, 48)
    params = {}
    for target, extra in (("numpy", {}), ("cuda", kw)):
        model = bg.compile(bg.mlp([4, 6, 3]), dtype="float64", seed=1, **extra)
        opt = make()
        model.fit(X, y, optimizer=opt, epochs=1, batch_size=8, verbose=False)
        setattr(opt, name, value)
        model.fit(X, y, optimizer=opt, epochs=3, batch_size=8, verbose=False)
        params[target] = {k: np.array(model.runtime.to_numpy(v)) for k, v in model.params.items()}
    for k, v in params["numpy"].items():
        np.testing.assert_allclose(params["cuda"][k], v, rtol=1e-12, atol=1e-14, err_msg=k)
