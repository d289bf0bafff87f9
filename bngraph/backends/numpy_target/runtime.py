"""The NumPy runtime: loads the generated module with ``exec`` (no temporary files; ``linecache``
knows the source, so tracebacks show the generated lines) and keeps arrays in host memory."""
from __future__ import annotations

import linecache
import types

import numpy as np

from ..base import Executable, Rendered, Runtime


class NumpyRuntime(Runtime):
    target = "numpy"
    xp = np

    def __init__(self, device=None):
        if device not in (None, "cpu", 0):
            raise ValueError(f"the numpy target runs on the host CPU; got device {device!r}")
        super().__init__("cpu")
        self._ones: dict = {}

    def load(self, rendered: Rendered) -> Executable:
        module = load_module(rendered.sources, rendered.graph_name)
        exe = Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans})
        exe.module = module
        return exe

    def asarray(self, a, dtype):
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def all_finite(self, a) -> bool:
        # a BLAS dot against ones is the cheapest full reduction on the CPU (faster than np.sum's
        # pairwise loop); NaN and inf propagate through it, and an overflowing sum counts too
        a = a.reshape(-1)
        key = (a.dtype, a.size)
        ones = self._ones.get(key)
        if ones is None:
            ones = self._ones[key] = np.ones(a.size, a.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.dot(a, ones)))


def load_module(sources: dict, graph_name: str):
    """Execute the one generated file as a module named after the graph."""
    ((fname, src),) = sources.items()
    filename = f"<bngraph:{fname}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    module = types.ModuleType(f"bngraph_generated_{graph_name}")
    module.__file__ = filename
    exec(compile(src, filename, "exec"), module.__dict__)
    return module
