"""Standalone inference code: a Python module and an ``.npz`` of weights that need only NumPy.

The module is the NumPy target's generated ``forward`` of the inference pipeline (batch norm folded
into the weights), exactly as ``bngraph emit --inference`` prints it, followed by a small loader
(``LOADER``): ``predict(X)`` takes rows of examples like ``model.forward`` and returns
``(m, outputs)``. The weights are read with ``np.load(..., allow_pickle=False)``.
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
N_FEATURES = {n_features}
_PARAMS = None


def load_params(path=WEIGHTS):
    """The folded params by IR name (an .npz: plain arrays, never unpickled)."""
    with np.load(path, allow_pickle=False) as f:
        return {{k: f[k].astype(DTYPE) for k in f.files}}


def predict(X, params=None):
    """The model's output for X of shape (m, {n_features}) (rows are examples): (m, outputs)."""
    global _PARAMS
    if params is None:
        if _PARAMS is None:
            _PARAMS = load_params()
        params = _PARAMS
    X = np.asarray(X, dtype=DTYPE)
    if X.ndim != 2 or X.shape[1] != N_FEATURES:
        raise ValueError(f"X must have shape (m, {{N_FEATURES}}), got {{X.shape}}")
    x = np.ascontiguousarray(X.T)  # the generated code works on (features, m)
    out = forward(x, params, {{}}, alloc_forward(X.shape[0]))["out"]
    return {head}
'''

# The output as the source model gives it: the logits, or (an ONNX file ending in Softmax or
# LogSoftmax: bngraph's graph ends with the logits, the head is applied here, over the features).
HEADS = {
    None: "np.array(out.T)",
    "softmax": "_softmax(np.array(out.T, dtype=np.float64)).astype(DTYPE)  # the ONNX model's Softmax",
    "log_softmax": "_log_softmax(np.array(out.T, dtype=np.float64)).astype(DTYPE)  # the ONNX model's LogSoftmax",
}
HEAD_FUNCTIONS = '''

def _log_softmax(z):
    """log softmax over each row (the features of one example), stable: max subtracted first."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softmax(z):
    return np.exp(_log_softmax(z))
'''


def standalone_sources(graph, values: dict, dtype="float32", module: str | None = None, head: str | None = None) -> tuple:
    """(module name, module source, folded params) for ``graph`` with trained ``values``; ``head``:
    'softmax' or 'log_softmax' applied to the output (an imported ONNX model's last op), or None."""
    res = inference_graph(graph, dtype)
    folded = res.remap(values)
    g = res.graph
    renderer = get_target("numpy").renderer
    rendered = renderer.render({"forward": g}, g.dtype, g.name, docs={"forward": PROGRAM_DOCS["forward_inference"]})
    (src,) = rendered.sources.values()
    name = re.sub(r"\W", "_", module or g.name)  # an importable module name
    if keyword.iskeyword(name):
        name += "_"
    (x,) = [v for v in g.inputs]
    if head not in HEADS:
        raise IRError(f"standalone code: unknown output head {head!r}; expected softmax or log_softmax")
    src = src.rstrip("\n") + "\n" + LOADER.format(weights=f"{name}.npz", n_features=x.type.shape[0],
                                                   head=HEADS[head])
    if head is not None:
        src += HEAD_FUNCTIONS
    params = {p.name: np.asarray(folded[p.name]) for p in g.params}
    return name, src, params


def write_standalone(graph, values: dict, out_dir, dtype="float32", module: str | None = None,
                     head: str | None = None) -> list:
    """Write ``<name>.py`` and ``<name>.npz`` into ``out_dir``; returns their paths."""
    name, src, params = standalone_sources(graph, values, dtype, module, head)
    os.makedirs(out_dir, exist_ok=True)
    py, npz = os.path.join(out_dir, f"{name}.py"), os.path.join(out_dir, f"{name}.npz")
    atomic_write(npz, lambda f: np.savez(f, **params))
    atomic_write(py, lambda f: f.write(src), binary=False)
    return [py, npz]


def load_for_deploy(spec: str, seed: int = 0):
    """MODEL for ``emit --standalone``: (graph, values, head). A checkpoint ``.npz`` (a trained
    model), an ``.onnx`` file (``head``: its trailing Softmax/LogSoftmax, else None), or
    ``file.py[:name]`` (untrained: the initial values drawn with ``seed``)."""
    path = spec.partition(":")[0] if not os.path.isfile(spec) else spec
    if path.endswith(".npz"):
        from ..checkpoint import load

        model = load(path)
        values = {**{k: np.asarray(v) for k, v in model.params.items()},
                  **{k: np.asarray(v) for k, v in model.state.items()}}
        return model.graph, values, None
    if path.endswith(".onnx"):
        from .from_onnx import from_onnx

        imp = from_onnx(path, loss=None)
        if imp.inputs_spec and any(s.kind != "flat" or s.axis != 1 for s in imp.inputs_spec):
            raise IRError(f"{path}: standalone code takes (batch, features) rows; this model's input is laid out "
                          f"differently")
        g, out = imp.build(), imp.outputs_spec[0]
        return g.rebuild(outputs=[("out", out.ir), *g.outputs]), imp.bind({}), out.head
    from ..cli import load_model_spec
    from ..init import init_values

    graph = load_model_spec(spec)
    return graph, init_values(graph, seed), None
