"""Targets: a renderer (text only), a runtime factory (one runtime per device), and the registry.

A *target* (``numpy``, later ``cuda``) is a folder of templates, a lowering table keyed by op and a
runtime:

* :class:`Renderer` turns programs (named graphs: ``train_step``, ``forward``...) into source files
  through the lowering plan (:mod:`bngraph.backends.lowering`). It only makes text and imports
  nothing device-specific, so every target's code renders on any machine (``bg.emit``).
* :class:`Runtime` runs that text on one device: compiles/loads it, allocates arrays and buffers,
  copies between host and device, synchronises. ``Target.runtime(device)`` makes one per device
  (data-parallel replicas need several).

Every generated program function has the signature ``fn(*inputs, P, S, G, B)`` when it computes
gradients and ``fn(*inputs, P, S, B)`` otherwise: inputs in the graph's order in the compiler's
``(features, m)`` layout; ``P`` params and ``S`` state by name; ``G`` the gradient views the
program writes ``grad.<param>`` into; ``B`` the batch-sized buffers of the plan. It returns the
graph's outputs by key.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2

from ..ir import DTYPES, IRError


@dataclass
class Rendered:
    """What a renderer produces: ``sources`` {file name: text} and the ``plans`` {program: Plan}."""

    sources: dict
    plans: dict
    dtype: str  # 'f32' or 'f64'
    graph_name: str


class Renderer(ABC):
    """Programs -> source text, for one target. Subclasses set ``target``, ``lowerings``, ``reserved``."""

    target = "?"
    lowerings: dict = {}
    reserved: tuple = ()  # identifiers the generated code uses itself
    buffer_all = False  # True: every output gets a buffer (device targets), not only batch-sized ones

    def plan(self, name: str, graph):
        """The lowering plan of one program (bngraph.backends.lowering): names, each node's lowering
        from ``self.lowerings``, where each output goes, the buffers; a missing lowering is one error."""
        from .lowering import plan_program

        return plan_program(name, graph, self.lowerings, self.target, self.reserved, self.buffer_all)

    @abstractmethod
    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        """{program name: graph} -> :class:`Rendered`; ``docs`` gives each program's docstring."""


class Runtime(ABC):
    """Runs one target's code on one device. ``xp`` is the array module the arrays belong to."""

    target = "?"
    xp = None

    def __init__(self, device=None):
        self.device = device

    @abstractmethod
    def load(self, rendered: Rendered) -> "Executable":
        """Compile/load rendered sources: an :class:`Executable` with one entry per program."""

    @abstractmethod
    def asarray(self, a, dtype):
        """A host (NumPy) array -> an array on this device, in ``dtype`` (a copy or not)."""

    @abstractmethod
    def to_numpy(self, a):
        """An array of this runtime -> a NumPy array on the host."""

    def empty(self, shape, dtype):
        """An uninitialized array of this runtime (the plan's buffers, the flat params)."""
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        """A zero-filled array of this runtime."""
        return self.xp.zeros(shape, dtype=dtype)

    def to_float(self, a) -> float:
        """A scalar on the device -> a Python float (the one host read of a training step)."""
        return float(self.to_numpy(a))

    def all_finite(self, a) -> bool:
        """True when ``a`` holds no NaN or inf: one reduction (a sum: NaN and inf propagate, and an
        overflowing sum counts as divergence too), one host read."""
        return bool(self.to_numpy(self.xp.isfinite(self.xp.sum(a))))

    def synchronize(self):
        """Wait until queued work is done (nothing to wait for on a synchronous device)."""

    def write(self, dst, host) -> None:
        """Copy the host (NumPy) array ``host`` into the device array ``dst`` (same shape), in
        queue order and without waiting for the device."""
        dst[...] = self.asarray(host, dst.dtype)

    def pointer(self, a) -> int:
        """The address of ``a``'s first element (what a kernel argument or a pointer table holds)."""
        raise NotImplementedError(f"the {self.target} runtime has no raw pointers")


class Executable:
    """Loaded programs of one model on one runtime, with the buffers of the recent batch sizes."""

    MAX_BUFFER_SETS = 4  # batch sizes whose buffers are kept (the last short batch is one more)

    def __init__(self, runtime: Runtime, rendered: Rendered, functions: dict):
        self.runtime = runtime
        self.plans = rendered.plans
        self.dtype = DTYPES[rendered.dtype]
        self.functions = functions  # program name -> callable
        self._buffers: dict = {}

    def buffers(self, program: str, m: int) -> dict:
        """The plan's batch-sized buffers at batch size ``m`` (allocated by the runtime, cached)."""
        key = (program, m)
        bufs = self._buffers.pop(key, None)
        if bufs is None:
            bufs = {k: self.runtime.empty(shape, DTYPES[dt])
                    for k, shape, dt in self.plans[program].buffer_shapes(m)}
            if len(self._buffers) >= self.MAX_BUFFER_SETS:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = bufs  # most recently used last
        return bufs

    def run(self, program: str, feeds: dict, P: dict, S: dict, G: dict | None, m: int) -> dict:
        """Run ``program`` on device arrays ``feeds`` (input name -> array) at batch size ``m``."""
        plan = self.plans[program]
        args = [feeds[v.name] for v in plan.inputs]
        bufs = self.buffers(program, m)
        if plan.has_grads:
            return self.functions[program](*args, P, S, G, bufs)
        return self.functions[program](*args, P, S, bufs)


class GraphedPrograms:
    """Programs captured once per batch size and replayed (CUDA graphs): the first call runs the
    program eagerly (kernels load), the second captures it with the runtime (``capture(fn)``) on
    static input buffers, later calls copy their inputs into those buffers and ``replay``. Params,
    state, gradients and buffers must keep their addresses, which the model's flat buffers do;
    anything that changes between steps must live in device memory."""

    def __init__(self, executable: Executable, programs=("train_step",)):
        self.executable = executable
        self.runtime = executable.runtime
        self.programs = set(programs)
        self.entries: dict = {}  # (program, m) -> [static feeds, graph or None, outputs]
        self.replays = 0

    def run(self, program: str, feeds: dict, P: dict, S: dict, G: dict | None, m: int) -> dict:
        if program not in self.programs:
            return self.executable.run(program, feeds, P, S, G, m)
        key = (program, m)
        entry = self.entries.get(key)
        if entry is None:  # eager: loads the kernels; its static inputs are kept for the capture
            static = {k: self.runtime.empty(v.shape, v.dtype) for k, v in feeds.items()}
            for k, v in feeds.items():
                static[k][...] = v
            out = self.executable.run(program, static, P, S, G, m)
            self.entries[key] = [static, None, out]
            return out
        static, graph, out = entry
        for k, v in feeds.items():
            static[k][...] = v
        if graph is None:
            entry[1] = graph = self.runtime.capture(lambda: self.executable.run(program, static, P, S, G, m))
        self.runtime.replay(graph)
        self.replays += 1
        return out


@dataclass(frozen=True)
class Target:
    """A named target: its renderer and a factory of runtimes (``device -> Runtime``)."""

    name: str
    renderer: Renderer
    runtime_factory: Callable

    def runtime(self, device=None) -> Runtime:
        """A runtime of this target for ``device`` (None: the target's default)."""
        return self.runtime_factory(device)


TARGETS: dict = {}


def register_target(target: Target) -> Target:
    """Make ``target`` known by its name to compile, emit, load and the command line; a second
    target of the same name is refused."""
    if target.name in TARGETS:
        raise ValueError(f"a target named {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


def unregister_target(name: str):
    """Forget the target ``name`` (nothing happens when there is none)."""
    TARGETS.pop(name, None)


def get_target(name: str) -> Target:
    """The registered target ``name``, or an error listing the registered ones."""
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise IRError(f"unknown target {name!r}: available targets are {', '.join(sorted(TARGETS))}") from None


def templates_dir(target: str) -> Path:
    """templates/<target>: in the source checkout, or inside the installed package (the wheel)."""
    p = Path(__file__).resolve().parents[2] / "templates" / target
    if p.is_dir():
        return p
    from importlib.resources import files

    p = Path(str(files("bngraph.templates") / target))
    if not p.is_dir():
        raise FileNotFoundError(f"templates for target {target!r} not found (looked in {p})")
    return p


def template_env(target: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir(target))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
