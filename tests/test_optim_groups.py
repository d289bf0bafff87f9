"""Parameter groups (chosen by name pattern) against torch.optim's param_groups, on both paths."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bngraph import optim
from test_optim_flat import assert_bitwise, assert_same_state, flat_copy, load, no_fallback

# the layout order puts each group's params in several runs (gamma/beta of two layers apart)
SHAPES = {"fc1.W": (6, 4), "bn1.gamma": (6,), "bn1.beta": (6,), "fc2.W": (5, 6),
          "bn2.gamma": (5,), "bn2.beta": (5,), "out.W": (3, 5), "out.b": (3,)}
NSTEPS = 7
LR_CHANGE = 4          # before this step: opt.lr *= 0.5


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s) + (1.0 if n.endswith("gamma") else 0.0)).astype(dtype)
            for n, s in SHAPES.items()}


def make_grads(dtype, seed=1):
    rng = np.random.default_rng(seed)
    scales = [1.0, 3.0, 0.1, 2.0, 0.01, 1.0, 0.5]
    return [{n: (scales[k] * rng.standard_normal(s)).astype(dtype) for n, s in SHAPES.items()}
            for k in range(NSTEPS)]


BN = ["*.gamma", "*.beta"]
CASES = {
    # no weight decay on gamma/beta, a smaller lr for the first layer
    "adamw-nodecay-bn": ("AdamW", dict(lr=1e-2, weight_decay=0.1),
                         [{"params": BN, "weight_decay": 0.0}, {"params": "fc1.*", "lr": 1e-3}]),
    "sgd-nodecay-bn": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
                       [{"params": BN, "weight_decay": 0.0}, {"params": "fc1.*", "lr": 0.02}]),
    "sgd-nesterov-group": ("SGD", dict(lr=0.1, momentum=0.9),
                           [{"params": "fc*", "nesterov": True}, {"params": "out.*", "momentum": 0.0}]),
    "adam-amsgrad-group": ("Adam", dict(lr=1e-2),
                           [{"params": "fc1.*", "amsgrad": True, "beta1": 0.5},
                            {"params": BN, "weight_decay": 0.1}]),
    "rmsprop-mixed-slots": ("RMSprop", dict(lr=1e-2),
                            [{"params": "*.gamma", "centered": True},
                             {"params": "out.*", "momentum": 0.9, "alpha": 0.9}]),
}


def torch_groups(groups, tparams):
    """The torch param_groups equivalent to bngraph's patterns (first match wins)."""
    from fnmatch import fnmatchcase
    owned, out = set(), []
    for g in groups:
        pats = [g["params"]] if isinstance(g["params"], str) else g["params"]
        names = [n for n in SHAPES if n not in owned and any(fnmatchcase(n, p) for p in pats)]
        owned.update(names)
        kw = {k: v for k, v in g.items() if k != "params"}
        if "beta1" in kw or "beta2" in kw:
            kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
        out.append({"params": [tparams[n] for n in names], **kw, "own_lr": "lr" in kw})
    rest = [tparams[n] for n in SHAPES if n not in owned]
    return out + [{"params": rest, "own_lr": False}]


def run(case, dtype, path, block="auto"):
    name, kw, groups = CASES[case]
    params = make_params(dtype)
    opt = getattr(optim, name)(**kw, groups=groups)
    if path == "step_flat":
        P = flat_copy(params)
        G = P.layout.allocate(np)
        opt.bind(P.layout, np, block=block)
        opt.step = no_fallback
        params = P.views
    for k, grads in enumerate(make_grads(dtype)):
        if k == LR_CHANGE:
            opt.lr = opt.lr * 0.5
        if path == "step_flat":
            load(G, grads)
            opt.step_flat(P, G)
        else:
            opt.step(params, grads)
    return {n: np.array(p) for n, p in params.items()}, opt


def run_torch(case, dtype):
    name, kw, groups = CASES[case]
    tparams = {n: torch.tensor(p, requires_grad=True) for n, p in make_params(dtype).items()}
    tg = torch_groups(groups, tparams)
    own = [g.pop("own_lr") for g in tg]
    tkw = dict(kw)
    topt = getattr(torch.optim, name)(tg, foreach=False, **tkw)
    for k, grads in enumerate(make_grads(dtype)):
        if k == LR_CHANGE:
            for group, o in zip(topt.param_groups, own):
                if not o:                     # opt.lr = x: the groups without their own lr
                    group["lr"] *= 0.5
        for n, tp in tparams.items():
            tp.grad = torch.tensor(grads[n])
        topt.step()
    return {n: tp.detach().numpy() for n, tp in tparams.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_groups_match_torch_on_both_paths(case, dtype):
    theirs = run_torch(case, dtype)
    ref, ref_opt = run(case, dtype, "step")
    flat, flat_opt = run(case, dtype, "step_flat")
    blocked, blocked_opt = run(case, dtype, "step_flat", block=5)   # pieces across params
    rtol, atol = (1e-12, 1e-13) if dtype == np.float64 else (1e-6, 1e-6)
    for n in SHAPES:
        np.testing.assert_allclose(ref[n], theirs[n], rtol=rtol, atol=atol, err_msg=n)
        assert_bitwise(flat[n], ref[n], n)
        assert_bitwise(blocked[n], ref[n], n)
    assert_same_state(flat_opt.state_dict(), ref_opt.state_dict())
    assert_same_state(blocked_opt.state_dict(), ref_opt.state_dict())
    # the groups made a difference: without them, the result is another one
    name, kw, _ = CASES[case]
    plain = make_params(dtype)
    opt = getattr(optim, name)(**kw)
    for g in make_grads(dtype):
        opt.step(plain, g)
    assert any(not np.allclose(plain[n], ref[n], rtol=rtol, atol=atol) for n in SHAPES)


def test_group_slots_follow_the_groups():
    _, opt = run("rmsprop-mixed-slots", np.float64, "step_flat")
    assert list(opt.state["bn1.gamma"]) == ["square_avg", "grad_avg"]
    assert list(opt.state["out.b"]) == ["square_avg", "momentum_buffer"]
    assert list(opt.state["fc1.W"]) == ["square_avg"]
    _, opt = run("sgd-nesterov-group", np.float64, "step_flat")
    assert opt.state["out.W"] == {} and list(opt.state["fc2.W"]) == ["momentum_buffer"]


def test_lr_sets_the_groups_without_their_own():
    opt = optim.AdamW(lr=1e-2, groups=CASES["adamw-nodecay-bn"][2])
    opt.lr = 0.5
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.5, 1e-3, 0.5] and opt.lr == 0.5 and opt.hyper["lr"] == 0.5
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[2]["weight_decay"] == 1e-2
    opt.weight_decay = 0.2                    # any hyperparameter: the same rule
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.2, 0.2]


def test_param_groups():
    groups = [{"params": BN, "weight_decay": 0}, {"params": "fc1.*", "lr": 1e-4}]
    opt = optim.Adam(lr=1e-3, weight_decay=1e-2, groups=groups)
    pg = opt.param_groups
    assert [g["params"] for g in pg] == [("*.gamma", "*.beta"), ("fc1.*",), ("*",)]
    assert dict(pg[1]) == {"params": ("fc1.*",), "lr": 1e-4, "beta1": 0.9, "beta2": 0.999,
                           "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False}
    assert type(pg[0]["weight_decay"]) is float            # normalized like the constructor's
    assert all("names" not in g for g in pg)
    with pytest.raises(TypeError):
        pg[1]["lr"] = 0.1                                   # a snapshot: read-only
    P = flat_copy(make_params(np.float32))
    opt.bind(P.layout, np)
    assert [g["names"] for g in opt.param_groups] == [
        ("bn1.gamma", "bn1.beta", "bn2.gamma", "bn2.beta"), ("fc1.W",), ("fc2.W", "out.W", "out.b")]
    assert groups == [{"params": BN, "weight_decay": 0}, {"params": "fc1.*", "lr": 1e-4}]  # untouched


@pytest.mark.parametrize("groups, match", [
    ([{"params": "*.gamma", "momentum": 0.9}], "Adam group 0: unknown keys \\['momentum'\\]"),
    ([{"params": "*.gamma", "lr": -1}], "Adam group 0: Invalid learning rate"),
    ([{"params": "*.b"}, {"params": "*", "beta2": 1.0}], "Adam group 1: Invalid beta2 value"),
    ([{"lr": 0.1}], "Adam group 0: no 'params'"),
    ([{"params": [], "lr": 0.1}], "non-empty list"),
    ([{"params": [3], "lr": 0.1}], "must be a name pattern"),
    ([{"params": "*", "beta1": (0.9, 0.99)}], "PyTorch's betas"),
])
def test_group_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        optim.Adam(groups=groups)


def test_group_that_owns_nothing():
    params, grads = make_params(np.float64), make_grads(np.float64)
    for groups in ([{"params": "*.gama", "weight_decay": 0}],                 # a typo
                   [{"params": "bn*"}, {"params": "bn1.*", "lr": 0.1}]):      # shadowed
        opt = optim.SGD(lr=0.1, groups=groups)
        with pytest.raises(ValueError, match="matches no parameter"):
            opt.step(params, grads[0])
        with pytest.raises(ValueError, match="matches no parameter"):
            opt.bind(flat_copy(params).layout, np)
    assert np.array_equal(params["fc1.W"], make_params(np.float64)["fc1.W"])   # nothing changed
    with pytest.raises(TypeError, match="a group is a dict"):
        optim.SGD(groups=["*.gamma"])


def test_setting_a_hyperparameter_validates_every_group():
    opt = optim.SGD(lr=0.1, momentum=0.9, groups=[{"params": "fc*", "nesterov": True}])
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        opt.momentum = 0.0                    # the fc group would be nesterov without momentum
    assert opt.momentum == 0.9
    with pytest.raises(ValueError, match="Invalid momentum value"):
        opt.momentum = -1


@pytest.mark.parametrize("how", ["from_state_dict", "load_state_dict", "json"])
@pytest.mark.parametrize("path", ["step", "step_flat"])
def test_groups_in_state_dict(how, path):
    case = "adamw-nodecay-bn"
    name, kw, groups = CASES[case]
    straight, _ = run(case, np.float32, path)
    params = make_params(np.float32)
    opt = getattr(optim, name)(**kw, groups=groups)
    grads = make_grads(np.float32)
    for g in grads[:3]:
        opt.step(params, g)
    sd = opt.state_dict()
    assert sd["groups"] == [{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0},
                            {"params": ["fc1.*"], "lr": 1e-3}]
    if how == "json":
        meta = json.loads(json.dumps({k: v for k, v in sd.items() if k != "slots"}))
        resumed = optim.from_state_dict({**meta, "slots": sd["slots"]})
    elif how == "from_state_dict":
        resumed = optim.from_state_dict(sd)
    else:
        resumed = getattr(optim, name)()      # no groups: load_state_dict brings them
        resumed.load_state_dict(sd)
    assert [dict(g) for g in resumed.param_groups] == [dict(g) for g in opt.param_groups]
    if path == "step_flat":
        P = flat_copy(params)
        G = P.layout.allocate(np)
        resumed.bind(P.layout, np)
        params = P.views
    for k, g in enumerate(grads[3:], start=3):
        if k == LR_CHANGE:
            resumed.lr = resumed.lr * 0.5
        if path == "step_flat":
            load(G, g)
            resumed.step_flat(P, G)
        else:
            resumed.step(params, g)
    for n in SHAPES:
        assert_bitwise(params[n], straight[n], n)


def test_load_state_dict_replaces_the_groups():
    opt = optim.SGD(lr=0.1, groups=[{"params": "fc1.*", "lr": 0.5}])
    opt.load_state_dict(optim.SGD(lr=0.2).state_dict())    # a dict without groups: none after
    assert len(opt.param_groups) == 1 and "groups" not in opt.state_dict()
    bad = {**optim.SGD().state_dict(), "groups": [{"params": "*", "nesterov": True}]}
    with pytest.raises(ValueError, match="SGD group 0: Nesterov"):
        opt.load_state_dict(bad)
    assert opt.lr == 0.2 and len(opt.param_groups) == 1      # unchanged


class HeavyBall(optim.Optimizer):
    """A custom optimizer: ``update`` reads ``self.lr``/``self.mu``, which are its group's values."""

    def __init__(self, lr=0.05, mu=0.8, groups=None):
        super().__init__(lr=lr, mu=mu, groups=groups)

    def update(self, p, g, slots):
        v = slots.setdefault("v", np.zeros_like(p))
        v *= self.mu
        v += g
        p -= self.lr * v


@pytest.mark.parametrize("path", ["step", "step_flat"])
def test_custom_optimizer_gets_groups_for_free(path):
    params, grads = make_params(np.float64), make_grads(np.float64)
    expect = {n: p.copy() for n, p in params.items()}
    vel = {n: np.zeros_like(p) for n, p in params.items()}
    opt = HeavyBall(lr=0.1, mu=0.5, groups=[{"params": BN, "mu": 0.0}, {"params": "out.*", "lr": 0.01}])
    if path == "step_flat":
        P = flat_copy(params)
        G = P.layout.allocate(np)
        params = P.views
    for gs in grads:
        if path == "step_flat":
            load(G, gs)
            opt.step_flat(P, G)
        else:
            opt.step(params, gs)
        for n, g in gs.items():
            mu = 0.0 if n.startswith("bn") else 0.5
            lr = 0.01 if n.startswith("out") else 0.1
            vel[n] = mu * vel[n] + g
            expect[n] -= lr * vel[n]
    for n in SHAPES:
        np.testing.assert_allclose(params[n], expect[n], rtol=1e-13, err_msg=n)
    assert opt.mu == 0.5 and opt.lr == 0.1    # outside update: the default group's values
    assert opt.state_dict()["groups"][0] == {"params": ["*.gamma", "*.beta"], "mu": 0.0}
