"""Every pass of the training pipeline, checked through a whole training step: the model compiled
with the pass and without it, from the same initial values, agree on the loss, on the gradients
and on the parameters and running statistics after optimizer steps (float64)."""
import numpy as np
import pytest

import bngraph as bg

OPTIMIZERS = {
    "sgd": lambda: bg.optim.SGD(lr=0.1),
    "momentum": lambda: bg.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-2),
    "adam": lambda: bg.optim.Adam(lr=1e-2),
}


def _pair(g, passes, seed=3):
    """(model without passes, model with them), the latter's values mapped from the former's."""
    plain = bg.compile(g, dtype="float64", seed=seed, passes=[])
    rng = np.random.default_rng(seed)
    # random nonzero biases, gammas, betas and running statistics, so nothing cancels by accident
    plain.set_params({k: rng.normal(size=v.shape) for k, v in plain.params.items()})
    plain.set_state({k: (rng.uniform(0.5, 2, v.shape) if k.endswith("var") else rng.normal(size=v.shape))
                     for k, v in plain.state.items()})
    opt = bg.compile(g, dtype="float64", seed=seed, passes=passes)
    mapped = opt.report.remap({**plain.params, **plain.state})
    opt.set_params({k: mapped[k] for k in opt.params})
    opt.set_state({k: mapped[k] for k in opt.state})
    return plain, opt


def _graphs():
    yield "relu", bg.mlp([5, 7, 6, 3], activation="relu", dtype="f64")
    yield "tanh-mse", bg.mlp([4, 6, 2], activation="tanh", loss="mse", dtype="f64")
    yield "leaky-bce", bg.mlp([4, 5, 1], activation="leaky_relu", loss="sigmoid_bce", dtype="f64")
    yield "nobias", bg.mlp([4, 6, 3], bias=False, dtype="f64")


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("gname,g", list(_graphs()))
@pytest.mark.parametrize("passes", [["fold_bias", "dce"], ["fuse_bn", "dce"], list(bg.TRAINING_PIPELINE)])
def test_training_steps_agree(gname, g, passes, opt_name):
    plain, opt = _pair(g, passes)
    rng = np.random.default_rng(0)
    n_out = plain.n_outputs
    o1, o2 = OPTIMIZERS[opt_name](), OPTIMIZERS[opt_name]()
    for step in range(3):
        X = rng.normal(size=(10, plain.n_features))
        if plain.classes is not None:
            y = rng.integers(0, plain.classes, 10)
        elif plain.loss_kind == "sigmoid_bce":
            y = rng.integers(0, 2, (10, n_out)).astype(float)
        else:
            y = rng.normal(size=(10, n_out))
        if step == 0:  # gradients of surviving params agree; folded params had zero gradient
            ga = plain._run("train_step", plain._feeds(X, y), 10)
            gb = opt._run("train_step", opt._feeds(X, y), 10)
            for k in opt.params:
                np.testing.assert_allclose(gb[f"grad.{k}"], ga[f"grad.{k}"], rtol=1e-9, atol=1e-12)
            for k in set(plain.params) - set(opt.params):
                np.testing.assert_allclose(ga[f"grad.{k}"], 0, atol=1e-12)
        la, lb = plain.train_step(X, y, o1), opt.train_step(X, y, o2)
        assert la == pytest.approx(lb, rel=1e-12, abs=1e-12)
    # params after the optimizer steps; state through the passes' remap (e.g. running_mean -= b).
    # Without the pass, a bias before BN gets a rounding-noise gradient (~1e-17) that adaptive
    # optimizers divide by sqrt(v) + eps and turn into tiny steps (~lr*1e-9): so does PyTorch.
    # Its running_mean tracks those steps, hence atol 1e-9 instead of 1e-12 here.
    mapped = opt.report.remap({**plain.params, **plain.state})
    for k in [*opt.params, *opt.state]:
        np.testing.assert_allclose({**opt.params, **opt.state}[k], mapped[k], rtol=1e-9, atol=1e-9, err_msg=k)
    Xe = rng.normal(size=(6, plain.n_features))
    np.testing.assert_allclose(opt.forward(Xe), plain.forward(Xe), rtol=1e-9, atol=1e-9)


def test_weight_decay_moves_a_folded_bias_but_not_the_training_losses():
    """With weight decay, an unfolded bias before BN decays (its loss gradient is 0, its decay term
    is not); that changes nothing in training mode, only what the running mean absorbs. The folded
    model is the exact one: docs/passes.md says so."""
    g = bg.mlp([5, 7, 3], dtype="f64")
    plain, opt = _pair(g, list(bg.TRAINING_PIPELINE))
    o1, o2 = bg.optim.SGD(lr=0.1, weight_decay=0.1), bg.optim.SGD(lr=0.1, weight_decay=0.1)
    rng = np.random.default_rng(1)
    b0 = plain.params["fc1.b"].copy()
    for _ in range(4):
        X, y = rng.normal(size=(8, 5)), rng.integers(0, 3, 8)
        assert plain.train_step(X, y, o1) == pytest.approx(opt.train_step(X, y, o2), rel=1e-12)
    assert not np.allclose(plain.params["fc1.b"], b0)  # decayed
    for k in opt.params:
        np.testing.assert_allclose(opt.params[k], plain.params[k], rtol=1e-9, atol=1e-12)
