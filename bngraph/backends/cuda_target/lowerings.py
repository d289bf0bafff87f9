"""The CUDA target's lowering table: one row per op, each giving the kernel spec of a node.

A row is a :class:`Kernel` (a ``templates/cuda/<kind>.cu.j2`` kernel, and ``spec(at) ->``
:class:`KernelSpec`: its C parameters, the values passed, the grid and the template's variables)
or a :class:`HostCode` (a line of the host driver: the cuBLAS ``gemm`` of a matmul, the alias of an
identity, the constant of a fill). An op without a row is one error from the lowering plan,
"target cuda has no lowering for op Y (node %z)"; the renderer has no per-op code of its own.

Shapes (units, classes) and the dtype are baked into each kernel, the batch size ``m`` is an
argument. The math of every elementwise expression, activation and pointwise loss comes from the
C-style tables (:mod:`bngraph.backends.cstyle`) through the CUDA dialect :data:`CUDA`. A loss and
its gradient over the same inputs arrive fused as one ``<loss>_and_grad`` node (the pass
``fuse_loss_grad``, run by the renderer before it plans), lowered by one kernel over the whole
grid and a one-block kernel that adds up the blocks' partial sums (``_total``).

A reduction over several blocks (a loss; batch norm, its gradient and a bias gradient on rows the
driver cuts into segments) leaves its partial sums in ``scratch``, the model's own small device
array, and a second kernel adds them up in a fixed order. A row's extra kernels are named in
:attr:`KernelSpec.more`; the driver's lines for a node come from the row's ``host`` template.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ...ir import BATCH, TensorType
from ...ops import LOSS_AND_GRAD, loss_options
from ..cstyle import CStyleLanguage
from ..lowering import Lowering


class CudaLanguage(CStyleLanguage):
    """CUDA C: the shared C-style math with CUDA's types (``real`` is a typedef of float or
    double). The intrinsics keep their overloaded names (``exp`` on a double is the double
    ``exp``): no fast-math intrinsics, so the emulator's ``std::`` functions are within a few ulps
    of the GPU's (docs/cuda.md, Numerics)."""

    types = {"f32": "float", "f64": "double"}


CUDA = CudaLanguage()


class Act:
    """One node's activation in CUDA C: ``act.apply("x")``, ``act.derivative("y")``, ``act.name``."""

    def __init__(self, name: str, slope: float = 0.0, lang: CStyleLanguage = CUDA):
        self.name, self.slope, self.lang = name, slope, lang

    def apply(self, x: str) -> str:
        return self.lang.activation(self.name, x, self.slope)

    def derivative(self, y: str) -> str:
        return self.lang.derivative(self.name, y, self.slope)


def node_act(node) -> Act:
    """The activation a node applies: its ``act`` attribute, the op itself (activation ops), or identity."""
    a = node.attr
    if "act" in a:
        return Act(a["act"], a.get("negative_slope", 0.0))
    if node.op in CUDA.activations:
        return Act(node.op, a.get("negative_slope", 0.0))
    return Act("identity")


def rows(t) -> int:
    """The fixed leading dimension (units, channels) of a (features, m) or (channels, m, d...) value."""
    return t.shape[0]


def positions(t) -> int:
    """The positions per example of a spatial value (channels, m, d1, ...): d1*...; 1 for (features, m)."""
    return math.prod(t.shape[2:])


def row_length(t) -> dict:
    """The host driver's length of one unit's row, ``n`` and as the kernels' ``int m`` argument
    ``ni``: the batch m of a (features, m) value, m*d1*... of a spatial one (per-channel batch norm,
    bias and bias gradient run on the (channels, m*d1*...) view, the same kernels)."""
    d = positions(t)
    return dict(n="m", ni="mi") if t.rank == 2 else dict(n=f"m * {d}", ni=f"np.int32(m * {d})")


def unit_view(t):
    """A spatial value as its (channels, m*d1*...) view, typed (channels, m): the per-unit kernels'
    shape when their ``m`` is the row length."""
    return t if t.rank == 2 else TensorType(t.dtype, (t.shape[0], BATCH))


def numel(t) -> str:
    """The element count of a value as a C expression of m."""
    dims = [("(long long)m" if d == BATCH else str(d)) for d in t.shape]
    return " * ".join(dims) if dims else "1"


# ---- the row types ------------------------------------------------------------------------------


@dataclass
class At:
    """What a row's ``spec`` sees of one node: the node, its planned step and the program's plan."""

    node: object
    step: object  # bngraph.backends.lowering.Step: output identifiers, destinations
    plan: object

    @property
    def ins(self) -> list:  # the input types
        return [self.plan.types[i] for i in self.node.inputs]

    @property
    def outs(self) -> list:  # the output types
        return [o.type for o in self.node.outputs]

    def const(self, name: str) -> str | None:
        """The literal of a compile-time constant (a fill) value, else None."""
        return self.plan.expr(name) if self.plan.kinds[name] == "const" else None


@dataclass(frozen=True)
class KernelSpec:
    """``params``: the kernel's C parameters (before ``int m``); ``in_args``: the IR values passed
    for the inputs among them, in order; ``out_args``: the identifiers of the outputs written;
    ``grid``: the launch grid (a Python expression of the driver); ``ctx``: template variables;
    ``more``: the node's other kernels, ``<kernel>_<key>``, by key: the names of the params each
    takes (before ``scratch``), whose declarations (``sig[key]``) and driver arguments
    (``call[key]``) the renderer gives both templates."""

    params: list
    in_args: list
    out_args: list
    grid: str
    ctx: dict = field(default_factory=dict)
    more: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Kernel(Lowering):
    """A row that lowers to kernels: ``template`` (a ``.cu.j2`` file, or attrs -> file),
    ``spec(at) -> KernelSpec`` and ``host``, the template of the driver's launch lines."""

    spec: Callable[[At], KernelSpec] | None = None
    host: str | Callable[[dict], str] = "launch.py.j2"

    def host_for(self, attrs: dict) -> str:
        """The driver template for a node with these attributes."""
        return self.host(attrs) if callable(self.host) else self.host

    def __post_init__(self):
        if self.spec is None:
            raise TypeError(f"a CUDA kernel row ({self.template}) needs a spec")


@dataclass(frozen=True)
class HostCode(Lowering):
    """A row that lowers to lines of the host driver (a ``.py.j2`` template); ``host_context(at)``
    adds template variables."""

    host_context: Callable[[At], dict] | None = None


def cin(name: str, ctype: str = "real") -> str:
    return f"const {ctype}* __restrict__ {name}"


def cout(name: str) -> str:
    return f"real* __restrict__ {name}"


# ---- elementwise: one expression per element i; r = i / m is the unit (row) ------------------------


def elementwise(body: Callable[[At], dict]) -> Kernel:
    """A row for an elementwise kernel (templates/cuda/elementwise.cu.j2): ``body(at)`` gives the
    kernel's ``inputs`` [(name, C type)], ``outputs`` [name], ``size`` (C expression of m), ``row``
    (whether the body reads the unit r) and ``body`` (its statements)."""

    def spec(at: At) -> KernelSpec:
        e = body(at)
        n = e.get("n", "m")  # the kernel's m: the batch, or a spatial value's row length (bias_add)
        return KernelSpec([cin(nm, ct) for nm, ct in e["inputs"]] + [cout(o) for o in e["outputs"]],
                          list(at.node.inputs[:len(e["inputs"])]), list(at.step.outs),
                          f"grid({e['size'].replace('(long long)m', n)})",
                          dict(size=e["size"], row=e["row"], body=e["body"], n=n, ni=e.get("ni", "mi")))

    return Kernel("elementwise.cu.j2", spec=spec)


def pointwise(expr: Callable[..., str]) -> Kernel:
    """A row for an elementwise op of one expression: ``expr(lang, *operands)`` over elements
    ``a[i], b[i]...`` of the inputs, written into ``c[i]`` (what a new elementwise op needs)."""

    def body(at):
        names = "abcdefgh"[:len(at.node.inputs)]
        return {"inputs": [(nm, "real") for nm in names], "outputs": ["c"], "size": numel(at.outs[0]), "row": False,
                "body": [f"c[i] = {expr(CUDA, *(f'{nm}[i]' for nm in names))};"]}

    return elementwise(body)


def _bias_add(at):
    act = node_act(at.node)  # a spatial value: per channel, on the (channels, m*d...) view (m: the row length)
    return {"inputs": [("z", "real"), ("b", "real")], "outputs": ["y"], "size": numel(unit_view(at.outs[0])),
            "row": True, "body": ["const real x = z[i] + b[r];", f"y[i] = {act.apply('x')};"], **row_length(at.outs[0])}


def _activation(at):
    act = node_act(at.node)
    return {"inputs": [("x", "real")], "outputs": ["y"], "size": numel(at.outs[0]), "row": False,
            "body": ["const real v = x[i];", f"y[i] = {act.apply('v')};"]}


def _act_grad(at):
    act = node_act(at.node)
    return {"inputs": [("dy", "real"), ("y", "real")], "outputs": ["dx"], "size": numel(at.outs[0]),
            "row": False, "body": ["const real a = y[i];", f"dx[i] = dy[i] * {act.derivative('a')};"]}


# ---- per example (i = the example, a column of m): a loop over the classes (rows) ----------------


def _log_softmax(at):
    c = rows(at.outs[0])
    el = lambda k: f"{k}[(long long)c * m + i]"  # noqa: E731  (row c of column i)
    return {"inputs": [("x", "real")], "outputs": ["y"], "size": "(long long)m", "row": False,
            "body": ["acc_t mx = x[i];  // y[:, i] = x[:, i] - log(sum over classes of exp(x[:, i]))",
                     f"for (int c = 1; c < {c}; ++c) mx = fmax(mx, (acc_t){el('x')});",
                     "acc_t se = 0;",
                     f"for (int c = 0; c < {c}; ++c) se += exp({el('x')} - mx);",
                     "const acc_t lse = mx + log(se);",
                     f"for (int c = 0; c < {c}; ++c) {el('y')} = (real)({el('x')} - lse);"]}


def _log_softmax_grad(at):
    c = rows(at.outs[0])
    el = lambda k: f"{k}[(long long)c * m + i]"  # noqa: E731
    return {"inputs": [("dy", "real"), ("y", "real")], "outputs": ["dx"], "size": "(long long)m", "row": False,
            "body": ["acc_t s = 0;  // dx[:, i] = dy[:, i] - exp(y[:, i]) * sum over classes of dy[:, i]",
                     f"for (int c = 0; c < {c}; ++c) s += {el('dy')};",
                     f"for (int c = 0; c < {c}; ++c) {el('dx')} = (real)({el('dy')} - exp((acc_t){el('y')}) * s);"]}


# ---- per unit (a block per row, or per segment of a row): batch norm, its gradient, sums ----------
# The driver's segments(units, m) picks at run time: 1, a block per unit and the node's kernel; more,
# rows cut into segments and the kernels <kernel>_partial (each segment's partial sums) and
# <kernel>_combine (each unit's from its segments'), as docs/cuda.md describes.


def _row_grid(at) -> str:
    return f"({min(rows(at.ins[0]), 65535)},)"


def _bn_forward_spec(at):
    n, ins = at.node, list(at.node.inputs)
    ctx = dict(rows=rows(at.ins[0]), eps=repr(n.attr["eps"]), act=node_act(n), **row_length(at.ins[0]))
    if n.attr["mode"] == "train":
        names = ["z", "gamma", "beta", "y", "mean", "var_out"]
        return KernelSpec([cin(x) for x in names[:3]] + [cout(x) for x in names[3:]], ins[:3], list(at.step.outs),
                          _row_grid(at), dict(ctx, combine_grid=f"{ctx['rows']} * segs"),
                          more=dict(partial=["z"], combine=names))
    # eval: one pass, no reduction: a block per segment of a row (segments())
    return KernelSpec([cin("z"), cin("gamma"), cin("beta"), cin("running_mean"), cin("running_var"), cout("y")],
                      ins[:5], list(at.step.outs), _row_grid(at), ctx)


def _bn_backward_spec(at):
    n = at.node
    act = node_act(n)
    fused = n.op == "batchnorm_act_grad"
    names = ["da", "a", "z", "gamma", "mean", "var"] if fused else ["da", "z", "gamma", "mean", "var"]
    with_act = fused and act.name != "identity"

    def dy(i, da="da[{}]", a="a[{}]"):  # dy = da*g'(a), from memory (or registers: dy_cached)
        return f"(acc_t){da.format(i)} * {act.derivative(a.format(i))}" if with_act else f"(acc_t){da.format(i)}"

    units = rows(at.ins[0])
    return KernelSpec([cin(x) for x in names] + [cout("dz"), cout("dgamma"), cout("dbeta")],
                      list(n.inputs[:len(names)]), list(at.step.outs), _row_grid(at),
                      dict(rows=units, eps=repr(n.attr["eps"]), train=n.attr["mode"] == "train", act=act,
                           fused_act=with_act, dy=dy, dy_cached=lambda k: dy(k, "dac[{}]", "ac[{}]"),
                           combine_grid=f"{units} * segs", **row_length(at.ins[0])),
                      more=dict(partial=[x for x in names if x != "gamma"],
                                combine=names + ["dz", "dgamma", "dbeta"]))


def _running_update_spec(at):
    units = at.ins[0].shape[0]
    return KernelSpec([cin("running_mean"), cin("running_var"), cin("mean"), cin("var"),
                       cout("running_mean_next"), cout("running_var_next")],
                      list(at.node.inputs[:4]), list(at.step.outs), f"grid({units})",
                      dict(rows=units, momentum=repr(at.node.attr["momentum"]), **row_length(at.ins[4])))


def _sum_batch_spec(at):
    units = rows(at.ins[0])
    return KernelSpec([cin("x"), cout("s")], list(at.node.inputs[:1]), list(at.step.outs), _row_grid(at),
                      dict(rows=units, combine_grid=str(min(units, 65535)), **row_length(at.ins[0])),
                      more=dict(partial=["x"], combine=["s"]))


# ---- losses: a loss, its gradient, or both (<loss>_and_grad): the batch cut into parts, a block each
# (the driver's loss_parts); a weighted mean first sums the weights (<kernel>_weights); a summed loss
# adds up the parts' sums in one block (<kernel>_total).

# class losses: op -> the name of its scores in the kernels
CLASS_LOSSES = {"softmax_cross_entropy": "logits", "nll": "logp"}
LOSS_OF = {op: loss for loss, ops in LOSS_AND_GRAD.items() for op in (loss, *ops)}  # any of the three -> the loss


def _loss_spec(with_loss: bool, with_grad: bool) -> Callable[[At], KernelSpec]:
    """The spec of a loss (``with_loss``), its gradient (``with_grad``) or the fused pair (both):
    inputs (scores, labels or target[, class weights][, dL]); outputs (loss) and/or (dscores)."""

    def spec(at: At) -> KernelSpec:
        n = at.node
        base = LOSS_OF[n.op]
        class_loss = base in CLASS_LOSSES
        first, second = (CLASS_LOSSES[base], "labels") if class_loss else ("pred", "target")
        params, in_args = [cin(first), cin(second, "long long" if class_loss else "real")], list(n.inputs[:2])
        weighted = class_loss and len(n.inputs) - with_grad == 3
        if weighted:  # the class weights, (classes,)
            params.append(cin("weight"))
            in_args.append(n.inputs[2])
        dL = "1.0"
        if with_grad:
            dL = at.const(n.inputs[-1])
            if dL is None:  # a gradient seed computed at run time: read it from the device
                params.append(cin("dL"))
                in_args.append(n.inputs[-1])
                dL = "(acc_t)dL[j]" if n.attr.get("reduction") == "none" else "(acc_t)dL[0]"
        params += ([cout("loss")] if with_loss else []) + ([cout(f"d{first}")] if with_grad else [])
        ctx = dict(with_loss=with_loss, with_grad=with_grad, dL=dL)
        if class_loss:
            ctx.update(class_loss_context(base, n.attr, weighted, at.ins[0].shape[0], dL), items="m")
            summed = with_loss and ctx["reduction"] != "none"
            weighed = ctx["reduction"] == "mean" and (weighted or ctx["ignore_index"] is not None)
        else:
            loss_expr, grad_expr = CUDA.loss(base)
            size = numel(at.ins[0])
            ctx.update(size=size, items=size.replace("(long long)m", "m"), loss_expr=loss_expr, grad_expr=grad_expr)
            summed, weighed = with_loss, False
        more = dict(total=["loss"]) if summed else {}
        if weighed:  # the total weight first: the mean and its gradient divide by it
            more["weights"] = ["labels"] + (["weight"] if weighted else [])
        return KernelSpec(params, in_args, list(at.step.outs), "(parts,)", dict(ctx, summed=summed, weighed=weighed),
                          more)

    return spec


def _loss_rows() -> dict:
    table = {}
    for loss, (grad, fused) in LOSS_AND_GRAD.items():
        template = "class_loss.cu.j2" if loss in CLASS_LOSSES else "pointwise_loss.cu.j2"
        for op, with_loss, with_grad in ((loss, True, False), (grad, False, True), (fused, True, True)):
            table[op] = Kernel(template, spec=_loss_spec(with_loss, with_grad), host="launch_loss.py.j2")
    return table


def class_loss_context(base: str, attrs: dict, weighted: bool, classes: int, dL: str) -> dict:
    """templates/cuda/class_loss.cu.j2's variant for a class loss (softmax_cross_entropy on logits,
    nll on log-probabilities) or its gradient: ``plain`` is softmax_cross_entropy with the defaults
    (mean, no class weights, nothing ignored); otherwise the kernel weighs example j by w_j
    (weight[labels[j]] or 1; an ignored one is skipped) and scales its gradient by s_j = dL/dl_j."""
    reduction, ignore = loss_options(attrs)
    softmax, scores = base == "softmax_cross_entropy", CLASS_LOSSES[base]
    w = "weight[label]" if weighted else "1"
    s = {"mean": f"({dL} / wsum)", "sum": dL, "none": dL}[reduction]
    pick = f"-log softmax({scores}[:, j])[labels[j]]" if softmax else f"-{scores}[labels[j], j]"
    return dict(
        plain=softmax and reduction == "mean" and ignore is None and not weighted, softmax=softmax, scores=scores,
        classes=classes, reduction=reduction, ignore_index=ignore, weight=w, scale=s,
        doc_w=f"w_j = {'weight[labels[j]]' if weighted else '1'}" + (
            f", 0 where labels[j] == {ignore} (skipped)" if ignore is not None else ""),
        doc_l=f"l_j = {pick}",
        doc_loss={"mean": "loss = sum over j of w_j l_j / wsum, wsum = sum over j of w_j",
                  "sum": "loss = sum over j of w_j l_j", "none": "loss[j] = w_j l_j"}[reduction],
        doc_grad=(f"d{scores}[:, j] = " + ("(softmax(logits[:, j]) - onehot(labels[j]))" if softmax
                                           else "-onehot(labels[j])") + f" * w_j * s_j, s_j = {s}"),
    )


# ---- host-side rows ------------------------------------------------------------------------------


def _gemm_context(at) -> dict:
    """M, N, K of a matmul (row-major C = op(A) @ op(B)) and the operand shapes, for the gemm line."""
    (ad, bd), (ta, tb) = [t.shape for t in at.ins], (at.node.attr["ta"], at.node.attr["tb"])
    M, K = (ad[1], ad[0]) if ta else (ad[0], ad[1])
    N = bd[0] if tb else bd[1]
    return dict(ta=ta, tb=tb, M=str(M), N=str(N), K=str(K), a_dims=[str(d) for d in ad], b_dims=[str(d) for d in bd])


# ---- the table -----------------------------------------------------------------------------------

ACTIVATION = elementwise(_activation)
BIAS_ADD = elementwise(_bias_add)
# training mode: two passes over a row (its statistics, then y), so rows in segments take two kernels;
# eval mode: one pass, a block per segment
BN_FORWARD = Kernel(lambda attrs: f"batchnorm_{attrs['mode']}.cu.j2", spec=_bn_forward_spec,
                    host=lambda attrs: "launch_rows.py.j2" if attrs["mode"] == "train" else "launch_segments.py.j2")
BN_BACKWARD = Kernel("batchnorm_grad.cu.j2", spec=_bn_backward_spec, host="launch_rows.py.j2")

LOWERINGS = {
    "matmul": HostCode("gemm.py.j2", host_context=_gemm_context),  # a cuBLAS call, no kernel
    "identity": HostCode("identity.py.j2", alias=True),  # the input itself: no copy, no kernel
    "fill": HostCode("fill.py.j2", const=True),  # a constant, written into the kernels that read it
    "bias_add": BIAS_ADD,
    "bias_add_act": BIAS_ADD,
    **{act: ACTIVATION for act in CUDA.activations if act != "identity"},
    "act_grad": elementwise(_act_grad),
    **{op: pointwise(lambda L, *xs, op=op: L.code(op, *xs)) for op in CUDA.code_for_op},  # add, sub, mul, div, neg
    "log_softmax": elementwise(_log_softmax),
    "log_softmax_grad": elementwise(_log_softmax_grad),
    "batchnorm": BN_FORWARD,
    "batchnorm_act": BN_FORWARD,
    "batchnorm_grad": BN_BACKWARD,
    "batchnorm_act_grad": BN_BACKWARD,
    "running_update": Kernel("running_update.cu.j2", spec=_running_update_spec),
    "sum_batch": Kernel("sum_batch.cu.j2", spec=_sum_batch_spec, host="launch_rows.py.j2"),
    **_loss_rows(),  # each loss, its gradient and <loss>_and_grad
}
