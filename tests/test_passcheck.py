"""bngraph.passcheck can fail: each of its checks, shown catching a planted bug.

Every pass test leans on ``check_preserves``; a check that cannot fail would let a wrong pass
through. Each test below builds a ``before`` graph, an ``after`` graph (or remap) with one
deliberate mistake, and asserts that the check raises, naming what is wrong.
"""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.ir import Value
from bngraph.passes import PASSES, compose
from bngraph.passcheck import check_preserves, folded_params, loss_gradients, random_feeds, random_values


def _no_bn_mlp():
    """x -> fc1 (bias) -> relu -> out (bias) -> softmax_cross_entropy: every param has a gradient."""
    return bg.mlp([4, 5, 3], batchnorm=False, dtype="f64").build()


def _as_state(g, name):
    """``g`` with param ``name`` turned into a state value of the same value: the outputs stay the
    same, but training no longer updates it -- the bug a pass that "removes" a live param makes."""
    p = g.value(name)
    return g.rebuild(params=[v for v in g.params if v.name != name],
                     state=[*g.state, Value(p.name, p.type, "state")])


def _eval_bn_graph_with_loss():
    """matmul (+bias) -> batchnorm[eval] -> relu -> out -> loss: fold_bn_into_weights applies and the
    graph still has a loss, so the gradient check runs on the fold."""
    g = bg.Graph("evalbn", "f64")
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.matmul(x, 6, name="fc1")
    gamma, beta = g.param("bn1.gamma", (6,)), g.param("bn1.beta", (6,))
    rm, rv = g.state_value("bn1.running_mean", (6,)), g.state_value("bn1.running_var", (6,))
    h = g.add_node("batchnorm", [h, gamma, beta, rm, rv], {"mode": "eval"}, ["bn1"]).out
    h = g.relu(h, name="act1")
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    return bg.verify(g)


# ------------------------------------------------------------------------------------------------
# Outputs and remaps
# ------------------------------------------------------------------------------------------------


def test_a_pass_that_changes_numbers_is_caught():
    g = _no_bn_mlp()
    wrong = g.rebuild(nodes=[n.replace(op="tanh") if n.op == "relu" else n for n in g.nodes])
    check_preserves(g, g)  # the check itself passes on an unchanged graph
    with pytest.raises(AssertionError, match="output loss"):
        check_preserves(g, wrong)


@pytest.mark.parametrize("how", ["pop a key", "subtract in place"])
def test_a_remap_that_mutates_its_argument_is_caught(how):
    g = bg.mlp([3, 4, 2], dtype="f64")
    res = PASSES["fold_bias"].run(g)
    check_preserves(g, res.graph, res.remap)

    def mutating(values):
        if how == "pop a key":
            b = values.pop("fc1.b")
        else:
            b = values["fc1.b"]
            values["bn1.running_mean"] -= b  # numpy: changes the caller's array
        out = {k: v for k, v in values.items() if k != "fc1.b"}
        out["bn1.running_mean"] = values["bn1.running_mean"] - (b if how == "pop a key" else 0)
        return out

    with pytest.raises(AssertionError, match="remap mutated the values dict at"):
        check_preserves(g, res.graph, mutating)


def test_a_remap_with_the_wrong_keys_is_caught():
    g = bg.mlp([3, 4, 2], dtype="f64")
    res = PASSES["fold_bias"].run(g)
    with pytest.raises(AssertionError, match=r"extra \['fc1.b'\]"):
        check_preserves(g, res.graph, lambda values: dict(values))


def test_state_outputs_are_compared_through_the_remap():
    # fold_bias without `running_mean -= b`: the training outputs agree, the next running mean does not
    g = bg.mlp([3, 4, 2], dtype="f64")
    res = PASSES["fold_bias"].run(g)

    def forgets_the_running_mean(values):
        return {k: v for k, v in values.items() if k != "fc1.b"}

    with pytest.raises(AssertionError, match="output state.bn1.running_mean"):
        check_preserves(g, res.graph, forgets_the_running_mean)


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


def test_a_removed_param_with_a_gradient_is_caught_next_to_an_unrelated_folded_param():
    # A param named like a folded one, but nothing was folded into it: the old check skipped every
    # zero-gradient test as soon as any param name ended in "_folded".
    g = bg.Graph("net", "f64")
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.relu(g.matmul(x, 5, name="fc1"), name="act1")
    W = g.param("extra.W_folded", (3, 5))
    z = g.add_node("matmul", [W, h], {}, ["extra"]).out
    g.softmax_cross_entropy(g.bias_add(z, name="out"), y)
    g = g.build()
    wrong = _as_state(g, "fc1.b")
    assert folded_params(g, wrong, random_values(g), lambda v: dict(v)) == set()
    with pytest.raises(AssertionError, match="fc1.b was removed but its gradient is not zero"):
        check_preserves(g, wrong, lambda values: dict(values))


def test_a_gradient_that_differs_on_a_surviving_param_is_caught():
    # Training-mode and eval-mode batch norm give the same loss when the running statistics equal
    # the batch's, but not the same gradient (eval mode does not differentiate the statistics).
    g = bg.Graph("bn", "f64")
    x, y = g.input("x", 4), g.labels("y", 3)
    z = g.matmul(x, 5, bias=False, name="fc1")
    gamma, beta = g.param("bn1.gamma", (5,)), g.param("bn1.beta", (5,))
    rm, rv = g.state_value("bn1.running_mean", (5,)), g.state_value("bn1.running_var", (5,))
    names = ["bn1", "bn1.mean", "bn1.var"]
    train = g.add_node("batchnorm", [z, gamma, beta, rm, rv], {"mode": "train"}, names)
    g.softmax_cross_entropy(g.matmul(train.out, 3, name="out"), y)
    before = g.build()
    bn = next(n for n in before.nodes if n.op == "batchnorm")
    after = before.rebuild(nodes=[n.replace(attrs={**n.attr, "mode": "eval"}, outputs=n.outputs[:1]) if n is bn else n
                                  for n in before.nodes])
    values, feeds = random_values(before), random_feeds(before)
    _, env = bg.interpret(before, feeds, values, return_env=True)
    values.update({"bn1.running_mean": env["bn1.mean"], "bn1.running_var": env["bn1.var"]})
    with pytest.raises(AssertionError, match="grad.fc1.W"):
        check_preserves(before, after, values=values, feeds=feeds)
    check_preserves(before, after, values=values, feeds=feeds, grads=False)  # the outputs do agree


def test_a_graph_whose_gradient_cannot_be_taken_fails_the_check():
    # the logits depend on the batch mean, which autodiff does not differentiate through
    g = bg.Graph("stats", "f64")
    x, y = g.input("x", 3), g.labels("y", 3)
    z = g.matmul(x, 3, bias=False, name="fc1")
    g.batchnorm(z, name="bn1")
    g.softmax_cross_entropy(g.add_node("bias_add", ["fc1", "bn1.mean"], {}, ["shifted"]).out, y)
    with pytest.raises(bg.IRError, match="cannot differentiate through the batch statistics"):
        bg.grad_graph(g)
    with pytest.raises(AssertionError, match="cannot take the gradient of graph stats"):
        check_preserves(g, g)


def test_a_param_the_loss_does_not_read_has_an_exact_zero_gradient():
    # dce's removal of an unused param is checked, not skipped: its gradient is exactly zero
    g = bg.mlp([3, 4, 2], dtype="f64")
    g.param("unused.b", (5,))
    grads = loss_gradients(g.build(), random_values(g), random_feeds(g))
    assert np.array_equal(grads["unused.b"], np.zeros(5)) and np.abs(grads["fc1.W"]).max() > 0
    res = PASSES["dce"].run(g)
    check_preserves(g, res.graph, res.remap)


# ------------------------------------------------------------------------------------------------
# fold_bn_into_weights: which removed params were folded is read off the remap
# ------------------------------------------------------------------------------------------------


def test_fold_bn_into_weights_with_a_loss_checks_gradients_of_the_surviving_params():
    g = _eval_bn_graph_with_loss()
    res = PASSES["fold_bn_into_weights"].run(g)
    assert {"fc1.W_folded", "fc1.b_folded"} <= set(res.graph.param_names())
    assert folded_params(g, res.graph, random_values(g), res.remap) == {"fc1.W", "fc1.b", "bn1.gamma", "bn1.beta"}
    check_preserves(g, res.graph, res.remap)  # out.W and out.b survive: their gradients are compared


def _slightly_off(res):
    """``res``'s remap with fc1.W_folded off by a relative 1e-6: a fold that is not exact."""
    def remap(values):
        out = res.remap(values)
        out["fc1.W_folded"] = out["fc1.W_folded"] * (1 + 1e-6)
        return out
    return remap


def test_a_fold_that_is_not_exact_is_caught():
    g = _eval_bn_graph_with_loss()
    res = PASSES["fold_bn_into_weights"].run(g)

    with pytest.raises(AssertionError, match="output loss"):
        check_preserves(g, res.graph, _slightly_off(res))


def test_a_param_removed_next_to_a_real_fold_is_still_checked():
    # the same pass folds bn1 (allowed: fc1.W, fc1.b, gamma, beta live on in the folded params) and
    # also drops out.b, which was folded into nothing and has a gradient
    g = _eval_bn_graph_with_loss()
    res = PASSES["fold_bn_into_weights"].run(g)
    wrong = _as_state(res.graph, "out.b")
    assert folded_params(g, wrong, random_values(g), res.remap) == {"fc1.W", "fc1.b", "bn1.gamma", "bn1.beta"}
    with pytest.raises(AssertionError, match="out.b was removed but its gradient is not zero"):
        check_preserves(g, wrong, compose([res.remap]))


def test_a_float32_graph_is_checked_in_float64():
    """Issue 18, item 7: ``check_preserves`` runs in float64 whatever the graph's dtype, so a
    correct pass on a float32 graph passes at the default 1e-9 tolerance (checked in float32 it
    would fail on rounding), while a planted error still fails; a failure is a PassCheckError."""
    from bngraph.passcheck import PassCheckError
    g = _eval_bn_graph_with_loss()
    from bngraph.compiler import cast_graph
    g32 = cast_graph(g, "float32")
    res = PASSES["fold_bn_into_weights"].run(g32)
    assert res.graph.dtype == "f32"
    out = check_preserves(g32, res.graph, res.remap)
    assert out["before"]["loss"].dtype == np.float64

    with pytest.raises(PassCheckError, match="output loss"):
        check_preserves(g32, res.graph, _slightly_off(res))
