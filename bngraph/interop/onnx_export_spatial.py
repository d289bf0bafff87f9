"""The IR's spatial ops -> ONNX, merged into ``EXPORTERS`` of :mod:`.onnx_export` (``SPATIAL_EXPORTERS``).

The IR's spatial ``(C, m, d1[, d2])`` is ONNX's ``(N, C, d1[, d2])``; attributes map one to one
(``pads`` is ONNX's order in both: before each spatial dimension, then after each):

* ``conv[stride, pads, dilation, groups] W, x`` (+ the ``bias_add(_act)`` that is its only user)
  -> ``Conv(X, W[, B], strides, pads, dilations, group, kernel_shape)`` (+ the activation);
* ``maxpool`` -> ``MaxPool`` (kernel_shape, strides, pads, dilations, ceil_mode), ``avgpool`` ->
  ``AveragePool`` (kernel_shape, strides, pads, ceil_mode, count_include_pad), ``global_avgpool``
  -> ``GlobalAveragePool``;
* ``flatten`` -> ``Flatten(axis=1)`` (the same (c, d1, ...) feature order), ``unflatten[shape]`` ->
  ``Reshape(x, [-1, C, d...])``.
"""
from __future__ import annotations

import numpy as np

from ..ir import IRError

SPATIAL_EXPORTERS: dict = {}  # IR op -> fn(ex, node); merged into onnx_export.EXPORTERS


def exporter(op):
    def wrap(fn):
        SPATIAL_EXPORTERS[op] = fn
        return fn
    return wrap


@exporter("conv")
def _conv(ex, node):
    W, x = node.inputs
    if W not in ex.values:
        raise IRError(f"to_onnx: %{node.name} (conv) reads %{W}, which is not a weight; only conv %W, %x exports")
    a = node.attr
    ex.with_bias(node, "Conv", [ex.name(x), ex.init(W)], kernel_shape=list(ex.g.value(W).type.shape[2:]),
                 strides=list(a["stride"]), pads=list(a["pads"]), dilations=list(a["dilation"]), group=a["groups"])


@exporter("maxpool")
def _maxpool(ex, node):
    a = node.attr
    ex.add("MaxPool", [ex.name(node.inputs[0])], [ex.name(node.out.name)], node, kernel_shape=list(a["kernel"]),
           strides=list(a["stride"]), pads=list(a["pads"]), dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


@exporter("avgpool")
def _avgpool(ex, node):
    a = node.attr
    ex.add("AveragePool", [ex.name(node.inputs[0])], [ex.name(node.out.name)], node, kernel_shape=list(a["kernel"]),
           strides=list(a["stride"]), pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]),
           count_include_pad=int(a["count_include_pad"]))


@exporter("global_avgpool")
def _global_avgpool(ex, node):
    ex.add("GlobalAveragePool", [ex.name(node.inputs[0])], [ex.name(node.out.name)], node)


@exporter("flatten")
def _flatten(ex, node):
    ex.add("Flatten", [ex.name(node.inputs[0])], [ex.name(node.out.name)], node, axis=1)


@exporter("unflatten")
def _unflatten(ex, node):
    shape = ex.name(node.out.name) + "/shape"
    ex.inits.append(ex.onnx.numpy_helper.from_array(np.array([-1, *node.attr["shape"]], np.int64), shape))
    ex.add("Reshape", [ex.name(node.inputs[0]), shape], [ex.name(node.out.name)], node)
