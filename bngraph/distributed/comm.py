"""The communicator of this process: one replica of a data-parallel job.

``replicas()`` is the process's :class:`Replicas` (one a process, as ``torch.distributed``'s default
group): :class:`Local` (one replica, every collective the identity) until :func:`init` picks an
engine: :class:`MPIReplicas` (mpi4py, CPU processes under ``mpiexec``, several hosts through MPI's
hostfile) or :class:`~bngraph.distributed.nccl.NCCLReplicas` (one process per GPU, the NCCL
unique id shared over MPI).

Every collective waits with a deadline (``timeout`` seconds): a rank that died or stopped
answering ends the job with one line naming the collective, instead of hanging it. A failure on
one rank that the others can hear about (bad data, a refused step, Ctrl-C) goes through
:meth:`Replicas.agree`: every rank raises the same :class:`DistributedError` naming the rank and
the cause.
"""
from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

from ..errors import DataError, TrainingDiverged

MESSAGE = 240  # bytes of a rank's message in agree()
BUCKET_BYTES = 16 << 20  # the gradient allreduce's bucket size (16 MiB, PyTorch DDP's order of size)


def buckets(n: int, itemsize: int, bucket_bytes: int = BUCKET_BYTES) -> list:
    """(start, stop) of each bucket of a flat buffer of ``n`` items."""
    step = max(1, bucket_bytes // itemsize)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


class DistributedError(RuntimeError):
    """A rank stopped the job: ``rank`` and ``cause`` say which and why (the same on every rank)."""

    def __init__(self, rank: int, cause: str, kind: str = "RuntimeError"):
        super().__init__(f"rank {rank}: {cause}")
        self.rank, self.cause, self.kind = rank, cause, kind


class Replicas:
    """The collectives a data-parallel model needs. ``rank``, ``size``, ``engine``, ``timeout``."""

    engine = "local"
    rank, size, timeout = 0, 1, 60.0
    check_identical = False  # debug: after each update, compare the params' checksums across replicas

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, arrays: list) -> list:
        """The sum over the replicas of each array (new arrays)."""
        return [a.copy() for a in arrays]

    def allreduce_inplace(self, flat) -> None:
        """Sum ``flat`` (a 1-D buffer) over the replicas in place, in buckets of ``BUCKET_BYTES``."""

    def gather_messages(self, message: bytes) -> list:
        """Every rank's ``message`` (at most MESSAGE bytes), by rank."""
        return [message]

    def agree(self, failure: BaseException | str | None) -> None:
        """Every rank says whether it failed; when one did, every rank raises the same
        DistributedError (the lowest failed rank's cause). The failing rank's own exception is
        chained. One small collective."""
        if failure is None:
            text = b""
        else:
            kind = type(failure).__name__ if isinstance(failure, BaseException) else "RuntimeError"
            cause = str(failure) if not isinstance(failure, KeyboardInterrupt) else "interrupted (Ctrl-C)"
            text = f"{kind}:{cause.splitlines()[0] if cause else kind}".encode()[:MESSAGE]
        got = self.gather_messages(text)
        for r, msg in enumerate(got):
            if msg:
                kind, _, cause = msg.decode(errors="replace").partition(":")
                same = {"TrainingDiverged": TrainingDiverged, "DataError": DataError}.get(kind)
                err = same(f"rank {r}: {cause}") if same is not None else DistributedError(r, cause, kind)
                raise err from (failure if isinstance(failure, BaseException) and r == self.rank else None)

    def shard(self, indices):
        """This rank's part of one global batch (``indices``, in the global order): contiguous,
        sizes as even as can be, the first ``len % size`` ranks one more."""
        n = len(indices)
        q, extra = divmod(n, self.size)
        a = self.rank * q + min(self.rank, extra)
        return indices[a:a + q + (1 if self.rank < extra else 0)]

    def checksums_agree(self, flat_buffers) -> str | None:
        """None when every replica holds the same bits in ``flat_buffers`` (host arrays), else a line
        saying which ranks differ (the debug check that the update ran identically)."""
        crc = 0
        for b in flat_buffers:
            crc = zlib.crc32(np.ascontiguousarray(b).view(np.uint8), crc)
        got = self.gather_messages(str(crc).encode())
        if len(set(got)) == 1:
            return None
        return "params differ across replicas after the update (checksums " + ", ".join(
            f"rank {r}: {m.decode()}" for r, m in enumerate(got)) + ")"

    def fail(self, cause: str) -> None:
        """Stop the whole job now with one line (a rank that cannot reach the others' agreement)."""
        print(f"bngraph: rank {self.rank}: {cause}", file=sys.stderr, flush=True)
        os._exit(3)

    def __repr__(self):
        return f"<bngraph.distributed {self.engine}: rank {self.rank} of {self.size}>"


class Local(Replicas):
    """One replica: every collective is the identity."""


class MPIReplicas(Replicas):
    """MPI through mpi4py: each collective non-blocking, waited for with a deadline."""

    engine = "mpi"

    def __init__(self, comm=None, timeout: float = 60.0):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size, self.timeout = self.comm.Get_rank(), self.comm.Get_size(), float(timeout)
        self.comm_seconds = 0.0  # time spent in collectives (the scaling figures' communication share)

    def _wait(self, request, what: str) -> None:
        """Wait for ``request``, spinning briefly then sleeping; past the deadline, end the job."""
        t0 = time.perf_counter()
        deadline, spins = t0 + self.timeout, 0
        while not request.Test():
            spins += 1
            if spins > 2000:
                time.sleep(0.0002)
                if time.perf_counter() > deadline:
                    self.fail(f"{what} timed out after {self.timeout:g} s: another rank stopped or died")
        self.comm_seconds += time.perf_counter() - t0

    def allreduce(self, arrays: list) -> list:
        if self.size == 1:
            return [np.array(a, copy=True) for a in arrays]
        host = [np.asarray(a) for a in arrays]
        dtype = np.result_type(*host)
        send = np.concatenate([h.reshape(-1).astype(dtype, copy=False) for h in host])  # one message
        recv = np.empty_like(send)
        self._wait(self.comm.Iallreduce(send, recv, op=self.MPI.SUM), f"allreduce of {send.size} values")
        out, k = [], 0
        for h in host:
            out.append(recv[k:k + h.size].reshape(h.shape).astype(h.dtype, copy=False))
            k += h.size
        return out

    def allreduce_inplace(self, flat) -> None:
        if self.size == 1:
            return
        reqs = []  # every bucket issued before any is waited for: the engine overlaps them
        for a, b in buckets(flat.size, flat.itemsize):
            reqs.append(self.comm.Iallreduce(self.MPI.IN_PLACE, flat[a:b], op=self.MPI.SUM))
        for r in reqs:
            self._wait(r, f"gradient allreduce of {flat.size} values")

    def gather_messages(self, message: bytes) -> list:
        if self.size == 1:
            return [message]
        send = np.zeros(MESSAGE + 1, np.uint8)
        send[0] = len(message)
        send[1:1 + len(message)] = np.frombuffer(message, np.uint8)
        recv = np.empty((self.size, MESSAGE + 1), np.uint8)
        self._wait(self.comm.Iallgather(send, recv), "agreement between the ranks")
        return [bytes(row[1:1 + row[0]]) for row in recv]
