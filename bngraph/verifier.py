"""The verifier: a graph is well formed or the error names the node (and the pass that ran last)."""
from __future__ import annotations

from .graph import FrozenGraph, as_graph
from .ir import BATCH, IRError
from .ops import get_op, uses_batch_statistics


class VerifyError(IRError):
    """A graph that breaks the IR's rules; names the graph, the pass that ran last and the node."""


def verify(g, after: str | None = None, allow_dead: bool = False) -> FrozenGraph:
    """Check names, topological order, op attributes, each node against its op's checks (the shape
    rule and the value-level check), outputs, the state updates of a training graph, and that
    nothing dangles (dead nodes, unused inputs/params/state). Takes a builder or a frozen graph;
    returns the frozen graph."""
    g = as_graph(g)
    ctx = f"graph {g.name}" + (f" after pass {after}" if after else "")

    def fail(msg):
        raise VerifyError(f"{ctx}: {msg}")

    seen: dict = {}
    for kind, vals in (("input", g.inputs), ("param", g.params), ("state", g.state)):
        for v in vals:
            if v.kind != kind:
                fail(f"%{v.name} is listed as {kind} but has kind {v.kind}")
            if v.name in seen:
                fail(f"duplicate name %{v.name}")
            if kind != "input" and BATCH in v.type.shape:
                fail(f"{kind} %{v.name}: {v.type} has the batch dimension {BATCH}; a {kind}'s shape is fixed numbers")
            seen[v.name] = v
    later = {o.name for n in g.nodes for o in n.outputs}
    used: set = set()
    for n in g.nodes:
        where = f"node %{n.name} ({n.op})"
        try:
            op = get_op(n.op, where)
            attrs = op.normalize_attrs(where, n.attr)
        except IRError as e:
            fail(str(e))
        if attrs != n.attr:
            fail(f"{where}: attributes {n.attr} are not normalized (expected {attrs})")
        for i in n.inputs:
            if i not in seen:
                fail(f"{where} uses %{i} " + ("before it is defined (not in topological order)" if i in later
                                              else "which is not defined"))
        used.update(n.inputs)
        try:
            types = op.check(where, [seen[i] for i in n.inputs], attrs)
        except IRError as e:
            fail(str(e))
        if len(types) != len(n.outputs):
            fail(f"{where}: {n.op} has {len(types)} outputs, the node declares {len(n.outputs)}")
        for o, t in zip(n.outputs, types):
            if o.type != t:
                fail(f"{where}: output %{o.name} expected type {t}, got {o.type}")
            if o.name in seen:
                fail(f"{where}: duplicate name %{o.name}")
            seen[o.name] = o
    keys = set()
    for k, v in g.outputs:
        if k in keys:
            fail(f"duplicate output key {k}")
        keys.add(k)
        if v not in seen:
            fail(f"output {k} refers to %{v}, which is not defined")
        used.add(v)
        t = seen[v].type
        if k == "loss" and t.shape != ():
            fail(f"output loss must be a scalar, got %{v}: {t}")
        for prefix, pool in (("state.", g.state), ("grad.", g.params)):
            if k.startswith(prefix):
                target = next((p for p in pool if p.name == k[len(prefix):]), None)
                if target is None:
                    fail(f"output {k} names {k[len(prefix):]}, which is not a {prefix[:-1] if prefix == 'state.' else 'param'}")
                if target.type != t:
                    fail(f"output {k}: expected type {target.type}, got %{v}: {t}")
    if not g.outputs:
        fail("the graph has no outputs: a model needs a loss, e.g. g.softmax_cross_entropy(logits, y), "
             "g.mse(pred, target) or g.sigmoid_bce(logits, target)")
    _check_state_updates(g, fail)
    if not allow_dead:
        for n in g.nodes:
            if not any(o.name in used for o in n.outputs):
                fail(f"node %{n.name} ({n.op}) is dead: none of its outputs is used (run the dce pass)")
        for v in (*g.inputs, *g.params, *g.state):
            if v.name not in used:
                fail(f"{v.kind} %{v.name} is not used by any node")
    return g


def _check_state_updates(g, fail):
    """Each ``state.<s>`` output is the next value of ``s``: an output of a state op (its
    ``state_updates`` field) computed from ``s`` itself. A graph that trains (it has a loss or
    returns state) returns one for every state value that a training-mode node reads: otherwise a
    step would update some running statistics and not others (or none), silently."""
    producers = {o.name: (n, i) for n in g.nodes for i, o in enumerate(n.outputs)}
    returned = set()
    for k, v in g.outputs:
        if not k.startswith("state."):
            continue
        s = k[len("state."):]
        n, i = producers.get(v, (None, None))
        j = None if n is None else get_op(n.op).state_updates.get(i)
        if j is None or n.inputs[j] != s:
            fail(f"output {k} returns %{v}, which is not the next value of %{s}: expected an output of a "
                 f"state op (running_update) that reads %{s}")
        returned.add(s)
    if not (returned or any(k == "loss" for k, _ in g.outputs)):
        return  # an inference program, or forward_train: it updates no state
    state = {v.name for v in g.state}
    for n in g.nodes:
        if uses_batch_statistics(n):
            for name in n.inputs:
                if name in state and name not in returned:
                    fail(f"node %{n.name} ({n.op}) normalizes with batch statistics, but the graph does not return "
                         f"the next value of its state %{name} (an output state.{name}): a training step would "
                         f"leave it stale while other running statistics move")
