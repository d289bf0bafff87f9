"""A training graph must update all of its state, each value from itself (bngraph/verifier.py, the
op table's ``state_updates``): otherwise a step would move some running statistics and not others.
And fuse_bn leaves a batch norm whose output has two users unfused, with the same numbers."""
from __future__ import annotations

import re

import numpy as np
import pytest

import bngraph as bg
from bngraph.verifier import VerifyError

TEXT = str(bg.mlp([4, 3, 2]))
RM = ", state.bn1.running_mean=%bn1.running_mean.next"
RV = ", state.bn1.running_var=%bn1.running_var.next"


def test_every_state_op_says_which_state_it_updates():
    for name, op in bg.OPS.items():
        if op.kind == "state":
            assert op.state_updates, f"op {name} (a state op) has no state_updates"
        else:
            assert not op.state_updates, name


@pytest.mark.parametrize("text, match", [
    (TEXT.replace(RV, ""), r"node %bn1 \(batchnorm\) normalizes with batch statistics, but the graph does not return "
                           r"the next value of its state %bn1\.running_var"),
    (TEXT.replace(RM, ""), r"does not return the next value of its state %bn1\.running_mean"),
    (TEXT.replace(RM, RM.replace("running_mean.next", "running_var.next")).replace(
        RV, RV.replace("running_var.next", "running_mean.next")),
     r"output state\.bn1\.running_mean returns %bn1\.running_var\.next, which is not the next value of "
     r"%bn1\.running_mean"),
    (TEXT.replace(RM, ", state.bn1.running_mean=%bn1.mean"), r"output state\.bn1\.running_mean returns %bn1\.mean"),
], ids=["no-running-var", "no-running-mean", "swapped", "not-from-a-state-op"])
def test_incomplete_or_wrong_state_updates_are_refused(text, match):
    g = bg.parse(text)
    with pytest.raises(VerifyError, match=match):
        bg.verify(g, allow_dead=True)
    with pytest.raises(bg.IRError, match=match):
        bg.compile(g)  # the case: compiled, then a KeyError after fc1.W had moved


def test_a_graph_without_any_state_output_is_refused():
    text = TEXT.replace(RM, "").replace(RV, "")  # the running_update is dead too: the state is named first
    for allow_dead in (False, True):
        with pytest.raises(VerifyError, match=r"does not return the next value of its state %bn1\.running_mean"):
            bg.verify(bg.parse(text), allow_dead=allow_dead)


def test_the_second_batch_norm_is_checked_too():
    text = str(bg.mlp([4, 3, 3, 2])).replace(", state.bn2.running_var=%bn2.running_var.next", "")
    with pytest.raises(VerifyError, match=r"node %bn2 \(batchnorm\) .* %bn2\.running_var"):
        bg.verify(bg.parse(text))


def test_programs_that_update_no_state_are_fine():
    model = bg.compile(bg.mlp([4, 3, 2]))
    for name in ("forward", "forward_train", "evaluate", "train_step"):
        bg.verify(model.programs[name])  # forward_train: batch statistics, no loss, no state output
    bg.verify(bg.passes.to_inference(bg.mlp([4, 3, 2])))


# ---- fuse_bn and a batch norm output with two users --------------------------------------------


def _two_users(second):
    g = bg.Graph("two", "f64")
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.batchnorm(g.matmul(x, 5, name="fc1"), name="bn1")
    a = g.relu(h, name="a")
    b = second(g, h)
    s = g.add_node("add", [a, b], {}, ["sum"]).out
    g.softmax_cross_entropy(g.matmul(s, 3, name="out"), y)
    return g


@pytest.mark.parametrize("second", [lambda g, h: g.relu(h, name="b"), lambda g, h: g.tanh(h, name="b"),
                                    lambda g, h: g.matmul(h, 5, name="b")], ids=["relu", "tanh", "matmul"])
def test_fuse_bn_keeps_the_activation_out_when_the_output_has_two_users(second):
    g = _two_users(second)
    res = bg.run_pipeline(g, ["fuse_bn"])
    bn = next(n for n in res.graph.nodes if n.op == "batchnorm_act")
    assert bn.attr["act"] == "identity" and bn.out.name == "bn1"
    assert re.search(r"no activation fused: %bn1 has 2 users \(%a and %b(\.matmul)?\)", res.report[0][1][0])
    assert any(n.op == "relu" and n.inputs == ("bn1",) for n in res.graph.nodes)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    fused = bg.compile(g, dtype="float64")
    plain = bg.compile(g, dtype="float64", passes=[])
    plain.set_state({"bn1.running_mean": fused.state["bn1.running_mean"]})  # fold_bias moved the bias into it
    plain.set_params({k: v for k, v in fused.params.items()} | {"fc1.b": np.zeros(5)})
    np.testing.assert_allclose(fused.forward(X, training=True), plain.forward(X, training=True), rtol=1e-12)
    assert fused.train_step(X, y, bg.optim.SGD(lr=0.1)) == pytest.approx(plain.train_step(X, y, bg.optim.SGD(lr=0.1)),
                                                                          rel=1e-12)
    for k, v in fused.params.items():
        np.testing.assert_allclose(v, plain.params[k], rtol=1e-10, atol=1e-12, err_msg=k)
