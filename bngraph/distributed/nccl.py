"""The NCCL engine: one process per GPU, NCCL through CuPy (``cupy.cuda.nccl``; the library from
the ``nvidia-nccl-cu13`` package), the NCCL unique id made on rank 0 and shared over MPI.

Collectives run on the current CuPy stream (the model's queue); the host waits for them with the
same deadline as the MPI engine, polling the stream, and a communicator that does not finish in
time is aborted (``ncclCommAbort``) and the job ended with one line. Agreements and the debug
checksums (small host messages) go over MPI, which launched the processes. The host logic here
(the dtype table, the unique id's exchange, bucketing, packing) is tested without a GPU; the
collectives themselves in the ``gpu`` tests.
"""
from __future__ import annotations

import time

import numpy as np

from .comm import MPIReplicas, buckets  # noqa: F401  (buckets: where the NCCL tests find it)

# NumPy dtype -> NCCL's ncclDataType_t (nccl.h: ncclFloat32 = 7, ncclFloat64 = 8, ncclInt64 = 4)
NCCL_DTYPES = {np.dtype(np.float32): 7, np.dtype(np.float64): 8, np.dtype(np.int64): 4}
NCCL_SUM = 0  # ncclRedOp_t ncclSum


def nccl_dtype(dtype) -> int:
    """NCCL's data type for a NumPy dtype, or a clear error."""
    try:
        return NCCL_DTYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the NCCL engine sums float32, float64 and int64 arrays, got {np.dtype(dtype)}") from None


def share_unique_id(comm, make_id):
    """Rank 0 makes the NCCL unique id (``make_id()``, 128 bytes), every rank gets it over MPI."""
    uid = make_id() if comm.Get_rank() == 0 else None
    return comm.bcast(uid, root=0)


class NCCLReplicas(MPIReplicas):
    """Sums device arrays with NCCL; everything else as the MPI engine."""

    engine = "nccl"

    def __init__(self, comm=None, timeout: float = 60.0):
        super().__init__(comm, timeout)
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.rank % max(1, cupy.cuda.runtime.getDeviceCount())).use()  # one GPU a process
        uid = share_unique_id(self.comm, nccl.get_unique_id)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _wait_stream(self, what: str) -> None:
        stream = self.cupy.cuda.get_current_stream()
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        while not stream.done:
            time.sleep(0.0001)
            if time.perf_counter() > deadline:
                self.nccl_comm.abort()
                self.fail(f"{what} timed out after {self.timeout:g} s: another rank stopped or died")
        self.comm_seconds += time.perf_counter() - t0

    def _sum(self, buf, what: str) -> None:
        stream = self.cupy.cuda.get_current_stream().ptr
        for a, b in buckets(buf.size, buf.itemsize):
            part = buf[a:b]
            self.nccl_comm.allReduce(part.data.ptr, part.data.ptr, part.size, nccl_dtype(buf.dtype), NCCL_SUM, stream)
        self._wait_stream(what)

    def allreduce(self, arrays: list) -> list:
        cp = self.cupy
        dev = [cp.asarray(a) for a in arrays]
        dtype = np.result_type(*[d.dtype for d in dev])
        flat = cp.concatenate([d.reshape(-1).astype(dtype, copy=False) for d in dev])  # one collective
        self._sum(flat, f"allreduce of {flat.size} values")
        out, k = [], 0
        for d in dev:
            out.append(flat[k:k + d.size].reshape(d.shape).astype(d.dtype, copy=False))
            k += d.size
        return out

    def allreduce_inplace(self, flat) -> None:
        self._sum(flat, f"gradient allreduce of {flat.size} values")
