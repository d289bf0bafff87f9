"""What each pass of a pipeline did, for the report: the IR before and after as a diff, the pass's
own sentences (``PipelineResult.report``) and skipped rewrites (``notes``), the params and state it
removed, added or remapped, and the lineage of every node (which nodes of the graph as written a
node stands for: a fused ``batchnorm_act`` stands for its ``batchnorm`` and its ``relu``).

The pipeline is replayed pass by pass from ``PipelineResult.input`` (passes are pure functions of
their input graph), so each pass's own ``remap`` can be probed: it is given a random value for every
param and state of the graph before it, and a name it drops, computes anew or changes is reported.
A pass that is not registered (a ``Pass`` object given to ``run_pipeline``) is shown from the
pipeline's IR snapshots, without the remap probe.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np

from ..ir import IRError
from ..parser import parse
from ..passes import PASSES
from ..printer import format_node


@dataclass
class DiffLine:
    """One row of an IR diff: ``kind`` 'same', 'removed', 'added' or 'rewritten' (``old`` -> ``text``)."""

    kind: str
    text: str
    old: str = ""


@dataclass
class PassStep:
    """One pass as run: its sentences, notes, diff and what happened to params and state."""

    name: str
    changes: tuple
    notes: tuple
    diff: list  # [DiffLine]
    removed: list = field(default_factory=list)  # param/state names that the pass removed
    added: list = field(default_factory=list)  # names that are new after it
    remapped: list = field(default_factory=list)  # names the remap gives another value
    probe: str = ""  # why the remap could not be probed, if it could not

    @property
    def changed(self) -> bool:
        return any(d.kind != "same" for d in self.diff)


def _outputs_of(line: str) -> set:
    """The value names a node line (or a param/state line) binds: ``%a: t, %b: t = op ...``."""
    head = line.strip()
    if head.startswith(("param ", "state ")):
        head = head.split(" ", 1)[1]
    lhs = head.split(" = ", 1)[0]
    return {part.split(":", 1)[0].strip().lstrip("%") for part in lhs.split(", %")}


def ir_diff(before: str, after: str) -> list:
    """``[DiffLine]``: the lines of ``after`` with what ``before`` had removed or rewritten. A removed
    line and an added line that bind a common value name are one *rewritten* line."""
    a, b = before.splitlines(), after.splitlines()
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [DiffLine("same", ln) for ln in a[i1:i2]]
            continue
        olds, news = a[i1:i2], b[j1:j2]
        paired = {}
        for j, new in enumerate(news):
            names = _outputs_of(new)
            k = next((k for k, old in enumerate(olds) if k not in paired.values() and names & _outputs_of(old)), None)
            if k is not None:
                paired[j] = k
        used = set(paired.values())
        out += [DiffLine("removed", old) for k, old in enumerate(olds) if k not in used]
        out += [DiffLine("rewritten", new, olds[paired[j]]) if j in paired else DiffLine("added", new)
                for j, new in enumerate(news)]
    return out


def _probe_values(g, seed=0) -> dict:
    """A random value for every param and state of ``g`` (variances positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in (*g.params, *g.state):
        a = rng.standard_normal(v.type.shape)
        out[v.name] = np.abs(a) + 0.5 if "var" in v.name.rsplit(".", 1)[-1] else a
    return out


def _probe_remap(remap, g) -> tuple:
    """``(removed, added, remapped, problem)``: what ``remap`` does to a value dict of ``g``."""
    if remap is None:
        return [], [], [], ""
    values = _probe_values(g)
    try:
        out = remap(dict(values))
    except (KeyError, ValueError, TypeError, IRError, FloatingPointError) as e:
        return [], [], [], f"the remap could not be probed: {e}"
    removed = [k for k in values if k not in out]
    added = [k for k in out if k not in values]
    changed = [k for k in values if k in out and np.shape(out[k]) == np.shape(values[k])
               and not np.array_equal(np.asarray(out[k]), values[k])]
    changed += [k for k in values if k in out and np.shape(out[k]) != np.shape(values[k])]
    return removed, added, changed, ""


def pass_steps(pipeline) -> tuple:
    """``([PassStep], lineage)`` of a :class:`~bngraph.passes.PipelineResult`. ``lineage``: for each
    node line of the final graph, the node lines of the input graph it stands for."""
    g = pipeline.input
    notes = dict(pipeline.notes)
    lineage = {format_node(n): [format_node(n)] for n in g.nodes}
    steps = []
    for (name, changes), (_, text_after) in zip(pipeline.report, pipeline.snapshots):
        before_text = str(g)
        p = PASSES.get(name)
        res = p.run(g) if p is not None else None
        if res is not None and str(res.graph) == text_after:
            after, (removed, added, remapped, problem) = res.graph, _probe_remap(res.remap, g)
        else:  # a pass object outside the registry: its snapshot says what it made
            after, problem = parse(text_after), "this pass is not registered: its remap is not shown"
            removed = added = remapped = []
        before_vals = {v.name for v in (*g.params, *g.state)}
        after_vals = {v.name for v in (*after.params, *after.state)}
        removed = sorted(set(removed) | (before_vals - after_vals))
        added = sorted(set(added) | (after_vals - before_vals))
        remapped = sorted(set(remapped) - set(removed) - set(added))
        lineage = _follow(lineage, g, after)
        steps.append(PassStep(name, tuple(changes), tuple(notes.get(name, ())), ir_diff(before_text, text_after),
                              removed, added, remapped, problem))
        g = after
    return steps, lineage


def _follow(lineage: dict, before, after) -> dict:
    """The lineage after one pass: a node line it kept keeps its origins; a new node stands for the
    removed nodes that bound one of its values (a rewrite or a fusion); anything else is new."""
    kept = {format_node(n) for n in after.nodes}
    gone = [n for n in before.nodes if format_node(n) not in kept]
    out = {}
    for n in after.nodes:
        line = format_node(n)
        if line in lineage and any(format_node(m) == line for m in before.nodes):
            out[line] = lineage[line]
            continue
        mine = {o.name for o in n.outputs}
        origins = []
        for m in gone:
            if mine & {o.name for o in m.outputs}:
                origins += [o for o in lineage.get(format_node(m), [format_node(m)]) if o not in origins]
        out[line] = origins
    return out


def origins_by_value(lineage: dict) -> dict:
    """value name -> the origin lines of the node that binds it (for matching program nodes)."""
    out = {}
    for line, origins in lineage.items():
        for name in _outputs_of(line):
            out[name] = origins
    return out


def node_origins(node, by_value: dict) -> list:
    """The input-graph node lines a program node stands for (by the values it binds), or []."""
    for o in node.outputs:
        if o.name in by_value:
            return by_value[o.name]
    return []
