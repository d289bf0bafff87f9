"""Fusing an activation into the op before it: one rewrite, one table, one function.

    act(plain(...)) -> fused[act](...)            # when act is the only user of plain's output
    fused[act=identity](...) then act -> fused[act](...)

Each row of ``FUSIONS`` names a plain op and its fused form (the fused op has the plain op's
attributes plus ``act`` and ``negative_slope``); :func:`fuse_activations` runs a row over a graph.
The passes ``fuse_bn`` and ``fuse_bias_act`` are this function with one row each; what differs
between them (the sentences, and whether a plain op with no activation to take is rewritten
anyway) is data in the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir import Value
from ..ops import ACTIVATIONS
from .base import PassResult, Uses, bn_label, bn_stat_words, describe, make_node


@dataclass(frozen=True)
class Fusion:
    """One row: ``act(plain(...)) -> fused[act](...)``."""

    plain: str  # batchnorm
    fused: str  # batchnorm_act
    fused_sentence: Callable  # (node, activation node, shown activation) -> change sentence
    # (node, why no activation was fused) -> change sentence when the plain op becomes ``fused`` with
    # act=identity anyway; None: a plain op without a lone activation is left as it is
    alone_sentence: Callable | None = None


def _shown(act) -> str:
    slope = act.attr.get("negative_slope", 0.0)
    return f"{act.op}[negative_slope={slope!r}]" if act.op == "leaky_relu" else act.op


def _bn_algebra(n) -> str:
    mean, var = bn_stat_words(n)
    return f"s = gamma/sqrt({var}+eps), t = beta - {mean}*s"


FUSIONS = {
    "batchnorm": Fusion(
        "batchnorm", "batchnorm_act",
        fused_sentence=lambda n, act, shown: (f"fused {bn_label(n)} and {act.name} into one pass: "
                                              f"{act.name} = {shown}({n.inputs[0]}*s + t), {_bn_algebra(n)}"),
        alone_sentence=lambda n, why: (f"{bn_label(n)} as one pass: {n.name} = {n.inputs[0]}*s + t, "
                                       f"{_bn_algebra(n)}; no activation fused: {why}"),
    ),
    "bias_add": Fusion(
        "bias_add", "bias_add_act",
        fused_sentence=lambda n, act, shown: (f"fused %{n.name} ({n.op}) and %{act.name} ({act.op}) into one "
                                              f"pass: {act.name} = {shown}({n.inputs[0]} + {n.inputs[1]})"),
    ),
}


def lone_activation(n, uses: Uses):
    """(the activation node to fuse into ``n``, "") or (None, why not)."""
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


def fuse_activations(g, row: Fusion) -> PassResult:
    """Run one row of ``FUSIONS`` over ``g``: each ``row.plain`` node (or ``row.fused`` with
    act=identity) whose output's only user is an activation becomes ``row.fused[act]``, taking the
    activation's output name (downstream users are unchanged; further outputs keep theirs)."""
    uses = Uses(g)
    replaced: dict = {}  # id(node) -> fused node
    dropped: set = set()  # ids of the activation nodes fused away
    changes = []
    for n in g.nodes:
        plain = n.op == row.plain
        if not (plain or (n.op == row.fused and n.attr["act"] == "identity")):
            continue
        act, why = lone_activation(n, uses)
        if act is not None:
            attrs = {**n.attr, "act": act.op, "negative_slope": act.attr.get("negative_slope", 0.0)}
            out = Value(act.out.name, n.out.type)
            replaced[id(n)] = make_node(row.fused, n.inputs, (out, *n.outputs[1:]), attrs)
            dropped.add(id(act))
            changes.append(row.fused_sentence(n, act, _shown(act)))
        elif plain and row.alone_sentence is not None:
            attrs = {**n.attr, "act": "identity", "negative_slope": 0.0}
            replaced[id(n)] = make_node(row.fused, n.inputs, n.outputs, attrs)
            changes.append(row.alone_sentence(n, why))
    if not replaced:
        return PassResult(g)
    nodes = [replaced.get(id(n), n) for n in g.nodes if id(n) not in dropped]
    return PassResult(g.rebuild(nodes=nodes), tuple(changes))
