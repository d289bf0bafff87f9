"""fuse_bias_act: add the bias and apply the activation in one pass."""
from __future__ import annotations

from .base import PassResult, graph_pass
from .fuse_act import FUSIONS, fuse_activations

VALID_WHEN = (
    "always: the same arithmetic in one node. Only when the activation is the sole user of the "
    "bias_add's output and that output is not a graph output."
)


@graph_pass("fuse_bias_act", VALID_WHEN)
def fuse_bias_act(g) -> PassResult:
    """act(bias_add(z, b)) -> bias_add_act[act](z, b) = act(z + b)   # when act is the only user

    The fused node takes the activation's output name, so downstream users are unchanged. A
    ``bias_add_act`` with ``act=identity`` followed by a lone activation is fused the same way.
    The rewrite is the ``bias_add`` row of :data:`bngraph.passes.fuse_act.FUSIONS`.
    """
    return fuse_activations(g, FUSIONS["bias_add"])
