"""The floor of a step: what it cannot be faster than on this machine, measured in the same rounds.

floor = (the step's own GEMMs, timed alone) + (the least elementwise traffic) / (copy bandwidth)

* GEMMs: every matrix product of the step at its shapes, in NumPy (the BLAS bngraph calls, with
  the same threads), into preallocated outputs, with the operands transposed as the generated
  code has them (the first layer reads the batch as ``X.T``, a transposed view). Matmul is compute-bound: that time is its floor.
* Elementwise traffic, float32, the bytes a perfectly fused implementation must still move:
  batch norm + activation forward reads z and writes a (2 n m per hidden layer), its backward
  reads da, a and z and writes dz (4 n m); the loss reads the logits and writes their gradient
  (2 C m); the optimizer reads p, g and its slots and writes p and its slots (Adam 7 P, SGD with
  momentum 5 P). Bandwidth is a copy's (read + write bytes / time) of an array of the same size
  (the parameter buffer for the optimizer's share, one activation for the layers'), with the
  same number of threads, each copying its share.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

F32 = 4
OPTIMIZER_PASSES = {"adam": 7, "momentum": 5}


def gemm_shapes(widths, m, backward=True) -> list:
    """[(a shape, transpose a, b shape, transpose b)] of the step's matmuls, (features, m) layout:
    forward z = W a; backward dW = dz a^T and da = W^T dz (not for the first layer's input)."""
    out = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        out.append(((n_out, n_in), False, (n_in, m), False))
        if backward:
            out.append(((n_out, m), False, (n_in, m), True))
            if i > 0:
                out.append(((n_out, n_in), True, (n_out, m), False))
    return out


def gemm_runner(widths, m, backward=True):
    """A callable that runs the step's GEMMs once (operands and outputs allocated up front)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((m, widths[0])).astype(np.float32)  # the batch, rows are examples:
    jobs = []                                                    # the first layer reads it as X.T
    for a_shape, ta, b_shape, tb in gemm_shapes(widths, m, backward):
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = X.T if b_shape == (widths[0], m) else rng.standard_normal(b_shape).astype(np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)
        jobs.append((a, b, np.empty((a.shape[0], b.shape[1]), np.float32)))

    def run():
        for a, b, out in jobs:
            np.matmul(a, b, out=out)
    return run


def copy_runner(n_elements: int, threads: int, pool: ThreadPoolExecutor | None):
    """A callable that copies an n-element float32 array once, in ``threads`` pieces at once."""
    src = np.ones(n_elements, np.float32)
    dst = np.empty_like(src)
    if threads <= 1 or pool is None or n_elements < 1 << 16:
        return lambda: np.copyto(dst, src)
    cuts = np.linspace(0, n_elements, threads + 1).astype(int)
    pieces = [(dst[a:b], src[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]

    def run():
        futures = [pool.submit(np.copyto, d, s) for d, s in pieces[1:]]
        np.copyto(*pieces[0])  # this thread copies the first piece meanwhile
        for f in futures:
            f.result()
    return run


def n_params(widths) -> int:
    """Parameters of the bngraph model (no bias before a batch norm: it folds away)."""
    hidden = sum(a * b + 2 * b for a, b in zip(widths[:-2], widths[1:-1]))
    return hidden + widths[-2] * widths[-1] + widths[-1]


def train_traffic(widths, m, optimizer) -> dict:
    """Least elementwise bytes of one training step: {'layers': ..., 'optimizer': ...}."""
    hidden = sum(widths[1:-1])
    layers = F32 * (6 * hidden * m + 2 * widths[-1] * m)
    return {"layers": layers, "optimizer": F32 * OPTIMIZER_PASSES[optimizer] * n_params(widths)}


def inference_traffic(widths, m) -> int:
    """Least elementwise bytes of a folded forward: bias + activation read z and write a."""
    return F32 * 2 * sum(widths[1:]) * m


def floor_seconds(gemm_s, traffic: dict, copy_s: dict, sizes: dict) -> float:
    """GEMM time plus each share of traffic at the bandwidth of a copy of its size.
    ``copy_s[k]`` is the time to copy ``sizes[k]`` float32 elements (read + write bytes)."""
    total = gemm_s
    for k, nbytes in traffic.items():
        bandwidth = 2 * F32 * sizes[k] / copy_s[k]
        total += nbytes / bandwidth
    return total
