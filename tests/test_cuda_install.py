"""cuBLAS is loaded for the CUDA version CuPy was built for, and its handle is destroyed (issue 17,
findings 3 and 5).

No GPU needed: ``ctypes.CDLL`` is a stand-in that opens only the libraries a test puts on its
"system" (each reporting its major version through ``cublasGetProperty``, as cuBLAS does), CuPy is
a stand-in that tells its CUDA runtime version, and ``cuda.pathfinder`` is a stand-in module (or
made unimportable). The handle tests count ``cublasCreate_v2``/``cublasDestroy_v2`` on a stand-in
library.
"""
from __future__ import annotations

import ctypes
import gc
import re
import sys
import types

import numpy as np
import pytest

from bngraph.backends.cuda_target import runtime as cuda_runtime
from bngraph.ir import IRError


class FakeLib:
    """A loaded cuBLAS: its major version, the handles made and destroyed."""

    def __init__(self, path, major):
        self.path, self.major = path, major
        self.created, self.destroyed = [], []

    def cublasGetProperty(self, kind, value):
        assert kind == 0  # MAJOR_VERSION
        value._obj.value = self.major
        return 0

    def cublasCreate_v2(self, handle):
        handle._obj.value = 0x1000 + len(self.created)
        self.created.append(handle._obj.value)
        return 0

    def cublasDestroy_v2(self, handle):
        self.destroyed.append(handle.value)
        return 0

    def cublasSetStream_v2(self, handle, stream):
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, size):
        return 0

    def cublasSetMathMode(self, handle, mode):
        return 0


def fake_cupy(version, cuda_path=None):
    """CuPy built for CUDA ``version`` (13000: 13.0)."""
    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: version)
    cuda = types.SimpleNamespace(runtime=runtime, get_cuda_path=lambda: cuda_path)
    return types.SimpleNamespace(cuda=cuda, uint8=np.uint8,
                                 empty=lambda n, dtype: types.SimpleNamespace(data=types.SimpleNamespace(ptr=7)))


@pytest.fixture
def system(monkeypatch, tmp_path):
    """The libraries ctypes.CDLL can open (name or path -> major version), no toolkit folders
    but a pip site-packages under tmp_path, and no cuda.pathfinder unless a test installs one."""
    libs: dict = {}
    opened: list = []

    def cdll(name, *args, **kwargs):
        if str(name) not in libs:
            raise OSError(f"{name}: cannot open shared object file")
        opened.append(str(name))
        return FakeLib(str(name), libs[str(name)])

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "no-toolkit"))
    monkeypatch.setattr(cuda_runtime.glob, "glob", _glob_under(tmp_path))
    import site

    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path / "site-packages")])
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)
    return types.SimpleNamespace(libs=libs, opened=opened, root=tmp_path)


def _glob_under(root):
    """glob, but /usr/local/cuda (this machine's, if any) is never searched: only tmp_path is."""
    import glob as globmodule

    real = globmodule.glob

    def glob(pattern, recursive=False):
        return real(pattern, recursive=recursive) if pattern.startswith(str(root)) else []

    return glob


def pip_cublas(system, major):
    """NVIDIA's cuBLAS wheel: site-packages/nvidia/cu13/lib/libcublas.so.13, not on the loader's path."""
    lib = system.root / "site-packages" / "nvidia" / f"cu{major}" / "lib"
    lib.mkdir(parents=True)
    path = lib / f"libcublas.so.{major}"
    path.write_bytes(b"")
    system.libs[str(path)] = major
    return str(path)


def test_cuda_13_cublas_from_the_pip_wheels_beats_a_system_cuda_12_one(system):
    system.libs["libcublas.so.12"] = 12  # a system CUDA 12 toolkit, on the loader's path
    path = pip_cublas(system, 13)
    lib = cuda_runtime._load_cublas(fake_cupy(13000))
    assert (lib.path, lib.major) == (path, 13)


def test_cupy_built_for_cuda_12_gets_cublas_12(system):
    system.libs["libcublas.so.13"] = 13  # both on the loader's path
    system.libs["libcublas.so.12"] = 12
    assert cuda_runtime._load_cublas(fake_cupy(12080)).major == 12


def test_only_a_cuda_12_cublas_is_refused_with_a_clear_message(system):
    system.libs["libcublas.so.12"] = 12
    system.libs["libcublas.so"] = 12  # the unversioned link of the same toolkit
    with pytest.raises(IRError) as e:
        cuda_runtime._load_cublas(fake_cupy(13000))
    msg = str(e.value)
    assert "CUDA 13" in msg and "libcublas.so.13" in msg  # what is needed
    assert re.search(r"libcublas\.so \(CUDA 12\)", msg)  # what was found
    assert "pip install 'cupy-cuda13x[ctk]' (in a checkout of bngraph: pip install '.[cuda]')" in msg


def test_a_mismatched_wheel_is_never_loaded(system):
    pip_cublas(system, 12)
    with pytest.raises(IRError, match=r"cu12/lib/libcublas\.so\.12 \(CUDA 12\)"):
        cuda_runtime._load_cublas(fake_cupy(13000))
    assert system.opened == []


def install_pathfinder(monkeypatch, load):
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.load_nvidia_dynamic_lib = load
    cuda = types.ModuleType("cuda")
    cuda.pathfinder = pathfinder
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)


def test_cuda_pathfinder_is_preferred_when_it_imports(system, monkeypatch):
    system.libs["libcublas.so.13"] = 13  # on the loader's path too
    system.libs["/conda/lib/libcublas.so.13"] = 13
    asked = []

    def load(libname):
        asked.append(libname)
        return types.SimpleNamespace(abs_path="/conda/lib/libcublas.so.13")

    install_pathfinder(monkeypatch, load)
    lib = cuda_runtime._load_cublas(fake_cupy(13000))
    assert asked == ["cublas"] and lib.path == "/conda/lib/libcublas.so.13"


def test_a_mismatched_pathfinder_find_is_refused(system, monkeypatch):
    system.libs["/usr/local/cuda-12/lib64/libcublas.so.12"] = 12
    install_pathfinder(monkeypatch, lambda name: types.SimpleNamespace(
        abs_path="/usr/local/cuda-12/lib64/libcublas.so.12"))
    with pytest.raises(IRError, match=r"cuda-12/lib64/libcublas\.so\.12 \(CUDA 12\)"):
        cuda_runtime._load_cublas(fake_cupy(13000))
    pip_cublas(system, 13)  # and with the right one installed as well, that one
    assert cuda_runtime._load_cublas(fake_cupy(13000)).major == 13


# ---- the handle: destroyed exactly once ------------------------------------------------------------

@pytest.fixture
def blas_lib(monkeypatch):
    lib = FakeLib("libcublas.so.13", 13)
    monkeypatch.setattr(cuda_runtime, "_load_cublas", lambda cp=None: lib)
    return lib


class Stream:
    ptr = 42

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_the_handle_is_destroyed_once_when_the_runtime_is_collected(blas_lib):
    stream = Stream()
    runtime = cuda_runtime.CudaRuntime(0, None, None, cuda_runtime.GpuLauncher(
        stream, cuda_runtime.Cublas(fake_cupy(13000), stream)))
    assert blas_lib.created == [0x1000] and blas_lib.destroyed == []
    runtime.launcher.self_cycle = runtime.launcher  # collected by the cycle collector, not refcounts
    del runtime
    gc.collect()
    assert blas_lib.destroyed == [0x1000]
    gc.collect()
    assert blas_lib.destroyed == [0x1000]


def test_close_destroys_the_handle_once(blas_lib):
    stream = Stream()
    runtime = cuda_runtime.CudaRuntime(0, None, None, cuda_runtime.GpuLauncher(
        stream, cuda_runtime.Cublas(fake_cupy(13000), stream)))
    runtime.close()
    assert blas_lib.destroyed == [0x1000]
    runtime.close()
    with pytest.raises(RuntimeError, match="after close"):
        runtime.launcher.gemm(False, False, 1, 1, 1, None, None, np.zeros((1, 1), np.float32))
    del runtime
    gc.collect()
    assert blas_lib.destroyed == [0x1000]


def test_the_handle_is_not_destroyed_at_interpreter_exit(blas_lib):
    """The process frees it then; CUDA may already be torn down when atexit handlers run."""
    blas = cuda_runtime.Cublas(fake_cupy(13000), Stream())
    assert blas._finalizer.alive and blas._finalizer.atexit is False
    blas.close()
    assert blas_lib.destroyed == [0x1000] and not blas._finalizer.alive
