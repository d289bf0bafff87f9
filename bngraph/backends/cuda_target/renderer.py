"""The CUDA renderer: one ``.cu`` file of kernels (every program's) and one Python host driver.

Text only: nothing here imports CuPy, so ``bg.emit(g, target="cuda")`` works on any machine, and
the kernels compile with ``nvcc`` in CI without a GPU. Shapes (units, classes) and the dtype are
baked into each kernel; the batch size ``m`` is an argument, so one compiled module serves every
batch size.
"""
from __future__ import annotations

from ...ir import DTYPES
from ...printer import format_node
from ...version import __version__
from ..base import Rendered, Renderer, template_env
from ..lowering import Plan
from .lowerings import CLASS_LOSSES, ELEMENTWISE, LOWERINGS, POINTWISE_LOSSES, class_loss_context, node_act, numel, rows

BLOCK = 256  # threads per block (a power of two: block_sum halves it)
CTYPES = {"f32": "float", "f64": "double"}
LOSS_GRADS = {"softmax_cross_entropy_grad", "nll_grad", "mse_grad", "sigmoid_bce_grad"}


class CudaRenderer(Renderer):
    target = "cuda"
    lowerings = LOWERINGS
    reserved = ("np", "P", "S", "G", "B", "m", "mi", "launch", "gemm", "grid", "BLOCK", "MAX_GRID")
    buffer_all = True  # a step allocates nothing: every output has a device buffer

    def __init__(self):
        self.env = template_env("cuda")

    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        docs = docs or {}
        plans = {name: self.plan(name, g) for name, g in programs.items()}
        kernels, functions = [], []
        for name, plan in plans.items():
            fn, ks = self.render_program(plan, dtype, docs.get(name, f"Program {name} of graph {graph_name}."))
            functions.append(fn)
            kernels.append((name, ks))
        common = dict(graph_name=graph_name, version=__version__, dtype=DTYPES[dtype], block=BLOCK)
        cu = self.env.get_template("module.cu.j2").render(ctype=CTYPES[dtype], programs=kernels, **common)
        py = self.env.get_template("driver.py.j2").render(functions=functions, **common)
        sources = {f"{graph_name}_cuda.cu": cu.rstrip("\n") + "\n", f"{graph_name}_cuda.py": py.rstrip("\n") + "\n"}
        return Rendered(sources, plans, dtype, graph_name)

    # ---- one program -------------------------------------------------------------------------
    def render_program(self, plan: Plan, dtype: str, doc: str):
        g = plan.graph

        expr, dest = plan.expr, plan.dest_expr
        def const(name):
            """The literal of a constant (fill) value, else None."""
            return plan.expr(name) if plan.kinds[name] == "const" else None

        fused_grads = self._fused_loss_grads(g)
        body, kernels = [], []
        for step in plan.steps:
            n = step.node
            body.append("    # " + format_node(n))
            dests = [dest(d) for d in step.dests]
            ins = [expr(i) for i in n.inputs]
            if step.template.endswith(".py.j2"):  # host-side: gemm, alias, constant
                ctx = dict(out=step.outs, ins=ins, dest=dests, attrs=n.attr, node_name=n.name, **_gemm_dims(n, g))
                code = self.env.get_template(step.template).render(**ctx)
                body.extend("    " + ln for ln in code.strip("\n").splitlines())
                continue
            if n.op in LOSS_GRADS and any(gn is n for gn in fused_grads.values()):
                body.append(f"    {step.outs[0]} = {dests[0]}  # computed by the loss's kernel above")
                continue
            grad_node = fused_grads.get(id(n))
            kname = f"{plan.name}__{step.outs[0]}"
            spec = self._kernel_spec(n, step, plan, grad_node, const)
            src = self.env.get_template(step.template).render(
                kname=kname, comment=format_node(n), params=spec["params"], **spec["ctx"])
            kernels.append(src.strip("\n"))
            binds = list(zip(step.outs, dests))
            if grad_node is not None:
                gstep = next(s for s in plan.steps if s.node is grad_node)
                gdest = gstep.dests[0]
                binds.append((gstep.outs[0], dest(gdest)))
            body.append(f"    {', '.join(o for o, _ in binds)} = {', '.join(d for _, d in binds)}")
            args = [expr(v) for v in spec["in_args"]] + list(spec["out_args"]) + ["mi"]
            body.append(f'    launch("{kname}", {spec["grid"]}, (BLOCK,), {", ".join(args)})')
        name, axis = plan.batch
        returns, args = plan.returns(), plan.signature()
        fn = self.env.get_template("function.py.j2").render(
            name=plan.name, args=", ".join(args), doc=doc, batch_expr=f"{expr(name)}.shape[{axis}]", body=body,
            copies=[(p, expr(v)) for p, v in plan.copies], returns=returns).rstrip("\n")
        return fn, kernels

    @staticmethod
    def _fused_loss_grads(g) -> dict:
        """id(loss node) -> its gradient node when both are in the graph (one kernel for both)."""
        pairs = {}
        for n in g.nodes:
            if n.op in LOSS_GRADS:
                # the loss reads what its gradient reads but dL, with the same options
                loss = next((l for l in g.nodes if l.op == n.op[:-len("_grad")] and l.inputs == n.inputs[:-1]
                             and l.attrs == n.attrs), None)
                if loss is not None and id(loss) not in pairs:
                    pairs[id(loss)] = n
        return pairs

    def _kernel_spec(self, n, step, plan, grad_node, const) -> dict:
        """Kernel parameters (C declarations), which inputs/outputs are passed, the grid, the context."""
        types = {"in": [plan.types[i] for i in n.inputs], "out": [o.type for o in n.outputs]}
        cin = lambda name, ct="real": f"const {ct}* __restrict__ {name}"  # noqa: E731
        cout = lambda name: f"real* __restrict__ {name}"  # noqa: E731
        op, a = n.op, n.attr
        ins = list(n.inputs)
        if op in ELEMENTWISE:
            e = ELEMENTWISE[op](n, types)
            size = e["size"]
            grid = f"grid({size.replace('(long long)m', 'm')})"
            return dict(params=[cin(nm, ct) for nm, ct in e["inputs"]] + [cout(o) for o in e["outputs"]],
                        in_args=ins[:len(e["inputs"])], out_args=step.outs, grid=grid,
                        ctx=dict(size=size, row=e["row"], body=e["body"]))
        units = rows(types["in"][0]) if types["in"] else 0
        row_grid = f"({min(units, 65535)},)"
        if op in ("batchnorm", "batchnorm_act"):
            ctx = dict(rows=units, eps=repr(a["eps"]), act=node_act(n))
            if a["mode"] == "train":
                return dict(params=[cin("z"), cin("gamma"), cin("beta"), cout("y"), cout("mean"), cout("var_out")],
                            in_args=ins[:3], out_args=step.outs, grid=row_grid, ctx=ctx)
            return dict(params=[cin("z"), cin("gamma"), cin("beta"), cin("running_mean"), cin("running_var"), cout("y")],
                        in_args=ins[:5], out_args=step.outs, grid=row_grid, ctx=ctx)
        if op == "running_update":
            return dict(params=[cin("running_mean"), cin("running_var"), cin("mean"), cin("var"),
                                cout("running_mean_next"), cout("running_var_next")],
                        in_args=ins[:4], out_args=step.outs, grid=f"grid({types['in'][0].shape[0]})",
                        ctx=dict(rows=types["in"][0].shape[0], momentum=repr(a["momentum"])))
        if op == "sum_batch":
            return dict(params=[cin("x"), cout("s")], in_args=ins[:1], out_args=step.outs, grid=row_grid,
                        ctx=dict(rows=units))
        if op in ("batchnorm_grad", "batchnorm_act_grad"):
            act = node_act(n)
            fused = op == "batchnorm_act_grad"
            names = ["da", "a", "z", "gamma", "mean", "var"] if fused else ["da", "z", "gamma", "mean", "var"]
            with_act = fused and act.name != "identity"

            def dy(i, da="da[{}]", a="a[{}]"):  # dy = da*g'(a), from memory (or registers: dy_cached)
                return f"(acc_t){da.format(i)} * {act.derivative(a.format(i))}" if with_act else f"(acc_t){da.format(i)}"

            return dict(params=[cin(x) for x in names] + [cout("dz"), cout("dgamma"), cout("dbeta")],
                        in_args=ins[:len(names)], out_args=step.outs, grid=row_grid,
                        ctx=dict(rows=units, eps=repr(a["eps"]), train=a["mode"] == "train", act=act,
                                 fused_act=with_act, dy=dy, dy_cached=lambda k: dy(k, "dac[{}]", "ac[{}]")))
        return self._loss_spec(n, step, plan, grad_node, const, types, cin, cout)

    @staticmethod
    def _loss_spec(n, step, plan, grad_node, const, types, cin, cout) -> dict:
        """A loss, its gradient, or both in one single-block kernel."""
        is_grad = n.op in LOSS_GRADS
        base = n.op[:-len("_grad")] if is_grad else n.op
        gnode = n if is_grad else grad_node
        with_loss, with_grad = not is_grad, gnode is not None
        params, in_args, dL = [], list(n.inputs[:2]), "1.0"
        class_loss = base in CLASS_LOSSES
        first, second = (CLASS_LOSSES[base], "labels") if class_loss else ("pred", "target")
        params += [cin(first), cin(second, "long long" if class_loss else "real")]
        weighted = class_loss and len(n.inputs) == (4 if is_grad else 3)
        if weighted:  # the class weights, (classes,)
            params.append(cin("weight"))
            in_args.append(n.inputs[2])
        if with_grad:
            dL = const(gnode.inputs[-1])
            if dL is None:  # a gradient seed computed at run time: read it from the device
                params.append(cin("dL"))
                in_args.append(gnode.inputs[-1])
                dL = "(acc_t)dL[j]" if n.attr.get("reduction") == "none" else "(acc_t)dL[0]"
        out_names, outs = [], []
        if with_loss:
            params.append(cout("loss"))
            outs.append(step.outs[0])
        if with_grad:
            params.append(cout(f"d{first}"))
            gstep = next(s for s in plan.steps if s.node is gnode)
            outs.append(gstep.outs[0])
        ctx = dict(with_loss=with_loss, with_grad=with_grad, dL=dL)
        if class_loss:
            ctx.update(class_loss_context(n.op, n.attr, weighted, types["in"][0].shape[0], dL))
        else:
            ctx.update(size=numel(types["in"][0]), loss_expr=POINTWISE_LOSSES[base][0],
                       grad_expr=POINTWISE_LOSSES[base][1])
        return dict(params=params, in_args=in_args, out_args=outs, grid="(1,)", ctx=ctx)


def _gemm_dims(n, g) -> dict:
    """M, N, K of a matmul as Python expressions of m (for the gemm line), and the operand shapes."""
    if n.op != "matmul":
        return {}
    vals = g.values()
    at, bt = vals[n.inputs[0]].type.shape, vals[n.inputs[1]].type.shape
    ta, tb = n.attr["ta"], n.attr["tb"]
    M, K = (at[1], at[0]) if ta else (at[0], at[1])
    N = bt[0] if tb else bt[1]
    return dict(ta=ta, tb=tb, M=str(M), N=str(N), K=str(K), a_dims=[str(d) for d in at], b_dims=[str(d) for d in bt])
