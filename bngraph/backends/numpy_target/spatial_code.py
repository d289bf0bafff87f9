"""The NumPy target's code for spatial values: the strings the templates of conv, pooling and
flatten are made of, and how the per-unit templates (batch norm, bias, sum_batch) read a spatial value.

A spatial value is a C-contiguous ``(C, m, d1[, d2])`` array (docs/ir.md), so

* a per-unit op reads it as its ``(C, m*d1*...)`` view (a reshape of a contiguous array: no copy)
  and counts ``m*d1*...`` values per unit, where a ``(units, m)`` value counts ``m`` (:class:`Units`);
* a convolution is im2col, one copy of a strided view of the (padded) input
  (``np.lib.stride_tricks.sliding_window_view``: the windows, no loop over pixels), then one
  matmul, batched over the groups; its input gradient is col2im, one vectorized add per kernel
  offset of that offset's strided slice (no ``np.add.at``); pooling and its gradients are one
  vectorized maximum or add per kernel offset over the same strided slices (:class:`Window`).
  (A reduction over the small kernel axes of the windows view, or a ``reshape`` of its transpose,
  is 5-10x slower than these: NumPy iterates them element by element.)

Everything here is decided from the types and attributes when the code is rendered: the generated
code holds the numbers (shapes, slices) as literals, like the rest of the module.
"""
from __future__ import annotations

import math

from ... import spatial
from ...ir import BATCH, TensorType
from ...ops_spatial import is_spatial

LOOP_VARS = ("i", "j")  # the kernel offset of the col2im and pooling-gradient loops (reserved names)


def tuple_text(v) -> str:
    """``(3, 3)``, ``(3,)``: a tuple as Python source."""
    return f"({v[0]},)" if len(v) == 1 else f"({', '.join(map(str, v))})"


def by_m(n: int) -> str:
    """``m * n``: how many columns n positions per example make (``m`` when n is 1)."""
    return "m" if n == 1 else f"m * {n}"


def sizes(v) -> str:
    """``8x8``: sizes as the IR writes them."""
    return "x".join(map(str, v))


def shape_text(t) -> str:
    """A value's shape with the batch size ``m``: ``(8, m, 4, 4)``."""
    return tuple_text(["m" if d == "m" else d for d in t.shape])


def new_array(t) -> str:
    """A new C-contiguous array for a value of type ``t``."""
    return f"np.empty({shape_text(t)}, DTYPE)"


class Units:
    """How a per-unit template reads its batch-shaped value of type ``t``: a ``(units, m)`` value as
    it is; a spatial ``(C, m, d...)`` one on its ``(C, m*d1*...)`` view, a channel's values over the
    batch and the positions as one row.

    ``count``: the values per unit (``m``, ``m * 64``); ``pcount`` the same, parenthesized where it
    is a product; ``col``: the index that broadcasts a per-unit vector against the value."""

    def __init__(self, t):
        self.spatial = is_spatial(t)
        self.units = t.shape[0]
        self.t = t
        positions = math.prod(t.shape[2:])
        self.count = by_m(positions)
        self.pcount = self.count if positions == 1 else f"({self.count})"
        self.col = "[:, None" + ", None" * (t.rank - 2) + "]"

    def rows(self, expr: str) -> str:
        """The (units, count) view of the array ``expr``."""
        return f"{expr}.reshape({self.units}, -1)" if self.spatial else expr

    def new(self, like: str) -> str:
        """A new array for the value (C-contiguous, so that its view is one)."""
        return new_array(self.t) if self.spatial else f"np.empty_like({like})"

    @property
    def note(self) -> str:
        """What the rows call's comment adds on a spatial value."""
        if not self.spatial:
            return ""
        return f"; on the ({self.units}, {self.count}) views: a channel's batch and positions as one row"


class Window:
    """The geometry of one conv or pool node as code: its padding, the windows view, each kernel
    offset's slice and the crop back to the input. ``extra``: padding past ``pads`` so that a ceil
    mode pool's last window fits (it counts for nothing)."""

    def __init__(self, in_size, kernel, stride, pads, dilation, out, extra=None):
        k = len(in_size)
        self.k, self.in_size, self.kernel, self.stride, self.dilation, self.out = (
            k, tuple(in_size), tuple(kernel), tuple(stride), tuple(dilation), tuple(out))
        self.extra = tuple(extra or (0,) * k)
        self.before = tuple(pads[:k])
        self.after = tuple(pads[k + i] + self.extra[i] for i in range(k))
        self.padded = any(self.before) or any(self.after)
        self.padded_size = tuple(d + b + a for d, b, a in zip(in_size, self.before, self.after))
        self.loop_vars = LOOP_VARS[:k]

    def pad(self, x: str, value: str | None = None) -> str:
        """``x`` padded (``value``: a constant other than 0)."""
        widths = ", ".join(f"({b}, {a})" for b, a in zip(self.before, self.after))
        fill = "" if value is None else f", constant_values={value}"
        return f"np.pad({x}, ((0, 0), (0, 0), {widths}){fill})"

    @property
    def pad_note(self) -> str:
        return f"padded to {sizes(self.padded_size)}: {sizes(self.before)} before, {sizes(self.after)} after"

    def windows(self, xp: str) -> str:
        """The strided view ``(C, m, o1.., k1..)`` of the padded input ``xp``: element [c, n, p.., j..]
        is xp[c, n, p*stride + j*dilation, ...]. No copy."""
        span = tuple(d * (kk - 1) + 1 for d, kk in zip(self.dilation, self.kernel))
        axes = tuple(range(2, 2 + self.k))
        steps = []
        for size, w, s, o in zip(self.padded_size, span, self.stride, self.out):
            # every s-th start: (size - span) // s + 1 of them, the output size
            assert (size - w) // s + 1 == o, (size, w, s, o)
            steps.append(f"::{s}" if s > 1 else ":")
        steps += [f"::{d}" if d > 1 else ":" for d in self.dilation]  # a dilated kernel: every d-th of the span
        index = [":", ":"] + steps
        while index and index[-1] == ":":  # trailing full slices say nothing
            index.pop()
        index = "[" + ", ".join(index) + "]" if len(index) > 2 else ""
        return f"np.lib.stride_tricks.sliding_window_view({xp}, {tuple_text(span)}, axis={tuple_text(axes)}){index}"

    @property
    def to_cols(self) -> str:
        """The transpose of the windows view to (C, k.., m, o..): im2col's row and column order."""
        k = self.k
        return ", ".join(map(str, (0, *range(2 + k, 2 + 2 * k), 1, *range(2, 2 + k))))

    @property
    def loop(self) -> str:
        """The loop header over the kernel offsets."""
        if self.k == 1:
            return f"for i in range({self.kernel[0]}):"
        return f"for {', '.join(self.loop_vars)} in np.ndindex{tuple_text(self.kernel)}:"

    @property
    def offsets(self) -> str:
        return ", ".join(self.loop_vars)

    @property
    def count(self) -> int:
        return math.prod(self.kernel)

    def offset_slice(self) -> str:
        """``[:, :, i:i + 8, 2 * j:2 * j + 7:2]``: where the window's element at offset (i, j) lies,
        for every output position, in the padded input."""
        parts = [":", ":"]
        for v, s, d, o in zip(self.loop_vars, self.stride, self.dilation, self.out):
            start = v if d == 1 else f"{d} * {v}"
            parts.append(f"{start}:{start} + {s * (o - 1) + 1}" + (f":{s}" if s > 1 else ""))
        return "[" + ", ".join(parts) + "]"

    def crop(self) -> str:
        """The input's positions within the padded array."""
        return "[" + ", ".join([":", ":"] + [f"{b}:{b + d}" for b, d in zip(self.before, self.in_size)]) + "]"

    def padded_shape(self, channels) -> str:
        return tuple_text((channels, "m", *self.padded_size))


# --------------------------------------------------------------------------------------------
# The context of each spatial op's template (see lowerings.py: the node carries its input types)
# --------------------------------------------------------------------------------------------


def _conv_window(node, x_type, W_type):
    a, in_size, kernel = node.attr, x_type.shape[2:], W_type.shape[2:]
    out = spatial.out_shape(in_size, kernel, a["stride"], a["pads"], a["dilation"])
    return Window(in_size, kernel, a["stride"], a["pads"], a["dilation"], out)


def _transpose(groups) -> str:
    """The transpose of a matrix, or of each group's matrix."""
    return ".T" if groups == 1 else ".transpose(0, 2, 1)"


def _conv_matrices(W_type, groups, out):
    """(W as matrices, the columns' shape, dy/y as matrices' shape): 2-D for one group, stacked per group."""
    F, Cg, K, O = W_type.shape[0], W_type.shape[1], math.prod(W_type.shape[2:]), math.prod(out)
    if groups == 1:
        return (F, Cg * K), (Cg * K, by_m(O)), (F, by_m(O))
    return (groups, F // groups, Cg * K), (groups, Cg * K, by_m(O)), (groups, F // groups, by_m(O))


def cols_types(node, in_types) -> dict:
    """The planned buffers of conv and conv_grad_weight (``cols``: im2col's columns) and of
    conv_grad_input (``dcols``): (C*k1*...*o1*..., m), the (C*k, m*o) matrix's elements as a
    batch-sized value, so that they come from the plan (an array reused every step, shared by
    liveness) instead of a fresh allocation per step (which costs more than the copy itself)."""
    if node.op == "conv_grad_input":
        W_t, dy_t = in_types
        C, kernel, out = W_t.shape[1] * node.attr["groups"], W_t.shape[2:], dy_t.shape[2:]
    else:
        x_t = in_types[1]
        kernel = node.attr["kernel"] if node.op == "conv_grad_weight" else in_types[0].shape[2:]
        C = x_t.shape[0]
        out = spatial.out_shape(x_t.shape[2:], kernel, node.attr["stride"], node.attr["pads"], node.attr["dilation"])
    name = "dcols" if node.op == "conv_grad_input" else "cols"
    return {name: TensorType(in_types[0].dtype, (C * math.prod(kernel) * math.prod(out), BATCH))}


def _cols_view(x_t, w: Window) -> str:
    """The columns buffer as (C, k1.., m, o1..): the transposed windows view is copied into it."""
    return tuple_text((x_t.shape[0], *w.kernel, "m", *w.out))


def conv_context(node, ins):
    """conv %W, %x: im2col of x, then y = W @ cols (per group)."""
    W_t, x_t = node.input_types
    w = _conv_window(node, x_t, W_t)
    wm, cols, ym = _conv_matrices(W_t, node.attr["groups"], w.out)
    return {"win": w, "x": ins[1], "w_mat": tuple_text(wm), "cols_shape": tuple_text(cols), "y_mat": tuple_text(ym),
            "cols_view": _cols_view(x_t, w), "new": new_array(node.outputs[0].type), "groups": node.attr["groups"],
            "sizes": sizes}


def conv_grad_weight_context(node, ins):
    """conv_grad_weight %dy, %x: im2col of x, then dW = dy @ cols^T (per group)."""
    _, x_t = node.input_types
    W_t = node.outputs[0].type
    w = _conv_window(node, x_t, W_t)
    wm, cols, ym = _conv_matrices(W_t, node.attr["groups"], w.out)
    return {"win": w, "x": ins[1], "w_mat": tuple_text(wm), "cols_shape": tuple_text(cols), "y_mat": tuple_text(ym),
            "cols_view": _cols_view(x_t, w), "transpose": _transpose(node.attr["groups"]), "new": new_array(W_t),
            "groups": node.attr["groups"], "sizes": sizes}


class Dx:
    """The array a spatial gradient adds each kernel offset's contribution into: dx itself (zeroed),
    or, when the forward padded, a zeroed padded dx that is cropped into dx at the end."""

    def __init__(self, w: Window, x_t):
        self.w, self.t = w, x_t

    def acc(self, out: str, dxp: str) -> str:
        return dxp if self.w.padded else out

    def begin(self, out: str, dest: str | None, dxp: str) -> str:
        if self.w.padded:
            shape = self.w.padded_shape(self.t.shape[0])
            return (f"{dxp} = np.zeros({shape}, DTYPE)  # dx in padded coordinates "
                    f"({sizes(self.w.padded_size)}), cropped at the end")
        note = "  # dx: the kernel offsets' contributions are added into it"
        if dest:
            return f"{out} = {dest}\n{out}.fill(0){note}"
        return f"{out} = np.zeros({shape_text(self.t)}, DTYPE){note}"

    def crop(self, out: str, dest: str | None, dxp: str) -> str:
        return (f"{out} = {dest or new_array(self.t)}\n"
                f"np.copyto({out}, {dxp}{self.w.crop()})  # dx: the input's positions, without the padding")


def _grad_arrays(w: Window, x_t) -> dict:
    return {"dx": Dx(w, x_t), "sizes": sizes}


def conv_grad_input_context(node, ins):
    """conv_grad_input %W, %dy: dcols = W^T @ dy (per group), then col2im."""
    W_t, _ = node.input_types
    x_t = node.outputs[0].type
    w = _conv_window(node, x_t, W_t)
    groups = node.attr["groups"]
    wm, cols, ym = _conv_matrices(W_t, groups, w.out)
    dcols = tuple_text((x_t.shape[0], *w.kernel, "m", *w.out))
    return {"win": w, "w_mat": tuple_text(wm), "transpose": _transpose(groups), "y_mat": tuple_text(ym),
            "cols_shape": tuple_text(cols), "dcols_shape": dcols, "groups": groups, **_grad_arrays(w, x_t)}


def _pool_window(node, x_type, dilation):
    a, d = node.attr, x_type.shape[2:]
    # ceil mode: padding past the end so that the last window fits (what it reads there counts for nothing)
    out, extra = spatial.pool_geometry(d, a["kernel"], a["stride"], a["pads"], dilation, a["ceil_mode"])
    return Window(d, a["kernel"], a["stride"], a["pads"], dilation, out, extra)


def _dilation(node):
    return node.attr.get("dilation", (1,) * len(node.attr["kernel"]))


def _int_list(v) -> str:
    """A list literal, long runs written ``[3] * 30``: ``[2] + [3] * 30 + [2]``."""
    runs, parts = [], []
    for x in v:
        if runs and runs[-1][0] == x:
            runs[-1][1] += 1
        else:
            runs.append([int(x), 1])
    loose = []
    for x, n in runs:
        if n > 3:
            if loose:
                parts.append(f"[{', '.join(map(str, loose))}]")
                loose = []
            parts.append(f"[{x}] * {n}")
        else:
            loose += [x] * n
    if loose:
        parts.append(f"[{', '.join(map(str, loose))}]")
    return " + ".join(parts)


def avg_divisor(w: Window, count_include_pad: bool) -> str:
    """Each window's divisor as code: one number when every window has the kernel's size, else the
    product over the dimensions of each position's count (a row times a column)."""
    per_dim = [spatial.avg_divisor((d,), (kk,), (s,), (b, a - x), (o,), count_include_pad)
               for d, kk, s, b, a, x, o in zip(w.in_size, w.kernel, w.stride, w.before, w.after, w.extra, w.out)]
    if all(v.min() == v.max() for v in per_dim):
        return str(math.prod(int(v[0]) for v in per_dim))
    if w.k == 1:
        return f"np.array({_int_list(per_dim[0])})"
    return f"np.multiply.outer({_int_list(per_dim[0])}, {_int_list(per_dim[1])})"


def pool_context(node, ins):
    """maxpool / avgpool %x: the windows of the padded x, reduced."""
    (x_t,) = node.input_types
    w = _pool_window(node, x_t, _dilation(node))
    ctx = {"win": w, "new": new_array(node.outputs[0].type), "sizes": sizes}
    if node.op == "avgpool":
        ctx["divisor"] = avg_divisor(w, node.attr["count_include_pad"])
    return ctx


def pool_grad_context(node, ins):
    """maxpool_grad %dy, %x, %y / avgpool_grad %dy: dy added per kernel offset, in padded coordinates."""
    x_t = node.outputs[0].type
    w = _pool_window(node, x_t, _dilation(node))
    ctx = {"win": w, **_grad_arrays(w, x_t)}
    if node.op == "avgpool_grad":
        ctx["divisor"] = avg_divisor(w, node.attr["count_include_pad"])
    return ctx


def global_avgpool_context(node, ins):
    """global_avgpool (C, m, d..) -> (C, m, 1..) and its gradient: the positions' axes and count."""
    in_size = node.input_types[0].shape[2:] if node.op == "global_avgpool" else node.attr["in_size"]
    return {"axes": tuple_text(tuple(range(2, 2 + len(in_size)))), "positions": math.prod(in_size),
            "in_size": sizes(in_size), "new": new_array(node.outputs[0].type)}


def flatten_context(node, ins):
    """flatten (C, m, d..) -> (C*d.., m) and unflatten, its inverse: one moveaxis copy each."""
    spatial_t = node.input_types[0] if node.op == "flatten" else node.outputs[0].type
    split = tuple_text((spatial_t.shape[0], *spatial_t.shape[2:], "m"))  # (C, d.., m): the flat value's split view
    return {"split": split, "new": new_array(node.outputs[0].type)}
