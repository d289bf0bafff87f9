"""What the command line and the library share, so that no library module imports the command
line: the user-error type (:class:`CLIError`), reading a MODEL argument (``path.py[:name]``), the
checks that no output is an input or another output, and the command line's defaults.
(``bngraph.cli`` re-exports every name here.)"""
from __future__ import annotations

import os
import runpy

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


def load_model_spec(spec: str):
    """``path.py[:name]`` -> the frozen graph (the file may define a builder or a frozen graph)."""
    from .graph import GraphBase as Graph  # a DSL builder or a frozen graph

    path, _, name = spec.partition(":")
    name = name or "model"
    if not path.endswith(".py"):
        raise CLIError(f"MODEL must be path/to/file.py[:name], got {spec!r}")
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
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
