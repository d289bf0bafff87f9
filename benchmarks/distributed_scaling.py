"""Data-parallel scaling on this machine: ``mpiexec -n N python benchmarks/distributed_scaling.py``
(N = 1, 2). Prints, on rank 0, one line of JSON: the step time at a fixed global batch and at a
fixed per-rank batch, the share of the step spent in collectives, and the allreduce bandwidth of
the gradient buffer through bngraph against a bare mpi4py Allreduce of the same size (the MPI
library's own figure). docs/distributed.md and docs/benchmarks.md quote its output."""
from __future__ import annotations

import json
import time

import numpy as np

import bngraph as bg


def step_time(global_batch, rep, steps=30):
    ds = bg.load_dataset("digits", seed=0)
    X, y = ds.X_train.astype(np.float32), ds.y_train
    m = bg.compile(bg.mlp([64, 512, 512, 10]), seed=0)
    opt = bg.optim.Adam(lr=1e-3)
    idx = np.arange(global_batch) % X.shape[0]
    rows = rep.shard(idx)
    m.train_step(X[rows], y[rows], opt)  # warm: buffers, binding
    rep.comm_seconds = 0.0
    rep.comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_step(X[rows], y[rows], opt)
    dt = (time.perf_counter() - t0) / steps
    return dt, rep.comm_seconds / steps, m.layout.size if hasattr(m.layout, "size") else sum(
        v.size for v in m.params.values())


def bandwidth(rep, n, repeat=20):
    """Bus bandwidth of a sum of n float32 (bytes moved by a ring: 2(N-1)/N * size per rank)."""
    from mpi4py import MPI

    buf = np.ones(n, np.float32)
    out = np.empty_like(buf)
    rep.comm.Allreduce(buf, out)
    t0 = time.perf_counter()
    for _ in range(repeat):
        rep.comm.Allreduce(buf, out, op=MPI.SUM)
    raw = (time.perf_counter() - t0) / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        rep.allreduce_inplace(buf)
    ours = (time.perf_counter() - t0) / repeat
    factor = 2 * (rep.size - 1) / rep.size if rep.size > 1 else 1
    return {"bytes": 4 * n, "mpi_s": raw, "bngraph_s": ours, "mpi_GBps": factor * 4 * n / raw / 1e9,
            "bngraph_GBps": factor * 4 * n / ours / 1e9}


def main():
    rep = bg.distributed.init("mpi")
    out = {"ranks": rep.size}
    for key, gb in (("global_256", 256), ("per_rank_256", 256 * rep.size)):
        dt, comm, n = step_time(gb, rep)
        out[key] = {"step_ms": 1e3 * dt, "comm_ms": 1e3 * comm, "comm_share": comm / dt, "params": int(n)}
    out["allreduce"] = bandwidth(rep, out["global_256"]["params"])
    out["allreduce_64MiB"] = bandwidth(rep, 16 << 20, repeat=5)
    if rep.is_root:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
