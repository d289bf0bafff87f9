"""dce: dead-code elimination."""
from __future__ import annotations

from .base import PassResult, count_words, drop_unused, graph_pass, numel

VALID_WHEN = "always: what no graph output depends on cannot change any output."


@graph_pass("dce", VALID_WHEN)
def dce(g) -> PassResult:
    """node with no output reaching a graph output -> (removed); unused input/param/state -> (removed)

    Liveness is walked backwards from the graph outputs; a node with several outputs stays when any
    of them is live. Removed params and state are also dropped by the remap.
    """
    live = {v for _, v in g.outputs}
    kept_rev = []
    dead = []
    for n in reversed(g.nodes):
        if any(o.name in live for o in n.outputs):
            kept_rev.append(n)
            live.update(n.inputs)
        else:
            dead.append(n)
    nodes = kept_rev[::-1]
    inputs, dead_inputs = drop_unused(g.inputs, nodes, g.outputs)
    params, dead_params = drop_unused(g.params, nodes, g.outputs)
    state, dead_state = drop_unused(g.state, nodes, g.outputs)
    if not (dead or dead_inputs or dead_params or dead_state):
        return PassResult(g)
    changes = [f"removed dead node %{n.name} ({n.op}): no graph output depends on it" for n in reversed(dead)]
    changes += [f"removed unused input %{v.name}" for v in dead_inputs]
    changes += [f"removed unused param {v.name} ({count_words(numel(v), 'parameter')})" for v in dead_params]
    changes += [f"removed unused state {v.name} ({count_words(numel(v), 'value')})" for v in dead_state]
    gone = {v.name for v in (*dead_params, *dead_state)}
    remap = None
    if gone:
        def remap(values: dict) -> dict:
            return {k: v for k, v in values.items() if k not in gone}

    return PassResult(g.rebuild(inputs=inputs, params=params, state=state, nodes=nodes), tuple(changes), remap)
