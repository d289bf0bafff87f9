"""Standalone inference code: a Python module and an ``.npz`` of weights that need only NumPy.

The module is the NumPy target's generated ``forward`` of the inference pipeline (batch norm folded
into the weights), exactly as ``bngraph emit --inference`` prints it, followed by a small loader
(``LOADER``): ``output(X)`` takes examples (rows ``(m, features)``, or ``(m, C, L)`` / ``(m, C, H, W)``
for a convolutional model) and returns ``(m, outputs)`` like
``model.forward``; ``predict(X)`` what ``model.predict`` returns (class indices for a class loss);
``predict_proba(X)`` class probabilities, where the loss or the ONNX head has classes. The
weights are read with ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

import keyword
import os
import re

import numpy as np

from ..compiler import PROGRAM_DOCS, inference_graph
from ..backends import get_target
from ..fileio import atomic_write
from ..ir import IRError

LOADER = '''

# ---- standalone loader (bngraph emit --standalone): NumPy only -------------------------------------
import os as _os

WEIGHTS = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), {weights!r})
N_FEATURES = {n_features}  # per example: an int, or a convolutional model's (C, L) / (C, H, W)
_SHAPE = N_FEATURES if isinstance(N_FEATURES, tuple) else (N_FEATURES,)
_PARAMS = None


def load_params(path=WEIGHTS):
    """The folded params by IR name (an .npz: plain arrays, never unpickled)."""
    with np.load(path, allow_pickle=False) as f:
        return {{k: f[k].astype(DTYPE) for k in f.files}}


def output(X, params=None):
    """The model's output for X of shape (m, {x_shape}) (m examples): (m, outputs), what
    model.forward(X) returns{head_doc}."""
    global _PARAMS
    if params is None:
        if _PARAMS is None:
            _PARAMS = load_params()
        params = _PARAMS
    X = np.asarray(X, dtype=DTYPE)
    if X.ndim != 1 + len(_SHAPE) or X.shape[1:] != _SHAPE:
        raise ValueError(f"X must have shape (m, {{', '.join(map(str, _SHAPE))}}), got {{X.shape}}")
    # the generated code works on (features, m), or (C, m, d...) for convolutions: one transpose
    x = np.ascontiguousarray(X.T if X.ndim == 2 else np.swapaxes(X, 0, 1))
    out = forward(x, params, {{}}, alloc_forward(X.shape[0]))["out"]
    return {head}


def predict(X, params=None):
    """{predict_doc} (what model.predict(X) returns)."""
    return {predict}
'''

# The output as the source model gives it: the logits, or (an ONNX file ending in Softmax or
# LogSoftmax: bngraph's graph ends with the logits, the head is applied here, over the features).
HEADS = {
    None: "np.array(out.T)",
    "softmax": "_softmax(np.array(out.T, dtype=np.float64)).astype(DTYPE)  # the ONNX model's Softmax",
    "log_softmax": "_log_softmax(np.array(out.T, dtype=np.float64)).astype(DTYPE)  # the ONNX model's LogSoftmax",
}
# What predict (and predict_proba) return, by the training graph's loss, or by an ONNX model's head:
# (predict's docstring, its expression of out = output(X, params), predict_proba's expression or None).
PREDICTIONS = {
    "softmax_cross_entropy": ("Class indices, the largest logit", "out.argmax(axis=1)",
                              "_softmax(np.array(out, dtype=np.float64)).astype(DTYPE)"),
    "nll": ("Class indices, the largest log-probability", "out.argmax(axis=1)",
            "np.exp(np.array(out, dtype=np.float64)).astype(DTYPE)"),
    "sigmoid_bce": ("0/1, a logit above 0", "(out > 0).astype(np.int64)",
                    "(1.0 / (1.0 + np.exp(-np.array(out, dtype=np.float64)))).astype(DTYPE)"),
    "mse": ("The predicted values (the output)", "out", None),
    "softmax": ("Class indices, the most probable", "out.argmax(axis=1)", "out"),
    "log_softmax": ("Class indices, the most probable", "out.argmax(axis=1)",
                    "np.exp(np.array(out, dtype=np.float64)).astype(DTYPE)"),
    None: ("The output (no loss or head says what to predict)", "out", None),
}
PREDICT_PROBA = '''

def predict_proba(X, params=None):
    """Class probabilities (m, classes) (m, outputs for a sigmoid): the output made probabilities."""
    out = output(X, params)
    return {proba}
'''
HEAD_FUNCTIONS = '''

def _log_softmax(z):
    """log softmax over each row (the features of one example), stable: max subtracted first."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softmax(z):
    return np.exp(_log_softmax(z))
'''


# file names Python, pip or pytest treat specially wherever they are found, importable or not
RESERVED = frozenset({"setup", "conftest", "sitecustomize", "usercustomize", "__init__", "__main__"})
MARKER = "# ---- standalone loader (bngraph emit --standalone)"  # in LOADER: our own module, to overwrite


def _importable(name: str, out_dir=None) -> bool:
    """Would ``import name`` find a module other than one in the current folder or ``out_dir``?
    (Those two hold the files written before, which are overwritten, or refused, by name.)"""
    import importlib.machinery
    import sys

    if name in sys.builtin_module_names or name in getattr(sys, "stdlib_module_names", ()):
        return True
    skip = {os.path.realpath(os.getcwd())} | ({os.path.realpath(out_dir)} if out_dir is not None else set())
    path = [p for p in sys.path if isinstance(p, str) and os.path.realpath(p or ".") not in skip]
    try:
        if importlib.machinery.PathFinder.find_spec(name, path) is not None:
            return True
    except (ImportError, ValueError, OSError):
        return True  # cannot tell: take it as taken
    for finder in sys.meta_path:  # editable installs and other finders that are not sys.path entries
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        if finder in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter):
            continue
        try:
            spec = finder.find_spec(name, None)
        except Exception:  # a third-party finder that fails: not a module it knows
            continue
        if spec is not None:
            return True
    return False


def shadows(name: str, out_dir=None) -> bool:
    """Would a file ``name.py`` shadow (or be shadowed by) a module Python imports, or be a file
    that Python, pip or pytest treat specially?"""
    return name in RESERVED or _importable(name, out_dir)


def module_name(text: str | None, out_dir=None, given: bool = False) -> tuple:
    """``(name, why)``: a safe module name for the standalone files. From a graph's name (untrusted:
    an ONNX file's): characters that are not a Python identifier's become ``_``, and a name that
    would shadow a module (``numpy``, ``os``, ``setup``...) gets ``_model`` appended (``why`` says
    so; else None). A name ``given`` by the caller is checked instead, a ValueError if unsafe."""
    if given:
        if not isinstance(text, str) or not text.isidentifier() or keyword.iskeyword(text):
            raise ValueError(f"standalone code: module name {text!r} is not a Python identifier (it names the "
                             f"files <name>.py and <name>.npz inside the folder)")
        if shadows(text, out_dir):
            raise ValueError(f"standalone code: module name {text!r} would shadow the module Python imports by "
                             f"that name (or a file Python, pip or pytest treat specially); choose another")
        return text, None
    name = re.sub(r"\W", "_", text or "") or "model"  # an importable module name
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"m_{name}" if name[0].isdigit() else name + "_"
    if not shadows(name, out_dir):
        return name, None
    safe = f"{name}_model"
    while shadows(safe, out_dir):
        safe += "_"
    return safe, (f"the graph's name {text!r} would make {name}.py, which shadows the module {name!r} (or is a "
                  f"file Python, pip or pytest treat specially); writing {safe}.py and {safe}.npz instead")


def standalone_sources(graph, values: dict, dtype="float32", module: str | None = None, head: str | None = None,
                       out_dir=None) -> tuple:
    """(module name, module source, folded params) for ``graph`` with trained ``values``; ``head``:
    'softmax' or 'log_softmax' applied to the output (an imported ONNX model's last op), or None.
    ``module``: the name (checked: an identifier that shadows no importable module), else the
    graph's (made safe: :func:`module_name`)."""
    name, _ = module_name(module, out_dir, given=True) if module is not None else module_name(graph.name, out_dir)
    res = inference_graph(graph, dtype)
    folded = res.remap(values)
    g = res.graph
    rendered = get_target("numpy").render({"forward": g}, g.dtype, g.name,
                                           docs={"forward": PROGRAM_DOCS["forward_inference"]})
    (src,) = rendered.sources.values()
    (x,) = [v for v in g.inputs]
    if head not in HEADS:
        raise IRError(f"standalone code: unknown output head {head!r}; expected softmax or log_softmax")
    loss = graph.loss_node
    doc, predict, proba = PREDICTIONS[head if head is not None or loss is None else loss.op]
    shape = x.type.shape  # (features, m) or a spatial (C, m, d...)
    per_example = shape[0] if len(shape) == 2 else (shape[0], *shape[2:])
    src = src.rstrip("\n") + "\n" + LOADER.format(
        weights=f"{name}.npz", n_features=per_example, x_shape=", ".join(str(d) for d in (shape[0], *shape[2:])),
        head=HEADS[head],
        head_doc="" if head is None else f" (the ONNX model's {'Softmax' if head == 'softmax' else 'LogSoftmax'} "
                                         f"applied)",
        predict_doc=doc, predict=f"output(X, params)" if predict == "out" else predict.replace(
            "out", "output(X, params)", 1))
    if proba is not None:
        src += PREDICT_PROBA.format(proba=proba)
    if head is not None or proba is not None:
        src += HEAD_FUNCTIONS
    params = {p.name: np.asarray(folded[p.name]) for p in g.params}
    return name, src, params


def ours(py_path) -> bool:
    """Is the file at ``py_path`` a standalone module bngraph wrote (which a new one may replace)?"""
    try:
        with open(py_path, encoding="utf-8", errors="replace") as f:
            return MARKER in f.read(4 << 20)
    except OSError:
        return False


def standalone_paths(graph, out_dir, module: str | None = None) -> tuple:
    """``(py, npz, why)``: where :func:`write_standalone` would write, and why the name is not the
    graph's (None if it is)."""
    out_dir = os.fspath(out_dir)
    name, why = module_name(module, out_dir, given=True) if module is not None else module_name(graph.name, out_dir)
    return os.path.join(out_dir, f"{name}.py"), os.path.join(out_dir, f"{name}.npz"), why


def check_overwrite(py, npz, what: str = "out_dir") -> None:
    """A FileExistsError if writing ``py``/``npz`` would replace a file that is not bngraph's standalone
    code: an existing ``py`` must be a standalone module; an existing ``npz``, its weights (beside it)."""
    if os.path.lexists(py) and not (os.path.isfile(py) and ours(py)):
        raise FileExistsError(f"{what}: {py} exists and is not a bngraph standalone module; it is not overwritten "
                              f"(move it, or choose another folder)")
    if os.path.lexists(npz) and not (os.path.isfile(npz) and os.path.isfile(py) and ours(py)):
        raise FileExistsError(f"{what}: {npz} exists and is not the weights of a bngraph standalone module (no "
                              f"standalone {os.path.basename(py)} beside it); it is not overwritten (move it, or "
                              f"choose another folder)")


def write_standalone(graph, values: dict, out_dir, dtype="float32", module: str | None = None,
                     head: str | None = None, what: str = "out_dir") -> list:
    """Write ``<name>.py`` and ``<name>.npz`` into ``out_dir``; returns their paths. ``<name>``:
    ``module`` (a ValueError if it is not an identifier or shadows an importable module), else the
    graph's name made safe (:func:`module_name`: never a path, never a module Python would import
    instead, e.g. ``numpy`` becomes ``numpy_model``). Files that exist are replaced only if they are
    bngraph's standalone code (a FileExistsError otherwise; ``what`` names ``out_dir`` in it)."""
    out_dir = os.fspath(out_dir)
    py, npz, _ = standalone_paths(graph, out_dir, module)
    check_overwrite(py, npz, what)
    name, src, params = standalone_sources(graph, values, dtype, os.path.basename(py)[:-3], head, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(npz, lambda f: np.savez(f, **params), make_folder=True)
    atomic_write(py, lambda f: f.write(src), binary=False, make_folder=True)
    return [py, npz]


def load_for_deploy(spec: str, seed: int = 0):
    """MODEL for ``emit --standalone``: (graph, values, head), MODEL read as every command reads it
    (``bngraph.cliutil.load_model``). A checkpoint ``.npz`` (a trained model), an ``.onnx`` file
    (``head``: its trailing Softmax/LogSoftmax, else None), or ``file.py[:name]`` (untrained: the
    initial values drawn with ``seed``)."""
    from ..cliutil import load_model

    src = load_model(spec, loss=None)
    if src.kind == "checkpoint":
        from ..model import load

        model = load(src.path)
        values = {**{k: np.asarray(v) for k, v in model.params.items()},
                  **{k: np.asarray(v) for k, v in model.state.items()}}
        return model.graph, values, None
    if src.kind == "onnx":
        imp = src.imported
        if imp.inputs_spec and any(s.kind not in ("flat", "spatial") or s.axis != 1 for s in imp.inputs_spec):
            raise IRError(f"{src.path}: standalone code takes (batch, features) rows or (batch, C, ...) examples; "
                          f"this model's input is laid out differently")
        g, out = imp.build(), imp.outputs_spec[0]
        return g.rebuild(outputs=[("out", out.ir), *g.outputs]), imp.bind({}), out.head
    from ..init import init_values

    return src.graph, init_values(src.graph, seed), None
