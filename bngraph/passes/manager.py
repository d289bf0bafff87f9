"""The pass manager: run passes in order, verify after each, print the IR after each, and report."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ..graph import FrozenGraph, as_graph
from ..verifier import VerifyError, verify as verify_graph
from .base import PASSES, Pass, PassError, compose, count_words, numel

TRAINING_PIPELINE = ("fold_bias", "fuse_bn", "fuse_bias_act", "dce")
INFERENCE_PIPELINE = ("fold_bias", "fold_bn_into_weights", "fuse_bn", "fuse_bias_act", "dce")


@dataclass
class PipelineResult:
    """What ``run_pipeline`` returns: the final ``graph``, the ``report`` and ``notes`` of each pass,
    the composed ``remap``, the IR text after each pass (``snapshots``) and the ``input`` graph."""

    graph: FrozenGraph
    report: list  # [(pass name, tuple of change sentences)], one entry per pass run
    remap: Callable[[dict], dict]  # all the passes' remaps composed (identity copy when none)
    snapshots: list  # [(pass name, IR text after it)]
    notes: list = field(default_factory=list)  # [(pass name, tuple of skipped rewrites with reasons)]
    input: FrozenGraph | None = None  # the graph the pipeline started from

    @property
    def changes(self) -> list:
        """Every change sentence, in order, prefixed by its pass."""
        return [f"{name}: {c}" for name, cs in self.report for c in cs]

    def format_report(self) -> str:
        """A human-readable summary: each pass, what it changed and what it kept (and why)."""
        notes = dict(self.notes)
        lines = [f"pipeline {', '.join(name for name, _ in self.report) or '(empty)'} on graph {self.graph.name}"]
        for name, changes in self.report:
            kept = notes.get(name, ())
            if not changes and not kept:
                lines.append(f"  {name}: no change")
                continue
            lines.append(f"  {name}: {count_words(len(changes), 'change') if changes else 'no change'}")
            lines += [f"    - {c}" for c in changes]
            lines += [f"    (skipped) {k}" for k in kept]
        if self.input is not None:
            before, after = _param_count(self.input), _param_count(self.graph)
            lines.append(f"  parameters: {before} -> {after} ({after - before:+d}); "
                         f"nodes: {len(self.input.nodes)} -> {len(self.graph.nodes)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_report()


def _param_count(g) -> int:
    return sum(numel(p) for p in g.params)


def resolve(p) -> Pass:
    """A Pass from a Pass object or a registered name."""
    if isinstance(p, Pass):
        return p
    if isinstance(p, str) and p in PASSES:
        return PASSES[p]
    raise PassError(f"unknown pass {p!r}; registered passes: {', '.join(PASSES)}")


def _has_dead_code(g) -> bool:
    try:
        verify_graph(g)
    except VerifyError:
        return True
    return False


def run_pipeline(g, passes, *, verify: bool = True, print_after: bool = False, file=None) -> PipelineResult:
    """Run ``passes`` (names or Pass objects) in order on ``g``.

    ``verify``: check the input, then ``bngraph.verify(graph, after=<pass>)`` after each pass, so a
    broken graph is blamed on the pass that broke it. (No pass can mutate its input: graphs are
    frozen.) ``g`` may be a DSL builder; it is built once. ``print_after``: print ``// IR after <pass>`` and the graph text after each pass (a compiler's
    print-after-all) to ``file`` (default ``sys.stdout``).
    """
    if isinstance(passes, (str, Pass)):
        passes = [passes]
    plan = [resolve(p) for p in passes]
    g = as_graph(g)
    out = sys.stdout if file is None else file
    allow_dead = False
    if verify:
        verify_graph(g, allow_dead=True)  # a broken input is the caller's, not the first pass's
        allow_dead = _has_dead_code(g)  # passes are not blamed for dead code they were given
    start = g
    report, notes, remaps, snapshots = [], [], [], []
    for p in plan:
        res = p.run(g)
        if verify:
            verify_graph(res.graph, after=p.name, allow_dead=allow_dead)
            if allow_dead:
                allow_dead = _has_dead_code(res.graph)
        g = res.graph
        report.append((p.name, tuple(res.changes)))
        notes.append((p.name, tuple(res.notes)))
        remaps.append(res.remap)
        text = str(g)
        snapshots.append((p.name, text))
        if print_after:
            print(f"// IR after {p.name}", file=out)
            print(text, file=out)
    return PipelineResult(g, report, compose(remaps), snapshots, notes, start)
