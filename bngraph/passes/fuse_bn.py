"""fuse_bn: normalize, scale, shift and the following activation in one pass over z."""
from __future__ import annotations

from .base import PassResult, graph_pass
from .fuse_act import FUSIONS, fuse_activations

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
    with ``act=identity`` followed by a lone activation is fused the same way. The rewrite is the
    ``batchnorm`` row of :data:`bngraph.passes.fuse_act.FUSIONS`.
    """
    return fuse_activations(g, FUSIONS["batchnorm"])
