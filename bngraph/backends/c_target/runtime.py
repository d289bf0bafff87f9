"""The c target's runtime: the CUDA target's runtime class (:class:`~..cuda_target.runtime.CudaRuntime`:
the driver, the fused optimizer kernels, the guarded step) built from host parts: the host's C++
compiler with the best flags it takes (:class:`HostCCompiler`), NumPy memory (C order)
and a launcher that calls each kernel's ``launch__<kernel>`` entry through ctypes (:class:`CLauncher`),
matrix products through NumPy's BLAS.

A training step with a built-in optimizer is the guarded step (checked in the kernels, read once
per logging interval), and it is always *replayed*: its launches are recorded once per batch size
(arguments converted to C once) and replayed as a list of C calls, so the driver's Python runs once
per batch size and a step costs one ctypes call per kernel and a NumPy call per matrix product.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from ... import hostthreads
from ...ir import IRError
from ..base import Executable, exec_source
from ..device import Compiler, HostMemory
from ..cuda_target.emulator import HostLauncher, _c_arg
from ..cuda_target.runtime import CudaRuntime
from ..cuda_target.step import GuardedStep
from . import host, optimizers
from .host import to_host

#: Flags always given: optimized, IEEE arithmetic (no contraction into FMA, no fast math: each
#: operation rounds as NumPy's does), no errno from sqrt (so it inlines; the same values).
BASE_FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17")
#: The programs' module also lets the compiler reorder sums (never a NaN or inf check: NaNs are
#: honoured), so the batch-norm and loss reductions vectorize: the 784-1024x3-10 b256 step's three
#: batch-norm gradients took 0.88 ms each before, 0.40 ms after. The order is the compiler's, fixed
#: per build and the same on any team. The optimizer modules keep strict IEEE (the NumPy update's
#: bits).
REDUCTION_FLAGS = ("-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math")
#: Tried in order, the first the compiler takes is kept: the host's own instructions, OpenMP's simd
#: pragmas (not its runtime: the teams are the module's own threads, host.py) and threads.
CHOICES = (("-march=native", "-fopenmp-simd", "-pthread"), ("-fopenmp-simd", "-pthread"), ("-pthread",))

_LIBS: dict = {}  # source hash -> loaded library
_FLAGS: dict = {}  # compiler -> the flags it takes


def compiler() -> str:
    """The host's C++ compiler (``$CXX``, ``g++``, ``c++``), or one clear line saying there is none."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise IRError("target c needs a C++ compiler (g++, or set CXX) and none was found; "
                      "the numpy target runs without one")
    return cxx


def _folder() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = os.path.join(tempfile.gettempdir(), f"bngraph-c-{uid}")
    os.makedirs(folder, exist_ok=True)
    return folder


def _build(cxx: str, flags, source: str, path: str) -> subprocess.CompletedProcess:
    tmp = f"{path}.{os.getpid()}.tmp"
    proc = subprocess.run([cxx, *BASE_FLAGS, *flags, "-x", "c++", "-", "-o", tmp], input=source,
                          capture_output=True, text=True)
    if proc.returncode == 0:
        os.replace(tmp, path)
    return proc


def flags(cxx: str | None = None) -> tuple:
    """The best of :data:`CHOICES` that ``cxx`` compiles and links a small kernel with."""
    cxx = cxx or compiler()
    if cxx not in _FLAGS:
        probe = to_host('extern "C" __global__ void probe(int* x) { x[blockIdx.x] = 1; }\n')
        for choice in CHOICES:
            path = os.path.join(_folder(), f"probe-{os.getpid()}.so")
            if _build(cxx, choice, probe, path).returncode == 0:
                os.remove(path)
                _FLAGS[cxx] = choice
                break
        else:
            raise IRError(f"target c: the C++ compiler {cxx} could not compile a small kernel")
    return _FLAGS[cxx]


def compile_source(source: str, reductions: bool = False):
    """Host-dialect (or CUDA) kernel text compiled with the best flags (``reductions``: and
    :data:`REDUCTION_FLAGS`) and loaded; cached on disk and in memory by the hash of the compiler,
    its flags and the text."""
    text = to_host(source)
    cxx = compiler()
    chosen = flags(cxx) + (REDUCTION_FLAGS if reductions else ())
    key = hashlib.sha256("\0".join([cxx, *BASE_FLAGS, *chosen, text]).encode()).hexdigest()[:24]
    lib = _LIBS.get(key)
    if lib is None:
        path = os.path.join(_folder(), f"{key}.so")
        if not os.path.exists(path):
            proc = _build(cxx, chosen, text, path)
            if proc.returncode != 0:
                raise IRError(f"target c could not compile the generated kernels:\n{proc.stderr[-4000:]}")
        lib = _LIBS[key] = ctypes.CDLL(path)
        lib.bngraph_set_threads.argtypes = [ctypes.c_int, ctypes.c_longlong]
    # the BLAS's thread budget (BNGRAPH/OMP/OPENBLAS_NUM_THREADS), and the work a thread is worth
    lib.bngraph_set_threads(hostthreads.budget(), host.GRAIN)
    return lib


class HostCCompiler(Compiler):
    """Kernel text -> a loaded library (:func:`compile_source`, strict IEEE: the optimizer modules)."""

    def compile(self, source: str):
        return compile_source(source)


class CLauncher(HostLauncher):
    """Calls ``launch__<kernel>(work, *args)`` through ctypes, ``work`` being the launch's
    ``grid * block`` (the driver's count of elements); ``capture`` records the calls (arguments
    converted once) and the matrix products, and ``replay`` runs the list again (the emulator's
    launcher's, :class:`~bngraph.backends.cuda_target.emulator.HostLauncher`: only ``bind`` differs)."""

    def bind(self, binary):
        entries: dict = {}

        def launch(name, grid, block, *args):
            fn = entries.get(name)
            if fn is None:
                fn = entries[name] = getattr(binary, f"launch__{name}")
            call = (fn, [ctypes.c_longlong(grid[0] * block[0])] + [_c_arg(a) for a in args])
            if self._recording is not None:
                self._recording.append(call)
            else:
                fn(*call[1])

        return launch


# host templates of the driver that only launch kernels or call gemm: a program made of them alone
# replays from a recording (a collective's Python, or a gradient copied by NumPy, would not)
REPLAYABLE = ("gemm.py.j2", "identity.py.j2", "fill.py.j2", "conv.py.j2", "conv_grad_input.py.j2")


class CRuntime(CudaRuntime):
    """The c target on the host CPU."""

    target = "c"

    def __init__(self, device=None):
        if device not in (None, "cpu"):
            raise IRError(f"target c runs on the host CPU (device None or 'cpu'), not {device!r}")
        compiler()  # no compiler: one clear line now, not at the first launch
        super().__init__("cpu", HostCCompiler(), HostMemory(contiguous=True), CLauncher())

    def load(self, rendered):
        """The .cpp compiled and bound, the driver run as a module with ``launch``, ``gemm``,
        ``scratch`` (the partial sums of the reductions) and ``THREADS`` (the thread budget)."""
        (cpp,) = [s for k, s in rendered.sources.items() if k.endswith(".cpp")]
        (py_name, py) = next((k, s) for k, s in rendered.sources.items() if k.endswith(".py"))
        launch = self.launcher.bind(compile_source(cpp, reductions=True))
        module = exec_source(py_name, py, f"bngraph_generated_{rendered.graph_name}_c")
        module.launch, module.gemm, module.THREADS = launch, self.launcher.gemm, hostthreads.budget()
        module.scratch = self.zeros((module.SCRATCH,), np.float64)
        return Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans},
                          module=module, launch=launch)

    def optimizer_source(self, record, dtype) -> str:
        """The record's kernel for the host: chunks the compiler vectorizes (:mod:`.optimizers`)."""
        return optimizers.module_source(record, dtype)

    def guarded_step(self, context, optimizer, graphs: bool = False):
        """The CUDA target's guarded step, replayed from a recording (module docstring) whenever
        train_step's driver is launches and matrix products alone."""
        plan = context.executable.plans["train_step"]
        replayable = not plan.copies and all(s.template in REPLAYABLE for s in plan.steps
                                             if not s.template.endswith(".cu.j2"))
        return GuardedStep.make(context, optimizer, graphs or replayable)
