"""What the tests of the CUDA execution model share (tests/test_cuda_model*.py, and the sanitized
runs of tests/cuda_model_scenarios.py): the comparison of every program with the NumPy target,
and the planted GPU-only bugs.

A planted bug is a pattern of the rendered ``.cu`` text and its replacement. The pattern must be
there (else the template changed and the mutation must be written again: the test says so, it does
not pass quietly), and the model must then catch the bug by what the kernels do: wrong numbers, an
element nobody wrote, a write past an array, a barrier some threads never reach, a sanitizer report.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np

import bngraph as bg
from bngraph.backends.cuda_target.renderer import CudaRenderer
from bngraph.backends.cuda_target.threads import ExecutionModel
from test_cuda_target import _compare_float32, _feeds as feeds_for  # (X and y for a model: one place)

PROGRAMS = ("train_step", "forward", "forward_train", "evaluate")


def model_device(**kw) -> ExecutionModel:
    """The execution model with a fixed seed unless one is given (a failure names its seed)."""
    kw.setdefault("seed", 17)
    return ExecutionModel(**kw)




def unshare(model):
    """Each batch-sized buffer an array of its own: an element a kernel forgets stays poisoned (NaN)
    instead of keeping an earlier value's numbers (tests/test_buffer_sharing.py checks the sharing)."""
    for plan in model.executable.plans.values():
        plan.slots = {k: i for i, (k, _) in enumerate(plan.buffers)}


def compare_programs(g, device, sizes, dtype="float64", passes=None, programs=PROGRAMS, seed=1, data_seed=0):
    """Every program of ``g`` at each batch size on ``device`` against the NumPy target: float64 to
    1e-12 of each output's scale (float rounding), float32 within the error bound of
    tests/roundoff.py (every program; a chosen few: 1e-4 of the scale). Raises on a
    difference, a NaN (an element not written) or a fault. Returns the device model."""
    ref = bg.compile(g, dtype=dtype, passes=passes, seed=seed)
    dev = bg.compile(g, target="cuda", device=device, dtype=dtype, passes=passes, seed=seed)
    unshare(dev)
    if dtype == "float32" and programs is PROGRAMS:  # within the error bound of tests/roundoff.py
        _compare_float32(ref, dev, sizes=sizes, seed=data_seed)
        return dev
    rtol, atol = (1e-12, 1e-12) if dtype == "float64" else (1e-4, 1e-5)
    rng = np.random.default_rng(data_seed)
    for m in sizes:
        X, y = feeds_for(ref, rng, m)
        for program in programs:
            with_y = program in ("train_step", "evaluate")
            want = ref._run(program, ref._feeds(X, y if with_y else None), m)
            got = dev._run(program, dev._feeds(X, y if with_y else None), m)
            assert set(want) == set(got), program
            for k in want:
                a = np.asarray(dev.runtime.to_numpy(got[k]))
                assert np.all(np.isfinite(a)), f"{program} {k} m={m}: an element was not written (NaN)"
                scale = max(1.0, float(np.abs(want[k]).max()))
                np.testing.assert_allclose(a, want[k], rtol=rtol, atol=atol * scale, err_msg=f"{program} {k} m={m}")
    return dev


# ---- the planted bugs ---------------------------------------------------------------------------------
# name -> (what it is, the pattern in the rendered .cu, its replacement)

MUTATIONS = {
    # block_sum stops one step early: thread 0 never adds thread 1's partial sum
    "short_reduction": ("block_sum stops its reduction one step early",
                        r"for \(int s = blockDim\.x / 2; s > 0; s >>= 1\)",
                        "for (int s = blockDim.x / 2; s > 1; s >>= 1)"),
    # the element index of the elementwise kernels forgets blockDim.x: the blocks' threads overlap
    "overlapping_threads": ("the element index forgets blockDim.x (threads of different blocks overlap)",
                            r"i = \(long long\)blockIdx\.x \* blockDim\.x \+ threadIdx\.x;",
                            "i = (long long)blockIdx.x + threadIdx.x;"),
    # the barrier inside block_sum's loop is gone: a thread reads a partial sum another is still making
    "missing_barrier": ("block_sum's loop lost its __syncthreads",
                        r"(if \(threadIdx\.x < s\) red\[threadIdx\.x\] \+= red\[threadIdx\.x \+ s\];)\s*__syncthreads\(\);",
                        r"\1"),
    # the elementwise kernels' tail: i <= n, one element past the end
    "tail_off_by_one": ("the elementwise loop runs to i <= n", r"i < n; i \+= \(long long\)gridDim\.x \* blockDim\.x",
                        "i <= n; i += (long long)gridDim.x * blockDim.x"),
    # idle threads leave the batch-norm kernel early, before the block's reductions
    "early_exit": ("batch norm's idle threads return before block_sum's barriers",
                   r"(extern \"C\" __global__ void (?:__launch_bounds__\([^)]*\) )?\w+__\w+\([^)]*gamma[^)]*var_out[^)]*\) \{)",
                   r"\1\n    if ((int)threadIdx.x >= m) return;"),
}


def plant(source: str, name: str) -> str:
    """``source`` with mutation ``name``; AssertionError when its pattern is not in the text."""
    _, pattern, replacement = MUTATIONS[name]
    planted, count = re.subn(pattern, replacement, source)
    assert count > 0, (f"mutation {name}: the pattern {pattern!r} is not in the rendered .cu any more; the template "
                       f"changed, so write the mutation again for the new text")
    return planted


@contextlib.contextmanager
def planted(name: str):
    """Models compiled inside get mutation ``name`` in their ``.cu`` text."""
    original = CudaRenderer.render

    def render(self, *args, **kw):
        rendered = original(self, *args, **kw)
        for key, text in rendered.sources.items():
            if key.endswith(".cu"):
                rendered.sources[key] = plant(text, name)
        return rendered

    CudaRenderer.render = render
    try:
        yield
    finally:
        CudaRenderer.render = original
