"""The op table's spatial ops: convolution, pooling, flatten (registered into ``bngraph.ops.OPS``).

A spatial value is ``(C, m, d1, ..., dk)``, k = 1 or 2: channels first, the batch second
(docs/ir.md). Spatial batch norm is no op of its own: ``batchnorm`` on a spatial value normalizes
each channel over the batch and the positions, the ``(C, m*d1*...*dk)`` view. The reference
semantics are the functions of :mod:`bngraph.spatial`; attributes (``Ints``: ``3x3`` in the text):

* ``conv[stride, pads, dilation, groups] %W, %x``: W (F, C/groups, k1, ...), x (C, m, d...) ->
  (F, m, o...), ``o = (d + pad_begin + pad_end - dilation*(k-1) - 1) // stride + 1``; cross-correlation
  as PyTorch's ``Conv1d/2d`` and ONNX's ``Conv``; a bias is a separate ``bias_add`` (so the bias fold
  before batch norm is the MLP's);
* ``maxpool[kernel, stride, pads, dilation, ceil_mode]``, ``avgpool[kernel, stride, pads,
  ceil_mode, count_include_pad]`` (padding counts as -inf / is left out of the mean unless
  ``count_include_pad``), ``global_avgpool`` (C, m, d...) -> (C, m, 1, ...);
* ``flatten`` (C, m, d...) -> (C*d1*..., m), each example's features in PyTorch's order, so a
  ``Linear`` after ``Flatten`` keeps its weights; ``unflatten[shape]`` is its inverse.

``pads`` is ONNX's order: the padding before each spatial dimension, then after each.
The backward ops carry the sizes their output needs (``in_size``, ``kernel``).
"""
from __future__ import annotations

import math

from . import spatial
from .ir import BATCH, Ints, IRError, TensorType
from .opdef import OpDef, _expect_arity, _expect_float, _expect_same_dtype, register

SPATIAL_RANKS = (1, 2)  # spatial dimensions the ops take: conv1d/pool1d and conv2d/pool2d


def is_spatial(t: TensorType) -> bool:
    """A (C, m, d1, ...) value."""
    return t.rank >= 3 and t.shape[1] == BATCH


def expect_spatial(where, what, t: TensorType) -> int:
    """The number of spatial dimensions of a float (C, m, d1[, d2]) value, or an IRError."""
    _expect_float(where, what, t)
    if not is_spatial(t) or t.rank - 2 not in SPATIAL_RANKS:
        raise IRError(f"{where}: {what} expected a spatial value (channels, {BATCH}, length) or "
                      f"(channels, {BATCH}, height, width), got {t}")
    return t.rank - 2


def _expect_len(where, what, v, n):
    if len(v) != n:
        raise IRError(f"{where}: attribute {what} needs {n} value{'s' if n > 1 else ''} for {n // (2 if what == 'pads' else 1)} "
                      f"spatial dimension(s), got {'x'.join(map(str, v))}")


def _expect_positive(where, what, v):
    if not all(d >= 1 for d in v):
        raise IRError(f"{where}: attribute {what} must be >= 1, got {'x'.join(map(str, v))}")


def _window_out(where, what, in_size, kernel, attrs, dilation, ceil=False) -> tuple:
    k = len(in_size)
    _expect_len(where, "stride", attrs["stride"], k)
    _expect_len(where, "pads", attrs["pads"], 2 * k)
    _expect_positive(where, "stride", attrs["stride"])
    _expect_positive(where, "dilation", dilation)
    _expect_positive(where, "kernel", kernel)
    out = spatial.out_shape(in_size, kernel, attrs["stride"], attrs["pads"], dilation, ceil)
    if min(out) < 1:
        raise IRError(f"{where}: {what} leaves no output: input size {'x'.join(map(str, in_size))} with padding "
                      f"{'x'.join(map(str, attrs['pads']))} is smaller than the (dilated) kernel "
                      f"{'x'.join(str(d * (kk - 1) + 1) for d, kk in zip(dilation, kernel))}")
    return out


CONV_ATTRS = {"stride": (Ints, None), "pads": (Ints, None), "dilation": (Ints, None), "groups": (int, 1)}

# --------------------------------------------------------------------------------------------
# conv and its two backward ops
# --------------------------------------------------------------------------------------------


def _conv_geometry(where, W, x, attrs):
    """(F, C, kernel, out) of conv(W, x), checked."""
    k = expect_spatial(where, "conv input", x)
    _expect_float(where, "conv weight", W)
    _expect_same_dtype(where, (W, x))
    if W.rank != k + 2 or BATCH in W.shape:
        raise IRError(f"{where}: conv weight expected (out_channels, in_channels/groups{', k' * k}) for a "
                      f"{k}-D input {x}, got {W}")
    F, Cg, kernel, C, groups = W.shape[0], W.shape[1], W.shape[2:], x.shape[0], attrs["groups"]
    _expect_len(where, "dilation", attrs["dilation"], k)
    if groups < 1 or C % groups or F % groups:
        raise IRError(f"{where}: groups={groups} must divide both the input channels ({C}) and the output channels ({F})")
    if Cg * groups != C:
        want = TensorType(W.dtype, (F, C // groups, *kernel))
        raise IRError(f"{where}: conv weight expected shape {want} (input channels {C} / groups {groups}), got {W}")
    return F, C, kernel, _window_out(where, "conv", x.shape[2:], kernel, attrs, attrs["dilation"])


def _conv_infer(where, types, attrs):
    _expect_arity(where, "conv", types, 2)
    W, x = types
    F, _, _, out = _conv_geometry(where, W, x, attrs)
    return (TensorType(x.dtype, (F, BATCH, *out)),)


def _geom(attrs):
    return attrs["stride"], attrs["pads"], attrs["dilation"]


def _conv_grad_rule(emit, node, cts):
    # dW = conv_grad_weight(dy, x); dx = conv_grad_input(W, dy): the shapes they need ride as attributes
    (dy,) = cts
    W, x = node.inputs
    a = {k: node.attr[k] for k in CONV_ATTRS}
    kernel, in_size = emit.types[W].shape[2:], emit.types[x].shape[2:]
    dW = emit("conv_grad_weight", [dy, x], {**a, "kernel": Ints(kernel)})[0]
    dx = emit("conv_grad_input", [W, dy], {**a, "in_size": Ints(in_size)})[0]
    return [dW, dx]


register(OpDef(
    "conv", "y = conv(W, x): y[f, n, p] = sum over c, j of W[f, c, j] * x[c, n, p*stride + j*dilation - pad]  "
            "(im2col then one matmul per group)",
    _conv_infer, lambda ins, a: (spatial.conv(*ins, *_geom(a), a["groups"]),), _conv_grad_rule,
    attrs=dict(CONV_ATTRS), init_roles={0: "weight"}, name_prefix="conv",
))


def _conv_grad_input_infer(where, types, attrs):
    _expect_arity(where, "conv_grad_input", types, 2)
    W, dy = types
    k = expect_spatial(where, "conv_grad_input dy", dy)
    _expect_len(where, "in_size", attrs["in_size"], k)
    x = TensorType(dy.dtype, (W.shape[1] * attrs["groups"], BATCH, *attrs["in_size"]))
    _, _, _, out = _conv_geometry(where, W, x, attrs)
    if tuple(dy.shape) != (W.shape[0], BATCH, *out):
        raise IRError(f"{where}: conv_grad_input dy expected shape {TensorType(dy.dtype, (W.shape[0], BATCH, *out))}, got {dy}")
    return (x,)


def _conv_grad_weight_infer(where, types, attrs):
    _expect_arity(where, "conv_grad_weight", types, 2)
    dy, x = types
    k = expect_spatial(where, "conv_grad_weight x", x)
    _expect_len(where, "kernel", attrs["kernel"], k)
    W = TensorType(x.dtype, (dy.shape[0], x.shape[0] // max(attrs["groups"], 1), *attrs["kernel"]))
    _, _, _, out = _conv_geometry(where, W, x, attrs)
    if tuple(dy.shape) != (W.shape[0], BATCH, *out):
        raise IRError(f"{where}: conv_grad_weight dy expected shape {TensorType(dy.dtype, (W.shape[0], BATCH, *out))}, got {dy}")
    return (W,)


register(OpDef(
    "conv_grad_input", "dx = col2im(W^T @ dy) per group: each kernel offset's slice added back (no scatter)",
    _conv_grad_input_infer,
    lambda ins, a: (spatial.conv_grad_input(*ins, a["in_size"], *_geom(a), a["groups"]),),
    attrs={**CONV_ATTRS, "in_size": (Ints, None)}, kind="backward",
))
register(OpDef(
    "conv_grad_weight", "dW = dy @ im2col(x)^T per group",
    _conv_grad_weight_infer,
    lambda ins, a: (spatial.conv_grad_weight(*ins, a["kernel"], *_geom(a), a["groups"]),),
    attrs={**CONV_ATTRS, "kernel": (Ints, None)}, kind="backward",
))

# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

MAXPOOL_ATTRS = {"kernel": (Ints, None), "stride": (Ints, None), "pads": (Ints, None), "dilation": (Ints, None),
                 "ceil_mode": (bool, False)}
AVGPOOL_ATTRS = {"kernel": (Ints, None), "stride": (Ints, None), "pads": (Ints, None), "ceil_mode": (bool, False),
                 "count_include_pad": (bool, False)}


def _pool_out(where, opname, x, attrs) -> tuple:
    k = expect_spatial(where, f"{opname} input", x)
    _expect_len(where, "kernel", attrs["kernel"], k)
    dilation = attrs.get("dilation", Ints((1,) * k))
    _expect_len(where, "dilation", dilation, k)
    out = _window_out(where, opname, x.shape[2:], attrs["kernel"], attrs, dilation, attrs["ceil_mode"])
    for i in range(k):  # a window of padding only has no maximum (and no mean without the padding)
        bad = spatial.padding_only_window(x.shape[2 + i], attrs["kernel"][i], attrs["stride"][i], attrs["pads"][i],
                                          dilation[i], out[i])
        if bad is not None:
            raise IRError(f"{where}: {opname} window {bad} along spatial dimension {i + 1} covers padding only "
                          f"(size {x.shape[2 + i]}, kernel {attrs['kernel'][i]}, stride {attrs['stride'][i]}, "
                          f"pads {attrs['pads'][i]}/{attrs['pads'][k + i]}, dilation {dilation[i]}): use less padding")
    return out


def _pool_infer(opname):
    def infer(where, types, attrs):
        _expect_arity(where, opname, types, 1)
        (x,) = types
        return (TensorType(x.dtype, (x.shape[0], BATCH, *_pool_out(where, opname, x, attrs))),)

    return infer


def _maxpool_ref(ins, a):
    return (spatial.maxpool(ins[0], a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"]),)


def _avgpool_ref(ins, a):
    return (spatial.avgpool(ins[0], a["kernel"], a["stride"], a["pads"], a["ceil_mode"], a["count_include_pad"]),)


register(OpDef(
    "maxpool", "y = the maximum of each window (padding counts as -inf)", _pool_infer("maxpool"), _maxpool_ref,
    lambda emit, node, cts: [emit("maxpool_grad", [cts[0], node.inputs[0], node.out.name], node.attr)[0]],
    attrs=dict(MAXPOOL_ATTRS), name_prefix="pool",
))
register(OpDef(
    "avgpool", "y = the mean of each window (count_include_pad: padding counts in the divisor)",
    _pool_infer("avgpool"), _avgpool_ref,
    lambda emit, node, cts: [emit("avgpool_grad", [cts[0]],
                                  {**node.attr, "in_size": Ints(emit.types[node.inputs[0]].shape[2:])})[0]],
    attrs=dict(AVGPOOL_ATTRS), name_prefix="pool",
))


def _maxpool_grad_infer(where, types, attrs):
    _expect_arity(where, "maxpool_grad", types, 3)
    dy, x, y = types
    (want,) = _pool_infer("maxpool_grad")(where, [x], attrs)
    for what, t in (("dy", dy), ("y", y)):
        if t != want:
            raise IRError(f"{where}: maxpool_grad {what} expected shape {want}, got {t}")
    return (x,)


def _avgpool_grad_infer(where, types, attrs):
    _expect_arity(where, "avgpool_grad", types, 1)
    (dy,) = types
    expect_spatial(where, "avgpool_grad dy", dy)
    x = TensorType(dy.dtype, (dy.shape[0], BATCH, *attrs["in_size"]))
    (want,) = _pool_infer("avgpool_grad")(where, [x], attrs)
    if dy != want:
        raise IRError(f"{where}: avgpool_grad dy expected shape {want}, got {dy}")
    return (x,)


register(OpDef(
    "maxpool_grad", "dx: each window's dy added at its maximum (the first when tied, as PyTorch)",
    _maxpool_grad_infer,
    lambda ins, a: (spatial.maxpool_grad(*ins, a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"]),),
    attrs=dict(MAXPOOL_ATTRS), kind="backward",
))
register(OpDef(
    "avgpool_grad", "dx: dy/divisor added at every position of its window",
    _avgpool_grad_infer,
    lambda ins, a: (spatial.avgpool_grad(ins[0], a["in_size"], a["kernel"], a["stride"], a["pads"], a["ceil_mode"],
                                         a["count_include_pad"]),),
    attrs={**AVGPOOL_ATTRS, "in_size": (Ints, None)}, kind="backward",
))


def _global_avgpool_infer(where, types, attrs):
    _expect_arity(where, "global_avgpool", types, 1)
    (x,) = types
    k = expect_spatial(where, "global_avgpool input", x)
    return (TensorType(x.dtype, (x.shape[0], BATCH, *(1,) * k)),)


def _global_avgpool_grad_infer(where, types, attrs):
    _expect_arity(where, "global_avgpool_grad", types, 1)
    (dy,) = types
    k = expect_spatial(where, "global_avgpool_grad dy", dy)
    _expect_len(where, "in_size", attrs["in_size"], k)
    _expect_positive(where, "in_size", attrs["in_size"])
    if tuple(dy.shape[2:]) != (1,) * k:
        raise IRError(f"{where}: global_avgpool_grad dy expected shape "
                      f"{TensorType(dy.dtype, (dy.shape[0], BATCH, *(1,) * k))}, got {dy}")
    return (TensorType(dy.dtype, (dy.shape[0], BATCH, *attrs["in_size"])),)


register(OpDef(
    "global_avgpool", "y[c, n] = the mean of x[c, n] over the positions (kept as 1-sized dimensions)",
    _global_avgpool_infer, lambda ins, a: (spatial.global_avgpool(ins[0]),),
    lambda emit, node, cts: [emit("global_avgpool_grad", [cts[0]],
                                  {"in_size": Ints(emit.types[node.inputs[0]].shape[2:])})[0]],
    name_prefix="pool",
))
register(OpDef(
    "global_avgpool_grad", "dx = dy / (d1*...) at every position",
    _global_avgpool_grad_infer, lambda ins, a: (spatial.global_avgpool_grad(ins[0], a["in_size"]),),
    attrs={"in_size": (Ints, None)}, kind="backward",
))

# --------------------------------------------------------------------------------------------
# flatten / unflatten
# --------------------------------------------------------------------------------------------


def _flatten_infer(where, types, attrs):
    _expect_arity(where, "flatten", types, 1)
    (x,) = types
    expect_spatial(where, "flatten input", x)
    return (TensorType(x.dtype, (x.shape[0] * math.prod(x.shape[2:]), BATCH)),)


def _unflatten_infer(where, types, attrs):
    _expect_arity(where, "unflatten", types, 1)
    (x,) = types
    _expect_float(where, "unflatten input", x)
    shape = attrs["shape"]
    if len(shape) - 1 not in SPATIAL_RANKS or min(shape) < 1:
        raise IRError(f"{where}: unflatten shape must be channels x length or channels x height x width, "
                      f"got {'x'.join(map(str, shape))}")
    if x.rank != 2 or x.shape[1] != BATCH or x.shape[0] != math.prod(shape):
        want = TensorType(x.dtype, (math.prod(shape), BATCH))
        raise IRError(f"{where}: unflatten input expected shape {want} for shape {'x'.join(map(str, shape))}, got {x}")
    return (TensorType(x.dtype, (shape[0], BATCH, *shape[1:])),)


register(OpDef(
    "flatten", "y[(c, p), n] = x[c, n, p]: (C, m, d...) -> (C*d1*..., m), PyTorch's feature order",
    _flatten_infer, lambda ins, a: (spatial.flatten(ins[0]),),
    lambda emit, node, cts: [emit("unflatten", [cts[0]],
                                  {"shape": Ints((emit.types[node.inputs[0]].shape[0],
                                                  *emit.types[node.inputs[0]].shape[2:]))})[0]],
))
register(OpDef(
    "unflatten", "y[c, n, p] = x[(c, p), n]: (C*d1*..., m) -> (C, m, d...), the inverse of flatten",
    _unflatten_infer, lambda ins, a: (spatial.unflatten(ins[0], a["shape"]),),
    lambda emit, node, cts: [emit("flatten", [cts[0]], {})[0]], attrs={"shape": (Ints, None)},
))

SPATIAL_OPS = ("conv", "conv_grad_input", "conv_grad_weight", "maxpool", "maxpool_grad", "avgpool", "avgpool_grad",
               "global_avgpool", "global_avgpool_grad", "flatten", "unflatten")
