"""``Model.summary()``: the model as a table, Keras's way, plus what the passes did.

One row per layer of the graph as written: a node and the nodes named after it (``fc1.matmul``
and ``fc1`` are layer ``fc1``; ``bn1``'s running-statistics update is ``bn1``'s), its ops, its
output shape (rows are examples: ``(batch, 32)``) and the parameters it reads in the compiled
model, with those the passes removed named. Then the totals and each pass's changes
(``model.report``).
"""
from __future__ import annotations

import math

from .ops import OPS


def _layer_of(name: str, nodes: set) -> str:
    """The layer a node belongs to: the shortest dotted prefix of its name that names a node."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if ".".join(parts[:i]) in nodes:
            return ".".join(parts[:i])
    return name


def _shape(shape) -> str:
    if not shape:
        return "()"
    if shape[-1] == "m":  # the graph's (features, m) is the API's (m, features)
        dims = ("batch", *shape[:-1])
    elif len(shape) > 2 and shape[1] == "m":  # a spatial (C, m, d...) is the API's (m, C, d...)
        dims = ("batch", shape[0], *shape[2:])
    else:
        dims = shape
    return "(" + ", ".join(map(str, dims)) + ")"


def _size(value) -> int:
    return math.prod(d for d in value.type.shape if isinstance(d, int))


def summary_text(model) -> str:
    g = model.source_graph
    compiled = {p.name for p in model.graph.params}
    held = {v.name: v for v in (*g.params, *g.state)}
    node_names = {n.name for n in g.nodes}
    layers: dict = {}  # layer -> {"ops": [...], "out": shape, "params": [...], "state": [...]}
    for v in g.inputs:
        if v.name == model.inputs.x:
            layers[v.name] = {"ops": ["input"], "out": _shape(v.type.shape), "params": [], "state": []}
    for n in g.nodes:
        key = _layer_of(n.name, node_names)
        row = layers.setdefault(key, {"ops": [], "out": None, "params": [], "state": []})
        row["ops"].append(n.op)
        if OPS[n.op].kind != "state" and (row["out"] is None or n.name == key):
            row["out"] = _shape(n.outputs[0].type.shape)
        for i in n.inputs:
            if i in held and i not in row["params"] + row["state"]:
                row["params" if held[i].kind == "param" else "state"].append(i)
    removed = {}
    for pass_name, changes in model.report.report:
        for p in held:
            if p not in compiled and held[p].kind == "param" and any(f"removed {p} " in c for c in changes):
                removed.setdefault(p, pass_name)
    table = [("layer", "ops", "output", "params")]
    for key, row in layers.items():
        kept = sum(_size(held[p]) for p in row["params"] if p in compiled)
        notes = [f"{p} removed by {removed.get(p, 'the passes')}" for p in row["params"] if p not in compiled]
        state = sum(_size(held[s]) for s in row["state"])
        cell = f"{kept:,}" + (f" + {state:,} state" if state else "") + (f" ({'; '.join(notes)})" if notes else "")
        table.append((key, ", ".join(dict.fromkeys(row["ops"])), row["out"] or "", cell))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [f"Model {g.name}: target {model.target}, {model.dtype.name}, loss {model.loss_kind}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in table]
    written = sum(_size(p) for p in g.params)
    trained = sum(_size(p) for p in model.graph.params)
    state = sum(_size(s) for s in model.graph.state)
    change = f" (as written: {written:,}; the passes removed {written - trained:,})" if written != trained else ""
    lines.append(f"parameters: {trained:,}{change}; state: {state:,} values (running statistics and constants)")
    changes = [(name, cs) for name, cs in model.report.report if cs]
    passes = ", ".join(name for name, _ in model.report.report) or "none"
    lines.append(f"passes: {passes}" + ("" if changes else " (no change)"))
    for name, cs in changes:
        lines += [f"  {name}: {c}" for c in cs]
    return "\n".join(lines)
