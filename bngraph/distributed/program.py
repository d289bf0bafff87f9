"""What ``bg.compile(..., distributed=...)`` does to a model's programs: :func:`resolve` reads the
option, :func:`distribute_programs` rewrites ``train_step`` for the replicas."""
from __future__ import annotations

from dataclasses import dataclass

from ..passes.sync_batchnorm import global_mean_loss, sync_batchnorm
from ..verifier import verify
from .comm import Replicas
from .current import init, launched_by_mpi, replicas


@dataclass(frozen=True)
class Distributed:
    """The options of data-parallel training: ``replicas`` (the communicator), ``sync_bn`` (batch
    norm with the global batch's statistics; False: each replica normalizes with its own shard's,
    which changes the model with the number of replicas)."""

    replicas: Replicas
    sync_bn: bool = True


def resolve(option) -> Distributed | None:
    """``distributed=`` of ``bg.compile``: None (the default: the communicator of
    ``bg.distributed.init()`` when it has more than one replica, or this process was started by
    mpiexec, else not distributed), False, True (init if needed), an engine name, a dict of
    ``init``'s arguments plus ``sync_bn``, or a Distributed."""
    if option is None:
        r = replicas()
        if r.size == 1 and r.engine == "local" and not launched_by_mpi():
            return None
        if r.engine == "local" and launched_by_mpi():
            r = init()
        return Distributed(r)
    if option is False:
        return None
    if isinstance(option, Distributed):
        return option
    if option is True:
        r = replicas()
        return Distributed(r if r.engine != "local" else init())
    if isinstance(option, str):
        return Distributed(init(option))
    if isinstance(option, dict):
        opts = dict(option)
        sync_bn = bool(opts.pop("sync_bn", True))
        r = init(**opts) if opts or replicas().engine == "local" else replicas()
        return Distributed(r, sync_bn)
    raise TypeError(f"distributed must be None, True/False, an engine name, a dict or a Distributed, "
                    f"got {type(option).__name__}")


def distribute_programs(programs: dict, dist: Distributed | None) -> tuple:
    """``programs`` with ``train_step`` for the replicas, and the passes' change sentences
    (``programs`` as they are when not distributed)."""
    if dist is None:
        return programs, ()
    train = programs["train_step"]
    changes = []
    if dist.sync_bn:
        res = sync_batchnorm.run(train)
        train, changes = res.graph, [*changes, *res.changes]
    res = global_mean_loss.run(train)
    changes += res.changes
    return {**programs, "train_step": verify(res.graph, after="sync_batchnorm")}, tuple(changes)


def agreed(dist: Distributed | None, fn, *args):
    """``fn(*args)`` on every replica, then one agreement: when it raised on one rank, every rank
    raises the same error naming that rank (bad data on one shard), instead of the others waiting
    in the step's first collective."""
    if dist is None:
        return fn(*args)
    try:
        result = fn(*args)
    except Exception as e:
        dist.replicas.agree(e)
        raise
    dist.replicas.agree(None)
    return result
