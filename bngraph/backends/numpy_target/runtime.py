"""The NumPy runtime: host memory (:class:`~bngraph.backends.device.HostMemory`), and Python for
a compiler: the generated module is run with ``exec`` (no temporary files; ``linecache`` knows the
source, so tracebacks show the generated lines)."""
from __future__ import annotations

from ... import hostthreads
from ..base import Executable, Rendered, exec_source
from ..device import HostMemory, PartsRuntime
from .update import HostLanes


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
        # B shares arrays where the plan does (Plan.slots): Executable.buffers allocates through the plan
        return Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans}, module=module)

    def update_executor(self, executable: Executable, optimizer) -> HostLanes:
        """A fused optimizer step in cache-sized pieces, on host-thread lanes (:mod:`.update`)."""
        return HostLanes()


def load_module(sources: dict, graph_name: str):
    """Execute the one generated file as a module named after the graph."""
    ((fname, src),) = sources.items()
    return exec_source(fname, src, f"bngraph_generated_{graph_name}")


