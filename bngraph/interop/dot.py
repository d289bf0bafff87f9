"""Pictures of a graph: Graphviz DOT text, and SVG/PNG through Graphviz's ``dot`` when installed.

Inputs are green, params (learned) orange boxes, state (running statistics) blue cylinders, ops
white boxes labelled with the op and its attributes; a fused op says what it fused
(``batchnorm + relu``). Edges carry the value's type; batch-sized values (``[..., m]``) are drawn
bold, per-unit vectors thin. Every label is escaped: names come from files too.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from ..graph import as_graph
from ..ir import BATCH

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


def _label(node) -> str:
    attrs = node.attr
    head = FUSED[node.op].format(act=attrs.get("act", "?")) + " (fused)" if node.op in FUSED else node.op
    shown = [f"{k}={v}" for k, v in sorted(attrs.items()) if k != "act"]
    outs = ", ".join(f"%{o.name}" for o in node.outputs)
    return "\n".join([outs, head] + ([", ".join(shown)] if shown else []))


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
    loss_ops = {"softmax_cross_entropy", "mse", "sigmoid_bce"}
    values = g.values()
    for k, n in enumerate(g.nodes):
        node_id = f"node:{k}"
        style = STYLE["loss" if n.op in loss_ops else "op"]
        lines.append(f"  {_q(node_id)} [label={_q(_label(n))}, {style}];")
        for o in n.outputs:
            source[o.name] = node_id
        for i in n.inputs:
            t = values[i].type
            batch = BATCH in t.shape
            lines.append(f"  {_q(source[i])} -> {_q(node_id)} [label={_q(f'{i}: {t}')}"
                         f"{', penwidth=2' if batch else ', style=dashed' if values[i].kind in ('param', 'state') else ''}];")
    for key, v in g.outputs:
        out_id = f"output:{key}"
        lines.append(f"  {_q(out_id)} [label={_q(key)}, {STYLE['output']}];")
        lines.append(f"  {_q(source[v])} -> {_q(out_id)} [label={_q('%' + v)}];")
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
