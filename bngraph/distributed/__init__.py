"""Data-parallel training: replicas of one model, each on its shard of every global batch, that
train exactly as one process on the whole batch (docs/distributed.md).

    import bngraph as bg
    bg.distributed.init()                 # under mpiexec: MPI; engine="nccl": one process per GPU
    model = bg.compile(bg.mlp([64, 128, 64, 10]), dtype="float64")   # distributed: picks it up
    model.fit(X, y, optimizer=bg.optim.Adam(lr=3e-3), epochs=5, batch_size=64)  # rank 0 prints

What is distributed is declared, not hidden: the training program gets the collective ops of
:mod:`bngraph.ops_collective` (:func:`bngraph.passes.sync_batchnorm.sync_batchnorm` and
``global_mean_loss``: batch norm with the global batch's statistics, the loss divided by the global
count), and the model's training step one gradient hook, the sum of the flat gradient buffer over
the replicas (:meth:`Replicas.allreduce_inplace`) before the checks and the update.
"""
from .comm import DistributedError, Local, MPIReplicas, Replicas
from .current import ENGINES, init, launched_by_mpi, replicas
from .program import Distributed, distribute_programs, resolve

__all__ = ["ENGINES", "Distributed", "DistributedError", "Local", "MPIReplicas", "Replicas", "distribute_programs",
           "init", "launched_by_mpi", "replicas", "resolve"]
