"""The NumPy target's tables: how each op lowers, and the activations' code.

``LOWERINGS`` is keyed by op (a missing op is one clear error from the lowering plan); variants
(train/eval) are chosen here, in Python, and each template is found through this table, never by
the op's name alone. ``ACTIVATIONS`` is the only place that writes an activation or its
derivative in NumPy: every template that activates (the plain activation ops, fused bias and
batch norm, the activation gradients, the BCE gradient's sigmoid) asks it for the code.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

from ...ops import LOSS_AND_GRAD, loss_options
from ..lowering import Lowering
from . import spatial_code
from .spatial_code import Units

# --------------------------------------------------------------------------------------------
# Activations: y = g(x) written into dst (dst may be x itself: in place), and g' from the output y
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationCode:
    """``steps(x, dst, slope)``: the statements that compute g(x) into dst, the first one returning
    the result (so it can be bound to a name); ``derivative(y, slope)``: g'(x) from y = g(x)."""

    steps: Callable[[str, str, float], list]
    derivative: Callable[[str, float], str]


def _leaky_steps(x, dst, s):
    # one expression for any slope >= 0: max(x, s*x) when s <= 1, min(x, s*x) when s > 1
    pick, why = ("maximum", "max(x, slope*x) for 0 <= slope <= 1") if s <= 1 else ("minimum", "min(x, slope*x) for slope > 1")
    return [f"np.{pick}({x}, {x} * {s!r}, out={dst})  # leaky_relu(x) = {why}"]


ACTIVATIONS = {
    "identity": ActivationCode(lambda x, dst, s: [] if x == dst else [f"np.copyto({dst}, {x})"], lambda y, s: "1"),
    "relu": ActivationCode(lambda x, dst, s: [f"np.maximum({x}, 0, out={dst})"], lambda y, s: f"({y} > 0)"),
    "leaky_relu": ActivationCode(_leaky_steps, lambda y, s: f"np.where({y} > 0, 1.0, {s!r}).astype(DTYPE)"),
    "tanh": ActivationCode(lambda x, dst, s: [f"np.tanh({x}, out={dst})"], lambda y, s: f"(1 - {y} * {y})"),
    "sigmoid": ActivationCode(
        lambda x, dst, s: [f"np.multiply({x}, 0.5, out={dst})  # sigmoid(x) = (1 + tanh(x/2))/2: stable in both tails",
                           f"np.tanh({dst}, out={dst})", f"{dst} += 1", f"{dst} *= 0.5"],
        lambda y, s: f"({y} * (1 - {y}))"),
}


class Act:
    """One node's activation, as the templates use it: ``act.apply(y, x, dst)``, ``act.inplace(y)``,
    ``act.derivative(y)``, ``act.name``."""

    def __init__(self, name: str, slope: float = 0.0):
        self.name, self.slope, self.code = name, slope, ACTIVATIONS[name]

    def apply(self, y: str, x: str, dst: str | None) -> str:
        """``y = g(x)``, written into ``dst`` (a new array when dst is None)."""
        if self.name == "identity":
            return f"{y} = {x}  # identity: no copy"
        first = self.code.steps(x, dst or f"np.empty_like({x})", self.slope)[0]
        rest = self.code.steps(y, y, self.slope)[1:]  # after the first statement, y is the destination
        return "\n".join([f"{y} = {first}", *rest])

    def inplace(self, y: str) -> str:
        """``y = g(y)`` in place (nothing for identity)."""
        return "\n".join(self.code.steps(y, y, self.slope))

    def derivative(self, y: str) -> str:
        return self.code.derivative(y, self.slope)


def node_act(node) -> Act | None:
    """The activation a node applies: its ``act`` attribute, or the op itself for activation ops."""
    a = node.attr
    if "act" in a:
        return Act(a["act"], a.get("negative_slope", 0.0))
    if node.op in ACTIVATIONS:
        return Act(node.op, a.get("negative_slope", 0.0))
    return None


# --------------------------------------------------------------------------------------------
# The lowering table
# --------------------------------------------------------------------------------------------


def _matmul_context(node, ins):
    a, b = ins
    return {"a": a + (".T" if node.attr["ta"] else ""), "b": b + (".T" if node.attr["tb"] else "")}


def _bn_backward_context(node, ins):
    """batchnorm_grad reads (dy, z, gamma, mean, var); batchnorm_act_grad (da, a, z, gamma, mean, var)
    and first forms dy = da * g'(a). One template serves both."""
    fused = node.op == "batchnorm_act_grad" and node.attr["act"] != "identity"
    return {"train": node.attr["mode"] == "train", "fused_act": fused, "da": ins[0],
            "a": ins[1] if node.op == "batchnorm_act_grad" else None,
            "z": ins[-4], "gamma": ins[-3], "mean": ins[-2], "var": ins[-1],
            "units": node.outputs[0].type.shape[0], "view": Units(node.outputs[0].type)}


def _bn_forward(attrs):
    return f"batchnorm_{attrs['mode']}.j2"


def _bn_backward_buffers(attrs):
    return ("dy",) if attrs.get("act", "identity") != "identity" else ()


# elementwise arithmetic: one NumPy ufunc per op, written into the output's buffer
UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "neg": "negative"}
UFUNC = Lowering("ufunc.j2", context=lambda node, ins: {"ufunc": UFUNCS[node.op]})


def _class_loss(node, ins) -> dict:
    """The variant of a class loss or its gradient (templates/numpy/class_loss.j2). ``plain``: the
    defaults (mean, no class weights, nothing ignored). Otherwise the template forms ``y`` (labels
    safe to index: an ignored one may lie outside [0, classes)) and ``w`` (w_i = weight[y_i], 0
    where ignored; absent when every w_i is 1), and a gradient scales by dL/dl_i: w_i*dL/sum(w)
    (mean), w_i*dL (sum), w_i*dL_i (none)."""
    reduction, ignore = loss_options(node.attr)
    grad = node.op.endswith("_grad")
    weight = ins[2] if len(ins) == (4 if grad else 3) else None
    return {"softmax": node.op.startswith("softmax_cross_entropy"), "grad": grad,
            "plain": reduction == "mean" and ignore is None and weight is None, "reduction": reduction,
            "ignore_index": ignore, "weight": weight, "weighted": weight is not None or ignore is not None,
            "dL": ins[-1] if grad else None}


# softmax_cross_entropy, nll and their gradients: one template, the variant chosen above
CLASS_LOSS = Lowering("class_loss.j2", temps=("logp", "keep", "y", "w"), context=_class_loss)
ACTIVATION = Lowering("activation.j2")
# Train-mode BN and every BN backward: one function per node over a block of units (rows), which
# the generated code hands to ``rows`` (the runtime's runs long ones in lanes on host threads).
BN_FORWARD = Lowering(_bn_forward, temps=("s", "t", "rows"),
                      context=lambda node, ins: {"act": node_act(node) or Act("identity"),  # plain batchnorm: identity
                                                 "units": node.outputs[0].type.shape[0],
                                                 "view": Units(node.outputs[0].type)})
BN_BACKWARD = Lowering("batchnorm_grad.j2", temps=("dy", "rows"), temp_buffers=_bn_backward_buffers,
                       context=_bn_backward_context)

# The per-unit ops on a spatial value (C, m, d..) read it as its (C, m*d..) view (spatial_code.Units);
# the spatial ops' contexts need their inputs' types, which the renderer hands them on the node
# (node.input_types).
BIAS_ADD = Lowering("bias_add.j2", context=lambda node, ins: {"view": Units(node.outputs[0].type)})
CONV = Lowering("conv.j2", temps=("xp", "cols"), temp_buffers=("cols",), temp_buffer_types=spatial_code.cols_types,
               context=spatial_code.conv_context)

SPATIAL_LOWERINGS = {
    "conv": CONV,
    "conv_grad_weight": Lowering("conv_grad_weight.j2", temps=("xp", "cols"), temp_buffers=("cols",),
                                 temp_buffer_types=spatial_code.cols_types,
                                 context=spatial_code.conv_grad_weight_context),
    "conv_grad_input": Lowering("conv_grad_input.j2", temps=("dcols", "dxp"), temp_buffers=("dcols",),
                                temp_buffer_types=spatial_code.cols_types,
                                context=spatial_code.conv_grad_input_context),
    "maxpool": Lowering("maxpool.j2", temps=("xp",), context=spatial_code.pool_context),
    "avgpool": Lowering("avgpool.j2", temps=("xp",), context=spatial_code.pool_context),
    "maxpool_grad": Lowering("maxpool_grad.j2", temps=("xp", "dxp", "free", "nan", "hit"),
                             context=spatial_code.pool_grad_context),
    "avgpool_grad": Lowering("avgpool_grad.j2", temps=("share", "dxp"), context=spatial_code.pool_grad_context),
    "global_avgpool": Lowering("global_avgpool.j2", context=spatial_code.global_avgpool_context),
    "global_avgpool_grad": Lowering("global_avgpool_grad.j2", context=spatial_code.global_avgpool_context),
    "flatten": Lowering("flatten.j2", context=spatial_code.flatten_context),
    "unflatten": Lowering("unflatten.j2", context=spatial_code.flatten_context),
}

LOWERINGS = {
    "matmul": Lowering("matmul.j2", context=_matmul_context),
    "bias_add": BIAS_ADD,
    "bias_add_act": BIAS_ADD,
    "identity": Lowering("identity.j2", alias=True),
    "relu": ACTIVATION,
    "leaky_relu": ACTIVATION,
    "tanh": ACTIVATION,
    "sigmoid": ACTIVATION,
    "batchnorm": BN_FORWARD,  # = batchnorm_act with act=identity: z*s + t, one template
    "batchnorm_act": BN_FORWARD,
    "running_update": Lowering("running_update.j2", context=lambda node, ins: {"view": Units(node.input_types[4])}),
    "log_softmax": Lowering("log_softmax.j2"),
    "softmax_cross_entropy": CLASS_LOSS,
    "nll": CLASS_LOSS,
    "mse": Lowering("mse.j2"),
    "sigmoid_bce": Lowering("sigmoid_bce.j2"),
    "sum_batch": Lowering("sum_batch.j2", context=lambda node, ins: {"view": Units(node.input_types[0])}),
    **{op: UFUNC for op in UFUNCS},
    "act_grad": Lowering("act_grad.j2"),
    "batchnorm_grad": BN_BACKWARD,
    "batchnorm_act_grad": BN_BACKWARD,
    "softmax_cross_entropy_grad": CLASS_LOSS,
    "nll_grad": CLASS_LOSS,
    "log_softmax_grad": Lowering("log_softmax_grad.j2"),
    "mse_grad": Lowering("mse_grad.j2"),
    "sigmoid_bce_grad": Lowering("sigmoid_bce_grad.j2"),
    "fill": Lowering("fill.j2", const=True),  # the seed dL/dL of the backward pass (autodiff)
    **SPATIAL_LOWERINGS,
}


def _loss_and_grad(loss: str, grad: str) -> Lowering:
    """``<loss>_and_grad`` (made by the pass fuse_loss_grad, which this target does not run): the
    loss's template, then the gradient's, each as its own row lowers it (loss_and_grad.j2)."""
    lo, gr = LOWERINGS[loss], LOWERINGS[grad]

    def context(node, ins):
        as_grad = SimpleNamespace(op=grad, attr=node.attr, outputs=node.outputs[1:])  # the gradient's view
        ctx = gr.context(as_grad, ins) if gr.context is not None else {}
        return {**ctx, "loss_template": lo.template_for(node.attr), "grad_template": gr.template_for(node.attr)}

    return Lowering("loss_and_grad.j2", temps=tuple(dict.fromkeys((*lo.temps, *gr.temps))), context=context)


LOWERINGS.update({fused: _loss_and_grad(loss, grad) for loss, (grad, fused) in LOSS_AND_GRAD.items()})
