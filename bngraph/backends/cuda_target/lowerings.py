"""The CUDA target's tables: how each op lowers, and the activations in CUDA C.

Every op lowers to one of: a kernel rendered from ``templates/cuda/<kind>.cu.j2`` (shapes and the
dtype baked in, the batch size ``m`` an argument), a cuBLAS call in the host driver (``matmul``),
an alias (``identity``), or a constant written into the kernels that read it (``fill``). A loss's
gradient is computed by the loss's own kernel when both are in the program (one kernel per batch).

``ACTIVATIONS`` is the only place that writes an activation or its derivative in CUDA C. The
expressions propagate NaN (``x < 0 ? 0 : x`` keeps a NaN, where ``fmax(x, 0)`` would hide it), so
the model's finite checks still see a diverged step.
"""
from __future__ import annotations

from ...ir import BATCH
from ..lowering import Lowering

R = "(real)"

# act -> (g(x), g'(x) from the output y); {s} is the negative slope
ACTIVATIONS = {
    "identity": ("{x}", R + "1"),
    "relu": ("({x} < (real)0 ? (real)0 : {x})", "({y} > (real)0 ? (real)1 : (real)0)"),
    "leaky_relu": ("({x} < (real)0 ? {x} * (real){s} : {x})", "({y} > (real)0 ? (real)1 : (real){s})"),
    "tanh": ("tanh({x})", "((real)1 - {y} * {y})"),
    "sigmoid": ("({x} >= (real)0 ? (real)1 / ((real)1 + exp(-{x})) : exp({x}) / ((real)1 + exp({x})))",
                "({y} * ((real)1 - {y}))"),
}


class Act:
    """One node's activation in CUDA C: ``act.apply("x")``, ``act.derivative("y")``, ``act.name``."""

    def __init__(self, name: str, slope: float = 0.0):
        self.name, self.slope = name, slope
        self.fwd, self.dfwd = ACTIVATIONS[name]

    def apply(self, x: str) -> str:
        return self.fwd.format(x=x, s=repr(float(self.slope)))

    def derivative(self, y: str) -> str:
        return self.dfwd.format(y=y, s=repr(float(self.slope)))


def node_act(node) -> Act:
    a = node.attr
    if "act" in a:
        return Act(a["act"], a.get("negative_slope", 0.0))
    if node.op in ACTIVATIONS:
        return Act(node.op, a.get("negative_slope", 0.0))
    return Act("identity")


def rows(t) -> int:
    """The fixed leading dimension (units) of a (features, m) value."""
    return t.shape[0]


def numel(t) -> str:
    """The element count of a value as a C expression of m."""
    dims = [("(long long)m" if d == BATCH else str(d)) for d in t.shape]
    return " * ".join(dims) if dims else "1"


# ---- elementwise ops: one expression per element i; r = i / m is the unit (row) -----------------


def _bias_add(node, types):
    act = node_act(node)
    return {"inputs": [("z", "real"), ("b", "real")], "outputs": ["y"], "size": numel(types["out"][0]),
            "row": True, "body": [f"const real x = z[i] + b[r];", f"y[i] = {act.apply('x')};"]}


def _activation(node, types):
    act = node_act(node)
    return {"inputs": [("x", "real")], "outputs": ["y"], "size": numel(types["out"][0]), "row": False,
            "body": [f"const real v = x[i];", f"y[i] = {act.apply('v')};"]}


def _act_grad(node, types):
    act = node_act(node)
    return {"inputs": [("dy", "real"), ("y", "real")], "outputs": ["dx"], "size": numel(types["out"][0]),
            "row": False, "body": [f"const real a = y[i];", f"dx[i] = dy[i] * {act.derivative('a')};"]}


def _add(node, types):
    return {"inputs": [("a", "real"), ("b", "real")], "outputs": ["c"], "size": numel(types["out"][0]),
            "row": False, "body": ["c[i] = a[i] + b[i];"]}


ELEMENTWISE = {"bias_add": _bias_add, "bias_add_act": _bias_add, "relu": _activation, "leaky_relu": _activation,
               "tanh": _activation, "sigmoid": _activation, "act_grad": _act_grad, "add": _add}


def _bn_forward(attrs):
    return f"batchnorm_{attrs['mode']}.cu.j2"


def _loss_template(op):
    return "softmax_cross_entropy.cu.j2" if op.startswith("softmax_cross_entropy") else "pointwise_loss.cu.j2"


ELEMENTWISE_LOWERING = Lowering("elementwise.cu.j2")

LOWERINGS = {
    "matmul": Lowering("gemm.py.j2"),
    "identity": Lowering("identity.py.j2", alias=True),
    "fill": Lowering("fill.py.j2", const=True),
    "batchnorm": Lowering(_bn_forward),
    "batchnorm_act": Lowering(_bn_forward),
    "running_update": Lowering("running_update.cu.j2"),
    "sum_batch": Lowering("sum_batch.cu.j2"),
    "batchnorm_grad": Lowering("batchnorm_grad.cu.j2"),
    "batchnorm_act_grad": Lowering("batchnorm_grad.cu.j2"),
    **{op: ELEMENTWISE_LOWERING for op in ELEMENTWISE},
    **{op: Lowering(_loss_template(op)) for op in ("softmax_cross_entropy", "softmax_cross_entropy_grad", "mse",
                                                    "mse_grad", "sigmoid_bce", "sigmoid_bce_grad")},
}

# pointwise losses: (the per-element loss, the per-element gradient before / numel * dL), p and t acc_t
POINTWISE_LOSSES = {
    "mse": ("(p - t) * (p - t)", "2 * (p - t)"),
    "sigmoid_bce": ("fmax(p, 0.0) - p * t + log1p(exp(-fabs(p)))",
                    "(p >= 0 ? 1 / (1 + exp(-p)) : exp(p) / (1 + exp(p))) - t"),
}
