"""Host threads for whole-buffer NumPy passes: split a long elementwise pass into a few
contiguous lanes and run them at once (NumPy releases the GIL inside its loops, so the lanes run
on separate cores). Elementwise results do not depend on the split: the numbers are the same.

The number of lanes follows the thread budget the user gave the process (``BNGRAPH_NUM_THREADS``,
else ``OMP_NUM_THREADS``, else ``OPENBLAS_NUM_THREADS``, else the CPUs this process may use), at
most :data:`MAX_LANES`. Short passes stay on one thread: handing work to another thread costs
tens of microseconds (:data:`MIN_LANE`).

Only where the BLAS leaves the cores free: an idle OpenBLAS thread spins 2**28 cycles (~0.1 s)
by default after each matrix product, and a lane started then shares its core with it. On a
2-core machine that made the 784-1024x3-10 step slower with lanes (b64: 25.1 against 21.2 ms)
and faster once the spin was limited (``OPENBLAS_THREAD_TIMEOUT=20``: 18.8 against 22.4 ms).
So by default lanes run only when OpenBLAS has one thread or a timeout of at most
:data:`SHORT_SPIN`; ``BNGRAPH_NUM_THREADS`` asks for them regardless.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Never more lanes than this: elementwise passes are memory-bound, a few cores saturate them.
MAX_LANES = 4

#: The least elements per lane worth a thread (float32: 256 KiB).
MIN_LANE = 1 << 16

#: The longest OpenBLAS spin (OPENBLAS_THREAD_TIMEOUT, 2**N cycles) that leaves room for lanes.
SHORT_SPIN = 22

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def budget() -> int:
    """Threads this process may use for a pass (see the module docstring), at least 1."""
    for var in ("BNGRAPH_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _env_int(*names) -> int | None:
    for var in names:
        v = os.environ.get(var, "").strip()
        if v.isdigit():
            return int(v)
    return None


def blas_leaves_cores_free() -> bool:
    """False when NumPy's BLAS threads may still be spinning on the cores after a matrix product:
    OpenBLAS with several threads and its default (or a long) spin-wait. See the module docstring."""
    if _env_int("BNGRAPH_NUM_THREADS") is not None:
        return True
    if _env_int("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS") == 1:
        return True
    timeout = _env_int("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")
    return timeout is not None and timeout <= SHORT_SPIN


def default_threads() -> int:
    """Lanes a long pass may use by default: the budget where the BLAS leaves the cores free, else 1."""
    return budget() if blas_leaves_cores_free() else 1


def lanes_for(n: int, threads: int | None = None) -> int:
    """How many lanes a pass over ``n`` elements gets (``threads``: default :func:`default_threads`)."""
    if n < 2 * MIN_LANE:
        return 1  # the common small case, without looking at the environment
    threads = default_threads() if threads is None else threads
    return max(1, min(threads, MAX_LANES, n // MIN_LANE))


def split(start: int, stop: int, lanes: int, align: int = 16) -> list:
    """``[(a, b)]``: ``lanes`` contiguous pieces of ``range(start, stop)`` of nearly equal length,
    cut at multiples of ``align`` elements (whole cache lines) where that leaves every piece non-empty."""
    n = stop - start
    cuts = [start + (n * i // lanes) // align * align for i in range(lanes)] + [stop]
    cuts[0] = start
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(workers, thread_name_prefix="bngraph"), workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def run_lanes(fn, lanes: list) -> list:
    """``[fn(lane) for lane in lanes]``, the first lane on this thread and the others at once on
    the pool's threads (under this thread's NumPy error state, which is per thread); an exception
    in any lane is raised here, after every lane has finished."""
    if len(lanes) == 1:
        return [fn(lanes[0])]
    errstate = np.geterr()

    def lane(x):
        with np.errstate(**errstate):
            return fn(x)
    futures = [_executor(len(lanes) - 1).submit(lane, x) for x in lanes[1:]]
    try:
        first = fn(lanes[0])
    finally:
        rest = [f.exception() for f in futures]  # waits for every lane
    for err in rest:
        if err is not None:
            raise err
    return [first] + [f.result() for f in futures]


def rows(fn, *arrays):
    """``fn(*arrays)`` for a node whose units (rows, axis 0 of every array) are independent: a long
    one in lanes of rows at once (the generated NumPy code's ``rows``). Row by row the operations
    are the ones a single call makes, so the numbers are the same."""
    lanes = lanes_for(arrays[0].size)
    if lanes == 1:
        fn(*arrays)
        return
    run_lanes(lambda ab: fn(*(x[ab[0]:ab[1]] for x in arrays)), split(0, arrays[0].shape[0], lanes, align=1))
