"""bngraph -> ONNX: ``bg.to_onnx(model, path)`` writes a model's inference graph.

``EXPORTERS`` is the mapping, one entry per IR op: ``fn(ex, node) -> None`` appends ONNX nodes.
Layout: the ONNX input is ``x: (N, features)`` (``(N, C, L)`` / ``(N, C, H, W)`` for a convolutional
model) and the output ``(N, outputs)`` (the batch on axis 0, as ``model.forward`` takes and returns
them); the spatial ops are in :mod:`.onnx_export_spatial`; the IR's ``matmul W, x`` (W ``(out, in)``) is
``Gemm(X, W, transB=1)``, with the bias as Gemm's C when a bias_add follows. Batch norm is either
kept in eval mode (``BatchNormalization`` with ``momentum = 1 - bngraph's``, ONNX's weight of the
old value) or folded into the weights first (``fold_bn=True``). Names are the IR's, or the
original names of an imported model; each node's ``doc_string`` is its IR line.
"""
from __future__ import annotations

import numpy as np

from ..ir import IRError
from ..printer import format_node
from .deps import require
from .onnx_export_spatial import SPATIAL_EXPORTERS

OPSET = 17  # BatchNormalization-15, Gemm-13, Softmax-13: read by onnxruntime >= 1.12
IR_VERSION = 8
ONNX_ACT = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "identity": "Identity", "leaky_relu": "LeakyRelu"}
EXPORTERS: dict = {}


def exporter(*ops):
    def wrap(fn):
        for op in ops:
            EXPORTERS[op] = fn
        return fn
    return wrap


class Exporter:
    def __init__(self, graph, values: dict, names: dict):
        self.onnx = require("onnx", "bg.to_onnx")
        self.g, self.values, self.names = graph, values, names
        self.nodes, self.inits, self.done = [], [], set()
        self.users = graph.users()
        self.outputs = graph.output_names

    def name(self, ir: str) -> str:
        return self.names.get(ir, ir)

    def init(self, ir: str):
        n = self.name(ir)
        if n not in {t.name for t in self.inits}:
            self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(self.values[ir]), n))
        return n

    def bias(self, b: str, z: str) -> str:
        """A bias_add's per-unit vector: as it is for (features, m) data, (C, 1, ...) for spatial
        (N, C, d...) data so that ONNX's Add broadcasts it per channel."""
        rank = self.g.value(z).type.rank
        if rank == 2:
            return self.init(b)
        n = self.name(b)
        if n not in {t.name for t in self.inits}:
            a = np.asarray(self.values[b])
            self.inits.append(self.onnx.numpy_helper.from_array(a.reshape(-1, *(1,) * (rank - 2)), n))
        return n

    def with_bias(self, node, op: str, ins: list, **attrs):
        """``op`` (Gemm, Conv) with the bias_add(_act) that is its only user as its bias input, the
        activation after it; or ``op`` alone."""
        b = self.fused_bias_user(node)
        if b is None:
            self.add(op, ins, [self.name(node.out.name)], node, **attrs)
            return
        self.done.add(id(b))
        act = b.attr.get("act", "identity")
        out = self.name(b.out.name) if act == "identity" else self.name(node.out.name)
        self.add(op, ins + [self.init(b.inputs[1])], [out], b, f"/{op}" if act != "identity" else "", **attrs)
        if act != "identity":
            self.act(out, self.name(b.out.name), b, act, b.attr.get("negative_slope", 0.0), "")

    def add(self, op, ins, outs, node, suffix="", **attrs):
        self.nodes.append(self.onnx.helper.make_node(op, ins, outs, name=node.name + suffix,
                                                     doc_string=format_node(node), **attrs))

    def act(self, x: str, out: str, node, act: str, slope: float, suffix: str):
        extra = {"alpha": slope} if act == "leaky_relu" else {}
        self.add(ONNX_ACT[act], [x], [out], node, suffix, **extra)

    def fused_bias_user(self, node):
        """The bias_add(_act) that is the only user of a matmul's output, if any."""
        users = self.users.get(node.out.name, [])
        if len(users) == 1 and node.out.name not in self.outputs and users[0].op in ("bias_add", "bias_add_act") \
                and users[0].inputs[0] == node.out.name:
            return users[0]
        return None


@exporter("matmul")
def _matmul(ex, node):
    W, x = node.inputs
    if node.attr["ta"] or node.attr["tb"] or W not in ex.values:
        raise IRError(f"to_onnx: %{node.name} (matmul) is not weights times data; only matmul %W, %x exports")
    ex.with_bias(node, "Gemm", [ex.name(x), ex.init(W)], transB=1)


@exporter("bias_add", "bias_add_act")
def _bias_add(ex, node):
    z, b = node.inputs
    act = node.attr.get("act", "identity")
    mid = ex.name(node.out.name) if act == "identity" else ex.name(node.out.name) + "/pre_act"
    ex.add("Add", [ex.name(z), ex.bias(b, z)], [mid], node, "/Add" if act != "identity" else "")
    if act != "identity":
        ex.act(mid, ex.name(node.out.name), node, act, node.attr.get("negative_slope", 0.0), "")


@exporter("batchnorm", "batchnorm_act")
def _batchnorm(ex, node):
    if node.attr["mode"] != "eval":
        raise IRError(f"to_onnx: %{node.name} is batch norm in training mode; export the inference graph")
    z, gamma, beta, rm, rv = node.inputs
    eps = float(node.attr["eps"])
    if not np.finfo(np.float32).tiny <= eps <= np.finfo(np.float32).max:
        # ONNX's epsilon attribute is a float32: 1e-50 would be written as 0 (onnxruntime then divides by
        # sqrt(0)), a subnormal float32 keeps only a few digits of eps
        raise IRError(f"to_onnx: %{node.name} ({node.op}) has eps={eps!r}, which a float32 (ONNX's epsilon "
                      f"attribute) cannot hold: {float(np.float32(eps))!r} would be written; use an eps of at least "
                      f"{float(np.finfo(np.float32).tiny):.6g}, or export with fold_bn=True")
    act = node.attr.get("act", "identity")
    out = ex.name(node.out.name)
    mid = out if act == "identity" else out + "/pre_act"
    ex.add("BatchNormalization", [ex.name(z), *(ex.init(v) for v in (gamma, beta, rm, rv))], [mid], node,
           "" if act == "identity" else "/BatchNormalization",
           epsilon=node.attr["eps"], momentum=1.0 - node.attr["momentum"])
    if act != "identity":
        ex.act(mid, out, node, act, node.attr.get("negative_slope", 0.0), "")


@exporter("identity", "relu", "leaky_relu", "tanh", "sigmoid")
def _activation(ex, node):
    ex.act(ex.name(node.inputs[0]), ex.name(node.out.name), node, node.op, node.attr.get("negative_slope", 0.0), "")


@exporter("log_softmax")
def _log_softmax(ex, node):
    # over the IR's axis 0, the classes: ONNX's last axis of (N, C)
    ex.add("LogSoftmax", [ex.name(node.inputs[0])], [ex.name(node.out.name)], node, axis=-1)


ARITHMETIC = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "neg": "Neg"}  # elementwise, one shape


@exporter(*ARITHMETIC)
def _arithmetic(ex, node):
    ex.add(ARITHMETIC[node.op], [ex.name(i) for i in node.inputs], [ex.name(node.out.name)], node)


def inference_program(model, fold_bn: bool):
    """(graph, values) of the model's inference program: eval-mode batch norm (what
    ``model.forward(X, training=False)`` runs) or batch norm folded into the weights."""
    from ..compiler import inference_graph

    values = {**{k: np.asarray(model.runtime.to_numpy(v)) for k, v in model.params.items()},
              **{k: np.asarray(model.runtime.to_numpy(v)) for k, v in model.state.items()}}
    if not fold_bn:
        return model.programs["forward"], values
    res = inference_graph(model.graph, model.dtype.name)
    return res.graph, res.remap(values)


def to_onnx(model, path=None, inference: bool = True, fold_bn: bool = False, probabilities: bool = False,
            names: dict | None = None):
    """Write ``model``'s inference graph to ``path`` (.onnx); returns the ``onnx.ModelProto``.

    ``fold_bn``: fold batch norm into the weights (the inference pipeline) instead of exporting
    eval-mode BatchNormalization nodes. ``probabilities``: end with Softmax (softmax_cross_entropy)
    or Sigmoid (sigmoid_bce) so the file outputs probabilities instead of ``model.forward``'s logits.
    ``names``: IR name -> name in the file (default: an imported model's original names)."""
    onnx = require("onnx", "bg.to_onnx")
    if not inference:
        raise IRError("to_onnx: only the inference graph is exported (training stays in bngraph)")
    graph, values = inference_program(model, fold_bn)
    ex = Exporter(graph, values, _export_names(graph, names if names is not None else
                                                getattr(model, "original_names", {})))
    for node in graph.nodes:
        if id(node) in ex.done:
            continue
        fn = EXPORTERS.get(node.op)
        if fn is None:
            raise IRError(f"to_onnx: no ONNX mapping for op {node.op} (node %{node.name})")
        fn(ex, node)
    elem = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}[model.dtype.name]
    (x,) = graph.inputs
    out_ir = graph.output("out")
    out_name = ex.name(out_ir)
    out_shape = _outside(graph.value(out_ir).type.shape)
    if probabilities:
        head = {"softmax_cross_entropy": "Softmax", "sigmoid_bce": "Sigmoid"}.get(model.loss_kind)
        if head is None:
            raise IRError(f"to_onnx: probabilities=True needs a classification loss, not {model.loss_kind}")
        ex.nodes.append(onnx.helper.make_node(head, [out_name], ["probabilities"], name="probabilities"))
        out_name = "probabilities"
    g = onnx.helper.make_graph(
        ex.nodes, graph.name, [onnx.helper.make_tensor_value_info(ex.name(x.name), elem, _outside(x.type.shape))],
        [onnx.helper.make_tensor_value_info(out_name, elem, out_shape)], ex.inits,
        doc_string=f"bngraph graph {graph.name}: inference ({'batch norm folded' if fold_bn else 'eval-mode batch norm'})")
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="bngraph",
                               ir_version=IR_VERSION)
    from ..version import __version__

    m.producer_version = __version__
    onnx.checker.check_model(m, full_check=True)
    if path is not None:
        onnx.save_model(m, str(path))
    return m


def _outside(shape) -> list:
    """An IR value's (features, m) or spatial (C, m, d...) shape as ONNX's (N, features) / (N, C, d...)."""
    return ["N", shape[0], *shape[2:]]


def _export_names(graph, names: dict) -> dict:
    """IR name -> file name; an original is used once (two IR values never share a file name)."""
    out, seen = {}, set()
    for v in graph.values():
        n = names.get(v)
        if n and n not in seen:
            out[v] = n
            seen.add(n)
    taken = set(out.values())
    for v in graph.values():
        if v not in out:
            n, k = v, 1
            while n in taken:
                k += 1
                n = f"{v}_{k}"
            out[v] = n
            taken.add(n)
    return out


EXPORTERS.update(SPATIAL_EXPORTERS)  # conv, pools, flatten: bngraph/interop/onnx_export_spatial.py
