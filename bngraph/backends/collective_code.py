"""The collective ops' lowering, shared by both targets (their generated code is Python: the NumPy
module and the CUDA host driver): one line that calls :mod:`bngraph.distributed.kernels`, the
process's communicator for ``allreduce`` (MPI on host arrays, NCCL on a GPU's) and the reference
semantics of synchronized batch norm's local pieces on the target's arrays, each output written
into its planned destination (``B[...]`` or a gradient's view ``G[...]``)."""
from __future__ import annotations

COLLECTIVE_OPS = ("allreduce", "bn_partial_sum", "bn_partial_m2", "batchnorm_sync", "batchnorm_sync_reduce",
                  "batchnorm_sync_grad", "running_update_sync", "loss_count")


def collective_context(op: str, attrs: dict) -> dict:
    """Template variables of ``collective.j2``: ``head`` (the call before its arrays) and ``why``."""
    if op == "allreduce":
        return {"head": "allreduce(",
                "why": "the sum over the replicas: this process's communicator (MPI, NCCL; one replica: a copy)"}
    return {"head": f"ref({op!r}, {dict(attrs)!r}, ",
            "why": f"{op}: this replica's part of synchronized batch norm (bngraph.ops_collective)"}
