"""Run the CUDA target's generated code on the CPU: the emulator (``device="emulator"``) is the
CUDA target's runtime (:class:`~.runtime.CudaRuntime`) built from host parts: the host's C++
compiler (:class:`HostCompiler`), NumPy memory (:class:`~bngraph.backends.device.HostMemory`, C
order) and a launcher that calls the compiled kernels through ctypes (:class:`HostLauncher`).

The ``.cu`` file is compiled as C++ by the host compiler (``g++``, or ``$CXX``) with a small
prelude that turns the CUDA keywords into plain C++ and fixes every launch at one block of one
thread: every generated kernel loops grid-stride, so that one thread computes exactly what a real
grid computes, in a fixed order. Matrix products (cuBLAS on a GPU) are NumPy's; arrays are NumPy
arrays. The generated host driver runs unchanged. It is slow and single-threaded, and it cannot
find races or block-size bugs; it exists so that the kernels' arithmetic, indexing and the whole
driver are tested on machines without a GPU (tests/test_cuda_target.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from ...ir import IRError
from ..device import Compiler, HostMemory, Launcher
from .runtime import CudaRuntime

PRELUDE = r"""
#include <cmath>
using std::exp; using std::log; using std::log1p; using std::sqrt; using std::tanh; using std::fabs; using std::fmax;
struct bngraph_dim3 { unsigned x, y, z; };
static const bngraph_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
static inline void __syncthreads() {}
using std::isfinite;
// one thread: the atomics are plain reads and writes
static inline unsigned long long atomicOr(unsigned long long* a, unsigned long long v) { unsigned long long o = *a; *a = o | v; return o; }
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) { unsigned long long o = *a; if (o == c) *a = v; return o; }
static inline long long atomicMin(long long* a, long long v) { long long o = *a; if (v < o) *a = v; return o; }
"""

_LIBS: dict = {}  # source hash -> loaded library (one compile per source per process)


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise IRError("the CUDA emulator compiles the kernels with a C++ compiler: none found (install g++ or "
                      "set CXX)")
    return cxx


def compile_kernels(cu_source: str):
    """The ``.cu`` source compiled for the CPU and loaded (cached on disk and in memory by hash)."""
    key = hashlib.sha256((PRELUDE + cu_source).encode()).hexdigest()[:24]
    lib = _LIBS.get(key)
    if lib is not None:
        return lib
    folder = os.path.join(tempfile.gettempdir(), f"bngraph-emulator-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{key}.so")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        cmd = [compiler(), "-O1", "-shared", "-fPIC", "-std=c++17", "-x", "c++", "-", "-o", tmp]
        proc = subprocess.run(cmd, input=PRELUDE + cu_source, capture_output=True, text=True)
        if proc.returncode != 0:
            raise IRError(f"the CUDA emulator could not compile the generated kernels:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    lib = _LIBS[key] = ctypes.CDLL(path)
    return lib


def _c_arg(a):
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise IRError("the CUDA emulator got a non-contiguous array for a kernel argument")
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.int32):
        return ctypes.c_int32(int(a))
    if isinstance(a, np.int64):
        return ctypes.c_int64(int(a))
    if isinstance(a, np.float32):
        return ctypes.c_float(float(a))
    if isinstance(a, (np.float64, float)):
        return ctypes.c_double(float(a))
    raise IRError(f"the CUDA emulator cannot pass a {type(a).__name__} to a kernel")


def gemm(ta, tb, M, N, K, A, B, C):
    """Row-major C (M, N) = op(A) @ op(B), as cuBLAS computes it on a GPU."""
    np.matmul(A.T if ta else A, B.T if tb else B, out=C)
    return C


def emulator_runtime() -> CudaRuntime:
    """The CUDA target on the CPU: the host's C++ compiler, NumPy memory (C order: kernels take raw
    pointers), kernels called through ctypes and NumPy's matrix products."""
    return CudaRuntime("emulator", HostCompiler(), HostMemory(contiguous=True), HostLauncher())


class HostCompiler(Compiler):
    """The .cu text compiled as C++ for the CPU by ``g++`` (or ``$CXX``), with :data:`PRELUDE`."""

    def compile(self, source: str):
        return compile_kernels(source)


class HostLauncher(Launcher):
    """Calls the compiled kernels through ctypes, one thread; like a CUDA graph, ``capture``
    records the launches and matrix products ``fn`` makes (nothing runs), with their arguments as
    they are now, and ``replay`` runs exactly those again."""

    captures = True

    def __init__(self):
        self._recording = None  # a list while capturing

    def bind(self, binary):
        def launch(name, grid, block, *args):
            call = (getattr(binary, name), [_c_arg(a) for a in args])  # pointers and scalars fixed now
            if self._recording is not None:
                self._recording.append(call)
            else:
                call[0](*call[1])

        return launch

    def gemm(self, *args):
        if self._recording is not None:
            self._recording.append((gemm, args))
            return args[-1]
        return gemm(*args)

    def capture(self, fn):
        self._recording = []
        try:
            fn()
        finally:
            graph, self._recording = self._recording, None
        return graph

    def replay(self, graph) -> None:
        for fn, args in graph:
            fn(*args)
