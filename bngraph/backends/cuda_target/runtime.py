"""The CUDA runtime: the generated kernels compiled with NVRTC (``cupy.RawModule``), matrix
products through cuBLAS, one stream, no host synchronisation inside a step.

CuPy is imported here and nowhere else (lazily, when a model asks for ``target="cuda"``): the
renderer never needs it. cuBLAS is called directly through ctypes with the handle's stream and a
workspace set once, before anything could be captured in a CUDA graph: CuPy's own ``matmul``
refuses to run during stream capture (cupy/cupy#6290), the direct calls were measured to capture
and replay bit for bit (../shared/NOTES.md, CUDA section).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import types

import numpy as np

from ...ir import IRError
from ..base import Executable, Rendered, Runtime
from .optimizers import make_kernel
from .step import GuardedStep

_MODULES: dict = {}  # source hash -> cupy.RawModule (NVRTC compiles once per source; CuPy also caches on disk)


def import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise IRError(f"the cuda target needs CuPy and an NVIDIA GPU: install the extra with "
                      f"pip install 'bngraph[cuda]' ({e}); bg.emit(g, target='cuda') shows the code without "
                      f"them, and device='emulator' runs it on the CPU") from None
    return cupy


class CudaRuntime(Runtime):
    target = "cuda"

    def __init__(self, device=None):
        cp = import_cupy()
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, no device
            raise IRError(f"the cuda target found no usable NVIDIA GPU: {e}") from None
        index = 0 if device is None else device
        if not isinstance(index, int) or not 0 <= index < count:
            raise IRError(f"cuda device {device!r} does not exist: {count} GPU(s) found (devices 0..{count - 1}), "
                          f"or device='emulator' for the CPU emulator")
        super().__init__(index)
        self.cp = self.xp = cp
        cp.cuda.Device(index).use()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.stream.use()  # every CuPy operation of this thread (copies, optimizers) goes on this stream
        self.blas = Cublas(cp, self.stream)

    def load(self, rendered: Rendered) -> Executable:
        (cu,) = [s for k, s in rendered.sources.items() if k.endswith(".cu")]
        (py_name, py) = next((k, s) for k, s in rendered.sources.items() if k.endswith(".py"))
        key = hashlib.sha256(cu.encode()).hexdigest()
        raw = _MODULES.get(key)
        if raw is None:
            raw = _MODULES[key] = self.cp.RawModule(code=cu, options=("--std=c++14",))
        kernels: dict = {}

        def launch(name, grid, block, *args):
            k = kernels.get(name)
            if k is None:
                k = kernels[name] = raw.get_function(name)
            k(grid, block, args)

        module = types.ModuleType(f"bngraph_generated_{rendered.graph_name}_cuda")
        module.__file__ = f"<bngraph:{py_name}>"
        exec(compile(py, module.__file__, "exec"), module.__dict__)
        module.launch, module.gemm = launch, self.blas.gemm
        exe = Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans})
        exe.module, exe.raw_module, exe.launch = module, raw, launch
        exe.optimizer_kernel = lambda opt: make_kernel(launch, self, opt)
        exe.guarded_step = GuardedStep.make
        return exe

    def asarray(self, a, dtype):
        return self.cp.asarray(np.ascontiguousarray(a, dtype=dtype))

    def to_numpy(self, a):
        out = a.get(stream=self.stream)
        self.stream.synchronize()
        return out

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype=dtype)

    def write(self, dst, host) -> None:
        """An asynchronous copy on this runtime's stream: from pageable memory the driver stages the
        bytes before returning, so ``host`` may be reused at once, and nothing waits for the GPU."""
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype), stream=self.stream)

    def pointer(self, a) -> int:
        return a.data.ptr

    def zeros(self, shape, dtype):
        return self.cp.zeros(shape, dtype=dtype)

    def all_finite(self, a) -> bool:
        return bool(self.to_numpy(self.cp.isfinite(self.cp.sum(a))))

    def synchronize(self):
        self.stream.synchronize()

    def capture(self, fn):
        """A CUDA graph of what ``fn`` launches on this runtime's stream (nothing runs yet)."""
        self.stream.begin_capture()
        try:
            fn()
        finally:
            graph = self.stream.end_capture()  # always end: a failed capture must not leave the stream capturing
        return graph

    def replay(self, graph):
        graph.launch(stream=self.stream)


# ---- cuBLAS through ctypes ------------------------------------------------------------------------

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


def _load_cublas():
    names = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    roots = [os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    try:
        import cupy

        roots.append(cupy.cuda.get_cuda_path() or "")
    except Exception:  # noqa: BLE001 (any failure only means one place fewer to look)
        pass
    import site

    roots += [os.path.join(p, "nvidia") for p in site.getsitepackages()]
    for root in filter(None, roots):
        for path in sorted(glob.glob(os.path.join(root, "**", "libcublas.so*"), recursive=True), reverse=True):
            try:
                return ctypes.CDLL(path)
            except OSError:
                pass
    raise IRError("the cuda target could not load cuBLAS (libcublas.so.13): is the CUDA toolkit installed?")


class Cublas:
    """A cuBLAS handle bound to one stream, with its workspace set before any capture."""

    WORKSPACE = 32 << 20

    def __init__(self, cp, stream):
        self.lib = _load_cublas()
        self.handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", self.lib.cublasCreate_v2(ctypes.byref(self.handle)))
        self._check("cublasSetStream_v2", self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)))
        self.workspace = cp.empty(self.WORKSPACE, dtype=cp.uint8)
        self._check("cublasSetWorkspace_v2", self.lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(self.WORKSPACE)))
        self._check("cublasSetMathMode", self.lib.cublasSetMathMode(self.handle, 0))  # CUBLAS_DEFAULT_MATH: no TF32
        self.one = {np.dtype("float32"): ctypes.c_float(1.0), np.dtype("float64"): ctypes.c_double(1.0)}
        self.zero = {np.dtype("float32"): ctypes.c_float(0.0), np.dtype("float64"): ctypes.c_double(0.0)}

    @staticmethod
    def _check(what, status):
        if status != 0:
            raise RuntimeError(f"cuBLAS {what} failed with status {status}")

    def gemm(self, ta, tb, M, N, K, A, B, C):
        """Row-major ``C (M, N) = op(A) @ op(B)``: column-major ``C^T = op(B)^T op(A)^T``, so B goes
        first, m and n swap, and the leading dimensions are the row lengths; transposes are flags."""
        dt = C.dtype
        fn = self.lib.cublasSgemm_v2 if dt == np.float32 else self.lib.cublasDgemm_v2
        status = fn(self.handle, CUBLAS_OP_T if tb else CUBLAS_OP_N, CUBLAS_OP_T if ta else CUBLAS_OP_N,
                    ctypes.c_int(N), ctypes.c_int(M), ctypes.c_int(K), ctypes.byref(self.one[dt]),
                    ctypes.c_void_p(B.data.ptr), ctypes.c_int(B.shape[1]),
                    ctypes.c_void_p(A.data.ptr), ctypes.c_int(A.shape[1]),
                    ctypes.byref(self.zero[dt]), ctypes.c_void_p(C.data.ptr), ctypes.c_int(N))
        self._check("gemm", status)
        return C
