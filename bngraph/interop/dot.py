"""Pictures of a graph: Graphviz DOT text, and SVG/PNG through Graphviz's ``dot`` when installed.

Inputs are green, params (learned) orange boxes, state (running statistics) blue cylinders, ops
white boxes labelled with what they compute (``%fc1: f32[16,m]``), the op and the attributes that
differ from the op's defaults (``matmul`` without ``ta=False, tb=False``); a fused op says what it
fused (``batchnorm + relu``). Each value is named, with its type, once: by the node that makes it.
An edge is labelled only where its source makes several values (which one it carries); batch-sized
values (``[..., m]``) are drawn bold, params and state dashed. Every label is escaped: names come
from files too.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from ..graph import as_graph
from ..ir import BATCH
from ..ops import OPS

STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#d9f2d9"',
    "param": 'shape=box, style="rounded,filled", fillcolor="#ffe0b3"',
    "state": 'shape=cylinder, style=filled, fillcolor="#cce0ff"',
    "op": 'shape=box, style=filled, fillcolor="#ffffff"',
    "loss": 'shape=box, style=filled, fillcolor="#f2d9d9"',
    "output": 'shape=plaintext',
}
# fused ops: what they stand for (the op table's fusions, named for the reader)
FUSED = {"batchnorm_act": "batchnorm + {act}", "bias_add_act": "bias_add + {act}",
         "batchnorm_act_grad": "batchnorm_grad + {act}'"}


def _q(text) -> str:
    """A DOT string literal: quotes, backslashes and newlines escaped (names are untrusted)."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "")
    return f'"{s}"'


def _defaults(op: str) -> dict:
    """An op's attribute defaults (name -> value; required attributes have none)."""
    opdef = OPS.get(op)
    if opdef is None:
        return {}
    known = {**opdef.attrs, **opdef.optional_attrs}
    return {k: default for k, (_, default) in known.items() if default is not None}


def _label(node) -> str:
    attrs = node.attr
    head = FUSED[node.op].format(act=attrs.get("act", "?")) + " (fused)" if node.op in FUSED else node.op
    defaults = _defaults(node.op)
    shown = [f"{k}={v}" for k, v in sorted(attrs.items())
             if k != "act" and not (k in defaults and _same(v, defaults[k]))]
    outs = [f"%{o.name}: {o.type}" for o in node.outputs]
    return "\n".join(outs + [head] + ([", ".join(shown)] if shown else []))


def _same(value, default) -> bool:
    """An attribute at its default (``1e-05`` is ``1e-5``; ``False`` is not ``0``)."""
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def to_dot(g) -> str:
    """The graph as Graphviz DOT text."""
    g = as_graph(g)
    lines = [f"digraph {_q(g.name)} {{", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];', f"  label={_q('graph ' + g.name)}; labelloc=t;"]
    source = {}
    for kind, values in (("input", g.inputs), ("param", g.params), ("state", g.state)):
        for v in values:
            node_id = f"{kind}:{v.name}"
            lines.append(f"  {_q(node_id)} [label={_q(f'%{v.name}: {v.type}')}, {STYLE[kind]}];")
            source[v.name] = node_id
    values = g.values()
    several = set()  # op nodes that make more than one value: their edges say which
    for k, n in enumerate(g.nodes):
        node_id = f"node:{k}"
        style = STYLE["loss" if OPS.get(n.op) is not None and OPS[n.op].kind == "loss" else "op"]
        lines.append(f"  {_q(node_id)} [label={_q(_label(n))}, {style}];")
        for o in n.outputs:
            source[o.name] = node_id
        if len(n.outputs) > 1:
            several.add(node_id)
        for i in n.inputs:
            batch, learned = BATCH in values[i].type.shape, values[i].kind in ("param", "state")
            look = ["penwidth=2" if batch else "style=dashed" if learned else ""]
            if source[i] in several:
                look.insert(0, f"label={_q('%' + i)}")
            attrs = ", ".join(a for a in look if a)
            lines.append(f"  {_q(source[i])} -> {_q(node_id)}{f' [{attrs}]' if attrs else ''};")
    for key, v in g.outputs:
        out_id = f"output:{key}"
        lines.append(f"  {_q(out_id)} [label={_q(key)}, {STYLE['output']}];")
        label = f" [label={_q('%' + v)}]" if source[v] in several else ""
        lines.append(f"  {_q(source[v])} -> {_q(out_id)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(OSError):
    """Graphviz's ``dot`` program is not installed."""


def render(dot_text: str, path) -> str:
    """Write ``dot_text`` to ``path``: ``.dot``/``.gv`` as text, ``.svg``/``.png`` through Graphviz."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".dot", ".gv"):
        with open(path, "w") as f:
            f.write(dot_text)
        return path
    if ext not in (".svg", ".png"):
        raise ValueError(f"--out {path}: the picture must end in .svg or .png (or .dot for the DOT text)")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(f"rendering {path} needs Graphviz's 'dot' program, which is not on PATH (install "
                              f"Graphviz: apt-get install graphviz, brew install graphviz, conda install graphviz); "
                              f"--format dot prints the DOT text without it")
    proc = subprocess.run([exe, f"-T{ext[1:]}", "-o", path], input=dot_text.encode(), capture_output=True,
                          timeout=120)
    if proc.returncode != 0:
        raise OSError(f"Graphviz's dot failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return path
