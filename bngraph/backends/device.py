"""A runtime built from parts, as tinygrad's ``Compiled(device, allocator, renderer, compiler, runtime)``.

* an :class:`Allocator` is one device's memory: the array module ``xp``, allocation, the copies
  between host and device, the reductions a step reads (``all_finite``, ``to_float``);
* a :class:`Compiler` turns kernel source text into a loaded binary (cached by the text's hash);
* a :class:`Launcher` runs a binary's kernels (``bind(binary) -> launch(name, grid, block, *args)``)
  and the matrix products (``gemm``), and may capture what it launches to replay it (CUDA graphs).

:class:`PartsRuntime` is a :class:`~bngraph.backends.base.Runtime` whose memory methods are its
allocator's and whose capture/replay are its launcher's. The NumPy target's runtime is one with
host memory (:class:`HostMemory`) and Python for a compiler; the CUDA target's two runtimes are one
class with two sets of parts: NVRTC, CuPy memory and cuBLAS on a GPU, or the host's C++ compiler,
NumPy memory and NumPy's matmul on the CPU (the emulator).
"""
from __future__ import annotations

import math

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from .base import ArrayMemory, Runtime


_DOT_PIECE = 1 << 22  # HostMemory.abs_bound's pieces
_FLOOR = {np.dtype(t).char: 2.0 * math.sqrt(float(np.finfo(t).tiny)) for t in (np.float16, np.float32, np.float64)}


class Allocator(ArrayMemory):
    """The memory of one device (its array module ``xp``, allocation, host copies, the reductions a
    step reads): :class:`~bngraph.backends.base.ArrayMemory`'s methods, which a :class:`PartsRuntime`
    hands on."""


class HostMemory(Allocator):
    """NumPy arrays in host memory. ``contiguous``: every array from the host is made C-ordered
    (kernels that take raw pointers need it), else NumPy's own view is kept when it can be."""

    xp = np

    def __init__(self, contiguous: bool = False):
        self.contiguous = contiguous

    def asarray(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype) if self.contiguous else np.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def to_float(self, a) -> float:
        return float(np.asarray(a))  # to_numpy's, inlined: read twice every training step

    def pointer(self, a) -> int:
        return a.ctypes.data

    def all_finite(self, a) -> bool:
        # one pass of np.sum: NaN and inf propagate through it, and an overflowing sum counts as
        # divergence too. (A BLAS dot against a vector of ones was faster on a cache-hot buffer but
        # reads twice the bytes: 1.50 ms against 1.13 ms for the 2.9 M params and grads of the
        # 784-1024x3-10 net right after a step. Two halves summed on two host threads: 0.47 against
        # 0.49 ms for one buffer, no gain: the pass is bound by memory, not by the core.)
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.sum(a)))

    def abs_bound(self, a) -> float:
        # a BLAS dot of each piece of the buffer with itself: |x| <= sqrt(sum of the squares of its
        # piece), and NaN/inf propagate. Faster than np.sum (0.39 against 0.56 ms for 2.9 M float32
        # on 2 BLAS threads). Pieces of at most 2**22 elements keep the rounding of a sum of squares
        # below a relative (n+1)*u <= 1/4 even in float32, so 2*sqrt covers it; the floor covers
        # squares that underflow to 0. (np.dot raises no floating-point warnings: no errstate, whose
        # few microseconds count on a small model's step.) When the squares overflow (|x| beyond
        # ~1.8e19 in float32), the exact pass instead.
        x = a if a.ndim == 1 else a.reshape(-1)  # (a flat buffer already is)
        n = x.size
        if n == 0:
            return 0.0
        if n <= _DOT_PIECE:
            s = float(np.dot(x, x))
        else:
            s = 0.0
            for i in range(0, n, _DOT_PIECE):
                piece = x[i:i + _DOT_PIECE]
                d = float(np.dot(piece, piece))
                if not d <= s:  # larger, or NaN/inf: then the exact pass decides
                    s = d
                    if not math.isfinite(d):
                        break
        if s < math.inf:  # finite (NaN and inf are not below inf)
            return 2.0 * math.sqrt(s) + _FLOOR[a.dtype.char]
        with np.errstate(invalid="ignore"):
            m = float(np.max(np.abs(a)))
        return m if math.isfinite(m) else math.inf


class Compiler(ABC):
    """Kernel source text -> a loaded binary whose kernels a :class:`Launcher` can launch."""

    @abstractmethod
    def compile(self, source: str):
        """The binary of ``source`` (compiled once per text; a failure is one clear error)."""


class Launcher(ABC):
    """Runs a binary's kernels and the matrix products, in queue order."""

    captures = False  # True: capture(fn)/replay(graph) work

    @abstractmethod
    def bind(self, binary) -> Callable:
        """``launch(name, grid, block, *args)`` for the kernels of ``binary``."""

    @abstractmethod
    def gemm(self, ta, tb, M, N, K, A, B, C):
        """Row-major ``C (M, N) = op(A) @ op(B)`` (``ta``, ``tb``: transpose flags); returns C."""

    def close(self) -> None:
        """Release what the launcher holds (a library handle); again does nothing."""

    def capture(self, fn):
        raise NotImplementedError(f"{type(self).__name__} does not capture graphs")

    def replay(self, graph) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not capture graphs")


class PartsRuntime(Runtime):
    """A runtime made of an allocator (``memory``), and where it runs compiled kernels, a
    ``compiler`` and a ``launcher``. Its memory methods are the allocator's; it captures graphs
    when its launcher does."""

    def __init__(self, device, memory: Allocator, compiler: Compiler | None = None,
                 launcher: Launcher | None = None):
        super().__init__(device)
        self.memory, self.compiler, self.launcher = memory, compiler, launcher

    @property
    def xp(self):
        return self.memory.xp

    @property
    def captures(self) -> bool:
        return self.launcher is not None and self.launcher.captures

    def asarray(self, a, dtype):
        return self.memory.asarray(a, dtype)

    def to_numpy(self, a):
        return self.memory.to_numpy(a)

    def empty(self, shape, dtype):
        return self.memory.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return self.memory.zeros(shape, dtype)

    def to_float(self, a) -> float:
        return self.memory.to_float(a)

    def all_finite(self, a) -> bool:
        return self.memory.all_finite(a)

    def abs_bound(self, a) -> float:
        return self.memory.abs_bound(a)

    def value_range(self, a) -> tuple:
        return self.memory.value_range(a)

    def synchronize(self) -> None:
        self.memory.synchronize()

    def queue(self):
        return self.memory.queue()

    def write(self, dst, host) -> None:
        self.memory.write(dst, host)

    def pointer(self, a) -> int:
        return self.memory.pointer(a)

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.close()

    def capture(self, fn):
        if not self.captures:
            return super().capture(fn)
        return self.launcher.capture(fn)

    def replay(self, graph) -> None:
        if not self.captures:
            return super().replay(graph)
        self.launcher.replay(graph)
