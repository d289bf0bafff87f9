"""The CUDA renderer: one ``.cu`` file of kernels (every program's) and one Python host driver.

Text only: nothing here imports CuPy, so ``bg.emit(g, target="cuda")`` works on any machine, and
the kernels compile with ``nvcc`` in CI without a GPU. Shapes (units, classes) and the dtype are
baked into each kernel; the batch size ``m`` is an argument, so one compiled module serves every
batch size. Every output has a device buffer (``buffer_all``); the batch-sized ones share arrays
where the plan says their lives do not overlap (``Plan.slots``), which a comment under the node
that takes an array over says.
"""
from __future__ import annotations

from ...ir import DTYPES
from ...passes import run_pipeline
from ...printer import format_node
from ...version import __version__
from ..base import Rendered, Renderer, template_env
from ..lowering import LoweringError, Plan
from . import lowerings_spatial  # noqa: F401  (registers the spatial ops' rows into LOWERINGS)
from . import lowerings_collective  # noqa: F401  (registers the collective ops' rows into LOWERINGS)
from .lowerings import CUDA, LOWERINGS, At, HostCode, Kernel

BLOCK = 256  # threads per block (a power of two: block_sum halves it)
PARTS = 4096  # partial sums of one reduction at most: the model's scratch array holds 2 * PARTS doubles
# examples a batch-norm thread keeps in registers (BN_CACHE): 16 floats, 8 doubles (the float64
# kernels' registers: docs/cuda.md)
BN_CACHE = {"f32": 16, "f64": 8}


class CudaRenderer(Renderer):
    """Each node's kernel (or host line) comes from its row in :data:`LOWERINGS`; this class only
    runs the pre-lowering passes, walks the plan and assembles the two files."""

    target = "cuda"
    lowerings = LOWERINGS
    language = CUDA  # the C-style math (bngraph.backends.cstyle) in CUDA's types
    # pre-lowering passes, run on every program before it is planned: a loss and its gradient
    # become one <loss>_and_grad node (one kernel), which the comments of both files print
    passes = ("fuse_loss_grad",)
    reserved = ("np", "P", "S", "G", "B", "m", "mi", "launch", "gemm", "grid", "BLOCK", "MAX_GRID", "scratch",
                "parts", "segs", "loss_parts", "segments", "row_block", "PARTS", "SCRATCH", "LOSS_PARTS", "ROW",
                "SEGMENT", "SEGMENTS", "WIDE")
    buffer_all = True  # a step allocates nothing: every output has a device buffer

    def __init__(self):
        self.env = template_env("cuda")

    def lower(self, programs: dict) -> dict:
        """The programs as this target lowers them: each after the pre-lowering ``passes``
        (verified after each pass, like any pipeline)."""
        return {name: run_pipeline(g, self.passes).graph for name, g in programs.items()}

    def render_parts(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> tuple:
        """(plans, each program's kernels, each program's driver function, the templates' common
        variables): what a module of this target's kernels is made of (the c target's too)."""
        docs = docs or {}
        plans = {name: self.plan(name, g) for name, g in self.lower(programs).items()}
        kernels, functions = [], []
        for name, plan in plans.items():
            fn, ks = self.render_program(plan, docs.get(name, f"Program {name} of graph {graph_name}."))
            functions.append(fn)
            kernels.append((name, ks))
        common = dict(graph_name=graph_name, version=__version__, dtype=DTYPES[dtype], block=BLOCK, parts=PARTS,
                      bn_cache=BN_CACHE[dtype], row=BN_CACHE[dtype] * BLOCK)
        return plans, kernels, functions, common

    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        plans, kernels, functions, common = self.render_parts(programs, dtype, graph_name, docs)
        cu = self.env.get_template("module.cu.j2").render(ctype=self.language.types[dtype], programs=kernels, **common)
        py = self.env.get_template("driver.py.j2").render(functions=functions, **common)
        sources = {f"{graph_name}_cuda.cu": cu.rstrip("\n") + "\n", f"{graph_name}_cuda.py": py.rstrip("\n") + "\n"}
        return Rendered(sources, plans, dtype, graph_name)

    # ---- one program -------------------------------------------------------------------------
    def render_program(self, plan: Plan, doc: str):
        expr, dest = plan.expr, plan.dest_expr
        body, kernels = [], []
        for step in plan.steps:
            n, low, at = step.node, step.lowering, At(step.node, step, plan)
            body.append("    # " + format_node(n))
            body.extend("    # " + note for note in plan.reuse_notes(step))
            dests = [dest(d) for d in step.dests]
            if isinstance(low, HostCode):  # gemm, alias, constant: lines of the driver
                ctx = dict(out=step.outs, ins=[expr(i) for i in n.inputs], dest=dests, attrs=n.attr, node_name=n.name,
                           **(low.host_context(at) if low.host_context else {}))
                code = self.env.get_template(step.template).render(**ctx)
                body.extend("    " + ln for ln in code.strip("\n").splitlines())
                continue
            if not isinstance(low, Kernel):
                raise LoweringError(f"target cuda: the row of op {n.op} (node %{n.name}) is a {type(low).__name__}; "
                                    f"a cuda row is a Kernel or HostCode (bngraph.backends.cuda_target.lowerings)")
            spec = low.spec(at)
            kname = f"{plan.name}__{step.outs[0]}"
            # each C parameter by its name: its declaration and the driver's argument
            names = [p.split()[-1] for p in spec.params]
            args = [expr(v) for v in spec.in_args] + list(spec.out_args)
            if len(names) != len(args):
                raise LoweringError(f"target cuda: the kernel of node %{n.name} declares {len(names)} params "
                                    f"but is passed {len(args)} values")
            decl, arg = dict(zip(names, spec.params)), dict(zip(names, args))
            sig = {k: ", ".join(decl[x] for x in xs) for k, xs in spec.more.items()}
            call = {k: ", ".join(arg[x] for x in xs) for k, xs in spec.more.items()}
            src = self.env.get_template(step.template).render(
                kname=kname, comment=format_node(n), params=spec.params, sig=sig, **spec.ctx)
            kernels.append(src.strip("\n"))
            body.append(f"    {', '.join(step.outs)} = {', '.join(dests)}")
            # n, ni: a unit's row length and the kernels' int m (the batch, or m*d1*... on a spatial value)
            host = self.env.get_template(low.host_for(n.attr)).render(
                kname=kname, grid=spec.grid, args=", ".join(args), call=call, **{"n": "m", "ni": "mi", **spec.ctx})
            body.extend("    " + ln for ln in host.strip("\n").splitlines())
        name, axis = plan.batch
        returns, args = plan.returns(), plan.signature()
        fn = self.env.get_template("function.py.j2").render(
            name=plan.name, args=", ".join(args), doc=doc, batch_expr=f"{expr(name)}.shape[{axis}]", body=body,
            copies=[(p, expr(v)) for p, v in plan.copies], returns=returns,
            buffer_summary=plan.buffer_summary()).rstrip("\n")
        return fn, kernels
