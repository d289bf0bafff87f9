"""The CUDA target's rows for the spatial ops (bngraph.ops_spatial): convolution, pooling, flatten.

A spatial value is ``(C, m, d1[, d2])`` row-major, channels first and the batch second: each
(channel, example) pair is one contiguous plane of positions. Every kernel here takes the 2-D
geometry (:func:`geometry`: a 1-D value is a 2-D one of height 1), has one thread per *output*
element in a grid-stride loop and writes that element once: no atomics, so any grid gives the same
bits. The reference semantics are :mod:`bngraph.spatial`.

* ``conv``: im2col (``templates/cuda/im2col.cu.j2``) into the node's own columns buffer
  ``<y>.cols`` (C*k1*k2 rows of m*o1*o2, a batch-sized temporary typed by :func:`_cols_buffer`), then
  cuBLAS: ``y (F, m*o) = W (F, C*k) @ cols``, one GEMM, or per group one strided-batched GEMM
  (``gemm`` with 3-D operands: W (groups, F/groups, Cg*k), cols (groups, Cg*k, m*o)).
* ``conv_grad_weight``: im2col of x again, then ``dW = dy @ cols^T`` (per group).
* ``conv_grad_input``: ``dcols = W^T @ dy`` (per group) into ``<dx>.dcols``, then col2im as a
  gather (``col2im.cu.j2``): each input element adds the columns that read it, its kernel offsets
  in row-major order (the reference's order of adds).
* pools: max and average windows (padding -inf or left out of the mean, dilation, ceil mode's
  clipped windows) and their gradients as gathers: each input element loops over the windows that
  contain it; max pool's takes dy where it is the window's first maximum (row-major, a NaN first),
  the tie rule of ``spatial.maxpool_grad``. Global average pool and its gradient.
* ``flatten`` (C, m, d...) -> (C*d1*..., m) and ``unflatten``: transposing copies.
"""
from __future__ import annotations

import math

from ...ir import BATCH, TensorType
from .lowerings import LOWERINGS, Kernel, KernelSpec, cin, cout, numel

# ---- geometry ------------------------------------------------------------------------------------


def geometry(x: TensorType, kernel, stride, pads, dilation, out: TensorType) -> dict:
    """A window op's geometry as 2-D integers for the templates: input (C, H, W), kernel (KH, KW),
    stride (SH, SW), padding before (PT, PL) and after (PB, PR), dilation (DH, DW), output (OH, OW);
    a 1-D op is a 2-D one of height 1 (kernel 1, stride 1, no padding)."""
    d, o = x.shape[2:], out.shape[2:]
    k = len(d)
    if k == 1:
        d, o, kernel, stride, dilation = (1, *d), (1, *o), (1, *kernel), (1, *stride), (1, *dilation)
        pads = (0, pads[0], 0, pads[1])
    g = dict(C=x.shape[0], H=d[0], W=d[1], KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PT=pads[0],
             PL=pads[1], PB=pads[2], PR=pads[3], DH=dilation[0], DW=dilation[1], OH=o[0], OW=o[1])
    g.update(K=g["KH"] * g["KW"], O=g["OH"] * g["OW"], HW=g["H"] * g["W"])
    return g


def _grid(t: TensorType) -> str:
    """The driver's grid for a loop over the elements of ``t``."""
    return f"grid({numel(t).replace('(long long)m', 'm')})"


def _buffer(at, temp: str) -> str:
    return f'B["{at.node.outputs[0].name}.{temp}"]'


def _cols_buffer(x: TensorType, kernel, out: TensorType) -> dict:
    """The im2col columns (C*k, m*o) as a batch-sized buffer typed (C*k*o, m): the same number of
    elements, and a (features, m) type, so the columns of one layer's forward and backward (the same
    size) share one array (bngraph.backends.liveness)."""
    return {"cols": TensorType(x.dtype, (x.shape[0] * math.prod(kernel) * math.prod(out.shape[2:]), BATCH))}


def _conv_attrs(at):
    a = at.node.attr
    return a["stride"], a["pads"], a["dilation"], a["groups"]


def gemm_line(ta, tb, M, N, K, a, b, c, groups: int, doc: str) -> str:
    """The driver's cuBLAS call, row-major ``c (M, N) = op(a) @ op(b)``; with groups > 1 the operands
    are 3-D views (groups, rows, cols) and the launcher makes one strided-batched GEMM."""
    shape = (lambda r, q: f"({r}, {q})") if groups == 1 else (lambda r, q: f"({groups}, {r}, {q})")
    ra, ca = (K, M) if ta else (M, K)
    rb, cb = (N, K) if tb else (K, N)
    return (f"gemm({ta}, {tb}, {M}, {N}, {K}, {a}.reshape{shape(ra, ca)}, {b}.reshape{shape(rb, cb)}, "
            f"{c}.reshape{shape(M, N)})  # cuBLAS{' strided-batched, per group' if groups > 1 else ''}: {doc}")


# ---- conv and its gradients ------------------------------------------------------------------------


def _conv_spec(at):
    (W, x), (y,) = at.ins, at.outs
    stride, pads, dilation, groups = _conv_attrs(at)
    g = geometry(x, W.shape[2:], stride, pads, dilation, y)
    F, CgK, cols = W.shape[0], W.shape[1] * g["K"], _buffer(at, "cols")
    gemm = gemm_line(False, False, F // groups, f"m * {g['O']}", CgK, at.plan.expr(at.node.inputs[0]), cols,
                     at.step.outs[0], groups, "y = W @ cols")
    cols_t = TensorType(x.dtype, (g["C"] * g["K"], BATCH, g["OH"], g["OW"]))
    return KernelSpec([cin("x"), cout("cols")], [at.node.inputs[1]], [cols], _grid(cols_t), dict(g, gemm=gemm))


def _conv_grad_weight_spec(at):
    (dy, x), (dW,) = at.ins, at.outs
    stride, pads, dilation, groups = _conv_attrs(at)
    g = geometry(x, at.node.attr["kernel"], stride, pads, dilation, dy)
    F, CgK, cols = dW.shape[0], dW.shape[1] * g["K"], _buffer(at, "cols")
    gemm = gemm_line(False, True, F // groups, CgK, f"m * {g['O']}", at.plan.expr(at.node.inputs[0]), cols,
                     at.step.outs[0], groups, "dW = dy @ cols^T")
    cols_t = TensorType(x.dtype, (g["C"] * g["K"], BATCH, g["OH"], g["OW"]))
    return KernelSpec([cin("x"), cout("cols")], [at.node.inputs[1]], [cols], _grid(cols_t), dict(g, gemm=gemm))


def _conv_grad_input_spec(at):
    (W, dy), (dx,) = at.ins, at.outs
    stride, pads, dilation, groups = _conv_attrs(at)
    g = geometry(dx, W.shape[2:], stride, pads, dilation, dy)
    F, CgK, dcols = W.shape[0], W.shape[1] * g["K"], _buffer(at, "cols")
    gemm = gemm_line(True, False, CgK, f"m * {g['O']}", F // groups, at.plan.expr(at.node.inputs[0]),
                     at.plan.expr(at.node.inputs[1]), dcols, groups, "dcols = W^T @ dy")
    # the kernel reads the columns the GEMM wrote (a temporary, not an IR value) and writes dx
    return KernelSpec([cin("dcols"), cout("dx")], [], [dcols, at.step.outs[0]], _grid(dx), dict(g, gemm=gemm))


# the columns: a planned batch-sized temporary of each conv node (Lowering.temp_buffer_types)
CONV = Kernel("im2col.cu.j2", spec=_conv_spec, host="conv.py.j2", temp_buffers=("cols",),
              temp_buffer_types=lambda node, t: _cols_buffer(t[1], t[0].shape[2:], node.outputs[0].type))
CONV_GRAD_WEIGHT = Kernel("im2col.cu.j2", spec=_conv_grad_weight_spec, host="conv.py.j2", temp_buffers=("cols",),
                          temp_buffer_types=lambda node, t: _cols_buffer(t[1], node.attr["kernel"], t[0]))
CONV_GRAD_INPUT = Kernel("col2im.cu.j2", spec=_conv_grad_input_spec, host="conv_grad_input.py.j2",
                         temp_buffers=("cols",),
                         temp_buffer_types=lambda node, t: _cols_buffer(node.outputs[0].type, t[0].shape[2:], t[1]))

# ---- pooling -------------------------------------------------------------------------------------


def _pool_geometry(at, x: TensorType, out: TensorType) -> dict:
    a = at.node.attr
    k = len(a["kernel"])
    return geometry(x, a["kernel"], a["stride"], a["pads"], a.get("dilation", (1,) * k), out)


def _maxpool_spec(at):
    (x,), (y,) = at.ins, at.outs
    return KernelSpec([cin("x"), cout("y")], list(at.node.inputs), list(at.step.outs), _grid(y),
                      _pool_geometry(at, x, y))


def _maxpool_grad_spec(at):
    (_, x, y), (dx,) = at.ins, at.outs
    return KernelSpec([cin("dy"), cin("x"), cin("y"), cout("dx")], list(at.node.inputs), list(at.step.outs),
                      _grid(dx), _pool_geometry(at, x, y))


def _avgpool_spec(at):
    (x,), (y,) = at.ins, at.outs
    return KernelSpec([cin("x"), cout("y")], list(at.node.inputs), list(at.step.outs), _grid(y),
                      dict(_pool_geometry(at, x, y), include_pad=at.node.attr["count_include_pad"]))


def _avgpool_grad_spec(at):
    (dy,), (dx,) = at.ins, at.outs
    return KernelSpec([cin("dy"), cout("dx")], list(at.node.inputs), list(at.step.outs), _grid(dx),
                      dict(_pool_geometry(at, dx, dy), include_pad=at.node.attr["count_include_pad"]))


def _global_avgpool_spec(at):
    (x,), (y,) = at.ins, at.outs
    return KernelSpec([cin("x"), cout("y")], list(at.node.inputs), list(at.step.outs), _grid(y),
                      dict(C=x.shape[0], D=math.prod(x.shape[2:]), grad=False))


def _global_avgpool_grad_spec(at):
    (dx,) = at.outs
    return KernelSpec([cin("dy"), cout("dx")], list(at.node.inputs), list(at.step.outs), _grid(dx),
                      dict(C=dx.shape[0], D=math.prod(dx.shape[2:]), grad=True))


def _flatten_spec(at):
    (x,), (y,) = at.ins, at.outs
    spatial = x if at.node.op == "flatten" else y
    return KernelSpec([cin("x"), cout("y")], list(at.node.inputs), list(at.step.outs), _grid(y),
                      dict(C=spatial.shape[0], D=math.prod(spatial.shape[2:]), inverse=at.node.op == "unflatten"))


SPATIAL_LOWERINGS = {
    "conv": CONV,
    "conv_grad_weight": CONV_GRAD_WEIGHT,
    "conv_grad_input": CONV_GRAD_INPUT,
    "maxpool": Kernel("maxpool.cu.j2", spec=_maxpool_spec),
    "maxpool_grad": Kernel("maxpool_grad.cu.j2", spec=_maxpool_grad_spec),
    "avgpool": Kernel("avgpool.cu.j2", spec=_avgpool_spec),
    "avgpool_grad": Kernel("avgpool_grad.cu.j2", spec=_avgpool_grad_spec),
    "global_avgpool": Kernel("global_avgpool.cu.j2", spec=_global_avgpool_spec),
    "global_avgpool_grad": Kernel("global_avgpool.cu.j2", spec=_global_avgpool_grad_spec),
    "flatten": Kernel("flatten.cu.j2", spec=_flatten_spec),
    "unflatten": Kernel("flatten.cu.j2", spec=_flatten_spec),
}
LOWERINGS.update(SPATIAL_LOWERINGS)  # the one table the renderer reads (lowerings.LOWERINGS)
