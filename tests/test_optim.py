"""bngraph.optim against torch.optim, plus the optimizer protocol (state dicts, custom optimizers)."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from bngraph import optim
from bngraph.flat import FlatLayout

import torch  # the oracle; installed by the test extra, so CI never skips these

SHAPES = {"W": (5, 3), "b": (5,), "V": (4, 5)}
NSTEPS = 6
GRAD_SCALES = [1.0, 3.0, 0.1, 2.0, 0.01, 1.0]  # varying, so AMSGrad's max matters


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def make_grads(dtype, seed=1, nsteps=NSTEPS):
    rng = np.random.default_rng(seed)
    return [{name: (GRAD_SCALES[k % len(GRAD_SCALES)] * rng.standard_normal(shape)).astype(dtype)
             for name, shape in SHAPES.items()} for k in range(nsteps)]


# (bngraph constructor, torch constructor, kwargs). The torch kwargs differ only for Adam's betas.
def _torch_kw(kw):
    kw = dict(kw)
    if "beta1" in kw or "beta2" in kw:
        kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    return kw


CONFIGS = (
    [("SGD", dict(lr=0.1, **c)) for c in (
        dict(),
        dict(weight_decay=1e-2),
        dict(momentum=0.9),
        dict(momentum=0.9, dampening=0.9),            # the lecture's momentum, beta = 0.9
        dict(momentum=0.8, dampening=0.5, weight_decay=1e-2),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    )]
    + [("RMSprop", dict(lr=1e-2, alpha=alpha, centered=centered, momentum=momentum,
                        weight_decay=wd))
       for alpha in (0.99, 0.9) for centered in (False, True) for momentum in (0, 0.9)
       for wd in (0, 1e-2)]
    + [("RMSprop", dict())]
    + [(name, dict(lr=1e-2, **c)) for name in ("Adam", "AdamW") for c in (
        dict(),
        dict(beta1=0.8, beta2=0.99),
        dict(weight_decay=0.1),
        dict(amsgrad=True),
        dict(amsgrad=True, weight_decay=0.1, beta1=0.5, beta2=0.9, eps=1e-6),
        dict(weight_decay=0),
    )]
    + [("Adam", dict()), ("AdamW", dict())]
)


def _id(cfg):
    name, kw = cfg
    return name + "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")"


def run_pair(name, kw, dtype, *, missing=None, lr_changes=None, flat=False):
    """Run bngraph's and torch's optimizer side by side; yield both param dicts after each step.

    missing: {step: param name} whose gradient is absent (None in torch) at that step.
    lr_changes: {step: new lr} applied before that step to both.
    flat: bngraph's params live in flat buffers; the optimizer is bound to their layout and
    steps with step_flat (a step with a missing gradient goes through step(), as it must).
    """
    missing, lr_changes = missing or {}, lr_changes or {}
    params = make_params(dtype)
    tparams = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    opt = getattr(optim, name)(**kw)
    topt = getattr(torch.optim, name)(list(tparams.values()), foreach=False, **_torch_kw(kw))
    if flat:
        layout = FlatLayout([(n, p.shape, p.dtype.name) for n, p in params.items()])
        P, G = layout.allocate(np), layout.allocate(np)
        for n, p in params.items():
            P[n][...] = p
        params = P.views
        opt.bind(layout, np)
    for k, grads in enumerate(make_grads(dtype)):
        if k in lr_changes:
            opt.lr = lr_changes[k]
            for group in topt.param_groups:
                group["lr"] = lr_changes[k]
        grads = {n: g for n, g in grads.items() if missing.get(k) != n}
        for n, tp in tparams.items():
            tp.grad = torch.tensor(grads[n]) if n in grads else None
        if flat and len(grads) == len(SHAPES):
            for n, g in grads.items():
                G[n][...] = g
            opt.step_flat(P, G)
        else:
            opt.step(params, grads)
        topt.step()
        yield k, params, {n: tp.detach().numpy() for n, tp in tparams.items()}


def _assert_close(params, tparams, dtype, where):
    rtol, atol = (1e-12, 1e-13) if dtype == np.float64 else (1e-6, 1e-6)
    for n in SHAPES:
        assert params[n].dtype == dtype, (where, n, params[n].dtype)
        np.testing.assert_allclose(params[n], tparams[n], rtol=rtol, atol=atol,
                                   err_msg=f"{where}, param {n}")


@pytest.mark.parametrize("path", ["step", "step_flat"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_matches_torch(cfg, dtype, path):
    name, kw = cfg
    for k, params, tparams in run_pair(name, kw, dtype, flat=path == "step_flat"):
        _assert_close(params, tparams, dtype, f"step {k}")


@pytest.mark.parametrize("path", ["step", "step_flat"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_matches_torch_with_missing_grads_and_lr_schedule(cfg, dtype, path):
    name, kw = cfg
    lr = kw.get("lr", 1e-2)
    for k, params, tparams in run_pair(name, kw, dtype, missing={1: "b", 2: "W", 4: "b"},
                                       lr_changes={3: lr / 2, 5: lr * 3},
                                       flat=path == "step_flat"):
        _assert_close(params, tparams, dtype, f"step {k}")


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_missing_grad_leaves_param_unchanged(name):
    kw = {"SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.1)}.get(name, dict(weight_decay=0.1))
    opt = getattr(optim, name)(**kw)
    params = make_params(np.float64)
    grads = make_grads(np.float64)
    opt.step(params, grads[0])
    before = params["b"].copy()
    opt.step(params, {n: g for n, g in grads[1].items() if n != "b"})
    np.testing.assert_array_equal(params["b"], before)       # not even weight decay touches it
    opt.step(params, {**grads[2], "b": None})                # None works as "no gradient" too
    np.testing.assert_array_equal(params["b"], before)
    if name.startswith("Adam"):
        assert int(opt.state["b"]["step"]) == 1 and int(opt.state["W"]["step"]) == 3
    assert opt.step_count == 3


def _straight_and_resumed(name, kw, dtype, rebuild):
    grads = make_grads(dtype)
    straight = make_params(dtype)
    opt = getattr(optim, name)(**kw)
    for g in grads:
        opt.step(straight, g)

    resumed = make_params(dtype)
    opt1 = getattr(optim, name)(**kw)
    for g in grads[:3]:
        opt1.step(resumed, g)
    sd = opt1.state_dict()
    # Stepping on must not change the saved dict (its arrays are copies).
    opt1.step({n: p.copy() for n, p in resumed.items()}, grads[3])
    opt2 = rebuild(sd)
    assert opt2 is not opt1
    for g in grads[3:]:
        opt2.step(resumed, g)
    return straight, resumed, sd, opt2


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("how", ["from_state_dict", "load_state_dict"])
@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[1]], ids=_id)
def test_state_dict_round_trip(cfg, how, dtype):
    name, kw = cfg
    if how == "from_state_dict":
        rebuild = optim.from_state_dict
    else:
        def rebuild(sd):
            opt = getattr(optim, name)()   # defaults: load_state_dict restores the hyperparameters
            opt.load_state_dict(sd)
            return opt
    straight, resumed, sd, opt2 = _straight_and_resumed(name, kw, dtype, rebuild)
    for n in SHAPES:
        np.testing.assert_array_equal(straight[n], resumed[n], err_msg=n)
    assert sd["type"] == name and sd["step"] == 3
    assert opt2.step_count == NSTEPS
    assert opt2.hyper == getattr(optim, name)(**kw).hyper
    for n, slots in sd["slots"].items():
        assert n in SHAPES
        for arr in slots.values():
            assert isinstance(arr, np.ndarray)


def test_state_dict_is_a_copy_both_ways():
    opt = optim.Adam(lr=0.1)
    params = make_params(np.float64)
    grads = make_grads(np.float64)
    opt.step(params, grads[0])
    sd = opt.state_dict()
    saved = {n: {k: a.copy() for k, a in s.items()} for n, s in sd["slots"].items()}
    opt.step(params, grads[1])
    for n, s in sd["slots"].items():
        for k, a in s.items():
            np.testing.assert_array_equal(a, saved[n][k])
    opt2 = optim.Adam()
    opt2.load_state_dict(sd)
    opt2.step(make_params(np.float64), grads[1])
    for n, s in sd["slots"].items():
        for k, a in s.items():
            np.testing.assert_array_equal(a, saved[n][k])
    assert sd["hyper"] == dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                               amsgrad=False)


def test_state_dict_records_current_lr():
    opt = optim.SGD(0.1, momentum=0.9)
    opt.lr = 0.05
    assert opt.state_dict()["hyper"]["lr"] == 0.05
    assert optim.from_state_dict(opt.state_dict()).lr == 0.05


def test_load_state_dict_errors():
    sd = optim.Adam().state_dict()
    with pytest.raises(ValueError, match="for a Adam optimizer, cannot load it into SGD"):
        optim.SGD().load_state_dict(sd)
    with pytest.raises(ValueError, match="missing keys"):
        optim.Adam().load_state_dict({"type": "Adam"})
    with pytest.raises(ValueError, match="unknown hyperparameters for Adam: \\['momentum'\\]"):
        optim.Adam().load_state_dict({**sd, "hyper": {"momentum": 0.9}})
    opt = optim.Adam(lr=0.5)
    with pytest.raises(ValueError, match="beta1"):
        opt.load_state_dict({**sd, "hyper": {**sd["hyper"], "beta1": 1.5}})
    assert opt.lr == 0.5 and opt.beta1 == 0.9        # unchanged after a failed load
    # State from a different model: a clear error at the next step.
    other = optim.Adam()
    other.step({"W": np.zeros((2, 2))}, {"W": np.ones((2, 2))})
    opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="state 'exp_avg' for 'W' has shape \\(2, 2\\)"):
        opt.step(make_params(np.float64), make_grads(np.float64)[0])


def test_from_state_dict_unknown_type():
    with pytest.raises(ValueError, match="unknown optimizer type 'Lion'.*load_state_dict"):
        optim.from_state_dict({"type": "Lion", "hyper": {}, "step": 0, "slots": {}})
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        optim.from_state_dict({"lr": 1})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam", "adamw"])
def test_updates_in_place_in_param_dtype(name, dtype):
    opt = optim.make(name, weight_decay=0.01)
    params = make_params(dtype)
    arrays = dict(params)
    pointers = {n: p.ctypes.data for n, p in params.items()}
    grads = make_grads(np.float64)                      # float64 grads on float32 params are fine
    grads_copy = [{n: g.copy() for n, g in gs.items()} for gs in grads]
    before = {n: p.copy() for n, p in params.items()}
    for gs in grads:
        opt.step(params, gs)
    for n, p in params.items():
        assert p is arrays[n] and p.ctypes.data == pointers[n]
        assert p.dtype == dtype
        assert not np.array_equal(p, before[n])
        for slot in opt.state[n].values():
            assert slot.ndim == 0 or slot.dtype == dtype
    for gs, gc in zip(grads, grads_copy):                # the gradients are never modified
        for n in gs:
            np.testing.assert_array_equal(gs[n], gc[n])


def test_views_are_updated_in_place():
    big = np.zeros((4, 6))
    params = {"W": big[:, ::2], "b": big[0]}             # non-contiguous view and a row view
    opt = optim.SGD(lr=1.0, momentum=0.5)
    opt.step(params, {"W": np.ones((4, 3))})
    np.testing.assert_array_equal(big[:, ::2], -1.0)
    np.testing.assert_array_equal(big[:, 1::2], 0.0)


def test_step_errors():
    opt = optim.SGD(lr=0.1)
    params = make_params(np.float64)
    with pytest.raises(ValueError, match="gradient for 'W' has shape \\(3, 5\\).*\\(5, 3\\)"):
        opt.step(params, {"W": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="gradients for unknown parameters \\['Wx'\\]"):
        opt.step(params, {"Wx": np.zeros((5, 3))})
    with pytest.raises(TypeError, match="floating-point"):
        opt.step({"n": np.zeros(3, dtype=np.int64)}, {"n": np.ones(3)})


def test_lr_schedule_hook():
    opt = optim.SGD(lr=1.0)
    params = {"w": np.zeros(2)}
    opt.step(params, {"w": np.ones(2)})
    opt.lr = 0.25
    opt.step(params, {"w": np.ones(2)})
    np.testing.assert_array_equal(params["w"], -1.25)
    opt.lr = np.float32(0.5)                             # numpy scalars are fine (stored as float)
    assert type(opt.lr) is float
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.lr = -0.1
    with pytest.raises(ValueError, match="lr must be finite"):
        opt.lr = float("nan")


@pytest.mark.parametrize("factory, kw, match", [
    (optim.SGD, dict(lr=-1), "Invalid learning rate: -1"),
    (optim.SGD, dict(momentum=-0.1), "Invalid momentum value"),
    (optim.SGD, dict(weight_decay=-1), "Invalid weight_decay value"),
    (optim.SGD, dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov momentum requires"),
    (optim.SGD, dict(lr="0.1"), "lr must be a number"),
    (optim.RMSprop, dict(lr=-1e-3), "Invalid learning rate"),
    (optim.RMSprop, dict(alpha=-0.5), "Invalid alpha value"),
    (optim.RMSprop, dict(alpha=1.5), "Invalid alpha value"),
    (optim.RMSprop, dict(eps=-1e-8), "Invalid eps value"),
    (optim.RMSprop, dict(momentum=-1), "Invalid momentum value"),
    (optim.RMSprop, dict(weight_decay=-1), "Invalid weight_decay value"),
    (optim.Adam, dict(lr=-1e-3), "Invalid learning rate"),
    (optim.Adam, dict(beta1=1.0), "Invalid beta1 value: 1.0 \\(must be in \\[0, 1\\)\\)"),
    (optim.Adam, dict(beta2=-0.1), "Invalid beta2 value"),
    (optim.Adam, dict(beta1=(0.9, 0.999)), "PyTorch's betas=\\(b1, b2\\) is beta1=b1"),
    (optim.Adam, dict(eps=-1.0), "Invalid eps value"),
    (optim.Adam, dict(weight_decay=-1e-2), "Invalid weight_decay value"),
    (optim.AdamW, dict(beta2=1.0), "Invalid beta2 value"),
    (optim.AdamW, dict(weight_decay=-1e-2), "Invalid weight_decay value"),
    (optim.AdamW, dict(lr=float("inf")), "lr must be finite"),
])
def test_bad_hyperparameters(factory, kw, match):
    with pytest.raises(ValueError, match=match):
        factory(**kw)


def test_betas_keyword_is_not_accepted():
    with pytest.raises(TypeError, match="betas"):
        optim.Adam(betas=(0.9, 0.999))


def test_defaults_match_torch():
    p = [torch.zeros(1, requires_grad=True)]
    pairs = [(optim.SGD(), torch.optim.SGD(p)), (optim.RMSprop(), torch.optim.RMSprop(p)),
             (optim.Adam(), torch.optim.Adam(p)), (optim.AdamW(), torch.optim.AdamW(p))]
    for ours, theirs in pairs:
        d = theirs.defaults
        expected = {k: d[k] for k in ours.hyper if k in d}
        if "betas" in d:
            expected["beta1"], expected["beta2"] = d["betas"]
        assert ours.hyper == expected, type(ours).__name__


def test_make():
    assert type(optim.make("sgd")) is optim.SGD and optim.make("sgd").momentum == 0
    m = optim.make("momentum", lr=0.05)
    assert type(m) is optim.SGD and m.momentum == 0.9 and m.lr == 0.05
    assert optim.make("momentum", momentum=0.5).momentum == 0.5
    assert type(optim.make("RMSprop")) is optim.RMSprop and optim.make("rmsprop").lr == 1e-2
    assert type(optim.make("adam", lr=3e-4)) is optim.Adam and optim.make("adam", 3e-4).lr == 3e-4
    w = optim.make("adamw", weight_decay=0.1)
    assert type(w) is optim.AdamW and w.weight_decay == 0.1
    assert optim.make("adam").lr == 1e-3                # lr=None keeps the class default
    opt = optim.SGD(0.1)
    assert optim.make(opt) is opt
    with pytest.raises(ValueError, match="only when the optimizer is given by name"):
        optim.make(opt, lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; choose one of sgd, "
                                         "momentum, rmsprop, adam, adamw"):
        optim.make("adagrad")
    with pytest.raises(TypeError):
        optim.make(42)


# ----------------------------------------------------------------- custom optimizers ---------

class SignSGD(optim.Optimizer):
    """Through the ``update`` hook, with a slot (sign of a momentum buffer)."""

    def __init__(self, lr=1e-3, momentum=0.0):
        super().__init__(lr=lr, momentum=momentum)

    def update(self, p, g, slots):
        if "m" not in slots:
            slots["m"] = np.zeros_like(p)
        m = slots["m"]
        m *= self.momentum
        m += g
        p -= self.lr * np.sign(m)


class PlainSGD(optim.Optimizer):
    """Overriding ``step`` itself."""

    def __init__(self, lr=1e-3):
        super().__init__(lr=lr)

    def step(self, params, grads):
        for name, g in grads.items():
            params[name] -= self.lr * g
        self.step_count += 1


def test_custom_optimizer_update_hook():
    params = make_params(np.float32)
    grads = make_grads(np.float32)
    expect = {n: p.copy() for n, p in params.items()}
    m = {n: np.zeros_like(p) for n, p in params.items()}
    opt = SignSGD(lr=0.1, momentum=0.5)
    for k, gs in enumerate(grads):
        gs = {n: g for n, g in gs.items() if not (k == 2 and n == "b")}
        opt.step(params, gs)
        for n, g in gs.items():
            m[n] = 0.5 * m[n] + g
            expect[n] -= np.float32(0.1) * np.sign(m[n])
        for n in SHAPES:
            np.testing.assert_allclose(params[n], expect[n], rtol=1e-6)
            assert params[n].dtype == np.float32

    sd = opt.state_dict()
    assert sd["type"] == "SignSGD" and sd["hyper"] == {"lr": 0.1, "momentum": 0.5}
    assert sd["step"] == NSTEPS and set(sd["slots"]["W"]) == {"m"}
    with pytest.raises(ValueError, match="unknown optimizer type 'SignSGD'.*load_state_dict"):
        optim.from_state_dict(sd)
    opt2 = SignSGD()
    opt2.load_state_dict(sd)
    assert opt2.lr == 0.1 and opt2.momentum == 0.5 and opt2.step_count == NSTEPS
    np.testing.assert_array_equal(opt2.state["W"]["m"], opt.state["W"]["m"])


def test_custom_optimizer_step_override_matches_sgd():
    a, b = make_params(np.float64), make_params(np.float64)
    ours, theirs = PlainSGD(lr=0.1), optim.SGD(lr=0.1)
    for gs in make_grads(np.float64):
        ours.step(a, gs)
        theirs.step(b, gs)
    for n in SHAPES:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-14)
    assert ours.state_dict() == {"type": "PlainSGD", "hyper": {"lr": 0.1}, "step": NSTEPS,
                                 "slots": {}}


def test_custom_optimizer_without_update():
    class Broken(optim.Optimizer):
        pass
    with pytest.raises(NotImplementedError, match="Broken must implement update\\(\\) or step"):
        Broken().step({"w": np.zeros(1)}, {"w": np.zeros(1)})


def test_custom_hyperparameter_name_clash():
    class Clash(optim.Optimizer):
        def __init__(self):
            super().__init__(lr=0.1, step=3)
    with pytest.raises(ValueError, match="'step' clashes"):
        Clash()


def test_duck_typed_optimizer_passes_through_make():
    class Minimal:                                   # no base class at all: the protocol is enough
        lr = 0.1
        def step(self, params, grads): ...
        def state_dict(self): return {}
        def load_state_dict(self, d): ...
    m = Minimal()
    assert optim.make(m) is m


# ----------------------------------------------------------------- the docs' examples --------

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optimizers.md"


@pytest.mark.skipif(not DOCS.exists(), reason="docs/optimizers.md not present")
def test_docs_examples_run():
    """Every ```python block of docs/optimizers.md runs, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), ns)


def test_bad_gradient_changes_nothing():
    opt = optim.Adam(lr=0.1)
    params = make_params(np.float64)
    grads = make_grads(np.float64)
    opt.step(params, grads[0])
    before = {n: p.copy() for n, p in params.items()}
    sd = opt.state_dict()
    bad = {**grads[1], "V": np.zeros((5, 4))}             # W and b are fine, V has the wrong shape
    with pytest.raises(ValueError, match="gradient for 'V'"):
        opt.step(params, bad)
    for n in SHAPES:
        np.testing.assert_array_equal(params[n], before[n])
        for k, a in opt.state[n].items():
            np.testing.assert_array_equal(a, sd["slots"][n][k])
    assert opt.step_count == 1


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_state_dict_survives_json_and_npz(name, tmp_path):
    """The shape a checkpoint stores it in: JSON for type/hyper/step, .npz for the slot arrays."""
    import json
    kw = {"SGD": dict(lr=0.1, momentum=0.9), "RMSprop": dict(centered=True, momentum=0.5),
          "Adam": dict(amsgrad=True)}.get(name, {})
    grads = make_grads(np.float32)
    straight, resumed = make_params(np.float32), make_params(np.float32)
    opt = getattr(optim, name)(**kw)
    for g in grads:
        opt.step(straight, g)
    opt1 = getattr(optim, name)(**kw)
    for g in grads[:3]:
        opt1.step(resumed, g)
    sd = opt1.state_dict()
    meta = json.loads(json.dumps({k: v for k, v in sd.items() if k != "slots"}))
    np.savez(tmp_path / "o.npz", **{f"{p}/{s}": a for p, sl in sd["slots"].items()
                                    for s, a in sl.items()})
    slots: dict = {}
    with np.load(tmp_path / "o.npz") as z:
        for k in z.files:
            p, s = k.rsplit("/", 1)
            slots.setdefault(p, {})[s] = z[k]
    opt2 = optim.from_state_dict({**meta, "slots": slots})
    for g in grads[3:]:
        opt2.step(resumed, g)
    for n in SHAPES:
        np.testing.assert_array_equal(straight[n], resumed[n])


def test_float64_state_into_float32_params():
    opt = optim.Adam(lr=0.1)
    opt.step(make_params(np.float64), make_grads(np.float64)[0])
    opt2 = optim.from_state_dict(opt.state_dict())
    params = make_params(np.float32)
    opt2.step(params, make_grads(np.float32)[1])
    assert all(p.dtype == np.float32 for p in params.values())
    assert opt2.state["W"]["exp_avg"].dtype == np.float32
    assert int(opt2.state["W"]["step"]) == 2


def test_an_optimizer_without_update_or_step_says_what_to_implement():
    import numpy as np

    class Nothing(optim.Optimizer):
        pass

    p = {"w": np.ones(3)}
    with pytest.raises(NotImplementedError, match="Nothing must implement update\\(\\) or step\\(\\)"):
        Nothing(lr=0.1).step(p, {"w": np.ones(3)})
    np.testing.assert_array_equal(p["w"], 1.0)
