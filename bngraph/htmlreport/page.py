"""``bg.report``: one self-contained HTML file that shows a model -- the graph before and after the
passes, what each pass changed, the generated code linked line by line to the IR, and how training
went.

The page is rendered from ``templates/report/`` (Jinja2, autoescaped: every name may come from a
file) with its CSS, SVG and script inline: it fetches nothing and opens from disk. What it shows is
computed here from what the compiler already records: the pipeline's report and snapshots
(:mod:`bngraph.htmlreport.passlog`), the target's rendered sources and plans
(:mod:`bngraph.htmlreport.codemap`), the history of ``fit`` (:mod:`bngraph.htmlreport.curves`), and the
graph drawn by :mod:`bngraph.htmlreport.drawing`.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

import jinja2

from ..backends.base import templates_dir
from ..compiler import PROGRAM_DOCS, build_programs
from ..fileio import atomic_write
from ..graph import as_graph
from ..ir import IRError, ir_dtype
from ..passes.base import numel
from ..printer import format_binder, format_node, format_outputs
from ..version import __version__
from .codemap import map_code
from .curves import training_view
from .drawing import graph_svg
from .passlog import node_origins, origins_by_value, pass_steps


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir("report"))),
                              undefined=jinja2.StrictUndefined, autoescape=True, trim_blocks=True,
                              lstrip_blocks=True)


def _parts(obj, dtype, passes, history):
    """``(source graph, Programs-like, dtype, history, stop reason, kind)`` of whatever was given."""
    if all(hasattr(obj, k) for k in ("source_graph", "report", "programs")):  # a compiled Model (bngraph.model,
        # not imported here: it imports training, which writes fit's report with this module)
        hist = history if history is not None else getattr(obj, "history", None)
        return obj.source_graph, obj.report, obj.programs, obj.dtype.name, hist, "compiled model"
    graph = obj.build() if callable(getattr(obj, "build", None)) else obj
    graph = as_graph(graph)
    built = build_programs(graph, "float32" if dtype is None else dtype, passes)
    return built.source, built.pipeline, built.programs, "float32" if dtype is None else dtype, history, "graph"


def _ir_rows(code, by_value: dict, program_graph) -> list:
    """The IR lines of one lowered program: headers as text, each node a selectable line."""
    g = code.graph
    rows = [{"text": f"graph {g.name}({', '.join(format_binder(v) for v in g.inputs)}) {{"}]
    rows += [{"text": f"  param {format_binder(p)}"} for p in g.params]
    rows += [{"text": f"  state {format_binder(s)}"} for s in g.state]
    written = {format_node(n) for n in program_graph.nodes}
    for k, n in enumerate(g.nodes):
        line = format_node(n)
        lines = code.lines_of(k)
        origins = node_origins(n, by_value)
        fused = origins if len(origins) > 1 else []
        lowered = [] if line in written else [format_node(m) for m in program_graph.nodes
                                               if {o.name for o in m.outputs} & {o.name for o in n.outputs}]
        rows.append({"id": f"{code.name}-{k}", "text": "  " + line, "op": n.op, "name": n.name,
                     "count": len(lines), "fused": fused, "lowered": lowered})
    rows.append({"text": f"  return {format_outputs(g.outputs)}".rstrip()})
    rows.append({"text": "}"})
    return rows


def _code_parts(code) -> list:
    out, seen = [], set()  # the first line of a node's code, over all files, is the link target
    for p in code.parts:
        lines = []
        for i, (text, owner) in enumerate(zip(p.lines, p.owner)):
            node = None if owner is None else f"{code.name}-{owner}"
            first = node is not None and node not in seen
            if node is not None:
                seen.add(node)
            lines.append({"no": p.first + i, "text": text, "node": node, "first": first})
        out.append({"file": p.file, "lines": lines})
    return out


def _graph_stats(g) -> dict:
    return {"nodes": len(g.nodes), "params": sum(numel(p) for p in g.params),
            "param_names": len(g.params), "state": len(g.state)}


def build_html(obj, *, target: str = "numpy", dtype=None, passes=None, history=None, stop_reason=None,
               layout: str = "auto", source: str | None = None) -> str:
    """The report's HTML text (see :func:`report`)."""
    from ..backends import get_target

    graph, pipeline, programs, dtype, hist, kind = _parts(obj, dtype, passes, history)
    steps, lineage = pass_steps(pipeline)
    by_value = origins_by_value(lineage)
    code_error, views = None, []
    try:
        rendered = get_target(target).render(programs, ir_dtype(dtype), graph.name, docs=PROGRAM_DOCS)
    except IRError as e:  # a target that cannot lower this model: said in the page, the rest still shown
        code_error = str(e)
    else:
        for code in map_code(rendered):
            views.append({"name": code.name, "doc": PROGRAM_DOCS.get(code.name, "").split("\n")[0],
                          "ir": _ir_rows(code, by_value, programs[code.name]), "parts": _code_parts(code)})
    before_svg, used = graph_svg(graph, "g-before", layout)
    after_svg, _ = graph_svg(pipeline.graph, "g-after", layout)
    if stop_reason is None:
        stop_reason = getattr(hist, "stop_reason", None)
    data = {
        "name": graph.name, "version": __version__, "target": target, "dtype": str(dtype), "kind": kind,
        "source": source or kind, "layout": used, "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "passes": [s.name for s in steps], "before": _graph_stats(graph), "after": _graph_stats(pipeline.graph),
        "before_svg": before_svg, "after_svg": after_svg, "steps": steps,
        "algebra": {s.name: _algebra(s.name) for s in steps},
        "programs": views, "code_error": code_error, "training": training_view(hist, stop_reason),
        "files": sorted({p["file"] for v in views for p in v["parts"]}),
    }
    return _env().get_template("report.html.j2").render(**data)


def _algebra(name: str) -> str:
    from ..passes import PASSES

    p = PASSES.get(name)
    return p.algebra if p is not None else ""


def report(obj, path, *, target: str = "numpy", dtype=None, passes=None, history=None, stop_reason=None,
           layout: str = "auto", source: str | None = None) -> str:
    """Write a self-contained HTML report of a model to ``path`` (atomically) and return the path.

    ``obj``: a :class:`~bngraph.Model` (its passes, programs and the history of its ``fit`` calls,
    which checkpoints carry), a DSL graph (``bg.Graph``, a frozen graph) or an imported one
    (``bg.from_onnx``, ``bg.from_torch``). The page shows the graph before and after the passes
    (drawn by Graphviz's ``dot`` when installed, else by a built-in layered layout; ``layout``
    'auto', 'graphviz' or 'builtin'), each pass's IR diff, sentences and the params it removed or
    remapped, the code of ``target`` (default NumPy; any registered target) with every statement
    linked to its IR node, and, when there is a ``history`` (a ``History`` or a list of per-epoch
    dicts), the training curves and ``stop_reason``. ``dtype`` and ``passes`` apply to a graph (a
    model has its own). Opens from disk; fetches nothing. See docs/report.md."""
    text = build_html(obj, target=target, dtype=dtype, passes=passes, history=history, stop_reason=stop_reason,
                      layout=layout, source=source)
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
