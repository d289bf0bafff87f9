"""The reference interpreter: evaluates any graph with each op's reference NumPy semantics.

It is deliberately plain (no buffers, no fusion tricks) and is the oracle for every backend.
Arrays are in the compiler's layout: activations (features, m), labels (m,).
"""
from __future__ import annotations

import numpy as np

from .datacheck import check_labels
from .graph import as_graph
from .ir import IRError
from .ops import get_op, loss_options


def interpret(g, feeds: dict, values: dict, return_env: bool = False) -> dict:
    """Evaluate ``g``. ``feeds``: input name -> array; ``values``: param/state name -> array.
    Returns output key -> array (and the whole environment when ``return_env``)."""
    g = as_graph(g)
    env = {}
    m = None
    for v in g.inputs:
        if v.name not in feeds:
            raise IRError(f"graph {g.name}: no value fed for input %{v.name}: {v.type}")
        a = np.asarray(feeds[v.name])
        if a.ndim != v.type.rank:
            raise IRError(f"input %{v.name}: expected shape {v.type}, got array of shape {a.shape}")
        for d, s in zip(v.type.shape, a.shape):
            if d == "m":
                if m is not None and s != m:
                    raise IRError(f"input %{v.name}: batch size {s} differs from {m} of the other inputs")
                m = s
            elif d != s:
                raise IRError(f"input %{v.name}: expected shape {v.type}, got array of shape {a.shape}")
        if v.classes is not None:  # out-of-range labels would index silently (negative ones wrap)
            a = check_labels(a, v.classes, f"input %{v.name}", at="index", cls=IRError, allow_float=False,
                             ignore_index=_ignored_label(g, v.name))
        env[v.name] = a
    for v in (*g.params, *g.state):
        if v.name not in values:
            raise IRError(f"graph {g.name}: no value for {v.kind} %{v.name}: {v.type}")
        a = np.asarray(values[v.name])
        if a.shape != tuple(v.type.shape):
            raise IRError(f"{v.kind} %{v.name}: expected shape {tuple(v.type.shape)}, got {a.shape}")
        env[v.name] = a
    for n in g.nodes:
        outs = get_op(n.op).ref([env[i] for i in n.inputs], n.attr)
        for o, a in zip(n.outputs, outs):
            env[o.name] = np.asarray(a)
    result = {k: env[v] for k, v in g.outputs}
    return (result, env) if return_env else result


def _ignored_label(g, name: str):
    """The ``ignore_index`` that every node reading the labels ``name`` shares (class losses and
    their gradients), else None: a label outside [0, classes) is then an error, as some reader
    would index with it."""
    readers = [n for n in g.nodes if name in n.inputs]
    if not readers or any("ignore_index" not in {**get_op(n.op).attrs, **get_op(n.op).optional_attrs}
                          for n in readers):
        return None
    found = {loss_options(n.attr)[1] for n in readers}
    return found.pop() if len(found) == 1 else None
