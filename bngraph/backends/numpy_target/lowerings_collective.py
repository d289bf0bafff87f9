"""The NumPy target's rows for the collective ops (bngraph.ops_collective): one template,
``collective.j2``, a call into :mod:`bngraph.distributed.kernels` (bngraph.backends.collective_code)."""
from __future__ import annotations

from ..collective_code import COLLECTIVE_OPS, collective_context
from ..lowering import Lowering
from .lowerings import LOWERINGS


def _context(node, ins):
    return collective_context(node.op, node.attr)


COLLECTIVE_LOWERINGS = {op: Lowering("collective.j2", context=_context) for op in COLLECTIVE_OPS}
LOWERINGS.update(COLLECTIVE_LOWERINGS)  # the one table the renderer reads
