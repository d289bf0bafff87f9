"""fuse_bn: normalize, scale, shift and the following activation in one pass over z."""
from __future__ import annotations

from ..ir import Value
from ..ops import ACTIVATIONS
from .base import PassResult, Uses, bn_label, bn_stat_words, describe, graph_pass, make_node

VALID_WHEN = (
    "always, in training and eval mode: batchnorm_act computes the same numbers regrouped as "
    "z*s + t. The activation is fused only when it is the sole user of the batchnorm's output "
    "and that output is not a graph output."
)


@graph_pass("fuse_bn", VALID_WHEN)
def fuse_bn(g) -> PassResult:
    """act(batchnorm(z)) -> batchnorm_act[act](z) = act(z*s + t)   # s = gamma/sqrt(var+eps), t = beta - mean*s

    Every ``batchnorm`` becomes a ``batchnorm_act``: per-unit s and t are computed once (from the
    batch statistics in training, the running ones in eval) and z is read once. When the BN's
    output has exactly one user, an activation op, and is not a graph output, the activation moves
    into the same node, which takes the activation's output name (downstream users are unchanged);
    the batch mean/var outputs keep their names. Otherwise ``act=identity``. A ``batchnorm_act``
    with ``act=identity`` followed by a lone activation is fused the same way.
    """
    uses = Uses(g)
    replaced: dict = {}  # id(bn node) -> fused node
    dropped: set = set()  # ids of activation nodes folded into a BN
    changes = []
    for n in g.nodes:
        plain = n.op == "batchnorm"
        if not (plain or (n.op == "batchnorm_act" and n.attr["act"] == "identity")):
            continue
        z = n.inputs[0]
        mean, var = bn_stat_words(n)
        algebra = f"s = gamma/sqrt({var}+eps), t = beta - {mean}*s"
        act, reason = _lone_activation(n, uses)
        if act is not None:
            slope = act.attr.get("negative_slope", 0.0)
            attrs = {**_bn_attrs(n), "act": act.op, "negative_slope": slope}
            out = Value(act.out.name, n.out.type)
            replaced[id(n)] = make_node("batchnorm_act", n.inputs, (out, *n.outputs[1:]), attrs)
            dropped.add(id(act))
            shown = f"{act.op}[negative_slope={slope!r}]" if act.op == "leaky_relu" else act.op
            changes.append(f"fused {bn_label(n)} and {act.name} into one pass: "
                           f"{act.name} = {shown}({z}*s + t), {algebra}")
        elif plain:
            attrs = {**_bn_attrs(n), "act": "identity", "negative_slope": 0.0}
            replaced[id(n)] = make_node("batchnorm_act", n.inputs, n.outputs, attrs)
            changes.append(f"{bn_label(n)} as one pass: {n.name} = {z}*s + t, {algebra}; "
                           f"no activation fused: {reason}")
    if not replaced:
        return PassResult(g)
    nodes = [replaced.get(id(n), n) for n in g.nodes if id(n) not in dropped]
    return PassResult(g.rebuild(nodes=nodes), tuple(changes))


def _bn_attrs(n) -> dict:
    a = n.attr
    return {"eps": a["eps"], "momentum": a["momentum"], "mode": a["mode"]}


def _lone_activation(n, uses: Uses):
    """(the activation node to fuse, None) or (None, why not)."""
    y = n.out.name
    if uses.is_output(y):
        return None, f"%{y} is a graph output"
    users = uses.nodes(y)
    if not users:
        return None, f"%{y} has no users"
    if len(users) > 1:
        return None, f"%{y} has {len(users)} users ({describe([f'%{u.name}' for u in users])})"
    if users[0].op not in ACTIVATIONS:
        return None, f"its only user %{users[0].name} is a {users[0].op}, not an activation"
    return users[0], ""
