"""The IR as text (grammar: docs/ir.md). One node per line, every value with its type.

A leaf module: it reads the fields of values (``name, type, classes``), nodes (``op, attrs,
inputs, outputs``) and graphs, and imports nothing from bngraph, so :mod:`bngraph.ir` can use it
for ``str(node)`` without an import cycle.
"""
from __future__ import annotations


def format_attr_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):  # an Ints attribute: 3x3, 1x1x0x0
        return "x".join(str(int(d)) for d in v)
    return str(v)


def format_attrs(attrs) -> str:
    """``[k=v, ...]`` sorted by key; boolean attributes that are false are left out (their default)."""
    shown = [(k, v) for k, v in attrs if v is not False]
    if not shown:
        return ""
    return "[" + ", ".join(f"{k}={format_attr_value(v)}" for k, v in shown) + "]"


def format_binder(v) -> str:
    s = f"%{v.name}: {v.type}"
    if v.classes is not None:
        s += f" classes={v.classes}"
    return s


def format_node(n) -> str:
    outs = ", ".join(format_binder(o) for o in n.outputs)
    args = ", ".join(f"%{i}" for i in n.inputs)
    return f"{outs} = {n.op}{format_attrs(n.attrs)} {args}".rstrip()


def format_outputs(outputs) -> str:
    return ", ".join(f"{k}=%{v}" for k, v in outputs)


def format_graph(g) -> str:
    lines = [f"graph {g.name}({', '.join(format_binder(v) for v in g.inputs)}) {{"]
    lines += [f"  param {format_binder(p)}" for p in g.params]
    lines += [f"  state {format_binder(s)}" for s in g.state]
    lines += [f"  {format_node(n)}" for n in g.nodes]
    lines.append(f"  return {format_outputs(g.outputs)}".rstrip())  # a graph without outputs: "  return"
    lines.append("}")
    return "\n".join(lines)
