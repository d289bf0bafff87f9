"""fuse_bias_act: add the bias and apply the activation in one pass."""
from __future__ import annotations

from ..ir import Value
from ..ops import ACTIVATIONS
from .base import PassResult, Uses, graph_pass, make_node

VALID_WHEN = (
    "always: the same arithmetic in one node. Only when the activation is the sole user of the "
    "bias_add's output and that output is not a graph output."
)


@graph_pass("fuse_bias_act", VALID_WHEN)
def fuse_bias_act(g) -> PassResult:
    """act(bias_add(z, b)) -> bias_add_act[act](z, b) = act(z + b)   # when act is the only user

    The fused node takes the activation's output name, so downstream users are unchanged. A
    ``bias_add_act`` with ``act=identity`` followed by a lone activation is fused the same way.
    """
    uses = Uses(g)
    replaced: dict = {}
    dropped: set = set()
    changes = []
    for n in g.nodes:
        if not (n.op == "bias_add" or (n.op == "bias_add_act" and n.attr["act"] == "identity")):
            continue
        act = uses.only_node_user(n.out.name)
        if act is None or act.op not in ACTIVATIONS:
            continue
        slope = act.attr.get("negative_slope", 0.0)
        out = Value(act.out.name, n.out.type)
        replaced[id(n)] = make_node("bias_add_act", n.inputs, (out,), {"act": act.op, "negative_slope": slope})
        dropped.add(id(act))
        z, b = n.inputs
        shown = f"{act.op}[negative_slope={slope!r}]" if act.op == "leaky_relu" else act.op
        changes.append(f"fused %{n.name} ({n.op}) and %{act.name} ({act.op}) into one pass: "
                       f"{act.name} = {shown}({z} + {b})")
    if not replaced:
        return PassResult(g)
    nodes = [replaced.get(id(n), n) for n in g.nodes if id(n) not in dropped]
    return PassResult(g.rebuild(nodes=nodes), tuple(changes))
