"""fold_bn_into_weights: an eval-mode batchnorm after a matmul or a conv disappears into the weights."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import TensorType, Value
from ..ops import BN_OPS, bn_scale_shift, uses_batch_statistics
from .base import (PassError, PassResult, Uses, bn_label, count_words, describe, drop_unused, graph_pass,
                   make_node, need, numel)

VALID_WHEN = (
    "inference graphs only (every batchnorm in eval mode: it then normalizes with constants, the "
    "running statistics). Refused (PassError) on a training graph. Only for matmul W, x without "
    "ta/tb, or conv W, x (any stride, padding, dilation, groups: BN's channels are the conv's output "
    "channels, axis 0 of W), where W is a param read by that node alone and each intermediate value "
    "has one user."
)


@dataclass(frozen=True)
class _Fold:
    label: str  # bn1
    op: str  # matmul | conv
    W: str
    b: str | None
    gamma: str
    beta: str
    rm: str
    rv: str
    eps: float
    W_folded: str
    b_folded: str


@graph_pass("fold_bn_into_weights", VALID_WHEN)
def fold_bn_into_weights(g) -> PassResult:
    """batchnorm[eval](matmul|conv(W, x) [+ b]) -> matmul|conv(W', x) + b'   # W' = s*W per output unit (axis 0), b' = t + s*b; s = gamma/sqrt(rv+eps), t = beta - rm*s

    In eval mode BN(z) = z*s + t with constant per-unit s, t, so it folds into the affine layer
    before it: a matmul's W (units, features) row by row, a conv's W (F, C/groups, k...) output
    channel by output channel (spatial BN's s and t are per channel). The result is
    ``matmul %W_folded, %x`` (or the conv with its attributes) then ``bias_add_act[act]`` (from a
    ``batchnorm_act``) or ``bias_add`` (from a plain ``batchnorm`` or ``act=identity``), whose
    output keeps the BN output's name. New params: ``<W>_folded`` and ``<prefix of W>.b_folded``;
    W, b, gamma, beta and the running statistics are removed (unless something else reads them).
    """
    for n in g.nodes:
        if uses_batch_statistics(n):
            raise PassError(
                f"fold_bn_into_weights: %{n.name} ({n.op}) is in training mode: it normalizes with each "
                f"mini-batch's own mean and variance, which are not known ahead of time, so they cannot be "
                f"folded into constant weights. Convert the graph first with bngraph.passes.to_inference(g) "
                f"(eval mode, running statistics), then run the inference pipeline (INFERENCE_PIPELINE)."
            )
    uses = Uses(g)
    vals = g.values()
    prod = g.producers()
    taken = set(vals) | {k for k, _ in g.outputs}
    folds, notes = [], []
    replaced: dict = {}  # id(bn) -> [new matmul, new bias_add(_act)]
    dropped: set = set()
    for bn in g.nodes:
        if bn.op not in BN_OPS:
            continue
        label = bn_label(bn)
        match = _match(bn, uses, vals, prod)
        if isinstance(match, str):
            notes.append(f"kept {label}: {match}")
            continue
        mm, bias_node = match
        W, x = mm.inputs
        b = bias_node.inputs[1] if bias_node is not None else None
        prefix = W.rsplit(".", 1)[0] if "." in W else W
        W_f, b_f = f"{W}_folded", f"{prefix}.b_folded"
        clash = [f"%{nm}" for nm in (W_f, b_f) if nm in taken]
        if clash:
            notes.append(f"kept {label}: the names {describe(clash)} for the folded params are taken")
            continue
        taken.update((W_f, b_f))
        _, gamma, beta, rm, rv = bn.inputs
        folds.append(_Fold(label, mm.op, W, b, gamma, beta, rm, rv, bn.attr["eps"], W_f, b_f))
        act = bn.attr.get("act", "identity")
        out = Value(bn.out.name, bn.out.type)
        new_mm = make_node(mm.op, (W_f, x), mm.outputs, mm.attr)
        if act == "identity":
            new_add = make_node("bias_add", (mm.out.name, b_f), (out,))
        else:
            new_add = make_node("bias_add_act", (mm.out.name, b_f), (out,),
                                {"act": act, "negative_slope": bn.attr["negative_slope"]})
        replaced[id(bn)] = [new_mm, new_add]
        dropped.update(id(n) for n in (mm, bias_node) if n is not None)
    if not folds:
        return PassResult(g, (), None, tuple(notes))

    # the new matmul and bias_add sit where the BN was: x is defined before the old matmul, and
    # every user of the BN's output comes after the BN
    nodes = []
    for n in g.nodes:
        if id(n) not in dropped:
            nodes.extend(replaced.get(id(n), [n]))
    folded_W = {f.W: f for f in folds}
    params = []
    for p in g.params:
        params.append(p)
        if p.name in folded_W:  # the folded pair sits where W was
            f = folded_W[p.name]
            params.append(Value(f.W_folded, p.type, "param"))
            params.append(Value(f.b_folded, TensorType(p.type.dtype, (p.type.shape[0],)), "param"))
    candidates = {name for f in folds for name in (f.W, f.b, f.gamma, f.beta, f.rm, f.rv) if name}
    params, removed_params = drop_unused(params, nodes, g.outputs, candidates)
    state, removed_state = drop_unused(g.state, nodes, g.outputs, candidates)
    removed = {v.name for v in (*removed_params, *removed_state)}
    new = g.rebuild(nodes=nodes, params=params, state=state)

    changes = []
    for f in folds:
        gone_p = [n for n in (f.W, f.b, f.gamma, f.beta) if n in removed]
        gone_s = [n for n in (f.rm, f.rv) if n in removed]
        count = sum(numel(vals[n]) for n in gone_p)
        added = numel(vals[f.W]) + vals[f.W].type.shape[0]
        kept = [n for n in (f.W, f.b, f.gamma, f.beta, f.rm, f.rv) if n and n not in removed]
        b_term = "t + s*b" if f.b else "t"
        w_term = "s[:,None]*W" if f.op == "matmul" else "W*s per output channel (axis 0)"
        s = (f"folded {f.label} into {f.W_folded} and {f.b_folded}: W' = {w_term}, b' = {b_term}, "
             f"s = gamma/sqrt(running_var+eps), t = beta - running_mean*s; removed {', '.join(gone_p)} "
             f"({count_words(count, 'parameter')})")
        if gone_s:
            s += f" and the running statistics {', '.join(gone_s)}"
        s += f", added {count_words(added, 'parameter')}"
        if kept:
            s += f"; kept {', '.join(kept)}: still used elsewhere"
        changes.append(s)

    def remap(values: dict) -> dict:
        out = dict(values)
        for f in folds:
            why = f"to fold {f.label} into {f.W_folded}"
            gamma, beta, rm, rv, W = (need(values, name, "fold_bn_into_weights", why)
                                      for name in (f.gamma, f.beta, f.rm, f.rv, f.W))
            s, t = bn_scale_shift(gamma, beta, rm, rv, f.eps)
            out[f.W_folded] = s.reshape(-1, *(1,) * (W.ndim - 1)) * W  # row i (output channel i) times s[i]
            out[f.b_folded] = t + s * need(values, f.b, "fold_bn_into_weights", why) if f.b else t
        for name in removed:
            out.pop(name, None)
        return out

    return PassResult(new, tuple(changes), remap, tuple(notes))


def _match(bn, uses: Uses, vals: dict, prod: dict):
    """(matmul node, bias_add node or None) when ``bn`` can be folded, else the reason it cannot."""
    z = bn.inputs[0]
    p = prod.get(z)
    bias_node = None
    if p is not None and p.op == "bias_add":
        bias_node = p
        p = prod.get(p.inputs[0])
    if p is None or p.op not in ("matmul", "conv"):
        return f"its input %{z} is not produced by a matmul or a conv (optionally followed by a bias_add)"
    mm = p
    if mm.op == "matmul" and (mm.attr["ta"] or mm.attr["tb"]):
        return f"matmul %{mm.name} has transposed operands (ta/tb); only matmul W, x is folded"
    W = mm.inputs[0]
    if vals[W].kind != "param":
        return f"the weight %{W} of %{mm.name} is a {vals[W].kind} value, not a parameter"
    others = uses.others(W, [(mm, 0)])
    if others:
        return f"{W} is also used by {describe(others)}"
    chain = [mm.out.name] + ([bias_node.out.name] if bias_node is not None else [])
    for name in chain:
        if uses.count(name) != 1:
            nxt = bias_node if (bias_node is not None and name == mm.out.name) else bn
            return f"%{name} is also used by {describe(uses.others(name, [(nxt, 0)]))}"
    if bias_node is not None and vals[bias_node.inputs[1]].kind != "param":
        return f"the bias %{bias_node.inputs[1]} is not a parameter"
    for name in bn.inputs[1:]:
        if vals[name].kind not in ("param", "state"):
            return f"%{name} is computed by the graph, not a parameter or state value"
    return mm, bias_node
