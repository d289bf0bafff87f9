"""Reverse-mode autodiff on the IR.

``grad_graph(g)`` walks the nodes in reverse topological order from the loss and asks each op's
gradient rule (``bngraph.ops``) for the cotangents of its inputs; a value with several users gets the
sum of its cotangents (``add``). The result is one graph, the *training program*: forward + loss +
backward, with outputs ``loss``, ``state.*`` (running statistics) and ``grad.<param>`` for every
param. The backward nodes are ordinary IR nodes, so passes and code generators treat them like any
other (batch-norm backward is the fused ``batchnorm_grad`` / ``batchnorm_act_grad`` op).

Backward values are named after the value they differentiate: the cotangent of ``%fc1`` is
``%fc1.grad``. The backward pass starts from a real value, the seed ``%loss.grad = fill[value=1.0]``
(dL/dL), and the loss's gradient rule multiplies by it like every other rule multiplies by its
incoming cotangent: another seed scales every gradient (loss scaling).
"""
from __future__ import annotations

from .graph import FrozenGraph, as_graph
from .ir import IRError, Node, Value
from .ops import get_op
from .passes import dce


def require_loss(g):
    """The loss node of a training graph, or a clear error."""
    if not g.has_output("loss"):
        raise IRError(
            f"graph {g.name} has no loss: training needs one, e.g. g.softmax_cross_entropy(logits, labels), "
            f"g.mse(pred, target) or g.sigmoid_bce(logits, target)"
        )
    node = g.loss_node
    if node is None or get_op(node.op).kind != "loss":
        raise IRError(f"graph {g.name}: output 'loss' (%{g.output('loss')}) is not produced by a loss op")
    return node


class _Types:
    """value name -> its TensorType, over the growing value table of grad_graph."""

    def __init__(self, values):
        self._values = values

    def __getitem__(self, name):
        return self._values[name].type


def grad_graph(g, seed: float = 1.0) -> FrozenGraph:
    """forward graph with a loss -> training program with ``grad.<param>`` outputs.

    ``seed`` is dL/dL, the value the backward pass starts from: every gradient is ``seed`` times
    the gradient of the loss."""
    g = as_graph(g)
    if any(k.startswith("grad.") for k, _ in g.outputs):
        raise IRError(f"graph {g.name} already has gradient outputs")
    loss = require_loss(g)
    values = g.values()
    params = {p.name for p in g.params}

    # values whose cotangent is needed: those that depend on some param
    needs = set(params)
    for n in g.nodes:
        if get_op(n.op).differentiable and any(i in needs for i in n.inputs):
            needs.update(o.name for o in n.outputs)

    new_nodes: list = []
    taken = set(values)
    counter = [0]

    def fresh(base: str) -> str:
        name = base
        k = 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    def emit(op: str, inputs, attrs, names=None):
        opdef = get_op(op)
        attrs = opdef.normalize_attrs(op, attrs)
        where = f"backward of {current[0]}"
        types = opdef.check(where, [values[i] for i in inputs], attrs)
        if names is None:
            names = []
            for _ in types:
                counter[0] += 1
                names.append(fresh(f"{current[0]}.grad_tmp{counter[0]}"))
        outs = [Value(nm, t) for nm, t in zip(names, types)]
        for o in outs:
            values[o.name] = o
        new_nodes.append(Node.make(op, inputs, outs, attrs))
        return [o.name for o in outs]

    # the rules that need a type (conv's kernel and input size) read it here: emit.types[name]
    emit.types = _Types(values)
    cts: dict = {}  # value name -> cotangent value name
    renames: dict = {}
    current = [loss.name]
    for node in reversed(g.nodes):
        op = get_op(node.op)
        if not op.differentiable:
            continue
        if node is loss:  # the root: dL/dL = seed, a scalar of the loss's dtype
            seed_attrs = {"value": seed, "dtype": loss.out.type.dtype}
            out_cts = emit("fill", [], seed_attrs, [fresh(f"{loss.name}.grad")])
        else:
            out_cts = [cts.get(o.name) for o in node.outputs]
            if all(c is None for c in out_cts):
                continue
        current[0] = node.name
        in_cts = op.grad(emit, node, out_cts)
        if len(in_cts) != len(node.inputs):
            raise IRError(f"gradient rule of {node.op} returned {len(in_cts)} cotangents for {len(node.inputs)} inputs")
        for inp, ct in zip(node.inputs, in_cts):
            if ct is None or inp not in needs:
                continue
            if ".grad_tmp" in ct and ct not in renames:
                renames[ct] = fresh(f"{inp}.grad")
            if inp in cts:
                current[0] = inp
                cts[inp] = emit("add", [cts[inp], ct], {}, [fresh(f"{inp}.grad_sum")])[0]
            else:
                cts[inp] = ct

    # name temporaries after what they differentiate, then drop what no gradient output needs
    def rn(name):
        return renames.get(name, name)

    named = [
        Node.make(n.op, [rn(i) for i in n.inputs], [Value(rn(o.name), o.type) for o in n.outputs], n.attr)
        for n in new_nodes
    ]
    grad_outputs = [(f"grad.{p.name}", rn(cts[p.name])) for p in g.params if p.name in cts]
    missing = [p.name for p in g.params if p.name not in cts]
    if missing:
        raise IRError(f"graph {g.name}: no gradient reaches param(s) {', '.join(missing)} from the loss")
    out = g.rebuild(nodes=[*g.nodes, *named], outputs=[*g.outputs, *grad_outputs])
    # the rules emit a cotangent for every input (e.g. dx of the first matmul): drop what nothing uses
    return dce.run(out).graph
