"""The CUDA target's runtime: one class, two sets of parts (:mod:`bngraph.backends.device`).

:class:`CudaRuntime` loads what the cuda renderer wrote, the same way whatever it runs on: the
``.cu`` file through its compiler, the kernels bound by its launcher, the host driver (``.py``) run
with that ``launch`` and the launcher's ``gemm``. It brings the target's own abilities: the fused
optimizer kernels (:mod:`.optimizers`) and the guarded training step (:mod:`.step`).

:func:`gpu_runtime` builds it for an NVIDIA GPU: the kernels compiled with NVRTC
(``cupy.RawModule``), CuPy memory, matrix products through cuBLAS, one stream, no host
synchronisation inside a step, capture into CUDA graphs. ``emulator.py`` builds it for the CPU.

CuPy is imported here and nowhere else (lazily, when a model asks for ``target="cuda"`` on a GPU):
the renderer never needs it. cuBLAS is called directly through ctypes with the handle's stream and a
workspace set once, before anything could be captured in a CUDA graph: CuPy's own ``matmul``
refuses to run during stream capture (cupy/cupy#6290), the direct calls were measured to capture
and replay bit for bit (../shared/NOTES.md, CUDA section).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import re
import weakref

import numpy as np

from ...ir import IRError
from ..base import Executable, Rendered, exec_source
from ..device import Allocator, Compiler, Launcher, PartsRuntime
from .optimizers import make_kernel, module_source
from .step import GuardedStep


class CudaRuntime(PartsRuntime):
    """The CUDA target on ``device``: ``compiler`` (the .cu text -> a binary), ``memory`` (the
    arrays) and ``launcher`` (kernels and matrix products, capture and replay)."""

    target = "cuda"

    def __init__(self, device, compiler: Compiler, memory: Allocator, launcher: Launcher):
        super().__init__(device, memory, compiler, launcher)

    @property
    def cp(self):
        """The CuPy module, on a GPU (the emulator's memory is NumPy's: there is none)."""
        return self.memory.cp

    def load(self, rendered: Rendered) -> Executable:
        (cu,) = [s for k, s in rendered.sources.items() if k.endswith(".cu")]
        (py_name, py) = next((k, s) for k, s in rendered.sources.items() if k.endswith(".py"))
        launch = self.launcher.bind(self.compiler.compile(cu))
        module = exec_source(py_name, py, f"bngraph_generated_{rendered.graph_name}_cuda")
        module.launch, module.gemm = launch, self.launcher.gemm
        # the partial sums of the reductions over several blocks: this model's own (its launches run
        # in turn on its stream), at a fixed address (a captured graph keeps it)
        module.scratch = self.zeros((module.SCRATCH,), np.float64)
        return Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans},
                          module=module, launch=launch)

    def optimizer_source(self, record, dtype) -> str:
        """The module of ``record``'s kernel in ``dtype`` that this runtime compiles (the c target
        renders its own, :mod:`bngraph.backends.c_target.optimizers`)."""
        return module_source(record, dtype)

    def optimizer_kernel(self, executable: Executable, optimizer):
        """One launch per stretch of the flat buffer for a built-in optimizer (None otherwise)."""
        return make_kernel(self, optimizer)

    def guarded_step(self, context, optimizer, graphs: bool = False):
        """The step checked on the device (:class:`~.step.GuardedStep`) for a built-in optimizer."""
        return GuardedStep.make(context, optimizer, graphs)


# ---- the GPU's parts: NVRTC, CuPy memory on one stream, kernels and cuBLAS on that stream --------

def import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise IRError(f"the cuda target needs CuPy and an NVIDIA GPU: install the extra with "
                      f"pip install 'cupy-cuda13x[ctk]' (in a checkout of bngraph: pip install '.[cuda]') ({e}); "
                      f"bg.emit(g, target='cuda') shows the code without "
                      f"them, and device='emulator' runs it on the CPU") from None
    return cupy


def gpu_runtime(device=None) -> CudaRuntime:
    """The CUDA target on GPU ``device`` (an index; None: 0), through CuPy."""
    cp = import_cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device
        raise IRError(f"the cuda target found no usable NVIDIA GPU: {e}") from None
    index = 0 if device is None else device
    if not isinstance(index, int) or not 0 <= index < count:
        raise IRError(f"cuda device {device!r} does not exist: {count} GPU(s) found (devices 0..{count - 1}), "
                      f"or device='emulator' for the CPU emulator")
    cp.cuda.Device(index).use()
    # the model's own stream, named by every operation (never made the thread's current stream: a
    # second model, or another thread, would then send this one's work elsewhere)
    stream = cp.cuda.Stream(non_blocking=True)
    return CudaRuntime(index, NvrtcCompiler(cp), CupyMemory(cp, stream), GpuLauncher(stream, Cublas(cp, stream)))


_MODULES: dict = {}  # source hash -> cupy.RawModule (NVRTC compiles once per source; CuPy also caches on disk)

# The GPU build's numerics, stated rather than left to defaults: a*b+c contracted into FMA (NVRTC's
# default, kept for speed), float32 denormals flushed to zero (CuPy appends -ftz=true after the
# caller's options to every compile, cupy/cuda/compiler.py, so it cannot be turned off here),
# IEEE round-to-nearest division and square root. device="emulator-gpu-math" compiles the same way
# (emulator.MODES); device="emulator" is IEEE. docs/cuda.md#numerics says what holds where.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=true", "--ftz=true", "--prec-div=true", "--prec-sqrt=true")


class NvrtcCompiler(Compiler):
    """The .cu text compiled by NVRTC (``cupy.RawModule``), once per text."""

    def __init__(self, cp):
        self.cp = cp

    def compile(self, source: str):
        key = hashlib.sha256(source.encode()).hexdigest()
        raw = _MODULES.get(key)
        if raw is None:
            raw = _MODULES[key] = self.cp.RawModule(code=source, options=NVRTC_OPTIONS)
        return raw


class CupyMemory(Allocator):
    """CuPy arrays on one GPU, every operation that enqueues work on ``stream`` (the model's, named
    each time: never the thread's current stream); copies to the host wait for it, to the device not."""

    def __init__(self, cp, stream):
        self.cp = self.xp = cp
        self.stream = stream

    def queue(self):
        return self.stream  # ``with stream:`` makes it the current stream for the block, then restores

    def asarray(self, a, dtype):
        with self.stream:
            return self.cp.asarray(np.ascontiguousarray(a, dtype=dtype))

    def empty(self, shape, dtype):
        with self.stream:  # CuPy's memory pool keeps each stream's blocks apart
            return self.cp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        with self.stream:
            return self.cp.zeros(shape, dtype=dtype)

    def to_numpy(self, a):
        out = a.get(stream=self.stream)
        self.stream.synchronize()
        return out

    def all_finite(self, a) -> bool:
        with self.stream:
            return super().all_finite(a)

    def write(self, dst, host) -> None:
        """An asynchronous copy on the stream: from pageable memory the driver stages the bytes
        before returning, so ``host`` may be reused at once, and nothing waits for the GPU."""
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype), stream=self.stream)

    def pointer(self, a) -> int:
        return a.data.ptr

    def synchronize(self) -> None:
        self.stream.synchronize()


class GpuLauncher(Launcher):
    """Kernels (``RawModule`` functions, looked up once each) and cuBLAS on one stream, each launch
    naming it; what they launch is captured into a CUDA graph by capture on that stream."""

    captures = True

    def __init__(self, stream, blas):
        self.stream, self.blas = stream, blas

    def bind(self, binary):
        kernels: dict = {}
        stream = self.stream

        def launch(name, grid, block, *args):
            k = kernels.get(name)
            if k is None:
                k = kernels[name] = binary.get_function(name)
            k(grid, block, args, stream=stream)

        return launch

    def gemm(self, ta, tb, M, N, K, A, B, C):
        return self.blas.gemm(ta, tb, M, N, K, A, B, C)  # the handle is bound to the stream

    def close(self) -> None:
        self.blas.close()

    def capture(self, fn):
        """A CUDA graph of what ``fn`` launches on the stream (nothing runs yet); CuPy work inside
        ``fn`` (a driver's copies) goes on the stream too, so the graph holds it."""
        self.stream.begin_capture()
        try:
            with self.stream:
                fn()
        finally:
            graph = self.stream.end_capture()  # always end: a failed capture must not leave the stream capturing
        return graph

    def replay(self, graph) -> None:
        graph.launch(stream=self.stream)


# ---- cuBLAS through ctypes ------------------------------------------------------------------------

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1

# Every cuBLAS function called here, typed as cublas_api.h (CUDA 13) declares it, so ctypes converts
# and checks each argument instead of guessing (an int where size_t is due, a double for a float*):
# name -> (restype, argtypes). Handles and streams are pointers, enums and cublasStatus_t are C ints,
# device arrays are void*. tests/test_cuda_cublas_api.py checks this table against the real header.
_i, _p, _ll = ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong
_GEMM = (_p, _i, _i, _i, _i, _i)  # handle, transa, transb, m, n, k
CUBLAS_PROTOTYPES = {
    "cublasGetProperty": (_i, (_i, ctypes.POINTER(_i))),                # libraryPropertyType, int*
    "cublasCreate_v2": (_i, (ctypes.POINTER(_p),)),                      # cublasHandle_t*
    "cublasDestroy_v2": (_i, (_p,)),
    "cublasSetStream_v2": (_i, (_p, _p)),                                # handle, cudaStream_t
    "cublasSetWorkspace_v2": (_i, (_p, _p, ctypes.c_size_t)),            # handle, void*, size_t
    "cublasSetMathMode": (_i, (_p, _i)),                                 # handle, cublasMath_t
    "cublasSgemm_v2": (_i, _GEMM + (ctypes.POINTER(ctypes.c_float), _p, _i, _p, _i, ctypes.POINTER(ctypes.c_float),
                                    _p, _i)),  # alpha, A, lda, B, ldb, beta, C, ldc
    "cublasDgemm_v2": (_i, _GEMM + (ctypes.POINTER(ctypes.c_double), _p, _i, _p, _i,
                                    ctypes.POINTER(ctypes.c_double), _p, _i)),
    # grouped convolutions: alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC, batchCount
    "cublasSgemmStridedBatched": (_i, _GEMM + (ctypes.POINTER(ctypes.c_float), _p, _i, _ll, _p, _i, _ll,
                                               ctypes.POINTER(ctypes.c_float), _p, _i, _ll, _i)),
    "cublasDgemmStridedBatched": (_i, _GEMM + (ctypes.POINTER(ctypes.c_double), _p, _i, _ll, _p, _i, _ll,
                                               ctypes.POINTER(ctypes.c_double), _p, _i, _ll, _i)),
}


def _declare(lib):
    """``lib``'s functions typed by :data:`CUBLAS_PROTOTYPES` (those it has; a stand-in library's
    plain methods are left as they are)."""
    for name, (restype, argtypes) in CUBLAS_PROTOTYPES.items():
        fn = getattr(lib, name, None)
        if isinstance(fn, ctypes._CFuncPtr):
            fn.restype, fn.argtypes = restype, argtypes
    return lib


CUDA_MAJOR = 13  # what the ``cuda`` extra installs (cupy-cuda13x[ctk]); used when CuPy cannot say


def cuda_major(cp) -> int:
    """The CUDA major version CuPy was built for (its CUDA runtime: 13000 -> 13)."""
    try:
        return int(cp.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:  # noqa: BLE001 (a CuPy that cannot say: the extra's version)
        return CUDA_MAJOR


def _named_major(path: str):
    m = re.search(r"libcublas\.so\.(\d+)", os.path.basename(path or ""))
    return int(m.group(1)) if m else None


def _lib_major(lib, path: str):
    """The major version of a loaded cuBLAS (``cublasGetProperty(MAJOR_VERSION)``; cuBLAS 13 is
    CUDA 13's), else the one its file name says, else None."""
    try:
        value = ctypes.c_int()
        if lib.cublasGetProperty(0, ctypes.byref(value)) == 0:
            return value.value
    except (AttributeError, OSError, TypeError):
        pass
    return _named_major(path)


def _load_cublas(cp):
    """cuBLAS for the CUDA major version CuPy was built for, never another: through
    ``cuda.pathfinder`` (a CuPy dependency: NVIDIA's wheels, conda, the system) when it imports,
    else by that version's soname, else from the toolkit folders; one clear error otherwise."""
    major = cuda_major(cp)
    found: list[str] = []  # what was found and refused, for the error

    def accept(path, load):
        try:
            lib = _declare(load())
        except OSError:
            return None
        got = _lib_major(lib, path)
        if got == major:
            return lib
        found.append(f"{path} (CUDA {got if got is not None else '?'})")
        return None

    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError:
        load_nvidia_dynamic_lib = None
    if load_nvidia_dynamic_lib is not None:
        try:
            path = load_nvidia_dynamic_lib("cublas").abs_path
        except Exception as e:  # noqa: BLE001 (DynamicLibNotFoundError and kin: look elsewhere)
            found.append(f"cuda.pathfinder: {e}")
        else:
            if path and (lib := accept(path, lambda: ctypes.CDLL(path))) is not None:
                return lib
    for name in (f"libcublas.so.{major}", "libcublas.so"):
        if (lib := accept(name, lambda: ctypes.CDLL(name))) is not None:
            return lib
    roots = [os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    try:
        roots.append(cp.cuda.get_cuda_path() or "")
    except Exception:  # noqa: BLE001 (any failure only means one place fewer to look)
        pass
    import site

    roots += [os.path.join(p, "nvidia") for p in site.getsitepackages()]
    for root in filter(None, roots):
        for path in sorted(glob.glob(os.path.join(root, "**", "libcublas.so.*"), recursive=True), reverse=True):
            if _named_major(path) != major:
                found.append(f"{path} (CUDA {_named_major(path)})")
            elif (lib := accept(path, lambda: ctypes.CDLL(path))) is not None:
                return lib
    raise IRError(f"the cuda target needs cuBLAS for CUDA {major} (libcublas.so.{major}: CuPy was built for "
                  f"CUDA {major}), found {'; '.join(dict.fromkeys(found)) or 'no cuBLAS'}: install it with "
                  f"pip install 'cupy-cuda13x[ctk]' (in a checkout of bngraph: pip install '.[cuda]') or the CUDA {major} "
                  f"toolkit")


def _destroy(lib, handle: int, workspace) -> None:
    """``cublasDestroy_v2(handle)``, once, from :meth:`Cublas.close` or when the Cublas is
    collected; the workspace is freed only after it (the finalizer holds it until then)."""
    try:
        lib.cublasDestroy_v2(ctypes.c_void_p(handle))
    except Exception:  # noqa: BLE001 (a library already unloaded: nothing left to free)
        pass


class Cublas:
    """A cuBLAS handle bound to one stream, with its workspace set before any capture."""

    WORKSPACE = 32 << 20

    def __init__(self, cp, stream):
        self.lib = _load_cublas(cp)
        self.handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", self.lib.cublasCreate_v2(ctypes.byref(self.handle)))
        with stream:
            self.workspace = cp.empty(self.WORKSPACE, dtype=cp.uint8)
        # destroyed by close() or when collected, never at interpreter exit (the process frees it
        # then, and CUDA may already be torn down): atexit=False
        self._finalizer = weakref.finalize(self, _destroy, self.lib, self.handle.value, self.workspace)
        self._finalizer.atexit = False
        self._check("cublasSetStream_v2", self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)))
        self._check("cublasSetWorkspace_v2", self.lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(self.WORKSPACE)))
        self._check("cublasSetMathMode", self.lib.cublasSetMathMode(self.handle, 0))  # CUBLAS_DEFAULT_MATH: no TF32
        self.one = {np.dtype("float32"): ctypes.c_float(1.0), np.dtype("float64"): ctypes.c_double(1.0)}
        self.zero = {np.dtype("float32"): ctypes.c_float(0.0), np.dtype("float64"): ctypes.c_double(0.0)}

    def close(self) -> None:
        """Destroy the handle now (once: a second close, or the collection after it, does nothing)."""
        self._finalizer()
        self.handle = None

    @staticmethod
    def _check(what, status):
        if status != 0:
            raise RuntimeError(f"cuBLAS {what} failed with status {status}")

    def gemm(self, ta, tb, M, N, K, A, B, C):
        """Row-major ``C (M, N) = op(A) @ op(B)``: column-major ``C^T = op(B)^T op(A)^T``, so B goes
        first, m and n swap, and the leading dimensions are the row lengths; transposes are flags."""
        if self.handle is None:
            raise RuntimeError("cuBLAS used after close(): the model's runtime was closed")
        dt = C.dtype
        ops = (self.handle, CUBLAS_OP_T if tb else CUBLAS_OP_N, CUBLAS_OP_T if ta else CUBLAS_OP_N,
               ctypes.c_int(N), ctypes.c_int(M), ctypes.c_int(K), ctypes.byref(self.one[dt]))
        if C.ndim == 3:  # (batch, rows, cols) operands, contiguous: one strided-batched GEMM (a grouped conv)
            fn = self.lib.cublasSgemmStridedBatched if dt == np.float32 else self.lib.cublasDgemmStridedBatched
            stride = lambda a: ctypes.c_longlong(a.shape[1] * a.shape[2])  # noqa: E731
            status = fn(*ops, ctypes.c_void_p(B.data.ptr), ctypes.c_int(B.shape[2]), stride(B),
                        ctypes.c_void_p(A.data.ptr), ctypes.c_int(A.shape[2]), stride(A),
                        ctypes.byref(self.zero[dt]), ctypes.c_void_p(C.data.ptr), ctypes.c_int(N), stride(C),
                        ctypes.c_int(C.shape[0]))
            self._check("strided-batched gemm", status)
            return C
        fn = self.lib.cublasSgemm_v2 if dt == np.float32 else self.lib.cublasDgemm_v2
        status = fn(*ops, ctypes.c_void_p(B.data.ptr), ctypes.c_int(B.shape[1]),
                    ctypes.c_void_p(A.data.ptr), ctypes.c_int(A.shape[1]),
                    ctypes.byref(self.zero[dt]), ctypes.c_void_p(C.data.ptr), ctypes.c_int(N))
        self._check("gemm", status)
        return C
