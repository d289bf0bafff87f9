"""PyTorch's convolutional modules -> the IR's spatial ops, merged into ``TORCH_LAYERS`` of
:mod:`.torch_import` (``SPATIAL_LAYERS``): ``Conv1d``/``Conv2d``, ``MaxPool1d/2d``, ``AvgPool1d/2d`` and
``AdaptiveAvgPool1d/2d`` to one output position (a global average). ``BatchNorm1d`` on (N, C, L),
``BatchNorm2d`` and ``Flatten`` live with their flat cases in :mod:`.torch_import`.

Data is PyTorch's ``(N, C, L)`` / ``(N, C, H, W)`` outside and the IR's ``(C, m, L)`` /
``(C, m, H, W)`` inside. Every argument maps one to one (PyTorch's conv and pools are the IR's
reference semantics): a conv weight ``(out, in/groups, k...)`` is copied as it is, its bias is a
``bias_add``; ``padding='same'`` is PyTorch's padding (``dilation*(k-1)`` in all, the odd pixel
after), ``'valid'`` none. What the IR cannot reproduce is refused, naming the module: a padding mode
other than zeros, ``return_indices``, ``divisor_override``, an adaptive pool to more than one
position, data of the wrong rank.
"""
from __future__ import annotations

from ..ir import Ints, IRError

SPATIAL_LAYERS: dict = {}  # torch.nn class name -> fn(ctx, module, path, x); merged into torch_import.TORCH_LAYERS


def layer(*class_names):
    def wrap(fn):
        for c in class_names:
            SPATIAL_LAYERS[c] = fn
        return fn
    return wrap


def spatial_rank(g, x) -> int:
    """0 for (features, m) data, k for a spatial (C, m, d1, ..., dk) value."""
    return g.value(x).type.rank - 2


def describe(g, x) -> str:
    """The data's shape as PyTorch sees it: (N, 8) or (N, 3, 16, 16)."""
    s = g.value(x).type.shape
    return "(N, " + ", ".join(str(d) for d in (s[0], *s[2:])) + ")"

CONV_KINDS = {"Conv1d": 1, "Conv2d": 2}
POOL_KINDS = {"MaxPool1d": 1, "MaxPool2d": 2, "AvgPool1d": 1, "AvgPool2d": 2, "AdaptiveAvgPool1d": 1,
              "AdaptiveAvgPool2d": 2}


def expect_rank(ctx, x, path, kind: str, k: int):
    """A module of ``k`` spatial dimensions receives (N, C, d1[, ..dk]) data, or a clear error."""
    if spatial_rank(ctx.g, x) != k:
        want = "(N, C, L)" if k == 1 else "(N, C, H, W)"
        raise IRError(f"from_torch: {path} ({kind}) expects {want} data, receives {describe(ctx.g, x)}")


def _tuple(v, k) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * k


def conv_pads(mod, path, kind: str, k: int) -> Ints:
    """PyTorch's padding as ONNX-order pads (before each dimension, then after each)."""
    if mod.padding_mode != "zeros":
        raise IRError(f"from_torch: {path} ({kind}) has padding_mode={mod.padding_mode!r}; bngraph's conv pads "
                      f"with zeros only (padding_mode='zeros')")
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return Ints((0,) * (2 * k))
        # 'same': dilation*(k-1) in all, the smaller half before (torch's _conv_forward / F.pad)
        total = [d * (kk - 1) for d, kk in zip(_tuple(mod.dilation, k), _tuple(mod.kernel_size, k))]
        return Ints([t // 2 for t in total] + [t - t // 2 for t in total])
    return Ints(2 * _tuple(mod.padding, k))


@layer(*CONV_KINDS)
def _conv(ctx, mod, path, x):
    kind = type_name(mod)
    k = CONV_KINDS[kind]
    expect_rank(ctx, x, path, kind, k)
    C = ctx.g.value(x).type.shape[0]
    if mod.in_channels != C:
        raise IRError(f"from_torch: {path} ({kind}) takes {mod.in_channels} channels but receives {C} "
                      f"({describe(ctx.g, x)})")
    pads = conv_pads(mod, path, kind, k)
    name = ctx.names.claim(f"conv_{path}", "conv")
    out = ctx.g.conv(x, mod.out_channels, _tuple(mod.kernel_size, k), _tuple(mod.stride, k), pads,
                     _tuple(mod.dilation, k), mod.groups, bias=mod.bias is not None, name=name).name
    ctx.value(f"{name}.W", mod.weight, f"{path}.weight")
    if mod.bias is not None:
        ctx.value(f"{name}.b", mod.bias, f"{path}.bias")
    return out


def type_name(mod) -> str:
    """The supported torch.nn class the module converts as (torch_import checked it)."""
    return next(c.__name__ for c in type(mod).__mro__ if c.__name__ in CONV_KINDS or c.__name__ in POOL_KINDS)


@layer(*POOL_KINDS)
def _pool(ctx, mod, path, x):
    kind = type_name(mod)
    k = POOL_KINDS[kind]
    expect_rank(ctx, x, path, kind, k)
    name = ctx.names.claim(f"pool_{path}", "pool")
    if kind.startswith("Adaptive"):
        size = _tuple(mod.output_size, k)
        if any(s != 1 for s in size):
            raise IRError(f"from_torch: {path} ({kind}) has output_size={mod.output_size!r}; bngraph imports the "
                          f"adaptive pool to one position only (output_size=1: a global average)")
        return ctx.g.global_avgpool(x, name=name).name
    kernel, stride = _tuple(mod.kernel_size, k), _tuple(mod.stride if mod.stride is not None else mod.kernel_size, k)
    padding = _tuple(mod.padding, k)
    if kind.startswith("MaxPool"):
        if mod.return_indices:
            raise IRError(f"from_torch: {path} ({kind}) has return_indices=True; the IR's maxpool returns the maxima "
                          f"only")
        return ctx.g.maxpool(x, kernel, stride, padding, _tuple(mod.dilation, k), ceil_mode=bool(mod.ceil_mode),
                             name=name).name
    if getattr(mod, "divisor_override", None) is not None:
        raise IRError(f"from_torch: {path} ({kind}) has divisor_override={mod.divisor_override}; the IR's avgpool "
                      f"divides by the window's size")
    return ctx.g.avgpool(x, kernel, stride, padding, ceil_mode=bool(mod.ceil_mode),
                         count_include_pad=bool(mod.count_include_pad), name=name).name

