"""fuse_loss_grad: a loss and its gradient over the same inputs as one node, ``<loss>_and_grad``.

    loss(x, y[, w]); loss_grad(x, y[, w], dL) -> loss_and_grad(x, y[, w], dL)   # same options

The fused ops are rows of the op table (:data:`bngraph.ops.LOSS_AND_GRAD`: one per loss with a
gradient op, ``softmax_cross_entropy_and_grad``, ``nll_and_grad``, ``mse_and_grad``,
``sigmoid_bce_and_grad``); this pass only rewrites. Each has the loss's attributes, reads the
gradient's inputs and returns ``(loss, dx)``, computing exactly what the pair does.

Autodiff never makes them. The CUDA target runs this pass on every program before it lowers
(``CudaRenderer.passes``), so a loss and its gradient become one single-block kernel, and the
fusion is a node like any other: printed in the IR, and above that kernel in the ``.cu`` file.
The NumPy target does not run it (its code would not change: the loss and the gradient are
separate statements either way), but lowers the fused ops all the same, loss then gradient.
"""
from __future__ import annotations

from ..ops import LOSS_AND_GRAD
from .base import PassResult, Uses, graph_pass, make_node

VALID_WHEN = (
    "always: the same two computations in one node. Only when the gradient reads exactly the loss's "
    "inputs (then dL) with the same options, and no node between them reads the loss."
)


@graph_pass("fuse_loss_grad", VALID_WHEN)
def fuse_loss_grad(g) -> PassResult:
    """loss(x, y); loss_grad(x, y, dL) -> loss_and_grad(x, y, dL) = (loss, dx)   # one kernel on CUDA

    The fused node stands where the gradient stood (dL is computed before it) and takes both
    output names, so every user is unchanged. A loss pairs with the first such gradient only.
    """
    uses = Uses(g)
    position = {id(n): k for k, n in enumerate(g.nodes)}
    replaced, dropped, changes, notes = {}, set(), [], []
    for n in g.nodes:
        if n.op not in LOSS_AND_GRAD or id(n) in dropped:
            continue
        grad_op, fused = LOSS_AND_GRAD[n.op]
        grad = next((d for d in g.nodes if d.op == grad_op and id(d) not in replaced
                     and tuple(d.inputs[:-1]) == tuple(n.inputs) and d.attrs == n.attrs), None)
        if grad is None:
            continue
        between = [u for u in uses.nodes(n.out.name) if position[id(n)] < position[id(u)] <= position[id(grad)]]
        if between:
            notes.append(f"kept %{n.name} and %{grad.name} apart: %{between[0].name} ({between[0].op}) reads the "
                         f"loss before the gradient")
            continue
        replaced[id(grad)] = make_node(fused, grad.inputs, (*n.outputs, *grad.outputs), n.attr)
        dropped.add(id(n))
        changes.append(f"fused %{n.name} ({n.op}) and %{grad.name} ({grad_op}) into one node: "
                       f"{n.name}, {grad.name} = {fused}")
    if not replaced:
        return PassResult(g, notes=tuple(notes))
    nodes = [replaced.get(id(n), n) for n in g.nodes if id(n) not in dropped]
    return PassResult(g.rebuild(nodes=nodes), tuple(changes), notes=tuple(notes))
