"""Convolution and pooling in NumPy: the reference semantics of the spatial ops (``bngraph.ops_spatial``).

Layout (docs/ir.md, ../shared/NOTES.md): a spatial value is ``(C, m, d1, ..., dk)``, channels
first and the batch second, so that spatial batch norm is the existing batchnorm on the
``(C, m*d1*...*dk)`` view. A convolution is im2col, the gather of every kernel offset's strided
slice to ``(C*k1*...*kk, m*o1*...*ok)`` (rows: channel, then kernel offsets in row-major order, as
PyTorch's ``W.reshape(F, -1)``), followed by a matrix product; its backward is the product with the
transposes and col2im, which adds each kernel offset's strided slice back (k1*...*kk vectorized
adds: no loop over pixels and no scatter).

Every function works for any number of spatial dimensions; the op table allows 1 and 2.
Attributes (all tuples with one entry per spatial dimension, except ``pads``):

* ``kernel`` (k1, ...), ``stride``, ``dilation``;
* ``pads``: ONNX's order, the padding before each dimension, then after each (b1, ..., e1, ...);
* ``ceil_mode`` (pools): the output size rounds up, PyTorch's rule (a window must start inside the
  input or its leading padding), windows that run past the padded input are clipped.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def out_size(d: int, k: int, s: int, pb: int, pe: int, dil: int = 1, ceil: bool = False) -> int:
    """The number of windows along one dimension of size ``d`` (PyTorch's and ONNX's formula); may be < 1."""
    span = d + pb + pe - dil * (k - 1) - 1  # the last start position a window fits at
    if span < 0:
        return 0
    if not ceil:
        return span // s + 1
    o = -(-span // s) + 1
    if (o - 1) * s >= d + pb:  # the last window would start in the trailing padding: PyTorch drops it
        o -= 1
    return o


def out_shape(in_size, kernel, stride, pads, dilation, ceil: bool = False) -> tuple:
    """The spatial output shape of a convolution or pool."""
    k = len(in_size)
    return tuple(out_size(in_size[i], kernel[i], stride[i], pads[i], pads[k + i], dilation[i], ceil) for i in range(k))


def auto_pads(mode: str, in_size, kernel, stride, dilation) -> tuple:
    """ONNX's ``auto_pad``: VALID (none), SAME_UPPER / SAME_LOWER (the output is ceil(d/s); the odd
    pixel of padding goes after (UPPER) or before (LOWER))."""
    k = len(in_size)
    if mode == "VALID":
        return (0,) * (2 * k)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be VALID, SAME_UPPER or SAME_LOWER, got {mode!r}")
    before, after = [], []
    for d, kk, s, dil in zip(in_size, kernel, stride, dilation):
        total = max(0, (-(-d // s) - 1) * s + dil * (kk - 1) + 1 - d)
        small = total // 2
        before.append(small if mode == "SAME_UPPER" else total - small)
        after.append(total - before[-1])
    return tuple(before + after)


def padding_only_window(d: int, k: int, s: int, pb: int, dil: int, out: int) -> int | None:
    """The first of ``out`` windows along a dimension of size ``d`` that reads no input position
    (padding only), or None: a pool's window must hold at least one value."""
    for o in range(out):
        taps = o * s + dil * np.arange(k)  # padded coordinates
        if not ((taps >= pb) & (taps < pb + d)).any():
            return o
    return None


def _extra_end(in_size, kernel, stride, pads, dilation, out) -> tuple:
    """Padding past ``pads`` so that every window fits (ceil mode's last window may run past the end)."""
    k = len(in_size)
    return tuple(max(0, (out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - (in_size[i] + pads[i] + pads[k + i]))
                 for i in range(k))


# --------------------------------------------------------------------------------------------
# Padding, windows, im2col and col2im
# --------------------------------------------------------------------------------------------


def pad(x, pads, extra=None, value=0.0):
    """``x`` (C, m, *d) padded by ``pads`` (+ ``extra`` after), filled with ``value``; x itself when no padding."""
    k = x.ndim - 2
    extra = extra or (0,) * k
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[k + i] + extra[i]) for i in range(k)]
    if not any(b or e for b, e in widths):
        return x
    return np.pad(x, widths, constant_values=value)


def windows(xp, kernel, stride, dilation, out):
    """A read-only strided view (C, k1, ..., m, o1, ...) of the padded input: element
    [c, j1.., n, p1..] is xp[c, n, p1*s1 + j1*dil1, ...]. No copy."""
    sc, sm, *sd = xp.strides
    shape = (xp.shape[0], *kernel, xp.shape[1], *out)
    strides = (sc, *(s * d for s, d in zip(sd, dilation)), sm, *(s * t for s, t in zip(sd, stride)))
    return as_strided(xp, shape, strides, writeable=False)


def offset_slices(offset, stride, dilation, out) -> tuple:
    """The index of kernel offset ``offset``'s (C, m, *out) slice of the padded input."""
    return (slice(None), slice(None),
            *(slice(j * d, j * d + s * (o - 1) + 1, s) for j, s, d, o in zip(offset, stride, dilation, out)))


def im2col(x, kernel, stride, pads, dilation):
    """(C*k1*..., m*o1*...) columns of ``x`` (C, m, *d): one copy of the strided windows."""
    out = out_shape(x.shape[2:], kernel, stride, pads, dilation)
    w = windows(pad(x, pads), kernel, stride, dilation, out)
    return w.reshape(x.shape[0] * math.prod(kernel), x.shape[1] * math.prod(out))


def col2im(dcols, in_size, stride, pads, dilation):
    """The adjoint of im2col: ``dcols`` (C, k1, ..., m, o1, ...) -> (C, m, *in_size), each kernel
    offset's slice added where im2col read it (one vectorized add per offset)."""
    k = len(in_size)
    C, kernel, m, out = dcols.shape[0], dcols.shape[1:1 + k], dcols.shape[1 + k], dcols.shape[2 + k:]
    padded = tuple(in_size[i] + pads[i] + pads[k + i] for i in range(k))
    dxp = np.zeros((C, m, *padded), dcols.dtype)
    for off in np.ndindex(*kernel):
        dxp[offset_slices(off, stride, dilation, out)] += dcols[(slice(None), *off)]
    return dxp[(slice(None), slice(None), *(slice(pads[i], pads[i] + in_size[i]) for i in range(k)))]


# --------------------------------------------------------------------------------------------
# Convolution (cross-correlation, as PyTorch and ONNX): y[f, n, p] = sum_{c, j} W[f, c, j] x[g*Cg + c, n, p*s + j*dil]
# --------------------------------------------------------------------------------------------


def conv(W, x, stride, pads, dilation, groups=1):
    """``y = conv(W, x)``: W (F, C/groups, *k), x (C, m, *d) -> (F, m, *o)."""
    F, kernel = W.shape[0], W.shape[2:]
    out = out_shape(x.shape[2:], kernel, stride, pads, dilation)
    cols = im2col(x, kernel, stride, pads, dilation).reshape(groups, -1, x.shape[1] * math.prod(out))
    y = np.matmul(W.reshape(groups, F // groups, -1), cols)  # (groups, F/groups, m*o)
    return y.reshape(F, x.shape[1], *out)


def conv_grad_weight(dy, x, kernel, stride, pads, dilation, groups=1):
    """dW = dy @ cols^T per group: dy (F, m, *o), x (C, m, *d) -> (F, C/groups, *kernel)."""
    F, C = dy.shape[0], x.shape[0]
    cols = im2col(x, kernel, stride, pads, dilation).reshape(groups, -1, dy[0].size)
    dW = np.matmul(dy.reshape(groups, F // groups, -1), cols.transpose(0, 2, 1))
    return dW.reshape(F, C // groups, *kernel)


def conv_grad_input(W, dy, in_size, stride, pads, dilation, groups=1):
    """dx = col2im(W^T @ dy) per group: W (F, C/groups, *k), dy (F, m, *o) -> (C, m, *in_size)."""
    F, Cg, kernel = W.shape[0], W.shape[1], W.shape[2:]
    dcols = np.matmul(W.reshape(groups, F // groups, -1).transpose(0, 2, 1), dy.reshape(groups, F // groups, -1))
    return col2im(dcols.reshape(groups * Cg, *kernel, *dy.shape[1:]), in_size, stride, pads, dilation)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------


def pool_geometry(x_size, kernel, stride, pads, dilation, ceil_mode):
    """(the output size, the padding past ``pads`` each last window needs): ceil mode's windows fit."""
    out = out_shape(x_size, kernel, stride, pads, dilation, ceil_mode)
    return out, _extra_end(x_size, kernel, stride, pads, dilation, out)


def maxpool(x, kernel, stride, pads, dilation, ceil_mode=False):
    """The maximum of each window (padding counts as -inf): (C, m, *d) -> (C, m, *o)."""
    k = len(kernel)
    out, extra = pool_geometry(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
    w = windows(pad(x, pads, extra, -np.inf), kernel, stride, dilation, out)
    return w.max(axis=tuple(range(1, 1 + k)))


def maxpool_grad(dy, x, y, kernel, stride, pads, dilation, ceil_mode=False):
    """dx: each window's dy goes to its maximum (the first in row-major order when tied, as
    PyTorch), added over the kernel offsets; a NaN window sends it to its NaN."""
    k = len(kernel)
    out, extra = pool_geometry(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
    xp = pad(x, pads, extra, -np.inf)
    dxp = np.zeros(xp.shape, dy.dtype)
    taken = np.zeros(y.shape, bool)
    ynan = np.isnan(y)
    for off in np.ndindex(*kernel):
        sl = offset_slices(off, stride, dilation, out)
        win = xp[sl]
        hit = ((win == y) | (np.isnan(win) & ynan)) & ~taken
        dxp[sl] += np.where(hit, dy, 0)
        taken |= hit
    return dxp[(slice(None), slice(None), *(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(k)))]


def avg_divisor(in_size, kernel, stride, pads, out, count_include_pad):
    """The divisor of each output position (*out): the window's size clipped to the padded input
    (count_include_pad) or to the input itself (PyTorch's rule; ceil mode's overhang never counts)."""
    k = len(in_size)
    div = np.ones(out)
    for i in range(k):
        start = np.arange(out[i]) * stride[i]  # in padded coordinates
        if count_include_pad:
            n = np.minimum(start + kernel[i], in_size[i] + pads[i] + pads[k + i]) - start
        else:
            n = np.minimum(start + kernel[i], pads[i] + in_size[i]) - np.maximum(start, pads[i])
        div = div * n.reshape([-1 if j == i else 1 for j in range(k)])
    return div


def avgpool(x, kernel, stride, pads, ceil_mode=False, count_include_pad=False):
    """The mean of each window: (C, m, *d) -> (C, m, *o)."""
    k = len(kernel)
    dil = (1,) * k
    out, extra = pool_geometry(x.shape[2:], kernel, stride, pads, dil, ceil_mode)
    w = windows(pad(x, pads, extra), kernel, stride, dil, out)
    s = w.sum(axis=tuple(range(1, 1 + k)))
    return s / avg_divisor(x.shape[2:], kernel, stride, pads, out, count_include_pad).astype(x.dtype)


def avgpool_grad(dy, in_size, kernel, stride, pads, ceil_mode=False, count_include_pad=False):
    """dx: dy / divisor added to every position of its window (one add per kernel offset)."""
    k = len(kernel)
    dil = (1,) * k
    out = dy.shape[2:]
    _, extra = pool_geometry(in_size, kernel, stride, pads, dil, ceil_mode)
    g = dy / avg_divisor(in_size, kernel, stride, pads, out, count_include_pad).astype(dy.dtype)
    padded = tuple(in_size[i] + pads[i] + pads[k + i] + extra[i] for i in range(k))
    dxp = np.zeros((*dy.shape[:2], *padded), dy.dtype)
    for off in np.ndindex(*kernel):
        dxp[offset_slices(off, stride, dil, out)] += g
    return dxp[(slice(None), slice(None), *(slice(pads[i], pads[i] + in_size[i]) for i in range(k)))]


def global_avgpool(x):
    """The mean over the positions: (C, m, *d) -> (C, m, 1, ...)."""
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


def global_avgpool_grad(dy, in_size):
    """dx = dy / (d1*...) at every position."""
    return np.broadcast_to(dy / math.prod(in_size), (*dy.shape[:2], *in_size)).copy()


# --------------------------------------------------------------------------------------------
# Flatten: (C, m, *d) -> (C*d1*..., m), each example's features in PyTorch's order (c, d1, ...)
# --------------------------------------------------------------------------------------------


def flatten(x):
    """(C, m, *d) -> (C*d1*..., m): one transpose (m to the end) and a reshape."""
    m = x.shape[1]
    return np.moveaxis(x, 1, -1).reshape(-1, m)


def unflatten(x, shape):
    """The inverse of :func:`flatten`: (C*d1*..., m) -> (C, m, *d) for ``shape`` = (C, *d)."""
    return np.moveaxis(x.reshape(*shape, x.shape[1]), -1, 1)
