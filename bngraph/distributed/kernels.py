"""What the generated code of the collective ops calls (both targets: the NumPy module and the
CUDA host driver are Python): ``allreduce`` through this process's communicator, and the
synchronized batch norm's local pieces as their reference semantics (:mod:`bngraph.ops_collective`)
on the target's arrays (NumPy, or CuPy's through NumPy's array protocols), each output written
into its planned destination where it has one (a gradient's view of the flat buffer ``G``)."""
from __future__ import annotations

from ..ops import OPS
from .current import replicas


def _store(values, out):
    stored = []
    for v, d in zip(values, out):
        if d is None:
            stored.append(v)
        else:
            d[...] = v
            stored.append(d)
    return stored


def allreduce(ins, out):
    """The sum over the replicas of each array of ``ins`` (one collective), into ``out``."""
    return _store(replicas().allreduce(list(ins)), out)


def ref(op: str, attrs: dict, ins, out):
    """``op``'s reference semantics on these arrays, into ``out``."""
    return _store(OPS[op].ref(list(ins), attrs), out)
