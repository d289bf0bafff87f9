"""``bg.from_onnx``: the driver that walks an ONNX graph through the op table of :mod:`.onnx_import`.

Order of the checks: the file decodes, has a graph with outputs and one ai.onnx opset this onnx
knows; every node is an op bngraph imports, with its schema's attributes of the schema's types;
initializers are safe to read (sizes, no external data); then ``onnx.checker`` (full check: type
and shape inference) refuses what onnxruntime refuses; then the import; then the weights the file
holds are checked (finite, within the dtype, variances >= 0) with the file's names in the message.
"""
from __future__ import annotations

import numpy as np

from ..ir import DTYPES, IRError
from ..ops import LOSS_OPS, OPS
from .imported import Data, ImportedGraph, InputSpec, OutputSpec, Tensor
from .names import UnsafeModel, show
from .onnx_context import Context
from .onnx_import import IMPORTERS, _labels_loss
from .onnx_read import (UnsupportedNode, check_attribute_types, check_model, check_total, load_model, model_opset,
                        tensor_array, value_info)


def from_onnx(src, loss="auto") -> ImportedGraph:
    """Import an ONNX model (a path, bytes or an ``onnx.ModelProto``) as a ``bg.Graph``.

    The model must pass ``onnx.checker`` (full check); anything bngraph cannot reproduce exactly is
    one :class:`UnsafeModel` / :class:`UnsupportedNode` error naming the file and the node.
    Weights become params, BatchNormalization's running statistics state; ``.values`` holds them
    and ``.compile()`` gives a model that starts from them. ``loss``: ``'auto'`` (a loss node of the
    file; else softmax_cross_entropy when the graph ends in Softmax/LogSoftmax, with a new labels
    input ``labels``; else mse against a new input ``target``), one of ``bg.OPS``' losses, or None
    (an inference-only graph). Names are made safe for the IR; ``.original_names`` keeps the file's.
    """
    if loss not in ("auto", None) and loss not in LOSS_OPS:
        raise IRError(f"from_onnx: loss must be 'auto', None or one of {', '.join(LOSS_OPS)}, got {loss!r}")
    model, label = load_model(src)
    g = model.graph
    if not model.HasField("graph") or not (g.node or g.input or g.output or g.initializer):
        raise UnsafeModel(f"{label}: the file is empty (no graph)")
    if not g.output:
        raise UnsafeModel(f"{label}: the graph has no outputs; bngraph imports a graph that computes something")
    opset = model_opset(model, label)
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx") and any(n.domain == o.domain for n in g.node):
            raise UnsupportedNode(show(o.domain), "opset", "custom operator domains are not supported")
    # what bngraph refuses, in its own terms first; then the checker refuses what onnxruntime refuses
    for node in g.node:
        _supported(node, opset)
    arrays = {t.name: tensor_array(t, f"{label}: initializer {show(t.name)}") for t in g.initializer}
    check_model(model, label)
    ctx = Context(model, loss)
    ctx.opset = opset
    for t in g.initializer:
        ctx.g.source_arrays[t.name] = arrays[t.name]
        ctx.env[t.name] = Tensor(arrays[t.name].shape, lambda a, n=t.name: a[n], frozenset([t.name]))
    for vi in g.input:
        if vi.name in ctx.env:
            continue  # an initializer listed as an input (a default a feed may override)
        elem, dims = value_info(vi, f"input {show(vi.name)}")
        if dims is None:
            raise UnsupportedNode(show(vi.name), "graph input", "has no declared shape")
        ctx.pending[vi.name] = (elem, dims)
        ctx.env[vi.name] = vi.name  # its first use decides: data, or a weight fed at run time
    for node in g.node:
        where = _where(node)
        ins = []
        for i in node.input:
            if i == "":
                ins.append("")
            elif i not in ctx.env:
                raise UnsupportedNode(where, node.op_type, f"reads {show(i)}, which nothing defines before it")
            else:
                ins.append(ctx.value(i))
        outs = IMPORTERS[node.op_type](ctx, node, where, ins)
        for name, v in zip(node.output, outs):
            if name:
                ctx.env[name] = v
    _outputs(ctx, g)
    _add_loss(ctx, loss)
    check_total(ctx.g, f"model {show(g.name)}")
    check_values(ctx, label)
    return ctx.g


def _where(node) -> str:
    return show(node.name or (node.output[0] if node.output and node.output[0] else node.op_type))


def _supported(node, opset: int) -> None:
    where = _where(node)
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedNode(where, f"{show(node.domain)}.{node.op_type}", "custom operator domains are not "
                              "supported")
    if node.op_type not in IMPORTERS:
        raise UnsupportedNode(where, show(node.op_type), f"not supported; bngraph imports "
                              f"{', '.join(sorted(IMPORTERS))}")
    check_attribute_types(node, opset, where)


def check_values(ctx, label: str) -> None:
    """The weights the file holds, checked with the file's names: finite initializers, IR values
    that fit the graph's dtype (``alpha*B`` may overflow float32), running variances >= 0. Values
    fed at run time (graph inputs read as weights) are not known here."""
    g, known = ctx.g, ctx.g.source_arrays
    dt = np.dtype(DTYPES[g.dtype])
    wide = {k: a.astype(np.float64) if a.dtype.kind == "f" else a for k, a in known.items()}  # alpha*B in float64
    checked = set()
    for name, t in g.recipes.items():
        if not t.sources <= known.keys():
            continue
        for s in sorted(t.sources - checked):
            checked.add(s)
            a = np.asarray(known[s])
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise UnsafeModel(f"{label}: initializer {show(s)} contains NaN or inf (at index "
                                  f"{_index(~np.isfinite(a))})")
        with np.errstate(all="ignore"):
            v = np.atleast_1d(np.asarray(t.get(wide), dtype=np.float64))
        role = ctx.roles.get(name)
        held = (f"initializer{'s' if len(t.sources) > 1 else ''} {', '.join(show(s) for s in sorted(t.sources))}"
                if t.sources else "a Constant")
        what = f"{held}{f' ({role})' if role else ''}, as %{name},"
        if not np.isfinite(v).all() and not t.sources:
            raise UnsafeModel(f"{label}: {what} contains NaN or inf (at index {_index(~np.isfinite(v))})")
        big = ~(np.abs(v) <= np.finfo(dt).max)
        if big.any():
            at = _index(big)
            why = f"too large for {dt.name}" if np.isfinite(v[at]) else "not a finite number (a division by 0?)"
            raise UnsafeModel(f"{label}: {what} holds {v[at]:g} (at index {at}): {why}")
        if name.endswith(".running_var") and (v < 0).any():
            at = _index(v < 0)
            raise UnsafeModel(f"{label}: {what} holds a negative variance {v[at]:g} (at index {at})")


def _index(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(np.atleast_1d(mask))[0])


def _outputs(ctx, g):
    for k, o in enumerate(g.output):
        v = ctx.value(o.name) if o.name in ctx.env else None
        key = f"out{k}"
        if isinstance(v, str):  # an input returned as it is
            v = ctx.lay_out(v, show(o.name), "graph output")
        if isinstance(v, Data):
            spec = OutputSpec(o.name, key, v.ir, v.layout, v.fshape, v.rows, v.head, axis=v.caxis)
        elif isinstance(v, tuple) and v[0] == "loss":
            spec = OutputSpec(o.name, key, v[1], "scalar")
        elif isinstance(v, tuple) and v[0] == "state":
            ir = v[1]
            state_key = "state." + ir[: -len(".next")]
            if v[2] is None:
                spec = OutputSpec(o.name, state_key, ir, "vector")
            else:
                var, momentum, positions = v[2]
                spec = OutputSpec(o.name, state_key, ir, "population_var",
                                  extra=(f"{key}.batch_var", momentum, var, positions))
        else:
            raise UnsupportedNode(show(o.name), "graph output", "is a constant, not computed from the inputs")
        ctx.g.outputs_spec.append(spec)
        ctx.g.original_names.setdefault(spec.ir, o.name)


def _add_loss(ctx, loss):
    if loss is None or ctx.g.has_output("loss"):
        if loss not in ("auto", None) and ctx.g.has_output("loss"):
            raise IRError(f"from_onnx: the file has its own loss (%{ctx.g.output('loss')}); use loss='auto'")
        return
    data = [ctx.value(o) if o in ctx.env else None for o in (s.name for s in ctx.g.outputs_spec)]
    data = [d for d in data if isinstance(d, Data)]
    if len(data) != 1 or len(data[0].fshape) != 1 or data[0].layout != "flat":
        outs = ctx.g.outputs_spec
        raise IRError(f"from_onnx: loss={loss!r} needs one 2-D (batch, outputs) graph output to put the loss on; "
                      f"the file has {len(outs)} output{'s' if len(outs) != 1 else ''}: "
                      f"{', '.join(show(o.name) for o in outs)} (pass loss=None for an inference-only graph)")
    out = data[0]
    kind = loss if loss != "auto" else "softmax_cross_entropy" if out.head else "mse"
    if out.head and kind != "softmax_cross_entropy":
        raise IRError(f"from_onnx: the graph ends in a {out.head}; its loss is softmax_cross_entropy, not {kind}")
    ctx.g.added_loss = True
    if OPS[kind].class_labels:
        ctx.pending["labels"] = (7, (None,))
        _labels_loss(ctx, out, "labels")
    else:
        target = ctx.names.claim("target", "target")
        ctx.g.input(target, out.features)
        ctx.g.inputs_spec.append(InputSpec("target", target, "flat", 1, out.fshape))
        ctx.g.loss(kind, out.ir, target)
