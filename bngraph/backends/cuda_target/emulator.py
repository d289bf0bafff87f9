"""Run the CUDA target's generated code on the CPU: the emulator runtime (``device="emulator"``).

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
import types

import numpy as np

from ...ir import IRError
from ..base import Executable, Rendered, Runtime
from ..numpy_target.runtime import NumpyRuntime
from .optimizers import make_kernel
from .step import GuardedStep

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


class EmulatorRuntime(NumpyRuntime):
    """The CUDA target's code, on the host: NumPy arrays (the NumPy runtime's), kernels compiled by
    the C++ compiler."""

    target = "cuda"

    def __init__(self):
        Runtime.__init__(self, "emulator")
        self._recording = None  # a list while capturing a graph

    def capture(self, fn):
        """Like a CUDA graph: record the launches and matrix products ``fn`` makes (nothing runs),
        with their arguments as they are now; ``replay`` runs exactly those again."""
        self._recording = []
        try:
            fn()
        finally:
            graph, self._recording = self._recording, None
        return graph

    def replay(self, graph):
        for fn, args in graph:
            fn(*args)

    def load(self, rendered: Rendered) -> Executable:
        (cu,) = [s for k, s in rendered.sources.items() if k.endswith(".cu")]
        (py_name, py) = next((k, s) for k, s in rendered.sources.items() if k.endswith(".py"))
        lib = compile_kernels(cu)

        def launch(name, grid, block, *args):
            call = (getattr(lib, name), [_c_arg(a) for a in args])  # pointers and scalars fixed now
            if self._recording is not None:
                self._recording.append(call)
            else:
                call[0](*call[1])

        def record_gemm(*args):
            if self._recording is not None:
                self._recording.append((gemm, args))
                return args[-1]
            return gemm(*args)

        module = types.ModuleType(f"bngraph_generated_{rendered.graph_name}_cuda")
        module.__file__ = f"<bngraph:{py_name}>"
        exec(compile(py, module.__file__, "exec"), module.__dict__)
        module.launch, module.gemm = launch, record_gemm
        exe = Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans})
        exe.module, exe.launch = module, launch
        exe.optimizer_kernel = lambda opt: make_kernel(launch, self, opt)
        exe.guarded_step = GuardedStep.make
        return exe

    def asarray(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype)  # kernels take raw pointers: C order
