"""The graph as an SVG picture: Graphviz's layout when its ``dot`` is installed, else a built-in
layered layout, so the report never needs Graphviz.

The built-in layout is the classic one for a dataflow graph (Sugiyama's, simplified): every op
node goes one layer below the lowest node that feeds it, a param, state or input one layer above
its first reader, a graph output one below its producer; the order within a layer is improved by a
few barycenter sweeps (each node moves towards the mean place of its neighbours in the layer
above, then below); each layer is a row of boxes, centred, and each edge a curve from the bottom
of its source to the top of its reader.

Both pictures tell the kinds apart as ``bngraph show --out`` does (:mod:`bngraph.interop.dot`):
inputs green, params orange, state blue, ops white, the loss red; batch-sized values are drawn
bold, params and state dashed; a fused op says what it fused (``batchnorm + relu (fused)``).
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess

from ..interop.dot import FUSED, to_dot
from ..ir import BATCH
from ..ops import OPS

CHAR_W, LINE_H, PAD, ROW_GAP, COL_GAP = 6.6, 14, 8, 46, 18
MAX_LABEL = 48  # characters of a label line (longer ones are cut with an ellipsis; the tooltip has it whole)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def node_label(n) -> list:
    """The lines of an op node's box: its first output and type, the op (or what it fused), its
    attributes that matter."""
    if n.op in FUSED:
        head = FUSED[n.op].format(act=n.attr.get("act", "?")) + " (fused)"
    else:
        head = n.op
    more = f" (+{len(n.outputs) - 1})" if len(n.outputs) > 1 else ""
    shown = [f"mode={n.attr['mode']}"] if "mode" in n.attr else []
    return [f"%{n.outputs[0].name}: {n.outputs[0].type}{more}", head] + ([", ".join(shown)] if shown else [])


def _items(g) -> tuple:
    """``(boxes, edges)``: boxes ``{id: dict(kind, lines, title)}``, edges ``[(src, dst, style)]``."""
    boxes, source, edges = {}, {}, []
    for kind, values in (("input", g.inputs), ("param", g.params), ("state", g.state)):
        for v in values:
            boxes[f"{kind}:{v.name}"] = dict(kind=kind, lines=[f"%{v.name}: {v.type}"], title=f"{kind} %{v.name}: {v.type}")
            source[v.name] = f"{kind}:{v.name}"
    values = g.values()
    for k, n in enumerate(g.nodes):
        nid = f"node:{k}"
        kind = "loss" if OPS.get(n.op) is not None and OPS[n.op].kind == "loss" else "op"
        boxes[nid] = dict(kind=kind + (" fused" if n.op in FUSED else ""), lines=node_label(n), title=str(n))
        for i in n.inputs:
            t = values[i].type
            style = "batch" if BATCH in t.shape else "learned" if values[i].kind in ("param", "state") else "small"
            edges.append((source[i], nid, style))
        for o in n.outputs:
            source[o.name] = nid
    for key, v in g.outputs:
        boxes[f"output:{key}"] = dict(kind="output", lines=[key], title=f"graph output {key} = %{v}")
        edges.append((source[v], f"output:{key}", "small"))
    return boxes, edges


def _layers(boxes: dict, edges: list) -> dict:
    preds, succs = {b: [] for b in boxes}, {b: [] for b in boxes}
    for s, d, _ in edges:
        preds[d].append(s)
        succs[s].append(d)
    layer = {}
    for b in boxes:  # boxes are in topological order: leaves, then nodes, then outputs
        if not boxes[b]["kind"].startswith(("op", "loss", "output")):
            continue
        layer[b] = 1 + max((layer.get(p, 0) for p in preds[b]), default=0)
    for b in boxes:
        if b not in layer:  # a leaf: just above its first reader
            layer[b] = max(0, min((layer[s] for s in succs[b] if s in layer), default=1) - 1)
    return layer


def _order(layer: dict, edges: list) -> list:
    rows = {}
    for b, l in layer.items():
        rows.setdefault(l, []).append(b)
    rows = [rows.get(i, []) for i in range(max(rows, default=-1) + 1)]
    up, down = {}, {}
    for s, d, _ in edges:
        down.setdefault(s, []).append(d)
        up.setdefault(d, []).append(s)
    for sweep in range(4):
        rng = range(1, len(rows)) if sweep % 2 == 0 else range(len(rows) - 2, -1, -1)
        for i in rng:
            ref = rows[i - 1] if sweep % 2 == 0 else rows[i + 1]
            at = {b: k for k, b in enumerate(ref)}
            near = up if sweep % 2 == 0 else down
            def key(b, pos=dict((b, k) for k, b in enumerate(rows[i]))):
                ks = [at[n] for n in near.get(b, ()) if n in at]
                return sum(ks) / len(ks) if ks else pos[b]
            rows[i] = sorted(rows[i], key=key)
    return rows


def builtin_svg(g, css_id: str) -> str:
    """The graph drawn with the built-in layered layout: an ``<svg>`` element."""
    boxes, edges = _items(g)
    rows = _order(_layers(boxes, edges), edges)
    size = {b: (max(len(_cut(t)) for t in v["lines"]) * CHAR_W + 2 * PAD, len(v["lines"]) * LINE_H + 2 * PAD - 4)
            for b, v in boxes.items()}
    widths = [sum(size[b][0] for b in r) + COL_GAP * max(0, len(r) - 1) for r in rows]
    total_w = max(widths, default=100) + 2 * PAD
    pos, y = {}, PAD
    for r, w in zip(rows, widths):
        x, h = (total_w - w) / 2, max((size[b][1] for b in r), default=0)
        for b in r:
            pos[b] = (x, y + (h - size[b][1]) / 2)
            x += size[b][0] + COL_GAP
        y += h + ROW_GAP
    total_h = y - ROW_GAP + PAD
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" viewBox="0 0 {total_w:.0f} {total_h:.0f}" '
           f'width="{total_w:.0f}" height="{total_h:.0f}" aria-labelledby="{css_id}-t">',
           f'<title id="{css_id}-t">graph {html.escape(g.name)}</title>',
           f'<defs><marker id="{css_id}-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>']
    for s, d, style in edges:
        (sx, sy), (dx, dy) = pos[s], pos[d]
        x1, y1 = sx + size[s][0] / 2, sy + size[s][1]
        x2, y2 = dx + size[d][0] / 2, dy
        mid = (y1 + y2) / 2
        out.append(f'<path class="edge {style}" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
                   f'{x2:.1f},{y2:.1f}" marker-end="url(#{css_id}-arrow)"/>')
    for b, v in boxes.items():
        (x, y), (w, h) = pos[b], size[b]
        out.append(f'<g class="box {v["kind"]}"><title>{html.escape(v["title"])}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="4"/>')
        for i, t in enumerate(v["lines"]):
            cls = ' class="head"' if i == 1 else ""
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + PAD + 9 + i * LINE_H:.1f}" text-anchor="middle"{cls}>'
                       f'{html.escape(_cut(t))}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def graphviz_svg(g, css_id: str, timeout: float = 60) -> str | None:
    """The graph laid out by Graphviz's ``dot`` (the DOT text of ``bngraph show --format dot``), or
    None when ``dot`` is not installed or fails: the caller then draws it itself."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-Tsvg"], input=to_dot(g).encode(), capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    svg = proc.stdout.decode("utf-8", errors="replace")
    svg = svg[svg.find("<svg"):]  # no XML prolog or DOCTYPE inside HTML
    svg = re.sub(r'\sid="([^"]*)"', lambda m: f' id="{css_id}-{m.group(1)}"', svg)  # ids unique in the page
    return svg.replace("<svg ", '<svg class="graph dot" role="img" ', 1)


def graph_svg(g, css_id: str, layout: str = "auto") -> tuple:
    """``(svg, layout used)``: ``layout`` 'auto' (Graphviz when installed), 'graphviz' or 'builtin'."""
    if layout not in ("auto", "graphviz", "builtin"):
        raise ValueError(f"layout must be 'auto', 'graphviz' or 'builtin', got {layout!r}")
    if layout != "builtin":
        svg = graphviz_svg(g, css_id)
        if svg is not None:
            return svg, "graphviz"
        if layout == "graphviz":
            raise OSError("layout='graphviz' needs Graphviz's 'dot' program, which is not on PATH "
                          "(apt-get install graphviz); layout='auto' falls back to the built-in layout")
    return builtin_svg(g, css_id), "builtin"
