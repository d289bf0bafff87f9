"""A pass of your own, as docs/passes.md ("Writing a pass") writes it, used the ways the docs say.

The example pass ``drop_identity`` is taken from the doc itself, so the documented code is what is
tested: two (and three) identities in a row, an identity that is a graph output, numbers and
gradients unchanged (bngraph.passcheck). ``bg.compile`` takes a registered name or a ``Pass``
object, registered or not; a checkpoint names its passes, so loading one needs them registered.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import bngraph as bg
from bngraph.passes import PASSES, PassResult, graph_pass, run_pipeline

from docblocks import REPO, parse_blocks
from bngraph.passcheck import check_preserves


@contextlib.contextmanager
def registry_restored():
    before = dict(PASSES)
    try:
        yield
    finally:
        PASSES.clear()
        PASSES.update(before)


@pytest.fixture
def drop_identity():
    """The doc's drop_identity (its block runs as written; the registry is restored afterwards)."""
    (block,) = [b for b in parse_blocks(REPO / "docs" / "passes.md") if "def drop_identity" in b.text]
    ns: dict = {}
    with registry_restored(), contextlib.redirect_stdout(None):
        exec(compile("\n" * block.line + block.text, "docs/passes.md", "exec"), ns)
        yield ns["drop_identity"]


def chain(n_identities, output_at=None):
    """fc1 -> identity x n -> out -> loss, in float64; ``output_at``: that identity is also an output."""
    g = bg.Graph("chain", "f64")
    x, y = g.input("x", 4), g.labels("y", 3)
    h = g.matmul(x, 5, name="fc1")
    side = None
    for k in range(1, n_identities + 1):
        h = g.identity(h, name=f"id{k}")
        side = h if k == output_at else side
    g.softmax_cross_entropy(g.matmul(h, 3, name="out"), y)
    if side is not None:
        g.outputs.append(("side", side.name))
    return g.build()


def ops(g):
    return [n.op for n in g.nodes]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_identities_in_a_row_are_all_dropped(drop_identity, n):
    g = chain(n)
    res = drop_identity.run(g)
    assert "identity" not in ops(res.graph)
    assert res.graph.users()["fc1"][0].op == "matmul"  # the output layer reads fc1 itself
    assert res.changes[-1] == f"removed %id{n} (identity): its users read %fc1 instead"
    bg.verify(res.graph)
    check_preserves(g, res.graph, res.remap)


def test_an_identity_that_is_a_graph_output_is_kept(drop_identity):
    g = chain(3, output_at=2)  # id1 -> id2 (an output) -> id3
    res = drop_identity.run(g)
    assert [n.name for n in res.graph.nodes if n.op == "identity"] == ["id2"]
    assert res.graph.producers()["id2"].inputs == ("fc1",)  # id1 dropped under it
    assert [n for n in res.graph.nodes if n.op == "matmul"][1].inputs[1] == "id2"  # id3 dropped over it
    check_preserves(g, res.graph, res.remap)


def test_nothing_to_drop_returns_the_same_graph(drop_identity):
    g = bg.mlp([4, 5, 3]).build()
    res = drop_identity.run(g)
    assert res.graph is g and res.changes == ()


def test_compile_takes_an_unregistered_pass_object_and_trains(drop_identity, tmp_path):
    quiet = graph_pass("drop_identity_unregistered", valid_when="always", registry=None)(drop_identity.fn)
    g = chain(2)
    model = bg.compile(g, passes=[quiet, "fold_bias", "fuse_bn", "dce"], seed=0)
    assert "identity" not in ops(model.graph) and model.passes == ["drop_identity_unregistered", "fold_bias",
                                                                     "fuse_bn", "dce"]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    plain = bg.compile(g, passes=[], seed=0)
    np.testing.assert_allclose(model.forward(X), plain.forward(X), rtol=1e-6)  # the same function
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, verbose=False)
    model.save(tmp_path / "run.npz")
    # the checkpoint names the pass; loading looks the name up in PASSES
    with pytest.raises(bg.CheckpointError, match="unknown pass 'drop_identity_unregistered'.*graph_pass"):
        bg.load(tmp_path / "run.npz")
    with registry_restored():
        PASSES[quiet.name] = quiet
        again = bg.load(tmp_path / "run.npz")
        np.testing.assert_array_equal(again.forward(X), model.forward(X))


def test_compile_takes_a_registered_pass_by_name_or_object(drop_identity):
    with registry_restored():
        PASSES[drop_identity.name] = drop_identity
        by_name = bg.compile(chain(2), passes=["drop_identity", "dce"])
        by_object = bg.compile(chain(2), passes=[drop_identity, "dce"])
    assert by_name.graph == by_object.graph and by_object.passes == ["drop_identity", "dce"]


def unchanged(g):
    """x -> x"""
    return PassResult(g)


def test_compile_refuses_what_a_checkpoint_could_not_name():
    impostor = graph_pass("dce", valid_when="never", registry=None)(unchanged)
    with pytest.raises(bg.IRError, match="pass 'dce' is not the registered pass of that name"):
        bg.compile(bg.mlp([4, 5, 3]), passes=[impostor])
    with pytest.raises(bg.IRError, match="unknown pass 'fold_everything'; registered passes: fold_bias"):
        bg.compile(bg.mlp([4, 5, 3]), passes=["fold_everything"])
    with pytest.raises(bg.IRError, match="pass names or Pass objects.*got function"):
        bg.compile(bg.mlp([4, 5, 3]), passes=[unchanged])
