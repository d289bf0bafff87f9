"""``bg.from_onnx``: the driver that walks an ONNX graph through the op table of :mod:`.onnx_import`."""
from __future__ import annotations

from ..ir import IRError
from ..ops import LOSS_OPS, OPS
from .imported import Data, ImportedGraph, InputSpec, OutputSpec, Tensor
from .names import show
from .onnx_context import Context
from .onnx_import import IMPORTERS, _labels_loss
from .onnx_read import UnsupportedNode, check_total, load_model, tensor_array, value_info


def from_onnx(src, loss="auto") -> ImportedGraph:
    """Import an ONNX model (a path, bytes or an ``onnx.ModelProto``) as a ``bg.Graph``.

    Weights become params, BatchNormalization's running statistics state; ``.values`` holds them
    and ``.compile()`` gives a model that starts from them. ``loss``: ``'auto'`` (a loss node of the
    file; else softmax_cross_entropy when the graph ends in Softmax/LogSoftmax, with a new labels
    input ``labels``; else mse against a new input ``target``), one of ``bg.OPS``' losses, or None
    (an inference-only graph). Names are made safe for the IR; ``.original_names`` keeps the file's.
    """
    if loss not in ("auto", None) and loss not in LOSS_OPS:
        raise IRError(f"from_onnx: loss must be 'auto', None or one of {', '.join(LOSS_OPS)}, got {loss!r}")
    model = load_model(src)
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx") and any(n.domain == o.domain for n in model.graph.node):
            raise UnsupportedNode(show(o.domain), "opset", "custom operator domains are not supported")
    ctx = Context(model, loss)
    g = model.graph
    for t in g.initializer:
        arr = tensor_array(t, f"initializer {show(t.name)}")
        ctx.g.source_arrays[t.name] = arr
        ctx.env[t.name] = Tensor(arr.shape, lambda a, n=t.name: a[n], frozenset([t.name]))
    for vi in g.input:
        if vi.name in ctx.env:
            continue  # an initializer listed as an input (a default a feed may override)
        elem, dims = value_info(vi, f"input {show(vi.name)}")
        if dims is None:
            raise UnsupportedNode(show(vi.name), "graph input", "has no declared shape")
        ctx.pending[vi.name] = (elem, dims)
        ctx.env[vi.name] = vi.name  # its first use decides: data, or a weight fed at run time
    for node in g.node:
        where = show(node.name or (node.output[0] if node.output else node.op_type))
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedNode(where, f"{show(node.domain)}.{node.op_type}", "custom operator domains are not "
                                  "supported")
        fn = IMPORTERS.get(node.op_type)
        if fn is None:
            raise UnsupportedNode(where, show(node.op_type), f"not supported; bngraph imports "
                                  f"{', '.join(sorted(IMPORTERS))}")
        ins = []
        for i in node.input:
            if i == "":
                ins.append("")
            elif i not in ctx.env:
                raise UnsupportedNode(where, node.op_type, f"reads {show(i)}, which nothing defines before it")
            else:
                ins.append(ctx.value(i))
        outs = fn(ctx, node, where, ins)
        for name, v in zip(node.output, outs):
            if name:
                ctx.env[name] = v
    _outputs(ctx, g)
    _add_loss(ctx, loss)
    check_total(ctx.g, f"model {show(g.name)}")
    return ctx.g


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
                var, momentum = v[2]
                spec = OutputSpec(o.name, state_key, ir, "population_var", extra=(f"{key}.batch_var", momentum, var))
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
        raise IRError(f"from_onnx: loss={loss!r} needs one 2-D (batch, outputs) graph output to put the loss on; "
                      f"pass loss=None for an inference-only graph")
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
