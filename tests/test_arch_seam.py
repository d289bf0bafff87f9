"""The architecture's seams, checked from the source (issue 16, parts 5 and 7).

* no import circles among bngraph's modules (every import counts, a function's own included);
* no module over MAX_LINES lines but the op table;
* the device seam declared: the Runtime ABC has every optional ability (capture/replay, a guarded
  step, an optimizer kernel) with a default, the model finds none of them by ``getattr``, and no
  runtime patches them onto its executables;
* the CUDA emulator is the CUDA target's runtime built from host parts, not the NumPy runtime;
* few accesses of another object's private names across bngraph (``x._name``, ``x`` not
  ``self``/``cls``), and none from a target into the model or an optimizer.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import Executable, Runtime
from bngraph.backends.device import HostMemory, PartsRuntime

PACKAGE = Path(bg.__file__).resolve().parent
MAX_LINES = 450
MAY_BE_LONGER = {"bngraph.ops"}  # the op table: longer while it stays one table
ABILITIES = ("capture", "replay", "guarded_step", "optimizer_kernel", "update_executor")


def _modules() -> dict:
    """Dotted module name -> its file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node, modules: dict) -> list:
    """The bngraph modules one import statement names, relative imports resolved; ``from pkg import
    name`` names the module ``pkg.name`` when there is one, else ``pkg``."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # bngraph.x.y.Thing -> bngraph.x.y
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def import_graph() -> dict:
    """module -> the set of bngraph modules it imports anywhere (top level or inside a function)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[module] = {dep for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for dep in _imported(module, path, node, modules)}
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle_and_resolves_relative_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "bngraph.backends.base" in graph["bngraph.backends.numpy_target.runtime"]  # from ..base import
    assert "bngraph.checkpoint" in graph["bngraph.model"]  # from . import checkpoint
    assert "bngraph.cli_train" in graph["bngraph.cli"]  # an import inside a function


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_command_line_is_imported_by_no_library_module():
    cli = {"bngraph.cli", "bngraph.cli_train", "bngraph.interop.cli_commands"}
    importers = sorted(m for m, deps in import_graph().items() if deps & cli and m not in cli)
    assert importers == []


def test_checkpoint_does_not_import_the_model():
    assert "bngraph.model" not in import_graph()["bngraph.checkpoint"]


def test_modules_are_short():
    long = {m: n for m, p in _modules().items()
            if m not in MAY_BE_LONGER and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


# ---- private names stay private (issue 16: at most 10 accesses, none from a target) ----------------

MAX_PRIVATE_ACCESSES = 10


def private_accesses(path: Path) -> list:
    """``x._name`` in a file where ``x`` is not ``self``/``cls``/``super()``, dunders aside:
    (line, attribute, text)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        found.append((node.lineno, node.attr, ast.unparse(node)))
    return found


def test_the_private_access_counter_counts_what_it_should(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("self._a; cls._b; super()._c; x.__class__; x._d; f()._e; mod._f.g\n")
    assert sorted(a for _, a, _ in private_accesses(path)) == ["_d", "_e", "_f"]


def test_few_private_accesses_and_none_from_a_target_into_the_model_or_an_optimizer():
    found = {m: a for m, path in _modules().items() if (a := private_accesses(path))}
    total = sum(len(a) for a in found.values())
    assert total <= MAX_PRIVATE_ACCESSES, f"{total} accesses of other objects' private names: {found}"
    model = bg.compile(bg.mlp([4, 5, 3]))
    opts = [cls() for cls in bg.optim.TYPES.values()]
    for opt in opts:
        opt.bind(model.layout, np)
    owners = [bg.Model, model, bg.optim.Optimizer, bg.optim.RecordOptimizer, *bg.optim.TYPES.values(), *opts]
    private = {n for o in owners for n in (*dir(o), *getattr(o, "__dict__", {})) if n.startswith("_")
               and not n.endswith("__")}
    assert {"_P", "_checked", "_slot_keys", "_defaults"} <= private  # the names it guards
    crossing = {m: [a for a in accesses if a[1] in private] for m, accesses in found.items()
                if m.startswith("bngraph.backends")}
    assert {m: a for m, a in crossing.items() if a} == {}


# ---- the device seam -----------------------------------------------------------------------------

def test_runtime_declares_every_optional_ability_with_a_default():
    abstract = Runtime.__abstractmethods__
    for name in ABILITIES:
        assert callable(getattr(Runtime, name, None)), name
        assert name not in abstract, f"{name} must have a default"
    assert Runtime.captures is False

    class Plain(Runtime):
        target, xp = "plain", np

        def load(self, rendered):
            raise NotImplementedError

        def asarray(self, a, dtype):
            return np.asarray(a, dtype)

        def to_numpy(self, a):
            return a

    rt = Plain()
    assert rt.guarded_step(None, None) is None and rt.optimizer_kernel(None, None) is None
    for call in (lambda: rt.capture(lambda: None), lambda: rt.replay(None)):
        with pytest.raises(NotImplementedError, match="plain runtime does not capture graphs"):
            call()


def _probes(path: Path) -> list:
    """``getattr(x, "<ability>", ...)`` / ``hasattr`` calls in a file: (line, text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in (*ABILITIES, "launch", "module")):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_probes_for_an_ability_with_getattr():
    probes = {m: p for m, path in _modules().items() if (p := _probes(path))}
    assert probes == {}


def _assigned_executable_attributes(path: Path) -> list:
    """``exe.<ability> = ...`` outside a class's own ``self``: methods patched onto an object."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for t in targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (isinstance(el, ast.Attribute) and el.attr in (*ABILITIES, "launch", "module")
                        and not (isinstance(el.value, ast.Name) and el.value.id in ("self", "module"))):
                    found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_runtime_patches_methods_onto_its_executables():
    backends = {m: p for m, path in _modules().items() if m.startswith("bngraph.backends")
                if (p := _assigned_executable_attributes(path))}
    assert backends == {}


def test_executable_declares_what_a_runtime_gives_it():
    params = inspect.signature(Executable).parameters
    assert "module" in params and "launch" in params
    model = bg.compile(bg.mlp([4, 5, 3]))
    assert model.executable.launch is None and model.executable.module is not None
    assert model.executable.optimizer_kernel(bg.optim.Adam()) is None  # the numpy runtime's default
    assert model.runtime.guarded_step(model.trainer.context, bg.optim.Adam()) is None
    assert not model.runtime.captures


def test_the_emulator_is_the_cuda_runtime_built_from_host_parts():
    from bngraph.backends.cuda_target.emulator import HostCompiler, HostLauncher
    from bngraph.backends.cuda_target.runtime import CudaRuntime
    from bngraph.backends.numpy_target.runtime import NumpyRuntime

    model = bg.compile(bg.mlp([4, 5, 3]), target="cuda", device="emulator")
    rt = model.runtime
    assert type(rt) is CudaRuntime and not isinstance(rt, NumpyRuntime)
    assert isinstance(rt, PartsRuntime) and isinstance(rt.memory, HostMemory) and rt.memory.contiguous
    assert isinstance(rt.compiler, HostCompiler) and isinstance(rt.launcher, HostLauncher)
    assert rt.captures and rt.xp is np
    assert model.executable.launch is not None and model.executable.module.launch is model.executable.launch
    assert model.executable.optimizer_kernel(bg.optim.Adam()) is not None
    assert rt.guarded_step(model.trainer.context, bg.optim.Adam()) is not None
    # the NumPy runtime is made of the same host memory (not C-ordered) and no kernels
    numpy_rt = bg.compile(bg.mlp([4, 5, 3])).runtime
    assert isinstance(numpy_rt.memory, HostMemory) and not numpy_rt.memory.contiguous
    assert numpy_rt.compiler is None and numpy_rt.launcher is None


def test_render_and_load_are_the_targets():
    """One place renders programs and loads the text: ``Target.render`` and ``Target.load``."""
    target = bg.get_target("numpy")
    g = bg.mlp([4, 5, 3]).build()
    loaded = target.load({"forward": g}, g.dtype, g.name)
    assert loaded.rendered.sources == target.render({"forward": g}, g.dtype, g.name).sources
    assert set(loaded.executable.functions) == {"forward"} and loaded.executable.runtime is loaded.runtime
    again = target.load({"forward": g}, g.dtype, g.name, runtime=loaded.runtime)
    assert again.runtime is loaded.runtime


def test_the_gpu_parts_with_a_stand_in_for_cupy():
    """No GPU needed: NVRTC compiles a text once, the launcher looks each kernel up once and ends
    a stream capture even when the captured function fails, memory copies on its stream."""
    from bngraph.backends.cuda_target import runtime as cuda_runtime

    class Stream:
        def __init__(self):
            self.log = []

        def __enter__(self):
            self.log.append("enter")

        def __exit__(self, *exc):
            self.log.append("exit")

        def begin_capture(self):
            self.log.append("begin")

        def end_capture(self):
            self.log.append("end")
            return "graph"

        def synchronize(self):
            self.log.append("sync")

    class Kernel:
        def __init__(self, name, calls):
            self.name, self.calls = name, calls

        def __call__(self, grid, block, args, stream=None):
            self.calls.append((self.name, grid, block, args))
            assert stream is launcher.stream  # every launch names the launcher's stream

    class RawModule:
        made = 0

        def __init__(self, code, options):
            RawModule.made += 1
            self.lookups, self.calls = [], []

        def get_function(self, name):
            self.lookups.append(name)
            return Kernel(name, self.calls)

    class FakeCupy:
        pass

    cp = FakeCupy()
    cp.RawModule = RawModule
    compiler = cuda_runtime.NvrtcCompiler(cp)
    text = "/* a kernel text seen only by this test */ " + str(id(cp))
    binary = compiler.compile(text)
    assert compiler.compile(text) is binary and RawModule.made == 1
    stream = Stream()
    launcher = cuda_runtime.GpuLauncher(stream, blas=None)
    launch = launcher.bind(binary)
    launch("k", (1,), (256,), 1, 2)
    launch("k", (2,), (256,), 3)
    assert binary.lookups == ["k"] and binary.calls == [("k", (1,), (256,), (1, 2)), ("k", (2,), (256,), (3,))]
    assert launcher.captures and launcher.capture(lambda: None) == "graph"

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        launcher.capture(fails)
    assert stream.log == ["begin", "enter", "exit", "end"] * 2  # never left capturing; fn runs on the stream
    memory = cuda_runtime.CupyMemory(cp, stream)
    assert memory.xp is cp
    memory.synchronize()
    assert stream.log[-1] == "sync"


def test_a_launcher_that_cannot_capture_says_so_and_its_runtime_does_not_capture():
    """The Launcher defaults: a launcher without capture/replay (a third party's) raises for both,
    and a runtime built on it reports captures=False and refuses through the Runtime's message."""
    from bngraph.backends.device import Launcher

    class Plain(Launcher):
        def bind(self, binary):
            return lambda name, grid, block, *args: None

        def gemm(self, ta, tb, M, N, K, A, B, C):
            return C

    launcher = Plain()
    for call in (lambda: launcher.capture(lambda: None), lambda: launcher.replay(None)):
        with pytest.raises(NotImplementedError, match="Plain does not capture graphs"):
            call()

    class Built(PartsRuntime):
        target = "built"

        def load(self, rendered):
            raise NotImplementedError

    rt = Built(None, HostMemory(), None, launcher)
    assert rt.captures is False
    with pytest.raises(NotImplementedError, match="the built runtime does not capture graphs"):
        rt.capture(lambda: None)
