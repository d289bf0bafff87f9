"""ONNX's convolutional ops -> the IR's spatial ops (:mod:`bngraph.ops_spatial`), merged into
``IMPORTERS`` of :mod:`.onnx_import`.

``SPATIAL_IMPORTERS`` is its part of the mapping. Layout: ONNX's ``(N, C, d1[, d2])`` is the IR's spatial ``(C, m, d1[, d2])`` (one transpose at the
boundary); a graph with a Conv or a pool lays out its ``(N, C, L)`` and ``(N, C, H, W)`` inputs so,
whichever op reads them first. Conventions, converted explicitly:

* ``pads`` is ONNX's order in both: the padding before each spatial dimension, then after each;
  ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID is resolved to pads here (:func:`bngraph.spatial.auto_pads`:
  the output is ceil(d/stride), the odd pixel after or before); ``strides``/``dilations`` default to 1;
* ``Conv(X, W, B)``: ``conv[stride, pads, dilation, groups] W, x`` with ``W`` (M, C/group, k...) as
  it is (both are cross-correlations), ``B`` a separate ``bias_add``;
* ``MaxPool``: the maxima only (the ``Indices`` output and ``storage_order`` are refused);
  ``AveragePool``: ``count_include_pad`` and ``ceil_mode`` one to one, no dilations;
* ``GlobalAveragePool``: ``global_avgpool`` (C, m, 1, ...); ``Flatten(axis=1)``: ``flatten``
  (C*d1*..., m) in ONNX's (and PyTorch's) feature order (c, d1, ...).

What the IR cannot reproduce is one :class:`UnsupportedNode` naming the node, what it expected and
what it got (3-D convolutions, integer data, a pool padding more than half its kernel...).
"""
from __future__ import annotations

import math

import numpy as np

from .. import spatial
from ..ir import Ints, IRError
from ..ops_spatial import SPATIAL_RANKS
from .imported import Data, Tensor
from .names import show
from .onnx_context import _role, _source
from .onnx_read import UnsupportedNode, attributes

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
SPATIAL_IMPORTERS: dict = {}  # ONNX op type -> fn(ctx, node, where, ins); merged into onnx_import.IMPORTERS


def importer(op_type):
    def wrap(fn):
        SPATIAL_IMPORTERS[op_type] = fn
        return fn
    return wrap


def _shape_text(x: Data) -> str:
    return "(N, " + ", ".join(map(str, x.fshape)) + ")"


def spatial_data(ctx, v, where, op, what="X") -> Data:
    """``v`` as the IR's spatial (C, m, d1[, d2]): a graph input is laid out so; a value computed
    with the features (C, d...) flattened (an elementwise op on a graph input) gets an ``unflatten``."""
    if isinstance(v, str) and v in ctx.pending:
        return ctx.lay_out(v, where, op, "spatial")
    x = ctx.data(v, where, op, what)
    if x.layout == "spatial":
        return x
    if x.layout == "flat" and x.brank == 1 and not x.rows and len(x.fshape) - 1 in SPATIAL_RANKS:
        name = ctx.names.claim(f"{x.ir}_unflat", "unflatten")
        out = ctx.g.add_node("unflatten", [x.ir], {"shape": Ints(x.fshape)}, [name]).out
        return Data(out.name, x.fshape, layout="spatial")
    got = _shape_text(x) if x.layout == "flat" and x.brank == 1 else f"features {x.fshape} ({x.layout} layout)"
    raise UnsupportedNode(where, op, f"{what} expected (N, C, L) or (N, C, H, W) data (1 or 2 spatial dimensions), "
                          f"got {got}")


def _ints(where, op, at, key, n, default, low=1) -> tuple:
    v = at.get(key)
    v = default if v is None else tuple(int(d) for d in v)
    if len(v) != n or not all(d >= low for d in v):
        raise UnsupportedNode(where, op, f"{key}={list(v)}: expected {n} ints >= {low} (one per spatial "
                              f"dimension{', before then after' if key == 'pads' else ''})")
    return v


def geometry(where, op, at, in_size, kernel) -> tuple:
    """(strides, pads, dilations) of a Conv or pool node, ``auto_pad`` resolved to ONNX-order pads."""
    k = len(in_size)
    stride = _ints(where, op, at, "strides", k, (1,) * k)
    dilation = _ints(where, op, at, "dilations", k, (1,) * k)
    mode = at["auto_pad"]
    if mode not in AUTO_PADS:
        raise UnsupportedNode(where, op, f"auto_pad={show(mode)}: expected one of {', '.join(AUTO_PADS)}")
    if mode == "NOTSET":
        pads = _ints(where, op, at, "pads", 2 * k, (0,) * (2 * k), low=0)
    else:
        if at.get("pads") is not None and any(at["pads"]):
            raise UnsupportedNode(where, op, f"auto_pad={mode} together with pads={list(at['pads'])}: ONNX "
                                  f"computes the padding from auto_pad, so explicit pads must be absent")
        pads = spatial.auto_pads(mode, in_size, kernel, stride, dilation)
    return Ints(stride), Ints(pads), Ints(dilation)


def _build(where, op, fn):
    """Call a DSL builder; the IR's own refusal (e.g. a window larger than the padded input) is
    reported as this node's."""
    try:
        return fn()
    except UnsupportedNode:
        raise
    except IRError as e:
        raise UnsupportedNode(where, op, str(e)) from None


def _kernel(where, op, at, k) -> tuple:
    kernel = at.get("kernel_shape")
    if kernel is None:
        raise UnsupportedNode(where, op, "needs kernel_shape")
    return _ints(where, op, at, "kernel_shape", k, None)


def _spatial_rank(where, op, x: Data) -> int:
    k = len(x.fshape) - 1
    if k not in SPATIAL_RANKS:
        raise UnsupportedNode(where, op, f"{k} spatial dimensions: the IR's convolutions and pools take 1 or 2")
    return k


@importer("Conv")
def _conv(ctx, node, where, ins):
    at = attributes(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
                           "strides": None}, where)
    if len(ins) < 2:
        raise UnsupportedNode(where, "Conv", "needs inputs X and W")
    x = spatial_data(ctx, ins[0], where, "Conv")
    k = _spatial_rank(where, "Conv", x)
    W = ctx.tensor(ins[1], where, "W")
    C, group = x.fshape[0], int(at["group"])
    if len(W.shape) != k + 2:
        raise UnsupportedNode(where, "Conv", f"W expected shape (M, C/group{', k' * k}) for {k}-D data "
                              f"{_shape_text(x)}, got {tuple(W.shape)}")
    F, kernel = int(W.shape[0]), tuple(int(d) for d in W.shape[2:])
    if group < 1 or C % group or F % group or W.shape[1] * group != C:
        raise UnsupportedNode(where, "Conv", f"group={group} with X of {C} channels and W of shape {tuple(W.shape)}: "
                              f"expected W (M, C/group, ...) with group dividing C and M")
    if at["kernel_shape"] is not None and tuple(at["kernel_shape"]) != kernel:
        raise UnsupportedNode(where, "Conv", f"kernel_shape={list(at['kernel_shape'])} but W has kernel {kernel}")
    stride, pads, dilation = geometry(where, "Conv", at, x.fshape[1:], kernel)
    bias = len(ins) > 2 and not (isinstance(ins[2], str) and ins[2] == "")
    B = ctx.tensor(ins[2], where, "B") if bias else None
    if B is not None and tuple(B.shape) != (F,):
        raise UnsupportedNode(where, "Conv", f"B expected shape ({F},), one bias per output channel, got "
                              f"{tuple(B.shape)}")
    name = ctx.layer_name(node, "conv")
    out = _build(where, "Conv", lambda: ctx.g.conv(x.ir, F, kernel, stride, pads, dilation, group, bias=bias,
                                                   name=name))
    ctx.param(f"{name}.W", W.map(lambda w: w, tuple(W.shape)), _source(node, 1), _role(where, "Conv", "W"))
    if B is not None:
        ctx.param(f"{name}.b", B, _source(node, 2), _role(where, "Conv", "B"))
    return [Data(out.name, (F, *ctx.g.value(out.name).type.shape[2:]), layout="spatial")]


def refuse_indices(where, output: str):
    """MaxPool's Indices output (also met first by the backend adapter, as an integer graph output)."""
    raise UnsupportedNode(where, "MaxPool", f"the Indices output {show(output)}: the IR's maxpool returns the maxima "
                          f"only, not their positions")


def _no_indices(node, where, at):
    if len(node.output) > 1 and node.output[1]:
        refuse_indices(where, node.output[1])
    if at["storage_order"] != 0:
        raise UnsupportedNode(where, "MaxPool", f"storage_order={at['storage_order']}: only 0 (row-major Indices) "
                              f"is supported")


def _pool(ctx, node, where, ins, op, extra: dict):
    """(x, kernel, strides, pads, dilations, attributes) of a MaxPool/AveragePool node, checked."""
    at = attributes(node, {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": None,
                           "pads": None, "strides": None, **extra}, where)
    if op == "MaxPool":
        _no_indices(node, where, at)
    x = spatial_data(ctx, ins[0], where, op)
    k = _spatial_rank(where, op, x)
    kernel = _kernel(where, op, at, k)
    stride, pads, dilation = geometry(where, op, at, x.fshape[1:], kernel)
    return x, Ints(kernel), stride, pads, dilation, at


def _pooled(ctx, node, out) -> list:
    return [Data(out.name, (ctx.g.value(out.name).type.shape[0], *ctx.g.value(out.name).type.shape[2:]),
                 layout="spatial")]


@importer("MaxPool")
def _maxpool(ctx, node, where, ins):
    x, kernel, stride, pads, dilation, at = _pool(ctx, node, where, ins, "MaxPool", {"storage_order": 0})
    name = ctx.layer_name(node, "pool")
    out = _build(where, "MaxPool", lambda: ctx.g.maxpool(x.ir, kernel, stride, pads, dilation,
                                                         ceil_mode=bool(at["ceil_mode"]), name=name))
    return _pooled(ctx, node, out)


@importer("AveragePool")
def _avgpool(ctx, node, where, ins):
    x, kernel, stride, pads, dilation, at = _pool(ctx, node, where, ins, "AveragePool", {"count_include_pad": 0})
    if any(d != 1 for d in dilation):
        raise UnsupportedNode(where, "AveragePool", f"dilations={list(dilation)}: the IR's avgpool has no dilation "
                              f"(expected all 1)")
    name = ctx.layer_name(node, "pool")
    out = _build(where, "AveragePool", lambda: ctx.g.avgpool(x.ir, kernel, stride, pads,
                                                             ceil_mode=bool(at["ceil_mode"]),
                                                             count_include_pad=bool(at["count_include_pad"]),
                                                             name=name))
    return _pooled(ctx, node, out)


@importer("GlobalAveragePool")
def _global_avgpool(ctx, node, where, ins):
    attributes(node, {}, where)
    x = spatial_data(ctx, ins[0], where, "GlobalAveragePool")
    _spatial_rank(where, "GlobalAveragePool", x)
    out = _build(where, "GlobalAveragePool", lambda: ctx.g.global_avgpool(x.ir, name=ctx.layer_name(node, "pool")))
    return _pooled(ctx, node, out)


def flatten_spatial(ctx, node, where, x: Data, axis: int) -> Data:
    """ONNX ``Flatten(axis)`` of spatial data (N, C, d...): axis 1 is the IR's flatten (C*d1*..., m)."""
    rank = 1 + len(x.fshape)
    a = axis + rank if axis < 0 else axis
    if a != 1:
        raise UnsupportedNode(where, "Flatten", f"axis={axis} on {_shape_text(x)} data: only axis=1 (keep the batch, "
                              f"flatten channels and positions) is supported there")
    out = ctx.g.flatten(x.ir, name=ctx.layer_name(node, "flatten"))
    return Data(out.name, (x.features,), brank=1)


def per_channel(t: Tensor, x: Data, where, op, what) -> Tensor:
    """A constant added to spatial data (N, C, d...): one value per channel, (C, 1, ...) or (1, C, 1, ...)
    or a single value, as a (C,) vector (a ``bias_add``)."""
    shape = tuple(t.shape)
    while shape and shape[0] == 1 and len(shape) > len(x.fshape):
        shape = shape[1:]
    C = x.fshape[0]
    padded = (1,) * (len(x.fshape) - len(shape)) + shape
    if len(shape) > len(x.fshape) or any(d != 1 for d in padded[1:]) or padded[0] not in (1, C):
        raise UnsupportedNode(where, op, f"{what} of shape {tuple(t.shape)} on {_shape_text(x)} data: expected one "
                              f"value per channel, ({C}{', 1' * (len(x.fshape) - 1)}), or a single value")
    return t.map(lambda a: np.broadcast_to(np.asarray(a).reshape(-1), (C,)).copy() if math.prod(shape) == 1
                 else np.asarray(a).reshape(C), (C,))

