"""What the command line and the library share, so that no library module imports the command
line: the user-error type (:class:`CLIError`), reading a MODEL argument (a model file
``path.py[:name]``, a checkpoint ``.npz`` or an ``.onnx`` file: :func:`load_model`), the checks that
no output is an input or another output, and the command line's defaults.
(``bngraph.cli`` re-exports every name here.)"""
from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass

from .fileio import atomic_write

DEFAULT_HIDDEN = (128, 64)
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop", "adamw")
DEFAULT_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.1, "momentum": 0.05, "rmsprop": 1e-3}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def default_model(n_features: int = 64, classes: int = 10):
    """The default model: an MLP with batch norm and ReLU, hidden widths 128 and 64."""
    from .dsl import mlp

    return mlp([n_features, *DEFAULT_HIDDEN, classes], activation="relu", batchnorm=True, name="mlp")


MODEL_FORMS = "path/to/file.py[:name], a checkpoint .npz or an .onnx file"


@dataclass
class ModelSource:
    """What a MODEL argument holds: ``graph`` (frozen, as written: before the passes), and where
    it came from. ``kind``: ``"python"`` (a model file: no values, ``init`` draws them),
    ``"checkpoint"`` (``checkpoint``: its ``(meta, arrays)``, trained values under the names of the
    graph after its passes, ``meta["passes"]``) or ``"onnx"`` (``imported``: the ``bg.from_onnx``
    graph, which carries the file's weights: ``bg.compile(imported)`` starts from them)."""

    spec: str
    path: str
    kind: str
    graph: object
    checkpoint: tuple | None = None
    imported: object = None

    @property
    def compilable(self):
        """What ``bg.compile`` takes to start from the file's values where it has them (ONNX)."""
        return self.imported if self.imported is not None else self.graph

    @property
    def passes(self):
        """The passes the model was compiled with (a checkpoint's), else None (the default pipeline)."""
        return self.checkpoint[0]["passes"] if self.checkpoint else None


def load_model(spec: str, loss="auto") -> ModelSource:
    """A MODEL argument, whichever form: ``path.py[:name]`` (:func:`load_model_spec`), a checkpoint
    ``.npz`` (its graph; its values in ``.checkpoint``) or an ``.onnx`` file (``bg.from_onnx(path,
    loss)``: ``"auto"`` adds a loss where the file has none, None keeps it inference-only). Every
    problem is one line: a CLIError, CheckpointError or the importer's error."""
    path = spec if os.path.isfile(spec) else spec.partition(":")[0]
    if path.endswith(".npz"):
        from . import checkpoint
        from .parser import parse

        meta, arrays = checkpoint.read(path)
        try:
            graph = parse(meta["graph"])
        except ValueError as e:
            raise CLIError(f"{path}: damaged checkpoint: its graph does not parse ({e})") from None
        return ModelSource(spec, path, "checkpoint", graph, (meta, arrays))
    if path.endswith(".onnx"):
        from .interop.deps import MissingDependency
        from .interop.from_onnx import from_onnx

        if not os.path.isfile(path):
            raise CLIError(f"model file not found: {path}")
        try:
            imported = from_onnx(path, loss=loss)
        except MissingDependency as e:
            raise CLIError(str(e)) from None
        return ModelSource(spec, path, "onnx", imported.build(), imported=imported)
    return ModelSource(spec, path, "python", load_model_spec(spec))


def load_model_spec(spec: str):
    """``path.py[:name]`` -> the frozen graph (the file may define a builder or a frozen graph).
    The file runs as ``python path.py`` would run it: its folder is first on ``sys.path`` while it
    runs and while ``name()`` builds the graph (so it can import the modules beside it), and
    ``sys.path`` is put back afterwards."""
    from .graph import GraphBase as Graph  # a DSL builder or a frozen graph

    path, _, name = spec.partition(":")
    name = name or "model"
    if not path.endswith(".py"):
        raise CLIError(f"MODEL must be {MODEL_FORMS}, got {spec!r}")
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    saved_path = list(sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        return _run_model_file(path, name, Graph)
    finally:
        sys.path[:] = saved_path


def _run_model_file(path, name, Graph):
    try:
        ns = runpy.run_path(path)
    except SystemExit as e:  # sys.exit() in the user's file must not end bngraph silently
        raise CLIError(f"{path}{_line_in(e, path)}: the model file exited (sys.exit({e.code!r})) while bngraph "
                       f"was loading it; a model file should only define the graph") from None
    except Exception as e:  # the user's file: report where, in one line
        raise CLIError(f"{path}{_line_in(e, path)}: {type(e).__name__}: {e}") from None
    if name not in ns:
        found = sorted(k for k, v in ns.items() if isinstance(v, Graph) or (callable(v) and not k.startswith("_")))
        raise CLIError(f"{path} defines no {name!r} (found: {', '.join(found) or 'nothing usable'})")
    obj = ns[name]
    if callable(obj) and not isinstance(obj, Graph):
        try:
            obj = obj()
        except SystemExit as e:
            raise CLIError(f"{path}:{name}(): the model function exited (sys.exit({e.code!r})) instead of "
                           f"returning a graph") from None
        except Exception as e:
            raise CLIError(f"{path}:{name}(): {type(e).__name__}: {e}") from None
    if not isinstance(obj, Graph):
        raise CLIError(f"{path}:{name} is a {type(obj).__name__}, expected a bngraph.Graph or a function returning one")
    return obj.build()  # frozen once: every command below sees the same graph


def parse_passes(text: str | None) -> list | None:
    """``--passes a,b,c`` -> the names, each one registered (None: not given)."""
    from .passes import PASSES

    if text is None:
        return None
    passes = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise CLIError(f"unknown pass(es) {', '.join(unknown)}; available: {', '.join(PASSES)}")
    return passes


def _line_in(e: BaseException, path: str) -> str:
    """``:line`` of the last frame of ``e``'s traceback that is in the file ``path`` (or '')."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line else ""


def write_text(path: str, text: str, make_folder: bool = False):
    """``text`` written to ``path`` atomically (a temporary file, then a rename); its folder must
    exist unless ``make_folder`` (``--out DIR``)."""
    atomic_write(path, lambda f: f.write(text), binary=False, make_folder=make_folder)


def same_file(a, b) -> bool:
    """Are paths ``a`` and ``b`` one file? Both exist: the same device and inode (hard links and
    symbolic links included); otherwise the same resolved path."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_same_files(named, allowed=()) -> None:
    """``named``: ``[(flag, path or None), ...]``, inputs first. A CLIError if two are one file (an
    output would overwrite an input or another output), but for the pairs in ``allowed`` (sets of
    two flags, e.g. ``{"--save", "--resume"}``)."""
    seen = []
    for flag, path in named:
        if not path:
            continue
        for flag2, path2 in seen:
            if {flag, flag2} not in [set(pair) for pair in allowed] and same_file(path, path2):
                raise CLIError(f"{flag} {path} and {flag2} {path2} are the same file; give {flag} another path")
        seen.append((flag, path))


def model_path(spec: str | None) -> str | None:
    """The file of a MODEL argument (``path.py[:name]``, a checkpoint or an .onnx file)."""
    if not spec:
        return None
    return spec if os.path.isfile(spec) else spec.partition(":")[0]


# ---- the data as the model sees it -----------------------------------------------------------


def model_example_shape(graph) -> tuple | None:
    """One example's shape at the model's feature input: ``(features,)``, or a spatial input's
    ``(C, L)`` / ``(C, H, W)``; None when the graph has no loss or not exactly one feature input."""
    loss = graph.loss_node if graph.has_output("loss") else None
    if loss is None:
        return None
    features = [v for v in graph.inputs if v.name != loss.inputs[1]]
    if len(features) != 1:
        return None
    s = features[0].type.shape  # (features, m), or (C, m, d...)
    return (s[0],) if len(s) == 2 else (s[0], *s[2:])


def shaped_for(ds, graph):
    """The data set with each example shaped as the model's input takes it, where the sizes match:
    flat rows (the built-in digits' 64 pixels, a file's (N, C*H*W)) become the (C, H, W) images a
    convolutional model takes, images the flat rows an MLP takes (row-major: PyTorch's order).
    Unchanged otherwise (the check against the model then says what does not fit)."""
    from .datasets import DatasetError

    shape = model_example_shape(graph) if graph is not None else None
    if shape is None:
        return ds
    try:
        return ds.reshaped(shape)
    except DatasetError:
        return ds

