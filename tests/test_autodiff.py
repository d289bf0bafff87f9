"""Autodiff starts from a real seed: ``%loss.grad = fill[value=1.0]``, and the loss's gradient rule
multiplies by it like every other rule multiplies by its incoming cotangent. A seed other than 1
scales every gradient -- in the interpreter and in the generated code."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
import bngraph.compiler
from bngraph.autodiff import grad_graph

from conftest import random_values

LOSSES = ("softmax_cross_entropy", "mse", "sigmoid_bce")
SEED = -2.5  # negative and not a power of two: a rule that ignores it, or squares it, shows


def test_the_seed_is_a_fill_node_read_by_the_loss_gradient():
    g = bg.mlp([4, 5, 3])
    train = grad_graph(g)
    lines = str(train).splitlines()
    assert "  %loss.grad: f32[] = fill[dtype=f32, value=1.0]" in lines
    assert "  %out.grad: f32[3,m] = softmax_cross_entropy_grad %out, %y, %loss.grad" in lines
    assert bg.parse(str(train)) == train
    bg.verify(train)
    seeded = grad_graph(g, seed=SEED)
    assert seeded.producers()["loss.grad"].attr == {"dtype": "f32", "value": SEED}
    assert grad_graph(bg.mlp([4, 5, 3], dtype="f64")).producers()["loss.grad"].attr["dtype"] == "f64"


@pytest.mark.parametrize("loss", LOSSES)
def test_a_seed_scales_every_gradient_in_the_interpreter(loss):
    g = bg.mlp([5, 6, 4, 3], loss=loss, dtype="f64")
    feeds, values = random_values(g, np.random.default_rng(0), m=7)
    if loss == "sigmoid_bce":
        feeds["y"] = np.random.default_rng(1).uniform(0, 1, feeds["y"].shape)
    plain = bg.interpret(grad_graph(g), feeds, values)
    scaled = bg.interpret(grad_graph(g, seed=SEED), feeds, values)
    assert set(plain) == set(scaled)
    grads = [k for k in plain if k.startswith("grad.")]
    assert len(grads) == len(g.params)
    for k in plain:
        want = SEED * plain[k] if k.startswith("grad.") else plain[k]  # loss and state do not change
        np.testing.assert_allclose(scaled[k], want, rtol=1e-12, atol=1e-15, err_msg=k)
    assert all(np.abs(plain[k]).max() > 0 for k in grads)


class _RecordGradients:
    """An optimizer (the step(params, grads) protocol) that only records the gradients."""

    lr = 0.0

    def step(self, params, grads):
        self.grads = {k: np.array(v, copy=True) for k, v in grads.items()}


@pytest.mark.parametrize("loss", LOSSES)
def test_a_seed_scales_every_gradient_in_the_generated_code(loss, monkeypatch):
    g = bg.mlp([5, 6, 3], loss=loss, dtype="f64")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((9, 5))
    y = rng.integers(0, 3, 9) if loss == "softmax_cross_entropy" else rng.uniform(0, 1, (9, 3))
    plain = bg.compile(g, dtype="float64", seed=3)
    monkeypatch.setattr(bngraph.compiler, "grad_graph", lambda graph: grad_graph(graph, seed=SEED))
    scaled = bg.compile(g, dtype="float64", seed=3)
    assert "fill[dtype=f64, value=-2.5]" in str(scaled.programs["train_step"])
    assert "*= -2.5  # times the incoming gradient dL" in scaled.source  # the seed is a constant in the code
    assert "times the incoming gradient" not in plain.source  # a seed of 1.0 costs no pass
    a, b = _RecordGradients(), _RecordGradients()
    loss_plain, loss_scaled = plain.train_step(X, y, a), scaled.train_step(X, y, b)
    assert loss_scaled == pytest.approx(loss_plain, rel=1e-14)
    assert set(a.grads) == set(b.grads) == set(plain.params)
    for k in a.grads:
        assert np.abs(a.grads[k]).max() > 0, k
        np.testing.assert_allclose(b.grads[k], SEED * a.grads[k], rtol=1e-12, atol=1e-15, err_msg=k)
