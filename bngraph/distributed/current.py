"""This process's communicator: :func:`replicas` (Local until :func:`init`) and :func:`init`, which
picks the engine (:mod:`bngraph.distributed.comm`, :mod:`bngraph.distributed.nccl`)."""
from __future__ import annotations

import os

from .comm import Local, MPIReplicas, Replicas

_current: list = [Local()]


def replicas() -> Replicas:
    """This process's communicator (Local until :func:`init`)."""
    return _current[0]


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher (mpiexec/mpirun, hydra or Open MPI)."""
    return any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDRA_CONTROL_FD"))


ENGINES = ("auto", "mpi", "nccl", "local")


def init(engine: str = "auto", timeout: float = 60.0, check_identical: bool = False) -> Replicas:
    """Pick this process's engine and return its communicator.

    ``engine``: ``"mpi"`` (CPU processes, mpi4py), ``"nccl"`` (one process per GPU: NCCL through
    CuPy, the unique id shared over MPI), ``"local"`` (one replica), or ``"auto"``: MPI when this
    process was started by ``mpiexec``, else local. ``timeout``: seconds a collective may wait
    before the job is ended. ``check_identical``: after every update, check that the params are
    bit-identical on every replica (a debug mode: one small collective a step)."""
    if engine not in ENGINES:
        raise ValueError(f"distributed engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"distributed timeout must be a number of seconds > 0, got {timeout!r}")
    if engine == "auto":
        engine = "mpi" if launched_by_mpi() else "local"
    if engine == "local":
        r = Local()
    else:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise ImportError(f"the {engine} engine needs mpi4py (and an MPI library): "
                              f"pip install mpich mpi4py") from None
        if engine == "mpi":
            r = MPIReplicas(timeout=timeout)
        else:
            from .nccl import NCCLReplicas

            r = NCCLReplicas(timeout=timeout)
    r.check_identical = bool(check_identical)
    _current[0] = r
    return r
