"""ONNX -> bngraph: ``from_onnx(path_or_ModelProto)`` builds an :class:`ImportedGraph`.

``IMPORTERS`` is the mapping, one entry per ONNX op type: ``fn(ctx, node, where, ins) -> outputs``
(``ins``: a :class:`Data` for batch-sized values, a :class:`Tensor` for constants). Anything else
is one :class:`UnsupportedNode` error naming the node, its op type and why. Conventions converted
here, explicitly:

* layout: ONNX puts the batch on axis 0, the IR on axis 1 (see :mod:`.imported`); convolutional
  data (N, C, d...) is the IR's spatial (C, m, d...) (Conv and the pools: :mod:`.onnx_spatial`);
* Gemm ``Y = alpha*A'B' + beta*C``: ``W = alpha*B'^T`` (the IR's ``(out, in)``), ``b = beta*C``;
* BatchNormalization ``momentum`` is the weight of the *old* value (default 0.9); bngraph's is the
  weight of the new batch: ``momentum_ir = 1 - momentum_onnx``. ONNX updates the running variance
  with the population (biased) variance, bngraph with the unbiased one (PyTorch's convention): a
  graph trained in bngraph follows bngraph's; the backend adapter converts its outputs back.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .imported import Data, InputSpec, Tensor, literal
from .names import show
from .onnx_context import _dims, _f32, _role, _source
from ..ops import REDUCTIONS
from .onnx_read import INT_TYPES, UnsupportedNode, attributes
from .onnx_spatial import SPATIAL_IMPORTERS, flatten_spatial, per_channel

IMPORTERS: dict = {}


def importer(*op_types):
    def wrap(fn):
        for t in op_types:
            IMPORTERS[t] = fn
        return fn
    return wrap


def _per_feature(ctx, t: Tensor, fshape, where, op, what) -> Tensor:
    """A constant that broadcasts over the batch, as one value per feature (flattened)."""
    shape = tuple(t.shape)
    while shape and shape[0] == 1 and len(shape) > len(fshape):
        shape = shape[1:]
    try:
        np.broadcast_shapes(shape, tuple(fshape))
        ok = len(shape) <= len(fshape)
    except ValueError:
        ok = False
    if not ok:
        raise UnsupportedNode(where, op, f"{what} of shape {tuple(t.shape)} does not broadcast over the batch to "
                              f"features {tuple(fshape)}: it must hold one value per feature (or one in all)")
    n = math.prod(fshape)
    return t.map(lambda a: np.broadcast_to(np.asarray(a).reshape(shape), fshape).reshape(n), (n,))


# ---- the op table --------------------------------------------------------------------------------
@importer("Gemm")
def _gemm(ctx, node, where, ins):
    at = attributes(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, where)
    if len(ins) < 2:
        raise UnsupportedNode(where, "Gemm", "needs inputs A and B")
    a = ins[0]
    if at["transA"]:
        if not isinstance(a, str):
            raise UnsupportedNode(where, "Gemm", "transA=1 on a computed value: A^T would put the batch on the "
                                  "features axis; only a graph input (read as features x batch) may be transposed")
        elem, dims = ctx.pending[a]
        if dims is None or len(dims) != 2 or dims[0] is None:
            raise UnsupportedNode(where, "Gemm", f"transA=1 needs A of shape (K, N) with K fixed, got "
                                  f"{_dims(dims or ())}")
        x = ctx.lay_out(a, where, "Gemm", "flat_t")
    else:
        x = ctx.data(a, where, "Gemm", "A")
    if len(x.fshape) != 1 or x.layout != "flat":
        raise UnsupportedNode(where, "Gemm", f"A must be 2-D (batch, features); its features are {x.fshape}")
    B = ctx.tensor(ins[1], where, "B")
    if len(B.shape) != 2:
        raise UnsupportedNode(where, "Gemm", f"B must be 2-D, got shape {B.shape}")
    K, N = B.shape[::-1] if at["transB"] else B.shape
    if K != x.features:
        raise UnsupportedNode(where, "Gemm", f"A has {x.features} features but B is {B.shape} "
                              f"(transB={at['transB']})")
    C = ins[2] if len(ins) > 2 and ins[2] != "" else None
    if C is not None:
        C = ctx.operand(C, Data(x.ir, (N,)), where, "C")
    matrix_bias = isinstance(C, (Data, str))
    if matrix_bias and at["beta"] != 1.0:
        raise UnsupportedNode(where, "Gemm", "a batch-sized C with beta != 1: the IR adds such values unscaled")
    name = ctx.layer_name(node, "fc")
    vector_bias = C is not None and not matrix_bias
    out = ctx.g.matmul(x.ir, N, bias=vector_bias, name=name)
    alpha, trans = float(at["alpha"]), bool(at["transB"])
    ctx.param(f"{name}.W", B.map(lambda b: alpha * (b if trans else b.T), (N, K)), _source(node, 1),
              _role(where, "Gemm", "B"))
    affine = (f"{name}.W", None)
    if vector_bias:
        beta = float(at["beta"])
        ctx.param(f"{name}.b", _per_feature(ctx, C, (N,), where, "Gemm", "C").map(lambda c: beta * c),
                  _source(node, 2), _role(where, "Gemm", "C"))
        affine = (f"{name}.W", f"{name}.b")
    if matrix_bias:
        c = ctx.data(C, where, "Gemm", "C")
        if c.fshape != (N,):
            raise UnsupportedNode(where, "Gemm", f"C has features {c.fshape}, expected ({N},)")
        out = ctx.g.add_node("add", [out.name, c.ir], {}, [ctx.names.claim(f"{name}_c", "add")]).out
        affine = None
    return [Data(out.name, (N,), brank=1, rows=x.rows, affine=affine)]


@importer("MatMul")
def _matmul(ctx, node, where, ins):
    attributes(node, {}, where)
    x = ctx.data(ins[0], where, "MatMul", "A")
    if len(x.fshape) != 1 or x.layout != "flat":
        raise UnsupportedNode(where, "MatMul", f"A must be 1-D or 2-D (batch, features); its features are {x.fshape}")
    if not isinstance(ins[1], (Tensor, str)):
        raise UnsupportedNode(where, "MatMul", "B is batch-sized: the IR multiplies data by weights (B a constant)")
    B = ctx.tensor(ins[1], where, "B")
    if len(B.shape) not in (1, 2) or B.shape[0] != x.features:
        raise UnsupportedNode(where, "MatMul", f"B of shape {B.shape} does not take {x.features} features")
    N = B.shape[1] if len(B.shape) == 2 else 1
    name = ctx.layer_name(node, "fc")
    out = ctx.g.matmul(x.ir, N, bias=False, name=name)
    ctx.param(f"{name}.W", B.map(lambda b: b.T if b.ndim == 2 else b[None, :], (N, x.features)), _source(node, 1),
              _role(where, "MatMul", "B"))
    return [Data(out.name, (N,) if len(B.shape) == 2 else (), brank=x.brank, rows=x.rows,
                 affine=(f"{name}.W", None))]


# ONNX elementwise op of two data tensors -> the IR op (same shape; N-D data is flattened at the boundary)
DATA_OPS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def _data_op(ctx, node, where, x: Data, b):
    """``x op y`` with y batch-sized data of x's shape: the IR's elementwise add/sub/mul/div."""
    op = node.op_type
    y = ctx.data(b, where, op)
    if (y.fshape, y.layout, y.brank) != (x.fshape, x.layout, x.brank):
        raise UnsupportedNode(where, op, f"operands with features {x.fshape} and {y.fshape}: an elementwise "
                              f"{op} of two data tensors needs one shape (no broadcasting between data)")
    out = ctx.g.add_node(DATA_OPS[op], [x.ir, y.ir], {}, [ctx.layer_name(node, DATA_OPS[op])])
    return [replace(x, ir=out.out.name, affine=None)]


@importer("Add", "Sub")
def _add_sub(ctx, node, where, ins):
    """x + c, x - c with a constant c per feature: ``bias_add`` (c - x: ``bias_add(neg x)``);
    x +/- y of two data tensors: ``add``/``sub``."""
    attributes(node, {}, where)
    op = node.op_type
    a, b = ins
    swapped = isinstance(a, Tensor) and not isinstance(b, Tensor)
    if swapped:
        a, b = b, a
    negate = swapped and op == "Sub"  # c - x = (-x) + c
    x = ctx.data(a, where, op)
    b = ctx.operand(b, x, where, "the second operand")
    if not isinstance(b, Tensor):
        return _data_op(ctx, node, where, x, b)
    if x.layout == "channels":
        raise UnsupportedNode(where, op, "a constant added to spatial (N, C, ...) data")
    name = ctx.layer_name(node, "bias")
    sign = -1.0 if op == "Sub" and not negate else 1.0
    if negate:
        x = replace(x, ir=ctx.g.add_node("neg", [x.ir], {}, [ctx.names.claim(f"{name}_neg", "neg")]).out.name)
    out = ctx.g.bias_add(x.ir, name=name)
    vec = (per_channel(b, x, where, op, "the constant") if x.layout == "spatial"  # one bias per channel
           else _per_feature(ctx, b, x.fshape, where, op, "the constant"))
    ctx.param(f"{name}.b", vec.map(lambda c: sign * c),
              _source(node, 0 if swapped else 1), _role(where, op, "the constant"))
    return [replace(x, ir=out.name, affine=None)]


@importer("Mul", "Div")
def _scale(ctx, node, where, ins):
    """x*s, x/s with a constant s per feature: folded into the matmul before it (W' = s[:,None]*W,
    b' = s*b) when x is that matmul's only use, else a diagonal matmul (trainable as a full matrix).
    x*y, x/y of two data tensors: ``mul``/``div``."""
    attributes(node, {}, where)
    op = node.op_type
    a, b = ins
    if op == "Mul" and isinstance(a, Tensor):
        a, b = b, a
    if isinstance(a, Tensor):
        raise UnsupportedNode(where, op, "a constant divided by data: the IR has no reciprocal")
    x = ctx.data(a, where, op)
    b = ctx.operand(b, x, where, "the second operand")
    if not isinstance(b, Tensor):
        return _data_op(ctx, node, where, x, b)
    if x.layout != "flat":
        raise UnsupportedNode(where, op, "a scale on spatial (N, C, ...) data")
    s = _per_feature(ctx, b, x.fshape, where, op, "the constant")
    if op == "Div":
        s = s.map(lambda c: 1.0 / c)
    if x.affine is not None and ctx.consumers.get(node.input[0], 0) == 1:
        W, bias = x.affine
        ctx.g.recipes[W] = _combine(ctx.g.recipes[W], s, lambda w, sc: sc[:, None] * w)
        if bias is not None:
            ctx.g.recipes[bias] = _combine(ctx.g.recipes[bias], s, lambda c, sc: sc * c)
        return [x]
    name = ctx.layer_name(node, "scale")
    out = ctx.g.matmul(x.ir, x.features, bias=False, name=name)
    ctx.param(f"{name}.W", s.map(np.diag, (x.features, x.features)), _source(node, 1), _role(where, op, "the constant"))
    return [replace(x, ir=out.name, affine=(f"{name}.W", None))]


def _combine(t: Tensor, s: Tensor, fn) -> Tensor:
    tg, sg = t.get, s.get
    return Tensor(t.shape, lambda a: fn(np.asarray(tg(a)), np.asarray(sg(a))), t.sources | s.sources)


ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu"}
# ONNX ops that only rename a value: no IR node (so an output that is a graph input passes through)
ALIAS_OPS = {"Identity"}


@importer(*ALIAS_OPS)
def _alias(ctx, node, where, ins):
    """Identity: its output is its input under another name. An alias of a graph input reads what
    the input's first use decides (data or a weight): ``Context.value`` follows the names."""
    attributes(node, {}, where)
    v = ins[0]
    if isinstance(v, Data):
        v = replace(v, affine=None)  # a scale read through the alias must not fold into a shared matmul
    return [v]


@importer(*ACTIVATION_OPS)
def _activation(ctx, node, where, ins):
    kind = ACTIVATION_OPS[node.op_type]
    at = attributes(node, {"alpha": 0.01} if kind == "leaky_relu" else {}, where)
    x = ctx.data(ins[0], where, node.op_type)
    extra = {"negative_slope": _f32(at["alpha"])} if kind == "leaky_relu" else {}
    if extra and not (math.isfinite(extra["negative_slope"]) and extra["negative_slope"] >= 0):
        raise UnsupportedNode(where, node.op_type, f"alpha={at['alpha']!r}: the IR's leaky_relu needs a finite "
                              f"slope >= 0 (its gradient is computed from the output)")
    out = ctx.g.activation(x.ir, kind, name=ctx.names.claim(node.output[0], kind), **extra)
    return [replace(x, ir=out.name, affine=None)]


@importer("Flatten")
def _flatten(ctx, node, where, ins):
    at = attributes(node, {"axis": 1}, where)
    if isinstance(ins[0], str):  # a graph input: the reshape happens at the boundary
        rank = len(ctx.pending[ins[0]][1])
        axis = at["axis"] + rank if at["axis"] < 0 else at["axis"]
        if not 0 <= axis <= rank:
            raise UnsupportedNode(where, "Flatten", f"axis {at['axis']} out of range for rank {rank}")
        x = ctx.lay_out(ins[0], where, "Flatten", "flat", axis)
        return [Data(x.ir, (x.features,), brank=1, rows=True)]
    x = ctx.data(ins[0], where, "Flatten")
    if x.layout == "spatial":
        return [flatten_spatial(ctx, node, where, x, at["axis"])]
    rank = (0 if x.rows else 1) + len(x.fshape)
    axis = at["axis"] + rank if at["axis"] < 0 else at["axis"]
    if x.layout != "flat" or axis != (0 if x.rows else 1):
        raise UnsupportedNode(where, "Flatten", f"axis={at['axis']} on a computed value would move the batch "
                              f"axis; only axis=1 (keep the batch) is supported there")
    return [Data(x.ir, (x.features,), brank=1, rows=True)]


def _feature_axes(x: Data) -> tuple:
    """The outside axes that the IR's features axis of ``x`` holds (flattened in order)."""
    if x.layout in ("channels", "spatial"):  # spatial: the IR's axis 0 is the channels, outside axis 1
        return (x.caxis,)
    start = 1 if x.rows else x.brank
    return tuple(range(start, start + len(x.fshape)))


@importer("Softmax", "LogSoftmax")
def _softmax(ctx, node, where, ins):
    """The output head: softmax/log_softmax over the IR's features axis, applied at the output
    boundary (see :class:`.imported.OutputSpec`). The axes it normalizes over must be the features:

    * opset >= 13: over one ``axis`` (default -1). On a graph input that axis becomes the features
      and every other axis is flattened into the batch (the channels layout at ``axis``; 2-D data
      over its last axis is the plain (batch, features) layout); the output goes back to the input's
      shape and axis order.
    * opset < 13: over the trailing axes from ``axis`` on (default 1), flattened: ONNX's old
      coercion to 2-D. On a graph input, the axes before ``axis`` are the batch (Flatten's layout).

    On a computed value the axes must already be its features (2-D data over its last axis, or the
    channels of spatial batch norm's layout)."""
    op, new = node.op_type, ctx.opset >= 13
    at = attributes(node, {"axis": -1 if new else 1}, where)
    v = ins[0]
    if isinstance(v, str) and v in ctx.pending:  # a graph input: its layout follows the softmax axis
        rank = len(ctx.pending[v][1])
        axis = at["axis"] + rank if at["axis"] < 0 else at["axis"]
        if not 0 <= axis < rank:
            raise UnsupportedNode(where, op, f"axis={at['axis']} is out of range for rank {rank}")
        if not new or (rank <= 2 and axis == rank - 1):
            x = ctx.lay_out(v, where, op, "flat", axis if not new else None)
        else:
            x = ctx.lay_out(v, where, op, "channels", axis)
    else:
        x = ctx.data(v, where, op)
    rank = (1 if x.rows else x.brank) + (1 if x.layout == "channels" else len(x.fshape))
    axis = at["axis"] + rank if at["axis"] < 0 else at["axis"]
    want = (axis,) if new else tuple(range(axis, rank))
    have = _feature_axes(x)
    if want != have or not want:
        over = f"axis {axis}" if new else f"axes {axis}..{rank - 1} flattened (opset {ctx.opset} < 13)"
        raise UnsupportedNode(where, op, f"axis={at['axis']}: a softmax over {over} of a computed value whose "
                              f"features are outside axes {have} (rank {rank}); the IR normalizes over its features "
                              f"axis, so another axis is imported on graph inputs only (a layout change at the "
                              f"boundary)")
    return [replace(x, affine=None, head="softmax" if op == "Softmax" else "log_softmax")]


@importer("BatchNormalization")
def _batchnorm(ctx, node, where, ins):
    at = attributes(node, {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1, "is_test": 1,
                           "consumed_inputs": []}, where)
    if not at["spatial"]:
        raise UnsupportedNode(where, "BatchNormalization", "spatial=0 (per-element statistics) is not supported")
    eps, mom = _f32(at["epsilon"]), _f32(at["momentum"])
    if not (math.isfinite(eps) and eps > 0) or not (0 <= mom <= 1):
        raise UnsupportedNode(where, "BatchNormalization", f"epsilon={eps!r} must be > 0 and momentum={mom!r} in [0, 1]")
    if isinstance(ins[0], str) and len(ctx.pending[ins[0]][1] or ()) >= 3:  # (N, C, d...) -> spatial or (C, N*d...)
        kind = "spatial" if ctx.spatial_input(ins[0]) else "channels"
        x = ctx.lay_out(ins[0], where, "BatchNormalization", kind)
    else:
        x = ctx.data(ins[0], where, "BatchNormalization", "X")
        if len(x.fshape) != 1 and x.layout != "spatial":
            raise UnsupportedNode(where, "BatchNormalization", f"X has features {x.fshape}: spatial batch norm is "
                                  f"imported on graph inputs (N, C, ...) and on convolutional data only")
    C = x.fshape[0]
    params = [_per_feature(ctx, ctx.tensor(t, where, w), (C,), where, "BatchNormalization", w)
              for t, w in zip(ins[1:5], ("scale", "B", "input_mean", "input_var"))]
    name = ctx.layer_name(node, "bn")
    out = ctx.g.batchnorm(x.ir, name=name, eps=eps, momentum=float(f"{1.0 - mom:.12g}"))
    for suffix, t, i, w in zip(("gamma", "beta", "running_mean", "running_var"), params, range(1, 5),
                               ("scale", "B", "input_mean", "input_var")):
        ctx.param(f"{name}.{suffix}", t, _source(node, i), _role(where, "BatchNormalization", w))
    outs = [replace(x, ir=out.name, affine=None)]
    if at["training_mode"]:
        ctx.g.training_outputs = True
        outs += [("state", f"{name}.running_mean.next", None),
                 ("state", f"{name}.running_var.next", (f"{name}.var", mom, math.prod(x.fshape[1:])
                                                         if x.layout == "spatial" else 1))]
    elif len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedNode(where, "BatchNormalization", "running statistics outputs need training_mode=1")
    return outs


@importer("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss")
def _loss(ctx, node, where, ins):
    """SoftmaxCrossEntropyLoss -> softmax_cross_entropy, its log_prob output -> log_softmax;
    NegativeLogLikelihoodLoss -> nll (softmax_cross_entropy on the logits when it reads a LogSoftmax).
    ``reduction``, ``ignore_index`` and the class weights (input 3, a state value: a constant the
    model carries) map one to one: ONNX's semantics are PyTorch's, ``w_i = weight[y_i]`` (1 without
    weights, 0 where ``y_i == ignore_index``) and mean = ``sum_i w_i l_i / sum_i w_i``. ONNX's scores
    are (N, C), the IR's (C, N); N-D scores (N, C, d1, ...) that are a graph input enter as
    (C, N*d1*...) (spatial batch norm's layout change), their labels (N, d1, ...) flattened, and a
    per-example loss (reduction none) leaves reshaped to (N, d1, ...)."""
    op = node.op_type
    at = attributes(node, {"reduction": "mean", "ignore_index": None}, where)
    if at["reduction"] not in REDUCTIONS:
        raise UnsupportedNode(where, op, f"reduction={show(at['reduction'])}: expected one of {', '.join(REDUCTIONS)}")
    if len(ins) < 2 or not isinstance(ins[1], str) or ins[1] not in ctx.pending:
        raise UnsupportedNode(where, op, "the labels (input 2) must be a graph input")
    if isinstance(ins[0], str) and len(ctx.pending[ins[0]][1] or ()) >= 3:
        x = ctx.lay_out(ins[0], where, op, "channels")  # (N, C, d1, ...) -> (C, N*d1*...)
    else:
        x = ctx.data(ins[0], where, op, "scores")
        if len(x.fshape) != 1 or x.layout != "flat" or x.brank != 1:
            raise UnsupportedNode(where, op, "needs 2-D scores (N, C), or N-D scores (N, C, d1, ...) that are a "
                                  "graph input")
    if x.head == "softmax":
        raise UnsupportedNode(where, op, "reads a Softmax's output (probabilities, not log-probabilities)")
    kind = "nll" if op == "NegativeLogLikelihoodLoss" and x.head != "log_softmax" else "softmax_cross_entropy"
    labels = _labels(ctx, ins[1], x, where)
    weight = None
    if len(ins) > 2 and ins[2] != "":
        t = ctx.tensor(ins[2], where, "the class weights")
        if tuple(t.shape) != (x.features,):
            raise UnsupportedNode(where, op, f"class weights of shape {tuple(t.shape)}: expected ({x.features},), "
                                  f"one per class")
        weight = ctx.names.claim(node.input[2], "class_weights")
        ctx.g.state_value(weight, (x.features,))
        ctx.param(weight, t, node.input[2], _role(where, op, "weight"))
    options = {"reduction": at["reduction"], "ignore_index": at["ignore_index"]}
    name = ctx.names.claim(node.output[0], "loss")
    if at["reduction"] == "none":  # one loss per example: a value, not the graph's (scalar) loss
        ir = [x.ir, labels] + ([weight] if weight else [])
        out = [Data(ctx.g.add_node(kind, ir, options, [name]).out.name, (), brank=x.brank)]
    else:
        out = [("loss", getattr(ctx.g, kind)(x.ir, labels, name=name, weight=weight, **options).name, None)]
    if len(node.output) > 1 and node.output[1]:  # SoftmaxCrossEntropyLoss's log_prob: log_softmax(scores)
        lp = ctx.g.log_softmax(x.ir, name=ctx.names.claim(node.output[1], "log_prob"))
        out.append(replace(x, ir=lp.name, head=None, affine=None))
    return out


def _labels(ctx, label_input, x, where) -> str:
    """Graph input ``label_input`` as the IR's labels for scores ``x``: one class index per example,
    (N,) or (N, d1, ...) as x's batch axes (flattened in the same order)."""
    elem, dims = ctx.pending.pop(label_input)
    if elem not in INT_TYPES or len(dims or ()) != x.brank:
        want = "1-D" if x.brank == 1 else f"{x.brank}-D (N, d1, ...)"
        raise UnsupportedNode(where, "labels", f"labels {show(label_input)} must be a {want} int32/int64 graph input, "
                              f"got element type {elem} and shape {_dims(dims or ())}")
    ir = ctx.names.claim(label_input, "y")
    ctx.g.labels(ir, x.features)
    ctx.g.inputs_spec.append(InputSpec(label_input, ir, "labels", x.brank))
    return ir


def _labels_loss(ctx, x, label_input):
    """softmax_cross_entropy of ``x`` against a new labels input (from_onnx's added loss)."""
    ir = _labels(ctx, label_input, x, show(label_input))
    return ctx.g.softmax_cross_entropy(x.ir, ir, name=ctx.names.claim("loss", "loss")).name


@importer("Constant")
def _constant(ctx, node, where, ins):
    at = attributes(node, {"value": None, "value_float": None, "value_floats": None, "value_int": None,
                           "value_ints": None}, where)
    given = [k for k, v in at.items() if v is not None]
    if len(given) != 1:
        raise UnsupportedNode(where, "Constant", "needs exactly one value attribute")
    return [literal(np.asarray(at[given[0]]))]


IMPORTERS.update(SPATIAL_IMPORTERS)  # Conv, MaxPool, AveragePool, GlobalAveragePool: bngraph/interop/onnx_spatial.py
