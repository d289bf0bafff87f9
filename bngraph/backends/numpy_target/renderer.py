"""The NumPy renderer: each program becomes one Python function, each IR node one statement (or a
few lines for fused ops) preceded by the node as a comment.

Batch-sized values are written into the plan's preallocated buffers (``out=B[...]``) and gradients
straight into the parameters' gradient views (``out=G[...]``); the text imports nothing but NumPy.
Buffers the plan shares (``Plan.slots``) are one array in ``alloc_<fn>(m)``, and a comment under a
node says which buffer's array it writes into.
"""
from __future__ import annotations

from ...ir import DTYPES
from ...printer import format_node
from ...version import __version__
from ..base import Rendered, Renderer, template_env
from ..lowering import Plan
from . import lowerings_collective  # noqa: F401  (registers the collective ops' rows into LOWERINGS)
from .lowerings import LOWERINGS, Act, node_act
from .spatial_code import LOOP_VARS, shape_text


class NumpyRenderer(Renderer):
    target = "numpy"
    lowerings = LOWERINGS
    reserved = ("np", "P", "S", "G", "B", "m", "DTYPE", "rows", *LOOP_VARS)

    def __init__(self):
        self.env = template_env("numpy")

    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        docs = docs or {}
        plans = {name: self.plan(name, g) for name, g in programs.items()}
        functions = [self.render_function(plan, docs.get(name, f"Program {name} of graph {graph_name}."))
                     for name, plan in plans.items()]
        src = self.env.get_template("module.py.j2").render(
            graph_name=graph_name, version=__version__, dtype=DTYPES[dtype], functions=functions,
            uses_rows=any("    rows(" in f for f in functions))
        return Rendered({f"{graph_name}_numpy.py": src.rstrip("\n") + "\n"}, plans, dtype, graph_name)

    def render_function(self, plan: Plan, doc: str) -> str:
        expr, dest = plan.expr, plan.dest_expr
        body = []
        for step in plan.steps:
            n = step.node
            ins = [expr(i) for i in n.inputs]
            dests = [dest(d) for d in step.dests]
            ctx = dict(
                out=step.outs, ins=ins, dest=dests, buf=dests, attrs=n.attr, tmp=step.temps,
                tbuf={t: f'B["{k}"]' for t, k in step.temp_buffers.items()},
                outarg=lambda i, dests=dests: f", out={dests[i]}" if dests[i] else "",
                act=node_act(n), activation=Act,
            )
            if step.lowering.context is not None:
                ctx.update(step.lowering.context(TypedNode(n, [plan.types[i] for i in n.inputs]), ins))
            code = self.env.get_template(step.template).render(**ctx)
            body.append("    # " + format_node(n))
            body.extend("    # " + note for note in plan.reuse_notes(step))
            body.extend(("    " + ln) if ln.strip() else "" for ln in code.strip("\n").splitlines())
        # alloc_<fn>(m): one np.empty per array of the plan, each buffer key mapped to its array
        arrays, array_of = [], {}
        for i, (keys, t) in enumerate(plan.arrays):
            arrays.append((f"a{i}", shape_text(t)))
            array_of.update((k, f"a{i}") for k in keys)
        name, axis = plan.batch
        returns, args = plan.returns(), plan.signature()
        return self.env.get_template("function.py.j2").render(
            name=plan.name, args=", ".join(args), doc=doc, batch_expr=f"{expr(name)}.shape[{axis}]", body=body,
            copies=[(p, expr(v)) for p, v in plan.copies], returns=returns,
            arrays=arrays, buffers=[(k, array_of[k]) for k, _ in plan.buffers], has_grads=plan.has_grads,
            buffer_summary=plan.buffer_summary() or "B: no buffers",
        ).rstrip("\n")


class TypedNode:
    """A node as a lowering's context sees it: the node, and ``input_types`` (its inputs' types,
    which a spatial op's code needs: a conv's kernel is its weight's shape)."""

    def __init__(self, node, input_types):
        self._node, self.input_types = node, input_types

    def __getattr__(self, name):
        return getattr(self._node, name)

