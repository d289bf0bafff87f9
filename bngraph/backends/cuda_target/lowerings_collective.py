"""The CUDA target's rows for the collective ops (bngraph.ops_collective): lines of the host driver
(``collective.py.j2``), no kernel of their own. ``allreduce`` is the process's communicator on the
device arrays: NCCL on the model's stream on a GPU (:mod:`bngraph.distributed.nccl`), the identity
of one replica on the emulator. The synchronized batch norm's local pieces run their reference
semantics on the device arrays (CuPy through NumPy's array protocols: a few CuPy kernels each);
fused kernels for them are not written yet."""
from __future__ import annotations

from ..collective_code import COLLECTIVE_OPS, collective_context
from .lowerings import LOWERINGS, HostCode


def _context(at):
    return collective_context(at.node.op, at.node.attr)


COLLECTIVE_LOWERINGS = {op: HostCode("collective.py.j2", host_context=_context) for op in COLLECTIVE_OPS}
LOWERINGS.update(COLLECTIVE_LOWERINGS)  # the one table the renderer reads (lowerings.LOWERINGS)
