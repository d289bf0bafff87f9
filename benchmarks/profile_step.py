"""Where the time of one training step goes, on the CPU (NumPy target).

    OPENBLAS_NUM_THREADS=2 OPENBLAS_THREAD_TIMEOUT=20 python benchmarks/profile_step.py \
        [--configs small,big-b64,big-b256,big-b1024] [--optimizer adam|momentum] [--rounds N]

(OPENBLAS_THREAD_TIMEOUT as ``python -m benchmarks`` sets it: it lets bngraph's host-thread lanes
run; see bngraph/hostthreads.py.)

For each config it times, as medians over many rounds (the parts interleaved in every round, so
machine noise hits them alike): the whole ``model.train_step``; the generated ``train_step``
program alone; the optimizer update alone (the built-ins' whole-buffer ``step_flat``, or the
per-parameter reference ``step`` with ``--reference``); the two finite checks (gradients before
the update, params after it). "rest" is the step minus those parts: data checks, the transposed
copy of the batch, Python. This is a profile, not the benchmark against PyTorch (issue 9).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import bngraph as bg

BIG = [784, 1024, 1024, 1024, 10]
CONFIGS = {"small": ([64, 128, 128, 10], 32), "big-b64": (BIG, 64), "big-b256": (BIG, 256), "big-b1024": (BIG, 1024)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def profile(widths, m, make_opt, rounds, reference=False):
    model = bg.compile(bg.mlp(widths))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], m)
    opt = make_opt()
    for _ in range(5):
        model.train_step(X, y, opt)
    feeds = model._feeds(model._check_x(X, "profile"), model._check_y(y, m, "profile"))
    P, G = model._P, model._G
    parts = {
        "step": lambda: model.train_step(X, y, opt),
        "program": lambda: model._run("train_step", feeds, m),
        "optimizer": (lambda: opt.step(P.views, G.views)) if reference else (lambda: opt.step_flat(P, G)),
        "finite checks": lambda: (model._first_nonfinite(G), model._first_nonfinite(P)),
    }
    times = {k: [] for k in parts}
    for r in range(rounds):
        order = list(parts)[r % len(parts):] + list(parts)[:r % len(parts)]  # rotate the order
        for k in order:
            times[k].append(timed(parts[k]))
    med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
    med["rest"] = med["step"] - med["program"] - med["optimizer"] - med["finite checks"]
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", default="adam", choices=("adam", "momentum"))
    ap.add_argument("--rounds", type=int, default=0, help="rounds per config (default: 400 small, 40 big)")
    ap.add_argument("--reference", action="store_true", help="time the per-parameter reference update instead")
    ap.add_argument("--configs", default="small,big-b256", help=f"comma-separated, of {', '.join(CONFIGS)}")
    args = ap.parse_args(argv)
    make_opt = (lambda: bg.optim.Adam(lr=1e-4)) if args.optimizer == "adam" else \
        (lambda: bg.optim.SGD(lr=1e-3, momentum=0.9))
    for name in args.configs.split(","):
        widths, m = CONFIGS[name]
        rounds = args.rounds or (400 if name == "small" else 40)
        med = profile(widths, m, make_opt, rounds, args.reference)
        total = med["step"]
        shares = "; ".join(f"{k} {v:.0f} us ({v / total:.0%})" for k, v in med.items() if k != "step")
        print(f"{'-'.join(map(str, widths))} b{m} {args.optimizer}: step {total:.0f} us; {shares}")


if __name__ == "__main__":
    main()
