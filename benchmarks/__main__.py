"""bngraph against PyTorch on the CPU: training step, inference, peak memory, with floors.

    python -m benchmarks [--threads 2] [--json PATH] [--plot PATH.png] [--quick] [--no-compile] ...

From the repository root, ``python -m benchmarks``; from any folder, ``python path/to/benchmarks``
(this folder run as a script: it puts the repository root on the import path; the files it writes
are relative to the folder it runs in). The thread budget is set
here, before NumPy or PyTorch is imported: OPENBLAS/OMP/MKL_NUM_THREADS and torch.set_num_threads
get the same number for both sides, and the BLAS threads' spin-wait is limited
(OPENBLAS_THREAD_TIMEOUT), so that threads idling in one library do not take the cores of the
other between interleaved blocks. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for BLAS, OpenMP and torch (both sides)")
    ap.add_argument("--json", metavar="PATH", help="write every record (times of every kept round) here")
    ap.add_argument("--plot", metavar="PATH.png", help="time against batch and width (needs matplotlib: the "
                                                       "'plot' extra)")
    ap.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown here")
    ap.add_argument("--quick", action="store_true", help="one tiny config, a few rounds: checks that it runs")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    ap.add_argument("--no-sweeps", dest="sweeps", action="store_false", help="only the main configs")
    ap.add_argument("--no-train", dest="train", action="store_false", help="skip the MLP training rows")
    ap.add_argument("--no-inference", dest="inference", action="store_false")
    ap.add_argument("--no-cnn", dest="cnn", action="store_false", help="skip the CNN rows (benchmarks/cnn.py)")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--no-c", dest="c", action="store_false", help="skip the c target's side (it runs where a C++ "
                                                                  "compiler is found)")
    ap.add_argument("--rounds", type=int, default=0, help="undisturbed rounds per row (default: 15, 10 or 7 "
                                                          "by the row's cost)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls of each side before the rounds")
    ap.add_argument("--warmup-seconds", type=float, default=0.5,
                    help="... or as many untimed calls as fill this long, if that is more")
    ap.add_argument("--block", type=float, default=0.03, help="seconds of back-to-back calls per side per round")
    ap.add_argument("--gap", type=float, default=0.005, help="pause before each block, so the other side's "
                                                            "threads are asleep")
    ap.add_argument("--threshold", type=float, default=0.03,
                    help="drop a round when other processes and steal used more than this share of its CPU "
                         "capacity (/proc/stat)")
    ap.add_argument("--max-rounds-factor", type=int, default=6,
                    help="give up on a row after this many times its rounds (kept + dropped)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop a row's timing after this long")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                    help="before each row, wait up to S seconds for half a second without other processes")
    ap.add_argument("--blas-timeout", type=int, default=20,
                    help="OPENBLAS_THREAD_TIMEOUT: BLAS threads spin 2**N cycles before sleeping (OpenBLAS: "
                         "4..30, default 28)")
    ap.add_argument("-v", "--verbose", action="store_true", help="say which rounds were dropped and why")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = args.rounds or 3
        args.compile = False
        args.sweeps = False
        args.warmup = min(args.warmup, 2)
        args.warmup_seconds = 0.0
        args.wait_quiet = min(args.wait_quiet, 2.0)
    return args


def thread_env(args) -> dict:
    n = str(args.threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_THREAD_TIMEOUT": str(args.blas_timeout)}


def main(argv=None):
    args = parse(argv)
    env = thread_env(args)
    if "numpy" in sys.modules or "torch" in sys.modules:
        print("warning: NumPy or torch was imported before the thread budget was set", file=sys.stderr)
    os.environ.update(env)  # before NumPy and torch load their thread pools; memory children inherit it

    from . import suite

    print(f"bngraph vs PyTorch, {args.threads} threads each ({', '.join(f'{k}={v}' for k, v in env.items())})")
    report = suite.run(args, env)
    print()
    print(suite.markdown(report))
    if args.json:
        suite.write_json(report, args.json)
        print(f"\nwrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(suite.markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        from .plot import plot

        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _as_package():
    """``python path/to/benchmarks`` or ``python path/to/benchmarks/__main__.py``, from any folder:
    this file ran as a script, outside its package, so its relative imports would fail. Import it
    again as ``benchmarks.__main__`` with the repository root first on the path (in place of this
    folder, whose module names are the package's) and return that module's ``main``."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path.insert(0, os.path.dirname(here))
    from benchmarks.__main__ import main as package_main

    return package_main


if __name__ == "__main__":
    sys.exit((main if __package__ else _as_package())())
