"""The NumPy runtime: host memory (:class:`~bngraph.backends.device.HostMemory`), and Python for
a compiler: the generated module is run with ``exec`` (no temporary files; ``linecache`` knows the
source, so tracebacks show the generated lines)."""
from __future__ import annotations

from ... import hostthreads
from ...ir import DTYPES
from ..base import Executable, Rendered, exec_source
from ..device import HostMemory, PartsRuntime
from .liveness import share


class NumpyRuntime(PartsRuntime):
    target = "numpy"

    def __init__(self, device=None):
        if device not in (None, "cpu", 0):
            raise ValueError(f"the numpy target runs on the host CPU; got device {device!r}")
        super().__init__("cpu", HostMemory())

    def load(self, rendered: Rendered) -> Executable:
        module = load_module(rendered.sources, rendered.graph_name)
        if hasattr(module, "rows"):
            module.rows = hostthreads.rows  # batch-norm units in lanes on host threads when long
        return NumpyExecutable(self, rendered, {name: getattr(module, name) for name in rendered.plans}, module=module)


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
    return exec_source(fname, src, f"bngraph_generated_{graph_name}")
