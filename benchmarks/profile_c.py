"""Where one c-target training step's time goes, against the floor's GEMMs in NumPy and in PyTorch.

    python -m benchmarks.profile_c [--threads 2] [--batch 64 256 1024] [--steps 20]

Each step of ``bg.compile(bg.mlp(widths), target="c")`` with Adam is the replayed guarded step
(docs/c.md): a list of kernel launches and matrix products. This times each call of that list
(summed over the steps, per kernel or ``gemm``), the Python around it (the rest of the step), and
the same matrix products alone in NumPy (the BLAS the c target calls, the floor's) and in PyTorch
(its own BLAS): where the c target's step is above PyTorch's, the table says whether the kernels
or the BLAS account for it (docs/benchmarks.md, the c target's section).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_c", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    n = str(args.threads)
    os.environ.update(OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_THREAD_TIMEOUT="20")
    import numpy as np
    import torch

    import bngraph as bg

    from .floors import gemm_shapes
    from .sides import Config, data
    from .suite import BIG

    torch.set_num_threads(args.threads)
    for m in args.batch:
        model = bg.compile(bg.mlp(list(BIG)), target="c")
        opt = bg.optim.Adam(lr=1e-4)
        X, y = data(Config(BIG, m))
        for _ in range(3):
            model.train_step(X, y, opt)
        calls = model.trainer.guarded.entries[m].graph  # the recorded step: (function, arguments)
        per: dict = {}
        replay = model.runtime.launcher.replay

        def timed(graph):
            for fn, a in graph:
                t = time.perf_counter()
                fn(*a)
                name = getattr(fn, "__name__", "?").replace("launch__", "")
                per[name] = per.get(name, 0.0) + time.perf_counter() - t

        model.runtime.launcher.replay = timed
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model.train_step(X, y, opt)
        step = (time.perf_counter() - t0) / args.steps
        model.runtime.launcher.replay = replay
        gemms = [(torch.from_numpy(np.ones(a, np.float32)), ta, torch.from_numpy(np.ones(b, np.float32)), tb)
                 for a, ta, b, tb in gemm_shapes(BIG, m)]

        def torch_gemms():
            for a, ta, b, tb in gemms:
                (a.T if ta else a) @ (b.T if tb else b)

        for _ in range(3):
            torch_gemms()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            torch_gemms()
        t_torch = (time.perf_counter() - t0) / args.steps
        print(f"784-1024-1024-1024-10 b{m} adam, c target: {step * 1e3:.2f} ms a step ({len(calls)} calls)")
        for name, s in sorted(per.items(), key=lambda kv: -kv[1]):
            if s / args.steps >= 20e-6:
                print(f"  {s / args.steps * 1e3:8.3f} ms  {name}")
        inside = sum(per.values()) / args.steps
        print(f"  {(step - inside) * 1e3:8.3f} ms  the rest (Python: data checks, the step's scalars, the read)")
        print(f"  the same matrix products in PyTorch: {t_torch * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
