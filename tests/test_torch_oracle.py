"""PyTorch as the numerical oracle for whole training runs of bngraph models.

For random MLPs (with and without batch norm, with and without a bias before BN, every activation,
every loss, one or two hidden layers) an equivalent ``torch.nn`` model is built with the *same*
initial values; the same fixed mini-batches then go through ``Model.train_step`` and a plain torch
loop (zero_grad, forward in train mode, loss, backward, ``torch.optim`` step). Compared:

* the loss of every step and the gradients of the first step (dW, db, d gamma, d beta);
* the parameters after several steps of every optimizer (SGD plain / weight decay / momentum /
  nesterov, RMSprop default / momentum / centered, Adam, AdamW);
* the running statistics (running_var unbiased; see the bias note below);
* eval-mode outputs (``forward``), train-mode outputs (``forward(training=True)``, which must not
  change ``model.state``) and ``evaluate``;
* ``fit(shuffle=False)`` against the same torch loop over the same batch boundaries, including a
  last single-example batch that fit merges into the one before it.

The bias before batch norm. bngraph's training pipeline folds ``fc.b`` away (it has zero gradient)
and its running mean tracks the mean *without* the bias: ``ours = torch_running_mean - b``. The
torch model keeps the bias (bngraph's initial value, from ``init_values``), *frozen*
(``requires_grad=False``): that is the exact equivalent of dropping it. (A trainable torch bias
has a ~1e-17 gradient, but weight decay would shrink it and move torch's eval output away from
bngraph's; that difference is in the model, not a bug in either.)

Tolerances: float64 ``rtol=1e-10, atol=1e-12`` (observed: at most ~1e-13 relative after 5 steps); float32
``rtol=1e-4, atol=1e-5`` for values of order one (losses, outputs, params, running stats) and
``atol=1e-5`` relative to the largest gradient entry for gradients (float32 rounding of the BN
backward's cancellation ``m*dy - dbeta - z_hat*dgamma`` is absolute, not relative, for small
entries).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import bngraph as bg
from bngraph import optim
from bngraph.init import init_values
from test_optim_flat import FlatDriven

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}

N_IN, N_OUT = 6, 3
ACTS = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
LOSSES = ("softmax_cross_entropy", "mse", "sigmoid_bce")
BATCH_SIZES = (8, 12, 9, 16, 10)  # 5 steps; 5 distinct sizes also exercise buffer eviction (4 kept)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tensors here are tiny: torch's thread pool only costs time (spinning threads under a
    loaded CI machine made this file ~5x slower). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the torch twin -----------------------------------------------------------------------------


def torch_activation(kind):
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "tanh": nn.Tanh(),
            "sigmoid": nn.Sigmoid(), "identity": nn.Identity()}[kind]


def torch_loss(kind):
    return {"softmax_cross_entropy": nn.CrossEntropyLoss(), "mse": nn.MSELoss(),
            "sigmoid_bce": nn.BCEWithLogitsLoss()}[kind]


def t(a, dtype):
    return torch.tensor(np.asarray(a), dtype=TORCH_DTYPES[dtype])


class Twin:
    """A bngraph model and the equivalent torch model, holding the same values.

    ``names`` maps each bngraph param name to its torch parameter; ``folded`` maps a hidden layer
    k to the bias b that bngraph folded away (torch keeps it, frozen)."""

    def __init__(self, act="relu", loss="softmax_cross_entropy", bias=True, hidden=(7,), bn=True,
                 dtype="float64", eps=1e-5, momentum=0.1, seed=0, target="numpy"):
        self.act, self.loss_kind, self.bias, self.bn, self.dtype = act, loss, bias, bn, dtype
        self.hidden = list(hidden)
        g = bg.mlp([N_IN, *hidden, N_OUT], activation=act, batchnorm=bn, bias=bias, loss=loss,
                   eps=eps, momentum=momentum, negative_slope=0.1)
        self.model = bg.compile(g, target=target, dtype=dtype, seed=seed)
        init = init_values(self.model.source_graph, seed)  # the values before the passes
        rng = np.random.default_rng(seed + 1000)
        tdt = TORCH_DTYPES[dtype]
        m = self.model

        layers, self.names, self.folded, self.bns, self.linears = [], {}, {}, {}, {}
        n_prev = N_IN
        new_params, new_state = {}, {}
        for k, n in enumerate(self.hidden, start=1):
            lin = nn.Linear(n_prev, n, bias=bias, dtype=tdt)
            with torch.no_grad():
                lin.weight.copy_(t(m.params[f"fc{k}.W"], dtype))
            self.names[f"fc{k}.W"] = lin.weight
            self.linears[k] = lin
            if bias and bn:
                # folded by the pipeline: gone from params, absorbed into running_mean
                assert f"fc{k}.b" not in m.params
                b = init[f"fc{k}.b"].astype(dtype)
                assert np.all(b != 0)
                np.testing.assert_allclose(m.state[f"bn{k}.running_mean"], -b, rtol=0, atol=0)
                with torch.no_grad():
                    lin.bias.copy_(t(b, dtype))
                lin.bias.requires_grad_(False)
                self.folded[k] = b
            elif bias:
                with torch.no_grad():
                    lin.bias.copy_(t(m.params[f"fc{k}.b"], dtype))
                self.names[f"fc{k}.b"] = lin.bias
            layers.append(lin)
            if bn:
                bnl = nn.BatchNorm1d(n, eps=eps, momentum=momentum, dtype=tdt)
                # non-trivial gamma, beta and running statistics (the defaults 1, 0, 0, 1 hide mix-ups)
                gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n)
                rmean, rvar = rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)
                new_params[f"bn{k}.gamma"], new_params[f"bn{k}.beta"] = gamma, beta
                new_state[f"bn{k}.running_mean"] = rmean - self.folded.get(k, 0.0)
                new_state[f"bn{k}.running_var"] = rvar
                with torch.no_grad():
                    bnl.weight.copy_(t(gamma, dtype))
                    bnl.bias.copy_(t(beta, dtype))
                    bnl.running_mean.copy_(t(rmean, dtype))
                    bnl.running_var.copy_(t(rvar, dtype))
                self.names[f"bn{k}.gamma"], self.names[f"bn{k}.beta"] = bnl.weight, bnl.bias
                self.bns[k] = bnl
                layers.append(bnl)
            layers.append(torch_activation(act))
            n_prev = n
        out = nn.Linear(n_prev, N_OUT, bias=True, dtype=tdt)
        with torch.no_grad():
            out.weight.copy_(t(m.params["out.W"], dtype))
            out.bias.copy_(t(m.params["out.b"], dtype))
        self.names["out.W"], self.names["out.b"] = out.weight, out.bias
        layers.append(out)
        self.net = nn.Sequential(*layers)
        m.set_params(new_params)
        m.set_state(new_state)
        assert set(self.names) == set(m.params), (sorted(self.names), sorted(m.params))
        # both sides hold the same numbers now
        for name, p in self.names.items():
            np.testing.assert_array_equal(p.detach().numpy(), m.params[name])

    # -- data --------------------------------------------------------------------------------------
    def data(self, m, seed):
        rng = np.random.default_rng(seed)
        X = (rng.normal(0.5, 1.5, (m, N_IN))).astype(self.dtype)  # off-centre: the bias/mean matter
        if self.loss_kind == "softmax_cross_entropy":
            y = rng.integers(0, N_OUT, m)
        elif self.loss_kind == "mse":
            y = rng.normal(0, 1, (m, N_OUT)).astype(self.dtype)
        else:
            y = rng.integers(0, 2, (m, N_OUT)).astype(self.dtype)
        return X, y

    def torch_y(self, y):
        if self.loss_kind == "softmax_cross_entropy":
            return torch.tensor(y, dtype=torch.int64)
        return t(y, self.dtype)

    def batches(self, sizes=BATCH_SIZES, seed=1):
        return [self.data(m, seed + i) for i, m in enumerate(sizes)]

    # -- torch side ------------------------------------------------------------------------------
    def torch_step(self, X, y, opt):
        self.net.train()
        opt.zero_grad()
        loss = torch_loss(self.loss_kind)(self.net(t(X, self.dtype)), self.torch_y(y))
        loss.backward()
        opt.step()
        return float(loss.detach())

    def torch_out(self, X, training):
        self.net.train(training)
        with torch.no_grad():
            return self.net(t(X, self.dtype)).numpy()

    def trainable(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    # -- comparisons -------------------------------------------------------------------------------
    def torch_state(self):
        """Torch's running statistics in bngraph's convention (running_mean without the bias)."""
        out = {}
        for k, bnl in self.bns.items():
            out[f"bn{k}.running_mean"] = bnl.running_mean.numpy() - self.folded.get(k, 0.0)
            out[f"bn{k}.running_var"] = bnl.running_var.numpy()
        return out

    def assert_params_match(self, tol, what=""):
        for name, p in self.names.items():
            np.testing.assert_allclose(self.model.params[name], p.detach().numpy(), **tol,
                                       err_msg=f"param {name} {what}")

    def assert_state_match(self, tol, what=""):
        ts = self.torch_state()
        assert set(ts) == set(self.model.state)
        for name, v in ts.items():
            np.testing.assert_allclose(self.model.state[name], v, **tol, err_msg=f"state {name} {what}")

    def assert_outputs_match(self, X, tol):
        """eval and train-mode outputs; forward(training=True) must not touch model.state."""
        before = {k: v.copy() for k, v in self.model.state.items()}
        np.testing.assert_allclose(self.model.forward(X, training=False), self.torch_out(X, False), **tol,
                                   err_msg="eval-mode output")
        saved = self.save_torch_stats()
        np.testing.assert_allclose(self.model.forward(X, training=True), self.torch_out(X, True), **tol,
                                   err_msg="train-mode output")
        self.restore_torch_stats(saved)  # torch's train-mode forward updated its running stats
        for k, v in self.model.state.items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"forward(training=True) changed state {k}")

    def save_torch_stats(self):
        return [b.clone() for bnl in self.bns.values() for b in (bnl.running_mean, bnl.running_var)]

    def restore_torch_stats(self, saved):
        with torch.no_grad():
            bufs = [b for bnl in self.bns.values() for b in (bnl.running_mean, bnl.running_var)]
            for b, old in zip(bufs, saved):
                b.copy_(old)

    def torch_eval_loss(self, X, y):
        self.net.eval()
        with torch.no_grad():
            return float(torch_loss(self.loss_kind)(self.net(t(X, self.dtype)), self.torch_y(y)))


# ---- model configurations ---------------------------------------------------------------------------

# every activation x loss x (bias before BN or not) x (1 or 2 hidden layers);
# non-default eps=1e-3, momentum=0.3 on every third combination
MODEL_CASES = []
for i, (act, loss, bias) in enumerate(itertools.product(ACTS, LOSSES, (True, False))):
    for hidden in ((7,), (8, 5)):
        extra = dict(eps=1e-3, momentum=0.3) if (i % 3 == 0) else {}
        MODEL_CASES.append(pytest.param(
            dict(act=act, loss=loss, bias=bias, hidden=hidden, **extra),
            id=f"{act}-{loss}-{'bias' if bias else 'nobias'}-{len(hidden)}h" + ("-eps1e-3-mom0.3" if extra else "")))
NO_BN_CASES = [
    pytest.param(dict(act="relu", loss="softmax_cross_entropy", bias=True, hidden=(8, 5), bn=False), id="noBN-relu-sce-bias"),
    pytest.param(dict(act="tanh", loss="mse", bias=False, hidden=(7,), bn=False), id="noBN-tanh-mse-nobias"),
    pytest.param(dict(act="leaky_relu", loss="sigmoid_bce", bias=True, hidden=(7,), bn=False), id="noBN-leaky-bce-bias"),
]

# (bngraph optimizer, torch optimizer), same hyperparameters
OPTIMIZERS = {
    "sgd": (lambda: optim.SGD(lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    "sgd-wd": (lambda: optim.SGD(lr=0.1, weight_decay=0.05),
               lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.05)),
    "sgd-momentum": (lambda: optim.SGD(lr=0.1, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "sgd-dampening": (lambda: optim.SGD(lr=0.1, momentum=0.9, dampening=0.9),
                      lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.9)),
    "sgd-nesterov-wd": (lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "rmsprop": (lambda: optim.RMSprop(), lambda ps: torch.optim.RMSprop(ps)),
    "rmsprop-momentum": (lambda: optim.RMSprop(lr=1e-2, momentum=0.9, alpha=0.9),
                         lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.9, alpha=0.9)),
    "rmsprop-centered-wd": (lambda: optim.RMSprop(lr=1e-2, centered=True, weight_decay=0.01),
                            lambda ps: torch.optim.RMSprop(ps, lr=1e-2, centered=True, weight_decay=0.01)),
    "adam": (lambda: optim.Adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    "adam-betas-wd": (lambda: optim.Adam(lr=1e-2, beta1=0.8, beta2=0.99, weight_decay=0.01),
                      lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)),
    "adamw": (lambda: optim.AdamW(lr=1e-2, weight_decay=0.1),
              lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
}
# each again through bind/step_flat (the fused whole-buffer update), whatever the model calls
OPTIMIZERS.update({f"{k}+flat": (lambda ours=ours: FlatDriven(ours()), theirs)
                   for k, (ours, theirs) in list(OPTIMIZERS.items())})

# models the optimizer sweep runs on: every activation and loss appears, with and without the bias
OPT_MODELS = [
    pytest.param(dict(act="relu", loss="softmax_cross_entropy", bias=True, hidden=(8, 5)), id="relu-sce-bias-2h"),
    pytest.param(dict(act="leaky_relu", loss="mse", bias=False, hidden=(7,), eps=1e-3, momentum=0.3),
                 id="leaky-mse-nobias-1h"),
    pytest.param(dict(act="tanh", loss="sigmoid_bce", bias=True, hidden=(6,)), id="tanh-bce-bias-1h"),
    pytest.param(dict(act="sigmoid", loss="softmax_cross_entropy", bias=False, hidden=(5, 9)), id="sigmoid-sce-nobias-2h"),
    # identity with ONE hidden layer: with two, bn1.beta's gradient is exactly 0 in exact arithmetic
    # (a shift before a linear layer + BN cancels), ~1e-17 in floating point, and Adam/RMSprop
    # normalize that noise into lr-sized steps: a comparison of rounding noise, not of the math
    pytest.param(dict(act="identity", loss="mse", bias=True, hidden=(9,)), id="identity-mse-bias-1h"),
    pytest.param(dict(act="relu", loss="mse", bias=True, hidden=(8, 5), bn=False), id="noBN-relu-mse-bias-2h"),
]


def train_both(tw: Twin, opt_name, batches, tol):
    ours_opt, torch_opt = OPTIMIZERS[opt_name]
    ob, ot = ours_opt(), torch_opt(tw.trainable())
    for step, (X, y) in enumerate(batches, start=1):
        lt = tw.torch_step(X, y, ot)
        lo = tw.model.train_step(X, y, ob)
        np.testing.assert_allclose(lo, lt, **tol, err_msg=f"loss of step {step}")
    assert tw.model.step == len(batches)


# ---- tests -----------------------------------------------------------------------------------------


def our_grads(model, X, y):
    """bngraph's gradients of one train step (without applying them): the train_step program."""
    Xc = model._check_x(X, "test")
    yc = model._check_y(y, Xc.shape[0], "test")
    out = model._run("train_step", model._feeds(Xc, yc), Xc.shape[0])
    grads = {p: np.array(out[f"grad.{p}"]) for p in model.params}
    state = {s: np.array(out[f"state.{s}"]) for s in model.state}
    return float(out["loss"]), grads, state


def torch_grads(tw: Twin, X, y):
    tw.net.train()
    tw.net.zero_grad()
    loss = torch_loss(tw.loss_kind)(tw.net(t(X, tw.dtype)), tw.torch_y(y))
    loss.backward()
    return float(loss.detach()), {name: p.grad.numpy().copy() for name, p in tw.names.items()}


@pytest.mark.parametrize("case", MODEL_CASES + NO_BN_CASES)
def test_first_step_loss_gradients_and_running_stats(case):
    tw = Twin(**case)
    X, y = tw.data(12, seed=5)
    params0 = {k: v.copy() for k, v in tw.model.params.items()}
    state0 = {k: v.copy() for k, v in tw.model.state.items()}
    lo, go, so = our_grads(tw.model, X, y)
    lt, gt = torch_grads(tw, X, y)  # (also updates torch's running statistics, as a train step does)
    tol = TOL["float64"]
    np.testing.assert_allclose(lo, lt, **tol, err_msg="loss")
    assert set(go) == set(gt)
    for name in go:
        np.testing.assert_allclose(go[name], gt[name], **tol, err_msg=f"grad of {name}")
    ts = tw.torch_state()
    for name in so:
        np.testing.assert_allclose(so[name], ts[name], **tol, err_msg=f"new {name}")
    # running the program alone changed nothing
    for k, v in tw.model.params.items():
        np.testing.assert_array_equal(v, params0[k])
    for k, v in tw.model.state.items():
        np.testing.assert_array_equal(v, state0[k])


def test_folded_bias_has_zero_gradient_in_torch():
    """The premise of fold_bias, checked on torch: a trainable bias before BN gets ~0 gradient."""
    tw = Twin(act="tanh", loss="mse", bias=True, hidden=(8, 5))
    assert sorted(tw.folded) == [1, 2]
    for k in tw.folded:
        tw.linears[k].bias.requires_grad_(True)
    X, y = tw.data(10, seed=3)
    torch_grads(tw, X, y)
    for k in tw.folded:
        g = tw.linears[k].bias.grad.numpy()
        assert np.abs(g).max() < 1e-14, g


@pytest.mark.parametrize("case", MODEL_CASES + NO_BN_CASES)
def test_five_sgd_momentum_steps(case):
    """Every model case: 5 steps of SGD with momentum; losses, params, running stats, outputs."""
    tw = Twin(**case)
    tol = TOL["float64"]
    train_both(tw, "sgd-momentum", tw.batches(), tol)
    tw.assert_params_match(tol, "after 5 steps")
    tw.assert_state_match(tol, "after 5 steps")
    X, _ = tw.data(11, seed=77)
    tw.assert_outputs_match(X, tol)


@pytest.mark.parametrize("model_case", OPT_MODELS)
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_optimizers_match_torch(opt_name, model_case):
    tw = Twin(**model_case)
    tol = TOL["float64"]
    train_both(tw, opt_name, tw.batches(), tol)
    tw.assert_params_match(tol, f"after 5 {opt_name} steps")
    tw.assert_state_match(tol, f"after 5 {opt_name} steps")
    X, y = tw.data(13, seed=99)
    tw.assert_outputs_match(X, tol)
    np.testing.assert_allclose(tw.model.forward(X, batch_size=4), tw.torch_out(X, False), **tol,
                               err_msg="eval-mode output in chunks of 4")
    np.testing.assert_allclose(tw.model.evaluate(X, y)["loss"], tw.torch_eval_loss(X, y), **tol)


FLOAT32_CASES = [
    pytest.param(dict(act="relu", loss="softmax_cross_entropy", bias=True, hidden=(8, 5)), "sgd-momentum", id="relu-sce-bias-sgdm"),
    pytest.param(dict(act="tanh", loss="mse", bias=False, hidden=(7,)), "adam", id="tanh-mse-nobias-adam"),
    pytest.param(dict(act="leaky_relu", loss="sigmoid_bce", bias=True, hidden=(9, 6)), "rmsprop-centered-wd",
                 id="leaky-bce-bias-rmsprop-c"),
    pytest.param(dict(act="sigmoid", loss="softmax_cross_entropy", bias=True, hidden=(6,)), "adamw", id="sigmoid-sce-bias-adamw"),
    pytest.param(dict(act="identity", loss="mse", bias=True, hidden=(7,), bn=False), "sgd-nesterov-wd", id="noBN-identity-mse-sgdn"),
    pytest.param(dict(act="tanh", loss="mse", bias=False, hidden=(7,)), "adam+flat", id="tanh-mse-nobias-adam+flat"),
    pytest.param(dict(act="leaky_relu", loss="sigmoid_bce", bias=True, hidden=(9, 6)), "rmsprop-centered-wd+flat",
                 id="leaky-bce-bias-rmsprop-c+flat"),
]


@pytest.mark.parametrize("flat", [False, True], ids=["as-the-model-calls", "step_flat"])
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_param_groups_match_torch(name, flat):
    """No weight decay for gamma/beta and a tenth of the lr for the first layer: bngraph's groups
    (by name pattern) against torch's param_groups, through whole training steps."""
    tw = Twin(act="relu", loss="softmax_cross_entropy", bias=True, hidden=(8, 5))
    kw = dict(lr=1e-2, weight_decay=0.1) if name == "AdamW" else dict(lr=0.1, momentum=0.9, weight_decay=0.05)
    groups = [{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0}, {"params": "fc1.*", "lr": kw["lr"] / 10}]
    ours = getattr(optim, name)(**kw, groups=groups)
    bn = [p for n, p in tw.names.items() if n.startswith("bn")]
    rest = [p for n, p in tw.names.items() if not n.startswith(("bn", "fc1."))]
    theirs = getattr(torch.optim, name)([{"params": bn, "weight_decay": 0.0},
                                         {"params": [tw.names["fc1.W"]], "lr": kw["lr"] / 10},
                                         {"params": rest}], **kw)
    tol, opt = TOL["float64"], FlatDriven(ours) if flat else ours
    for step, (X, y) in enumerate(tw.batches(), start=1):
        lt = tw.torch_step(X, y, theirs)
        lo = tw.model.train_step(X, y, opt)
        np.testing.assert_allclose(lo, lt, **tol, err_msg=f"loss of step {step}")
    tw.assert_params_match(tol, "after 5 steps with groups")
    tw.assert_state_match(tol)


@pytest.mark.parametrize("case, opt_name", FLOAT32_CASES)
def test_float32_matches_torch_float32(case, opt_name):
    tw = Twin(dtype="float32", **case)
    assert all(v.dtype == np.float32 for v in tw.model.params.values())
    tol = TOL["float32"]
    X, y = tw.data(12, seed=5)
    lo, go, _ = our_grads(tw.model, X, y)
    saved = tw.save_torch_stats()
    lt, gt = torch_grads(tw, X, y)
    tw.restore_torch_stats(saved)  # that was not a step: undo torch's running-stat update
    np.testing.assert_allclose(lo, lt, **tol)
    for name in go:
        assert go[name].dtype == np.float32
        scale = max(1.0, float(np.abs(gt[name]).max()))
        np.testing.assert_allclose(go[name], gt[name], rtol=1e-4, atol=1e-5 * scale, err_msg=f"grad of {name}")
    train_both(tw, opt_name, tw.batches(), tol)
    tw.assert_params_match(tol)
    tw.assert_state_match(tol)
    Xe, _ = tw.data(11, seed=77)
    tw.assert_outputs_match(Xe, tol)


@pytest.mark.parametrize("n, batch_size, expected_sizes", [
    (33, 8, [8, 8, 8, 9]),     # 4*8 + 1: the single last example is merged into the batch before it
    (30, 8, [8, 8, 8, 6]),     # an ordinary short last batch stays
    (17, 16, [17]),            # 16 + 1: one batch of 17
])
@pytest.mark.parametrize("case", [
    pytest.param(dict(act="relu", loss="softmax_cross_entropy", bias=True, hidden=(8, 5)), id="relu-sce-bias"),
    pytest.param(dict(act="tanh", loss="sigmoid_bce", bias=False, hidden=(7,), momentum=0.3), id="tanh-bce-nobias"),
])
def test_fit_matches_torch_loop(case, n, batch_size, expected_sizes):
    tw = Twin(**case)
    X, y = tw.data(n, seed=11)
    hist = tw.model.fit(X, y, optim.Adam(lr=1e-2), epochs=2, batch_size=batch_size, shuffle=False,
                        verbose=False)
    bounds = np.cumsum([0] + expected_sizes)
    ot = torch.optim.Adam(tw.trainable(), lr=1e-2)
    torch_epoch_losses = []
    for _ in range(2):
        losses = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            assert b - a >= 2  # torch would raise on a batch of one in train mode
            losses.append(tw.torch_step(X[a:b], y[a:b], ot))
        torch_epoch_losses.append(np.mean(losses))
    assert bounds[-1] == n and expected_sizes[-1] == b - a
    tol = TOL["float64"]
    assert hist.stop_reason is None
    assert hist.column("steps") == [len(expected_sizes)] * 2
    assert tw.model.step == 2 * len(expected_sizes) and tw.model.epoch == 2
    np.testing.assert_allclose(hist.column("loss"), torch_epoch_losses, **tol)
    for name, v in {**tw.model.params, **tw.model.state}.items():
        assert np.all(np.isfinite(v)), name
    tw.assert_params_match(tol, "after fit")
    tw.assert_state_match(tol, "after fit")
    tw.assert_outputs_match(X, tol)
