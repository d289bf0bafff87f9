"""Targets: a renderer (text only), a runtime factory (one runtime per device), and the registry.

A *target* (``numpy``, ``cuda``) is a folder of templates, a lowering table keyed by op and a
runtime:

* :class:`Renderer` turns programs (named graphs: ``train_step``, ``forward``...) into source files
  through the lowering plan (:mod:`bngraph.backends.lowering`). It only makes text and imports
  nothing device-specific, so every target's code renders on any machine (``bg.emit``).
* :class:`Runtime` runs that text on one device: compiles/loads it, allocates arrays and buffers,
  copies between host and device, synchronises. ``Target.runtime(device)`` makes one per device
  (data-parallel replicas need several). Its optional abilities (capturing and replaying graphs, a
  guarded training step of its own, a fused optimizer kernel, how an optimizer's fused step runs)
  are declared here with defaults (not on this runtime; whole-buffer array passes); a runtime built
  from parts (compiler, allocator, launcher) is :class:`bngraph.backends.device.PartsRuntime`.
* :meth:`Target.render` and :meth:`Target.load` are the one place where programs become text and
  text becomes an :class:`Executable`.

Every generated program function has the signature ``fn(*inputs, P, S, G, B)`` when it computes
gradients and ``fn(*inputs, P, S, B)`` otherwise: inputs in the graph's order in the compiler's
``(features, m)`` layout; ``P`` params and ``S`` state by name; ``G`` the gradient views the
program writes ``grad.<param>`` into; ``B`` the batch-sized buffers of the plan. It returns the
graph's outputs by key.
"""
from __future__ import annotations

import math

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import linecache
import types

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
        from ``self.lowerings``, where each output goes, the buffers; a missing lowering is one error.
        In a program that computes gradients (``train_step``) it says the target cannot train: a
        target may lower only the ops of inference programs (docs/targets.md)."""
        from .lowering import LoweringError, plan_program

        if any(key.startswith("grad.") for key, _ in graph.outputs):
            n = next((n for n in graph.nodes if n.op not in self.lowerings), None)
            if n is not None:
                t = self.target
                raise LoweringError(
                    f"target {t} has no lowering for op {n.op} (node %{n.name}), which program {name} needs: "
                    f"target {t} cannot train this graph (an inference program needs fewer ops: "
                    f"bg.emit(g, target={t!r}, inference=True), model.export_inference(target={t!r}))")
        return plan_program(name, graph, self.lowerings, self.target, self.reserved, self.buffer_all)

    @abstractmethod
    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        """{program name: graph} -> :class:`Rendered`; ``docs`` gives each program's docstring."""


class ArrayMemory(ABC):
    """Arrays of one device through an array module ``xp``: what a runtime and a runtime's
    allocator (:class:`bngraph.backends.device.Allocator`) both offer, with defaults written once."""

    xp = None

    @abstractmethod
    def asarray(self, a, dtype):
        """A host (NumPy) array -> an array on this device, in ``dtype`` (a copy or not)."""

    @abstractmethod
    def to_numpy(self, a):
        """An array of this device -> a NumPy array on the host."""

    def empty(self, shape, dtype):
        """An uninitialized array of this device (the plan's buffers, the flat params)."""
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        """A zero-filled array of this device."""
        return self.xp.zeros(shape, dtype=dtype)

    def to_float(self, a) -> float:
        """A scalar on the device -> a Python float (the one host read of a training step)."""
        return float(self.to_numpy(a))

    def all_finite(self, a) -> bool:
        """True when ``a`` holds no NaN or inf: one reduction (a sum: NaN and inf propagate, and an
        overflowing sum counts as divergence too), one host read."""
        return bool(self.to_numpy(self.xp.isfinite(self.xp.sum(a))))

    def abs_bound(self, a) -> float:
        """An upper bound of ``|x|`` over ``a`` (0.0 when empty), ``math.inf`` when ``a`` holds NaN
        or inf: the finite check of a flat buffer that also bounds it for the update's proof
        (:mod:`bngraph.optim.bounds`). Here the exact largest magnitude; a runtime may return a
        cheaper bound (the NumPy one: from one BLAS dot)."""
        if a.size == 0:
            return 0.0
        m = self.to_float(self.xp.max(self.xp.abs(a)))
        return m if math.isfinite(m) else math.inf

    def value_range(self, a) -> tuple:
        """``(min, max)`` of ``a`` exactly ((0.0, 0.0) when empty; NaN where it holds NaN): a slot's
        interval, measured when it is not known from the last step (:mod:`bngraph.optim.bounds`)."""
        if a.size == 0:
            return 0.0, 0.0
        return self.to_float(self.xp.min(a)), self.to_float(self.xp.max(a))

    def synchronize(self):
        """Wait until queued work is done (nothing to wait for on a synchronous device)."""

    def queue(self):
        """A context under which this thread's array-module work (``xp`` calls, copies, ``a[...] =``)
        goes in this device's queue, whichever queue the thread had (a GPU: the model's stream)."""
        return nullcontext()

    def write(self, dst, host) -> None:
        """Copy the host (NumPy) array ``host`` into the device array ``dst`` (same shape), in
        queue order and without waiting for the device."""
        dst[...] = self.asarray(host, dst.dtype)

    def pointer(self, a) -> int:
        """The address of ``a``'s first element (what a kernel argument or a pointer table holds)."""
        target = getattr(self, "target", None)
        raise NotImplementedError(f"the {target} runtime has no raw pointers" if target else
                                  f"{type(self).__name__} has no raw pointers")


class Runtime(ArrayMemory):
    """Runs one target's code on one device. ``xp`` is the array module the arrays belong to."""

    target = "?"

    def __init__(self, device=None):
        self.device = device

    @abstractmethod
    def load(self, rendered: Rendered) -> "Executable":
        """Compile/load rendered sources: an :class:`Executable` with one entry per program."""

    def close(self) -> None:
        """Release what the runtime holds outside Python's memory (the CUDA target's cuBLAS handle;
        also done when it is collected). Nothing by default; closing twice is harmless."""

    # ---- optional abilities: the defaults say "not on this runtime" ----------------------------
    captures = False  # True when capture/replay work: then bg.compile(..., cuda_graph=True) is allowed

    def capture(self, fn):
        """A graph of what ``fn()`` launches, recorded and not run (a CUDA graph); ``replay`` runs it."""
        raise NotImplementedError(f"the {self.target} runtime does not capture graphs")

    def replay(self, graph) -> None:
        """Run a graph made by :meth:`capture` again."""
        raise NotImplementedError(f"the {self.target} runtime does not capture graphs")

    def guarded_step(self, context, optimizer, graphs: bool = False):
        """This target's own training step for ``optimizer`` over ``context`` (the model's side of
        the step, a :class:`bngraph.step.StepContext`): checked on the device and read only when
        the model asks (``submit``, ``read``, ``ready``, ``pending``, ``CAPACITY``), or None (the
        default): the model checks each step on the host."""
        return None

    def optimizer_kernel(self, executable: "Executable", optimizer):
        """This target's fused update of a built-in ``optimizer`` over ``executable``'s kernels
        (``optimizer.bind(..., kernel=)``), or None (the default): the array-module update."""
        return None

    def update_executor(self, executable: "Executable", optimizer):
        """How this runtime runs ``optimizer``'s fused steps (``optimizer.bind(..., executor=)``,
        :mod:`bngraph.optim.executors`): by default :meth:`optimizer_kernel` launched once per
        stretch where there is one, else the array-module update in whole-buffer passes."""
        from ..optim.executors import ArrayPasses, KernelLaunches

        kernel = self.optimizer_kernel(executable, optimizer)
        return ArrayPasses() if kernel is None else KernelLaunches(kernel)


class Executable:
    """Loaded programs of one model on one runtime, with the buffers of the recent batch sizes."""

    MAX_BUFFER_SETS = 4  # batch sizes whose buffers are kept (the last short batch is one more)

    def __init__(self, runtime: Runtime, rendered: Rendered, functions: dict, module=None, launch=None):
        self.runtime = runtime
        self.plans = rendered.plans
        self.dtype = DTYPES[rendered.dtype]
        self.functions = functions  # program name -> callable
        self.module = module  # the loaded generated module (Python text), if any
        self.launch = launch  # launch(kernel name, grid, block, *args), where the programs launch kernels
        self._buffers: dict = {}

    def optimizer_kernel(self, optimizer):
        """The runtime's fused update kernel for ``optimizer`` over these kernels, or None."""
        return self.runtime.optimizer_kernel(self, optimizer)

    def update_executor(self, optimizer):
        """How the runtime runs ``optimizer``'s fused steps over these kernels (:meth:`Runtime.update_executor`)."""
        return self.runtime.update_executor(self, optimizer)

    def buffers(self, program: str, m: int) -> dict:
        """The plan's buffers at batch size ``m`` (allocated by the runtime, cached): ``{key: array}``,
        several keys to one array where the plan shares them (``Plan.slots``)."""
        key = (program, m)
        bufs = self._buffers.pop(key, None)
        if bufs is None:
            bufs = self.plans[program].allocate(m, self.runtime.empty)  # shared where the plan shares
            if len(self._buffers) >= self.MAX_BUFFER_SETS:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = bufs  # most recently used last
        return bufs

    def run(self, program: str, feeds: dict, P: dict, S: dict, G: dict | None, m: int) -> dict:
        """Run ``program`` on device arrays ``feeds`` (input name -> array) at batch size ``m``."""
        return self.call(program, feeds, P, S, G, self.buffers(program, m))

    def call(self, program: str, feeds: dict, P: dict, S: dict, G: dict | None, buffers: dict) -> dict:
        """Run ``program`` with the batch-sized ``buffers`` given (the plan's, at the feeds' size),
        in the runtime's queue (a driver's copies too, not only its launches)."""
        plan = self.plans[program]
        args = [feeds[v.name] for v in plan.inputs]
        with self.runtime.queue():
            if plan.has_grads:
                return self.functions[program](*args, P, S, G, buffers)
            return self.functions[program](*args, P, S, buffers)


@dataclass
class FixedStep:
    """One batch size's run of a program on arrays of its own, whose addresses never change (what a
    captured graph replays): ``inputs`` and the plan's ``buffers``; ``out`` what the program
    returned; ``graph`` once captured; ``tables``: whatever the caller builds on these addresses."""

    inputs: dict
    buffers: dict
    out: dict | None = None
    graph: object = None
    runs: int = 0
    tables: object = None


class Replays:
    """A program's :class:`FixedStep` per batch size, run eagerly the first time (the kernels load),
    captured with the runtime (``capture(fn)``) the second, replayed after; or always run eagerly
    (``graphs=False``). The last ``MAX_ENTRIES`` batch sizes are kept; a graph goes with its
    buffers. Params, state and gradients must keep their addresses (the model's flat buffers do),
    and anything that changes between steps must live in device memory."""

    MAX_ENTRIES = 4

    def __init__(self, executable: Executable, program: str, graphs: bool = True):
        self.executable, self.runtime, self.program, self.graphs = executable, executable.runtime, program, graphs
        self.entries: dict = {}  # m -> FixedStep, most recently used last
        self.replays = 0  # runs that replayed a captured graph

    def entry(self, m: int) -> FixedStep:
        entry = self.entries.pop(m, None)
        if entry is None:
            if len(self.entries) >= self.MAX_ENTRIES:
                self.entries.pop(next(iter(self.entries)))
            plan, rt = self.executable.plans[self.program], self.runtime
            entry = FixedStep({v.name: rt.empty(v.type.concrete_shape(m), DTYPES[v.type.dtype]) for v in plan.inputs},
                              plan.allocate(m, rt.empty))
        self.entries[m] = entry
        return entry

    def run(self, entry: FixedStep, fn: Callable) -> None:
        """``fn()`` (the launches of one run on ``entry``'s arrays): eagerly, or through its graph."""
        if not self.graphs or entry.runs == 0:
            fn()
        else:
            if entry.graph is None:
                entry.graph = self.runtime.capture(fn)
            self.runtime.replay(entry.graph)
            self.replays += 1
        entry.runs += 1

    def forget_graphs(self) -> None:
        """Drop every graph and table (they hold addresses that are about to change): each batch
        size runs eagerly once more (its tables are built outside any capture), then is captured."""
        for entry in self.entries.values():
            entry.graph, entry.tables, entry.runs = None, None, 0


class GraphedPrograms:
    """Programs captured once per batch size and replayed (CUDA graphs, :class:`Replays`): each call
    copies its inputs into the batch size's fixed input arrays and runs or replays the program."""

    def __init__(self, executable: Executable, programs=("train_step",)):
        self.executable = executable
        self.programs = {p: Replays(executable, p) for p in programs}

    @property
    def replays(self) -> int:
        return sum(r.replays for r in self.programs.values())

    def run(self, program: str, feeds: dict, P: dict, S: dict, G: dict | None, m: int) -> dict:
        replays = self.programs.get(program)
        if replays is None:
            return self.executable.run(program, feeds, P, S, G, m)
        entry = replays.entry(m)
        with self.executable.runtime.queue():
            for k, v in feeds.items():
                entry.inputs[k][...] = v

        def step():
            entry.out = self.executable.call(program, entry.inputs, P, S, G, entry.buffers)

        replays.run(entry, step)
        return entry.out


@dataclass
class Loaded:
    """Programs rendered and loaded: the text, the runtime that runs it, and its executable."""

    rendered: Rendered
    runtime: Runtime
    executable: Executable


@dataclass(frozen=True)
class Target:
    """A named target: its renderer and a factory of runtimes (``device -> Runtime``)."""

    name: str
    renderer: Renderer
    runtime_factory: Callable

    def runtime(self, device=None) -> Runtime:
        """A runtime of this target for ``device`` (None: the target's default)."""
        return self.runtime_factory(device)

    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        """{program name: graph} -> this target's source text (:meth:`Renderer.render`)."""
        return self.renderer.render(programs, dtype, graph_name, docs=docs)

    def load(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None, device=None,
             runtime: Runtime | None = None) -> Loaded:
        """Render ``programs`` and load the text on ``runtime`` (else a new one for ``device``)."""
        rendered = self.render(programs, dtype, graph_name, docs)
        runtime = self.runtime(device) if runtime is None else runtime
        return Loaded(rendered, runtime, runtime.load(rendered))


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


def exec_source(file_name: str, source: str, module_name: str) -> types.ModuleType:
    """Run generated Python ``source`` as a module named ``module_name`` (no temporary file:
    ``linecache`` knows the text, so tracebacks show the generated lines)."""
    filename = f"<bngraph:{file_name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)
    return module
