"""The NumPy runtime: loads the generated module with ``exec`` (no temporary files; ``linecache``
knows the source, so tracebacks show the generated lines) and keeps arrays in host memory."""
from __future__ import annotations

import linecache
import types

import numpy as np

from ... import hostthreads
from ...ir import DTYPES
from ..base import Executable, Rendered, Runtime
from .liveness import share


class NumpyRuntime(Runtime):
    target = "numpy"
    xp = np

    def __init__(self, device=None):
        if device not in (None, "cpu", 0):
            raise ValueError(f"the numpy target runs on the host CPU; got device {device!r}")
        super().__init__("cpu")

    def load(self, rendered: Rendered) -> Executable:
        module = load_module(rendered.sources, rendered.graph_name)
        if hasattr(module, "rows"):
            module.rows = hostthreads.rows  # batch-norm units in lanes on host threads when long
        exe = NumpyExecutable(self, rendered, {name: getattr(module, name) for name in rendered.plans})
        exe.module = module
        return exe

    def asarray(self, a, dtype):
        return np.asarray(a, dtype=dtype)

    def pointer(self, a) -> int:
        return a.ctypes.data

    def to_numpy(self, a):
        return np.asarray(a)

    def all_finite(self, a) -> bool:
        # one pass of np.sum: NaN and inf propagate through it, and an overflowing sum counts as
        # divergence too. (A BLAS dot against a vector of ones was faster on a cache-hot buffer but
        # reads twice the bytes: 1.50 ms against 1.13 ms for the 2.9 M params and grads of the
        # 784-1024x3-10 net right after a step. Two halves summed on two host threads: 0.47 against
        # 0.49 ms for one buffer, no gain: the pass is bound by memory, not by the core.)
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.sum(a)))


class NumpyExecutable(Executable):
    """Buffers that share memory where their lives do not overlap (:mod:`.liveness`): ``B`` maps
    several keys to one array, so a step needs less memory; the generated code is the same."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._slots = {}  # program -> {buffer key: slot}

    def buffers(self, program: str, m: int) -> dict:
        key = (program, m)
        bufs = self._buffers.pop(key, None)
        if bufs is None:
            plan = self.plans[program]
            slots = self._slots.get(program)
            if slots is None:
                slots = self._slots[program] = share(plan)
            arrays: dict = {}
            bufs = {}
            for k, shape, dt in plan.buffer_shapes(m):
                if slots[k] not in arrays:
                    arrays[slots[k]] = self.runtime.empty(shape, DTYPES[dt])
                bufs[k] = arrays[slots[k]]
            if len(self._buffers) >= self.MAX_BUFFER_SETS:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = bufs  # most recently used last
        return bufs


def load_module(sources: dict, graph_name: str):
    """Execute the one generated file as a module named after the graph."""
    ((fname, src),) = sources.items()
    filename = f"<bngraph:{fname}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    module = types.ModuleType(f"bngraph_generated_{graph_name}")
    module.__file__ = filename
    exec(compile(src, filename, "exec"), module.__dict__)
    return module
