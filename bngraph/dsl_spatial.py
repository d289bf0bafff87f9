"""The DSL's convolutional builders, mixed into :class:`bngraph.dsl.Graph`: ``g.conv``, ``g.maxpool``,
``g.avgpool``, ``g.global_avgpool``, ``g.flatten`` (the op rules: :mod:`bngraph.ops_spatial`).

Arguments follow PyTorch's ``nn.Conv1d/2d``, ``nn.MaxPool1d/2d`` and ``nn.AvgPool1d/2d``: a kernel,
stride, padding or dilation is an int (the same along every spatial dimension) or one int per
dimension. ``padding`` also takes ``2*k`` ints (ONNX's ``pads``: the padding before each dimension,
then after each) or a word: ``"valid"`` (none), ``"same"`` / ``"same_upper"`` (the output is
ceil(size/stride), the odd pixel after) or ``"same_lower"`` (the odd pixel before), ONNX's ``auto_pad``.
"""
from __future__ import annotations

import numbers

from . import spatial
from .ir import IRError, Ints, TensorType, Value
from .ops import get_op
from .ops_spatial import SPATIAL_RANKS, expect_spatial

AUTO_PAD = {"valid": "VALID", "same": "SAME_UPPER", "same_upper": "SAME_UPPER", "same_lower": "SAME_LOWER"}


def per_dim(where, what, v, k: int, allow_zero: bool = False) -> Ints:
    """An int or k ints as an Ints of k entries (each >= 1, or >= 0 with ``allow_zero``)."""
    items = (v,) * k if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
    try:
        items = tuple(items)
    except TypeError:
        items = None
    low = 0 if allow_zero else 1
    if (items is None or len(items) != k
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= low for d in items)):
        raise IRError(f"{where}: {what} must be an int >= {low} or {k} of them (one per spatial dimension), got {v!r}")
    return Ints(int(d) for d in items)


def pads_of(where, padding, in_size, kernel, stride, dilation) -> Ints:
    """``padding`` (an int, k ints, 2k ints or an auto_pad word) as ONNX's 2k pads."""
    k = len(in_size)
    if isinstance(padding, str):
        mode = AUTO_PAD.get(padding.lower())
        if mode is None:
            raise IRError(f"{where}: padding must be an int, {k} or {2 * k} ints, or one of "
                          f"{', '.join(repr(w) for w in AUTO_PAD)}; got {padding!r}")
        return Ints(spatial.auto_pads(mode, in_size, kernel, stride, dilation))
    if not isinstance(padding, numbers.Integral) and hasattr(padding, "__len__") and len(padding) == 2 * k and k > 0:
        return per_dim(where, "padding", padding, 2 * k, allow_zero=True)
    return Ints(2 * per_dim(where, "padding", padding, k, allow_zero=True))


class SpatialBuilder:
    """The convolutional half of the DSL (needs the builder's ``_claim``, ``_ref``, ``param``, ``add_node``)."""

    def _spatial_input(self, x, name: str) -> tuple:
        xv = self._ref(x, name)
        k = expect_spatial(name, f"input %{xv.name}", xv.type)
        return xv, k

    def conv(self, x, out_channels: int, kernel, stride=1, padding=0, dilation=1, groups: int = 1,
             bias: bool = True, name: str | None = None) -> Value:
        """``y = conv(W, x) (+ b)``, PyTorch's ``nn.Conv1d/2d``: params ``name.W`` (out_channels,
        channels/groups, k...) and, with bias, ``name.b`` (out_channels,), added by a ``bias_add``
        (which the pass fold_bias removes before a batch norm)."""
        name = self._claim(name, get_op("conv").prefix, (".W", ".b", ".conv", ""))
        xv, k = self._spatial_input(x, name)
        _positive(name, "out_channels", out_channels)
        _positive(name, "groups", groups)
        kernel = per_dim(name, "kernel", kernel, k)
        stride, dilation = per_dim(name, "stride", stride, k), per_dim(name, "dilation", dilation, k)
        pads = pads_of(name, padding, xv.type.shape[2:], kernel, stride, dilation)
        C = xv.type.shape[0]
        if C % groups or out_channels % groups:
            raise IRError(f"{name}: groups={groups} must divide both the input channels ({C}) and "
                          f"out_channels ({out_channels})")
        attrs = get_op("conv").normalize_attrs(name, {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups})
        W_shape = (int(out_channels), C // groups, *kernel)
        get_op("conv").infer(name, [TensorType(xv.type.dtype, W_shape), xv.type], attrs)  # before any param is added
        W = self.param(f"{name}.W", W_shape)
        if not bias:
            return self.add_node("conv", [W, xv], attrs, [name]).out
        b = self.param(f"{name}.b", (int(out_channels),))
        z = self.add_node("conv", [W, xv], attrs, [f"{name}.conv"]).out
        return self.add_node("bias_add", [z, b], {}, [name]).out

    def _pool(self, op, x, kernel, stride, padding, name, **extra) -> Value:
        name = self._claim(name, get_op(op).prefix)
        xv, k = self._spatial_input(x, name)
        kernel = per_dim(name, "kernel", kernel, k)
        stride = kernel if stride is None else per_dim(name, "stride", stride, k)
        dilation = per_dim(name, "dilation", extra.pop("dilation", 1), k)
        pads = pads_of(name, padding, xv.type.shape[2:], kernel, stride, dilation)
        attrs = {"kernel": kernel, "stride": stride, "pads": pads, **extra}
        if op == "maxpool":
            attrs["dilation"] = dilation
        return self.add_node(op, [xv], attrs, [name]).out

    def maxpool(self, x, kernel, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
                name: str | None = None) -> Value:
        """The maximum of each window, PyTorch's ``nn.MaxPool1d/2d`` (``stride`` defaults to the kernel)."""
        return self._pool("maxpool", x, kernel, stride, padding, name, dilation=dilation, ceil_mode=ceil_mode)

    def avgpool(self, x, kernel, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                name: str | None = None) -> Value:
        """The mean of each window, PyTorch's ``nn.AvgPool1d/2d`` (``count_include_pad=True`` is its default)."""
        return self._pool("avgpool", x, kernel, stride, padding, name, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad)

    def global_avgpool(self, x, name: str | None = None) -> Value:
        """The mean over all positions, (C, m, d...) -> (C, m, 1, ...): ``nn.AdaptiveAvgPool2d(1)``."""
        name = self._claim(name, get_op("global_avgpool").prefix)
        xv, _ = self._spatial_input(x, name)
        return self.add_node("global_avgpool", [xv], {}, [name]).out

    def flatten(self, x, name: str | None = None) -> Value:
        """(C, m, d...) -> (C*d1*..., m) in PyTorch's feature order: ``nn.Flatten()`` before a ``Linear``."""
        name = self._claim(name, get_op("flatten").prefix)
        xv, _ = self._spatial_input(x, name)
        return self.add_node("flatten", [xv], {}, [name]).out


def _positive(where, what, n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:  # numpy ints are fine
        raise IRError(f"{where}: {what} must be a positive integer, got {n!r}")


def input_shape(name: str, shape) -> tuple:
    """``g.input``'s ``features``: an int (a flat input) or (channels, length) / (channels, h, w)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        return (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise IRError(f"{name}: features must be a positive integer or a shape (channels, length) / "
                      f"(channels, height, width), got {shape!r}") from None
    if (len(dims) - 1 not in (0, *SPATIAL_RANKS)
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in dims)):
        raise IRError(f"{name}: a spatial input's shape must be (channels, length) or (channels, height, width) "
                      f"of positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)
