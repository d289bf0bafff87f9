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
from ...ops import loss_options
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


# elementwise arithmetic: op -> the C expression of element i (IEEE division: b = 0 gives inf or nan)
ARITHMETIC = {"add": "a[i] + b[i]", "sub": "a[i] - b[i]", "mul": "a[i] * b[i]", "div": "a[i] / b[i]", "neg": "-a[i]"}


def _arithmetic(node, types):
    names = ("a", "b")[:len(node.inputs)]
    return {"inputs": [(nm, "real") for nm in names], "outputs": ["c"], "size": numel(types["out"][0]),
            "row": False, "body": [f"c[i] = {ARITHMETIC[node.op]};"]}


# ---- per example (i = the example, a column of m): a loop over the classes (rows) ----------------


def _log_softmax(node, types):
    c = rows(types["out"][0])
    at = lambda k: f"{k}[(long long)c * m + i]"  # noqa: E731  (row c of column i)
    return {"inputs": [("x", "real")], "outputs": ["y"], "size": "(long long)m", "row": False,
            "body": ["acc_t mx = x[i];  // y[:, i] = x[:, i] - log(sum over classes of exp(x[:, i]))",
                     f"for (int c = 1; c < {c}; ++c) mx = fmax(mx, (acc_t){at('x')});",
                     "acc_t se = 0;",
                     f"for (int c = 0; c < {c}; ++c) se += exp({at('x')} - mx);",
                     "const acc_t lse = mx + log(se);",
                     f"for (int c = 0; c < {c}; ++c) {at('y')} = (real)({at('x')} - lse);"]}


def _log_softmax_grad(node, types):
    c = rows(types["out"][0])
    at = lambda k: f"{k}[(long long)c * m + i]"  # noqa: E731
    return {"inputs": [("dy", "real"), ("y", "real")], "outputs": ["dx"], "size": "(long long)m", "row": False,
            "body": ["acc_t s = 0;  // dx[:, i] = dy[:, i] - exp(y[:, i]) * sum over classes of dy[:, i]",
                     f"for (int c = 0; c < {c}; ++c) s += {at('dy')};",
                     f"for (int c = 0; c < {c}; ++c) {at('dx')} = (real)({at('dy')} - exp((acc_t){at('y')}) * s);"]}


ELEMENTWISE = {"bias_add": _bias_add, "bias_add_act": _bias_add, "relu": _activation, "leaky_relu": _activation,
               "tanh": _activation, "sigmoid": _activation, "act_grad": _act_grad,
               **{op: _arithmetic for op in ARITHMETIC},
               "log_softmax": _log_softmax, "log_softmax_grad": _log_softmax_grad}


def _bn_forward(attrs):
    return f"batchnorm_{attrs['mode']}.cu.j2"


# class losses: op -> the name of its scores in the kernels
CLASS_LOSSES = {"softmax_cross_entropy": "logits", "nll": "logp"}


def _loss_template(op):
    return "class_loss.cu.j2" if op.removesuffix("_grad") in CLASS_LOSSES else "pointwise_loss.cu.j2"


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
    **{op: Lowering(_loss_template(op)) for op in ("softmax_cross_entropy", "softmax_cross_entropy_grad", "nll",
                                                    "nll_grad", "mse", "mse_grad", "sigmoid_bce", "sigmoid_bce_grad")},
}

def class_loss_context(op: str, attrs: dict, weighted: bool, classes: int, dL: str) -> dict:
    """templates/cuda/class_loss.cu.j2's variant for a class loss (softmax_cross_entropy on logits,
    nll on log-probabilities) or its gradient: ``plain`` is softmax_cross_entropy with the defaults
    (mean, no class weights, nothing ignored); otherwise the kernel weighs example j by w_j
    (weight[labels[j]] or 1; an ignored one is skipped) and scales its gradient by s_j = dL/dl_j."""
    base = op.removesuffix("_grad")
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


# pointwise losses: (the per-element loss, the per-element gradient before / numel * dL), p and t acc_t
POINTWISE_LOSSES = {
    "mse": ("(p - t) * (p - t)", "2 * (p - t)"),
    "sigmoid_bce": ("fmax(p, 0.0) - p * t + log1p(exp(-fabs(p)))",
                    "(p >= 0 ? 1 / (1 + exp(-p)) : exp(p) / (1 + exp(p))) - t"),
}
