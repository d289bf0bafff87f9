"""fold_bias: a bias added right before a batchnorm is cancelled by its mean subtraction."""
from __future__ import annotations

from ..ops import BN_OPS
from .base import PassResult, Uses, bn_label, compose, count_words, describe, drop_unused, graph_pass, need, numel

VALID_WHEN = (
    "always, in training and eval mode, when the bias_add's output feeds only the batchnorm (and that "
    "batchnorm's running_update, which reads it only for the batch size). Training: exact, the bias "
    "has zero gradient. Eval: exact because the remap subtracts b from running_mean."
)


@graph_pass("fold_bias", VALID_WHEN)
def fold_bias(g) -> PassResult:
    """batchnorm(bias_add(z, b)) -> batchnorm(z)   # train: b is dead; eval: running_mean -= b

    BN subtracts the per-unit mean of its input, so a per-unit constant added before it cancels:
    mean(z + b) = mean(z) + b. On a spatial value (C, m, d...) a conv's bias is per channel and
    spatial BN's mean is per channel over the batch and the positions: it cancels the same way. The running mean, learned with the bias, is remapped to
    ``running_mean - b`` (eval: the same outputs; train: it keeps tracking the same quantity). The
    bias param goes when nothing else reads it. Repeats until nothing changes (a chain of bias_adds
    before one BN folds completely).
    """
    changes, remaps = [], []
    while True:
        res = _fold_once(g)
        if res.graph is g:
            return PassResult(g, tuple(changes), compose(remaps) if remaps else None, res.notes)
        g = res.graph
        changes += res.changes
        remaps.append(res.remap)


def _fold_once(g) -> PassResult:
    uses = Uses(g)
    vals = g.values()
    replaced: dict = {}  # id(old node) -> new node
    dropped: set = set()  # ids of removed nodes
    folds = []  # (bias name, running_mean name, bn label, bias_add output, what the mean is over)
    notes = []
    for n in g.nodes:
        if n.op != "bias_add":
            continue
        z, b = n.inputs
        out = n.out.name
        bns = [u for u, i in uses.by_nodes.get(out, ()) if u.op in BN_OPS and i == 0 and id(u) not in replaced]
        if not bns:
            continue  # an ordinary bias: not this pass's business
        bn = bns[0]
        rm = bn.inputs[3]
        upd = _running_update_of(bn, uses)
        allowed = [(bn, 0)] + ([(upd, 4)] if upd is not None else [])
        others = uses.others(out, allowed)
        if others:
            notes.append(f"kept {b}: %{out} is also used by {describe(others)}")
            continue
        if vals[b].kind != "param":
            notes.append(f"kept %{out}: its bias %{b} is a {vals[b].kind} value, not a parameter")
            continue
        if vals[rm].kind != "state":
            notes.append(f"kept {b}: the running mean %{rm} of {bn_label(bn)} is not a state value")
            continue
        rm_others = uses.others(rm, [(bn, 3)] + ([(upd, 0)] if upd is not None else []))
        if rm_others:
            # the remap changes running_mean: only safe when this BN alone reads it
            notes.append(f"kept {b}: {rm} would absorb it, but it is also used by {describe(rm_others)}")
            continue
        replaced[id(bn)] = bn.replace(inputs=(z, *bn.inputs[1:]))
        if upd is not None and upd.inputs[4] == out:
            replaced[id(upd)] = upd.replace(inputs=(*upd.inputs[:4], z))
        dropped.add(id(n))
        # a spatial value (C, m, d...): each channel's mean is over the batch and the positions
        over = " over the batch and positions" if vals[out].type.rank > 2 else ""
        folds.append((b, rm, bn_label(bn), out, over))
    if not folds:
        return PassResult(g, (), None, tuple(notes))

    nodes = [replaced.get(id(n), n) for n in g.nodes if id(n) not in dropped]
    params, removed = drop_unused(g.params, nodes, g.outputs, candidates={b for b, *_ in folds})
    removed_names = {p.name for p in removed}
    new = g.rebuild(nodes=nodes, params=params)
    new_uses = Uses(new)
    changes = []
    for b, rm, label, out, over in folds:
        why = f"cancelled by {label}'s mean subtraction{over}; {rm} absorbs it"
        if b in removed_names:
            changes.append(f"removed {b} ({count_words(numel(vals[b]), 'parameter')}): {why}")
        else:
            changes.append(f"folded {b} out of %{out} ({why}); {b} is kept: also used by "
                           f"{describe(new_uses.others(b))}")

    def remap(values: dict) -> dict:
        new_values = dict(values)
        for b, rm, *_ in folds:
            if rm in new_values:  # a dict without state (e.g. params only) has nothing to adjust
                new_values[rm] = new_values[rm] - need(values, b, "fold_bias", f"to subtract it from {rm}")
        for name in removed_names:
            new_values.pop(name, None)
        return new_values

    return PassResult(new, tuple(changes), remap, tuple(notes))


def _running_update_of(bn, uses: Uses):
    """The running_update node fed by ``bn``'s batch statistics (train mode), or None."""
    if len(bn.outputs) < 3:
        return None
    for u, i in uses.by_nodes.get(bn.outputs[1].name, ()):
        if u.op == "running_update" and i == 2 and u.inputs[3] == bn.outputs[2].name:
            return u
    return None
