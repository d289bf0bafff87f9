"""to_inference: turn a training graph into an inference graph (not a semantics-preserving pass)."""
from __future__ import annotations

from ..graph import as_graph
from ..ops import uses_batch_statistics
from ..verifier import verify
from .base import PassError, make_node
from .dce import dce


def to_inference(g):
    """training graph -> inference graph: batchnorm[mode=train] -> batchnorm[mode=eval] (running
    statistics), no running_update, no state outputs, no loss; outputs become ``out=<the loss's
    prediction input>``; dead nodes and unused inputs (the labels) are removed.

    This changes what the graph computes (eval-mode BN uses the running statistics instead of the
    batch's), so it is a conversion, not a pass in ``PASSES``. A graph with gradient outputs is
    refused: call it on the forward graph, before autodiff. A graph that is already an inference
    graph (no loss, no training-mode BN, no state outputs) is returned as is. Takes a builder or a
    frozen graph; returns a frozen graph.
    """
    g = as_graph(g)
    grads = [k for k, _ in g.outputs if k.startswith("grad.")]
    if grads:
        raise PassError(
            f"to_inference: graph {g.name} has gradient outputs ({', '.join(grads[:3])}"
            f"{', ...' if len(grads) > 3 else ''}); an inference graph computes no gradients. "
            f"Call to_inference on the forward graph, before autodiff."
        )
    loss = g.loss_node
    has_state_outputs = any(k.startswith("state.") for k, _ in g.outputs)
    if loss is None and not g.is_training and not has_state_outputs:
        return g
    if loss is not None:
        outputs = [("out", loss.inputs[0])]
    else:
        outputs = [(k, v) for k, v in g.outputs if not k.startswith("state.")]
        if not outputs:
            raise PassError(f"to_inference: graph {g.name} has no loss and no outputs besides state "
                            f"updates; nothing would remain to compute")
    nodes = []
    for n in g.nodes:
        if uses_batch_statistics(n):  # eval mode normalizes with the running statistics: one output
            n = make_node(n.op, n.inputs, n.outputs[:1], {**n.attr, "mode": "eval"})
        nodes.append(n)
    # running_update nodes, the loss and whatever fed only them are dead now
    new = dce.run(g.rebuild(nodes=nodes, outputs=outputs)).graph
    defined = set(new.values())
    for n in new.nodes:
        missing = [i for i in n.inputs if i not in defined]
        if missing:
            raise PassError(f"to_inference: %{n.name} ({n.op}) reads {', '.join('%' + m for m in missing)}, "
                            f"the batch statistics of a training-mode batchnorm, which eval mode does not produce")
    return verify(new, after="to_inference")
