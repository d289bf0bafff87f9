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

Two numerics modes (:data:`MODES`): ``device="emulator"`` is IEEE (no FMA contraction, denormals
kept), so its numbers are the NumPy update order's bit for bit; ``device="emulator-gpu-math"``
does what the GPU build does (:data:`~.runtime.NVRTC_OPTIONS`): ``a*b+c`` contracted into FMA
(float and double) and, in float32 modules, denormals flushed to zero (MXCSR FTZ|DAZ, set around
each launch in the launching thread only, restored after). x86 applies FTZ|DAZ to the module's
double accumulators too, which the GPU does not: only values below 2.2e-308 differ.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
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
#ifdef BNGRAPH_FTZ
// emulator-gpu-math: flush float denormals to zero, in results (FTZ, bit 15) and operands (DAZ, bit 6)
#include <xmmintrin.h>
extern "C" unsigned bngraph_ftz_begin() { unsigned old = _mm_getcsr(); _mm_setcsr(old | 0x8040u); return old; }
extern "C" void bngraph_ftz_end(unsigned old) { _mm_setcsr(old); }
#endif
"""

# the emulator's numerics: device name -> the host compiler's flags
MODES = {
    "emulator": ("-ffp-contract=off",),  # IEEE: every operation rounded on its own, denormals kept
    # the GPU build's numerics (runtime.NVRTC_OPTIONS: --fmad=true, --ftz=true): a*b+c fused (the
    # FMA pass runs with -fexpensive-optimizations), float32 denormals flushed (BNGRAPH_FTZ)
    "emulator-gpu-math": ("-ffp-contract=fast", "-mfma", "-fexpensive-optimizations"),
}
_FLOAT32 = re.compile(r"typedef\s+float\s+real\s*;")

_LIBS: dict = {}  # source hash -> loaded library (one compile per source per process)


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise IRError("the CUDA emulator compiles the kernels with a C++ compiler: none found (install g++ or "
                      "set CXX)")
    return cxx


def compile_kernels(cu_source: str, mode: str = "emulator"):
    """The ``.cu`` source compiled for the CPU in numerics ``mode`` (:data:`MODES`) and loaded
    (cached on disk and in memory by hash)."""
    if mode not in MODES:
        raise IRError(f"unknown emulator mode {mode!r}: one of {', '.join(MODES)}")
    flags = list(MODES[mode])
    ftz = mode == "emulator-gpu-math" and bool(_FLOAT32.search(cu_source))
    if mode == "emulator-gpu-math" and platform.machine().lower() not in ("x86_64", "amd64"):
        raise IRError(f"device='emulator-gpu-math' needs an x86-64 CPU (FMA, MXCSR), not {platform.machine()}")
    flags += ["-DBNGRAPH_FTZ"] if ftz else []
    key = hashlib.sha256((PRELUDE + " ".join(flags) + cu_source).encode()).hexdigest()[:24]
    lib = _LIBS.get(key)
    if lib is not None:
        return lib
    folder = os.path.join(tempfile.gettempdir(), f"bngraph-emulator-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{key}.so")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        cmd = [compiler(), "-O1", *flags, "-shared", "-fPIC", "-std=c++17", "-x", "c++", "-", "-o", tmp]
        proc = subprocess.run(cmd, input=PRELUDE + cu_source, capture_output=True, text=True)
        if proc.returncode != 0:
            raise IRError(f"the CUDA emulator could not compile the generated kernels:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    lib = ctypes.CDLL(path)
    lib = _LIBS[key] = FlushToZero(lib) if ftz else lib
    return lib


class FlushToZero:
    """A compiled library whose functions run with float denormals flushed to zero (FTZ|DAZ) in
    the calling thread, which gets its own MXCSR back after each call: nothing else is affected."""

    def __init__(self, lib):
        self._lib = lib
        lib.bngraph_ftz_end.argtypes = [ctypes.c_uint]
        lib.bngraph_ftz_begin.restype = ctypes.c_uint

    def __getattr__(self, name):
        fn, begin, end = getattr(self._lib, name), self._lib.bngraph_ftz_begin, self._lib.bngraph_ftz_end

        def flushed(*args):
            old = begin()
            try:
                return fn(*args)
            finally:
                end(old)

        setattr(self, name, flushed)  # looked up once
        return flushed


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
    """Row-major C (M, N) = op(A) @ op(B), as cuBLAS computes it on a GPU; 3-D operands (batch,
    rows, cols) are one product per batch entry (cuBLAS's strided-batched GEMM: grouped convolutions)."""
    np.matmul(A.swapaxes(-1, -2) if ta else A, B.swapaxes(-1, -2) if tb else B, out=C)
    return C


def emulator_runtime(mode: str = "emulator") -> CudaRuntime:
    """The CUDA target on the CPU: the host's C++ compiler (numerics ``mode``, :data:`MODES`), NumPy
    memory (C order: kernels take raw pointers), kernels called through ctypes and NumPy's matrix
    products."""
    return CudaRuntime(mode, HostCompiler(mode), HostMemory(contiguous=True), HostLauncher())


class HostCompiler(Compiler):
    """The .cu text compiled as C++ for the CPU by ``g++`` (or ``$CXX``), with :data:`PRELUDE`, in
    numerics ``mode`` (:data:`MODES`)."""

    def __init__(self, mode: str = "emulator"):
        if mode not in MODES:
            raise IRError(f"unknown emulator mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode

    def compile(self, source: str):
        return compile_kernels(source, self.mode)


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
