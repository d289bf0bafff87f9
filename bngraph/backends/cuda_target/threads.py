"""The CUDA execution model on the CPU: ``device="emulator-threads"`` (or an :class:`ExecutionModel`
for its options) runs the CUDA target's generated kernels as a GPU would run them, not as one
thread the way ``device="emulator"`` does.

Every launch runs the grid and block the host driver passes (the ones a GPU gets), every block a
set of concurrent threads (fibers: threads_runtime.cpp) with ``__syncthreads`` a real barrier,
``__shared__`` memory per block, atomics real atomics; the blocks run in a seeded shuffled order on
a few worker threads and the threads of a block in a new random order between barriers (and at
random after atomics), so a kernel whose result depends on an order gives different bits from run
to run. What is checked on every launch (a breach is one :class:`KernelFault` naming the kernel):

* the launch itself: CUDA's limits on grid and block, the kernel's own block-size rules
  (:class:`~.kernel_source.KernelInfo`), and every argument's type against the kernel's parameter;
* barrier divergence: a ``__syncthreads`` that some threads of the block never reach (they exited,
  or wait at another one) is an error, not a hang;
* memory: device arrays are poisoned (all bits set: NaN) when allocated, so an element nobody
  wrote shows; each array has a poisoned margin after it and ``__shared__`` arrays too, checked
  after every launch and block (a write past the end); ``__shared__`` memory is poisoned before
  every block;
* with ``sanitizer="address"`` or ``"thread"`` (:mod:`.sanitizers`): AddressSanitizer +
  UndefinedBehaviorSanitizer, or ThreadSanitizer with every CUDA thread its own fiber, so a race
  between the threads of a launch in one barrier interval is reported whatever the schedule.

docs/cuda.md ("The execution model on the CPU") says what this model can and cannot see.
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import random
import subprocess
import tempfile
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...errors import ProgramError
from ...ir import IRError
from ..device import Compiler, HostMemory
from . import kernel_source
from .emulator import _FLOAT32, MODES, HostLauncher, compiler
from .runtime import CudaRuntime
from .sanitizers import SANITIZERS, Reports, headline, reports

HERE = Path(__file__).resolve().parent
PRELUDE, RUNTIME = HERE / "threads_prelude.h", HERE / "threads_runtime.cpp"
MAX_THREADS, MAX_BLOCK, MAX_GRID = 1024, (1024, 1024, 64), (2**31 - 1, 65535, 65535)  # CUDA's launch limits
MARGIN = 16  # poisoned elements after each device array


class KernelFault(ProgramError):
    """A kernel (or its launch) broke CUDA's rules on the execution model: one line naming it."""


@dataclass(frozen=True)
class ExecutionModel:
    """The options of the CUDA execution model (``bg.compile(g, target="cuda", device=ExecutionModel(...))``).

    ``seed``: the schedule (block order, interleavings), None for a fresh one per runtime (every
    error names it); ``block``: threads per block instead of the driver's, for every launch (the
    kernels loop grid-stride, so any block size they support computes the same numbers);
    ``workers``: OS threads running blocks at once; ``sanitizer``: None, ``"address"`` or
    ``"thread"`` (:mod:`.sanitizers`); ``math``: ``"ieee"`` (as ``device="emulator"``) or ``"gpu"``
    (FMA contraction and float32 flush-to-zero, as ``device="emulator-gpu-math"``);
    ``yield_per_mille``: how often a thread lets another run after an atomic."""

    seed: int | None = None
    block: int | None = None
    workers: int = 2
    sanitizer: str | None = None
    math: str = "ieee"
    yield_per_mille: int = 250

    def __post_init__(self):
        if self.sanitizer is not None and self.sanitizer not in SANITIZERS:
            raise IRError(f"unknown sanitizer {self.sanitizer!r}: one of {', '.join(SANITIZERS)} (or None)")
        if self.math not in ("ieee", "gpu"):
            raise IRError(f"math must be 'ieee' or 'gpu', not {self.math!r}")
        if self.block is not None and not (isinstance(self.block, int) and 1 <= self.block <= MAX_THREADS):
            raise IRError(f"block must be a number of threads from 1 to {MAX_THREADS}, not {self.block!r}")

    @property
    def flags(self) -> tuple:
        """The host compiler's flags: the numerics mode's, and the sanitizer's. IEEE modules build
        without optimization (4x faster to compile, the same bits: every operation is rounded on
        its own either way); the GPU's numerics need -O1, where g++ contracts into FMA."""
        mode = MODES["emulator" if self.math == "ieee" else "emulator-gpu-math"]
        sanitizer = SANITIZERS[self.sanitizer].flags if self.sanitizer else ()
        return ("-O0" if self.math == "ieee" else "-O1", *mode, *sanitizer)


DEVICES = {"emulator-threads": ExecutionModel()}  # device names that mean the model


def threads_runtime(model: ExecutionModel | str = "emulator-threads") -> CudaRuntime:
    """The CUDA target on the execution model: its compiler, poisoned host memory, its launcher."""
    if isinstance(model, str):
        model = DEVICES[model]
    if model.seed is None:
        model = replace(model, seed=random.SystemRandom().randrange(2**32))
    found = reports(model.sanitizer) if model.sanitizer else None
    memory = PoisonedMemory(0 if model.sanitizer == "address" else MARGIN)  # ASan has its own redzones
    return CudaRuntime(model, ThreadsCompiler(model), memory, ThreadsLauncher(model, memory, found))


# ---- compiling: the runtime library once per set of flags, each module against it -----------------

_LOADED: dict = {}  # file -> loaded library


def _build(name: str, text: str, flags: list, inputs=()) -> str:
    """``text`` compiled as a shared library (cached on disk by its hash); its path."""
    key = hashlib.sha256("\0".join([text, *flags, *map(str, inputs)]).encode()).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / f"bngraph-threads-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{key}.so"
    if not path.exists():
        tmp = f"{path}.{os.getpid()}.tmp"
        cmd = [compiler(), "-std=c++17", "-shared", "-fPIC", "-pthread", *flags, "-x", "c++", "-", "-x", "none",
               *map(str, inputs), "-o", tmp]
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            raise IRError(f"the CUDA execution model could not compile {name}:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    return str(path)


def _load(path: str, global_symbols: bool = False):
    lib = _LOADED.get(path)
    if lib is None:
        lib = _LOADED[path] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL if global_symbols else ctypes.RTLD_LOCAL)
    return lib


def runtime_library(model: ExecutionModel) -> str:
    """The model's runtime (threads_runtime.cpp) built with ``model``'s flags and loaded; its path."""
    path = _build("runtime", RUNTIME.read_text(), [*model.flags, "-O1"])  # the last -O wins
    lib = _load(path, global_symbols=True)  # the kernel modules call into it
    lib.bngraph_last_error.restype = lib.bngraph_take_reports.restype = ctypes.c_char_p
    return path


class Binary:
    """A kernel module compiled for the model: ``lib`` and :class:`~.kernel_source.KernelInfo` per kernel."""

    def __init__(self, lib, runtime, infos: dict, ftz: bool = False):
        self.lib, self.runtime, self.infos, self.ftz = lib, runtime, infos, int(ftz)
        self._entries: dict = {}

    def entry(self, name: str):
        """(launch function, parameter codes, KernelInfo) of kernel ``name``."""
        got = self._entries.get(name)
        if got is None:
            if name not in self.infos:
                raise KernelFault(f"kernel {name}: no such kernel in the module (kernels: {', '.join(self.infos)})")
            fn = getattr(self.lib, f"bngraph_launch_{name}")
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
            sig = getattr(self.lib, f"bngraph_signature_{name}")
            sig.restype = ctypes.c_char_p
            got = self._entries[name] = (fn, sig().decode(), self.infos[name])
        return got


class ThreadsCompiler(Compiler):
    """The .cu text for the model: ``__shared__`` rewritten per block, the prelude
    (threads_prelude.h) before it and the launcher's entry points after it, compiled by g++ with
    the model's flags against its runtime library; cached on disk and in memory by hash."""

    def __init__(self, model: ExecutionModel):
        self.model = model

    def compile(self, source: str) -> Binary:
        infos = kernel_source.kernels(source)
        text = "\n".join([PRELUDE.read_text(), '#line 1 "kernels.cu"', kernel_source.rewrite_shared(source),
                          kernel_source.entries(infos)])
        runtime = runtime_library(self.model)
        lib = _load(_build("kernels", text, list(self.model.flags), [runtime]))
        # math="gpu": float32 denormals flushed in the workers' threads during its launches (emulator.py)
        return Binary(lib, _LOADED[runtime], infos, ftz=self.model.math == "gpu" and bool(_FLOAT32.search(source)))


# ---- memory: poisoned, with a checked margin ------------------------------------------------------

class PoisonedMemory(HostMemory):
    """Host memory as a GPU's would be found: every new array has all bits set (NaN in floating
    point) until written, and ``margin`` elements after its end holding a canary of its own (NaNs
    with a payload drawn for that array), which :meth:`overrun` checks after each launch: a write
    past the end changes it, even a copy of another array's canary (0: no margin, under
    AddressSanitizer, which has its own redzones)."""

    def __init__(self, margin: int = MARGIN):
        super().__init__(contiguous=True)
        self.margin = margin
        self._roots: dict = {}  # id(root array) -> (weak reference to it, bytes of its body, its canary)
        self._draw = np.random.default_rng(0)

    def _canary(self, dtype, n: int) -> np.ndarray:
        bits = self._draw.integers(1, 2**62, size=n, dtype=np.int64).view(np.uint64)
        if dtype.kind == "f":  # every exponent bit set and a payload (not 0): a NaN, this array's own
            mantissa = {2: 10, 4: 23, 8: 52}[dtype.itemsize]
            exponent = ((1 << (8 * dtype.itemsize - mantissa - 1)) - 1) << mantissa
            bits = bits % np.uint64((1 << mantissa) - 1) + np.uint64(1) | np.uint64(exponent)
        return bits.astype(f"u{dtype.itemsize}").view(np.uint8)

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = tuple(shape) if np.ndim(shape) else (int(shape),)
        n = int(np.prod(shape, dtype=np.int64))
        root = np.empty(n + self.margin, dtype)
        raw = root.view(np.uint8)
        raw[...] = 0xFF
        if self.margin:
            canary = self._canary(dtype, self.margin)
            raw[n * dtype.itemsize:] = canary
            self._roots[id(root)] = (weakref.ref(root), n * dtype.itemsize, canary)
            weakref.finalize(root, self._roots.pop, id(root), None)  # forgotten with the array
        return root[:n].reshape(shape)

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        a[...] = 0
        return a

    def asarray(self, a, dtype):
        out = self.empty(np.shape(a), dtype)
        out[...] = a
        return out

    def write(self, dst, host) -> None:
        dst[...] = np.asarray(host, dtype=dst.dtype)

    def overrun(self, a) -> bool:
        """Was the margin after the array that ``a`` views written?"""
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        known = self._roots.get(id(root))
        if known is None or known[0]() is not root:
            return False
        return not np.array_equal(root.view(np.uint8)[known[1]:], known[2])


# ---- launching ---------------------------------------------------------------------------------------

class LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("seed", ctypes.c_ulonglong),
                ("workers", ctypes.c_int), ("yield_per_mille", ctypes.c_int), ("ftz", ctypes.c_int)]


# NumPy scalar type -> parameter code (threads_prelude.h), array dtype -> pointer code
SCALARS = {np.int32: "i", np.int64: "l", np.uint64: "u", np.uint32: "n", np.float32: "f", np.float64: "d", float: "d"}
CTYPES = {"i": ctypes.c_int32, "l": ctypes.c_int64, "u": ctypes.c_uint64, "n": ctypes.c_uint32,
          "f": ctypes.c_float, "d": ctypes.c_double}
POINTERS = {"float64": "D", "float32": "F", "int64": "L", "uint64": "U", "int32": "I", "uint32": "N"}
C_NAMES = {"i": "int", "l": "long long", "u": "unsigned long long", "n": "unsigned", "f": "float", "d": "double",
           "D": "double*", "F": "float*", "L": "long long*", "U": "unsigned long long*", "I": "int*",
           "N": "unsigned*", "P": "a pointer"}


def _dims(v, what: str, name: str) -> tuple:
    dims = tuple(int(d) for d in (v if isinstance(v, (tuple, list)) else (v,)))
    if not 1 <= len(dims) <= 3:
        raise KernelFault(f"kernel {name}: a {what} of {len(dims)} dimensions")
    return dims + (1,) * (3 - len(dims))


class Launch:
    """One launch, its arguments fixed (what a captured graph replays); each run a new schedule."""

    def __init__(self, launcher, binary: Binary, name: str, grid, block, args):
        self.__name__ = name
        self.launcher, self.name = launcher, name
        fn, codes, info = binary.entry(name)
        grid, block = _dims(grid, "grid", name), _dims(block, "block", name)
        if launcher.model.block is not None:
            block = (launcher.model.block,) + block[1:]
        threads = block[0] * block[1] * block[2]
        if min(grid + block) < 1 or threads > MAX_THREADS or any(b > m for b, m in zip(block, MAX_BLOCK)) or \
                any(g > m for g, m in zip(grid, MAX_GRID)):
            raise KernelFault(f"kernel {name}: a launch of grid {grid} and block {block} that CUDA refuses (at most "
                              f"{MAX_THREADS} threads a block, block {MAX_BLOCK}, grid {MAX_GRID})")
        why = info.refusal(threads, block)
        if why:
            raise KernelFault(f"kernel {name} cannot run with {why}")
        if len(args) != len(codes):
            raise KernelFault(f"kernel {name} takes {len(codes)} arguments ({', '.join(info.params)}), "
                              f"the launch passes {len(args)}")
        self.values, self.arrays = [], []
        for k, (a, code) in enumerate(zip(args, codes)):
            self.values.append(self._value(a, code, info.params[k] if k < len(info.params) else f"#{k}"))
        self.argv = (ctypes.c_void_p * max(1, len(self.values)))(*[ctypes.addressof(v) for v in self.values])
        self.fn, self.runtime = fn, binary.runtime
        self.config = LaunchConfig(tuple(grid), tuple(block), 0, launcher.model.workers,
                                   launcher.model.yield_per_mille, binary.ftz)

    def _value(self, a, code: str, param: str):
        if isinstance(a, np.ndarray):
            want = POINTERS.get(a.dtype.name)
            if not code.isupper() or (code != "P" and want != code):
                raise KernelFault(f"kernel {self.name}: argument {param} is a {a.dtype} array, the kernel takes "
                                  f"{C_NAMES.get(code, code)}")
            if not a.flags.c_contiguous:
                raise KernelFault(f"kernel {self.name}: argument {param} is not a contiguous array")
            self.arrays.append((param, a))
            return ctypes.c_void_p(a.ctypes.data)
        got = SCALARS.get(type(a))
        if got != code:
            kind = f"numpy.{type(a).__name__}" if isinstance(a, np.generic) else f"Python {type(a).__name__}"
            raise KernelFault(f"kernel {self.name}: argument {param} is a {kind}, the kernel takes "
                              f"{C_NAMES.get(code, code)}")
        return CTYPES[code](a.item() if isinstance(a, np.generic) else a)

    def __call__(self):
        self.launcher.run(self)


class ThreadsLauncher(HostLauncher):
    """Launches kernels on the execution model (:class:`Launch`); matrix products are NumPy's;
    ``capture`` records launches with their arguments, ``replay`` runs them again (each time with a
    new schedule). After every launch: the margins of its array arguments and the sanitizer's
    report files are checked."""

    def __init__(self, model: ExecutionModel, memory: PoisonedMemory, reports: Reports | None = None):
        super().__init__()
        self.model, self.memory, self.reports = model, memory, reports
        self._seeds = random.Random(model.seed)
        self.history = collections.deque(maxlen=10000)  # (kernel, grid, block) of the recent launches

    def bind(self, binary: Binary):
        def launch(name, grid, block, *args):
            call = Launch(self, binary, name, grid, block, args)
            if self._recording is not None:
                self._recording.append((call, ()))
            else:
                call()

        return launch

    def run(self, call: Launch) -> None:
        call.config.seed = self._seeds.getrandbits(64)
        self.history.append((call.name, tuple(call.config.grid), tuple(call.config.block)))
        failed = call.fn(ctypes.byref(call.config), call.argv)
        where = f"[device {self.describe()}, launch seed {call.config.seed}]"
        report = None
        if self.reports is not None:  # taken now, whatever else went wrong: it belongs to this launch
            report = self.reports.new(call.runtime.bngraph_take_reports().decode(errors="replace"))
        if failed:
            raise KernelFault(f"kernel {call.runtime.bngraph_last_error().decode(errors='replace')} {where}")
        if report is not None:
            raise KernelFault(f"kernel {call.name}: {self.model.sanitizer} sanitizer: {headline(report)} {where}\n"
                              f"{report[:6000]}")
        for param, a in call.arrays:
            if self.memory.overrun(a):
                raise KernelFault(f"kernel {call.name}: a thread wrote past the end of argument {param} "
                                  f"({a.size} elements) {where}")

    def describe(self) -> str:
        m = self.model
        opts = [f"seed={m.seed}"] + [f"{k}={getattr(m, k)!r}" for k in ("block", "sanitizer") if getattr(m, k)]
        return f"emulator-threads({', '.join(opts)})"

