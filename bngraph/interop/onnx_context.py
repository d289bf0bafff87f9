"""The state of one ONNX import: the graph being built, what each ONNX value is (batch-sized
:class:`Data`, a constant :class:`Tensor`, or a graph input whose first use decides), safe names."""
from __future__ import annotations

import math

import numpy as np

from .imported import Data, ImportedGraph, InputSpec, Tensor
from .names import NameMap, show
from .onnx_read import FLOAT_TYPES, INT_TYPES, UnsupportedNode
from ..ops_spatial import SPATIAL_RANKS

# the ONNX ops whose presence makes a graph convolutional (its N-D inputs enter in the spatial layout)
SPATIAL_OP_TYPES = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool")


class Context:
    def __init__(self, model, loss):
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        g = model.graph
        self.names = NameMap()
        self.g = ImportedGraph(self.names.claim(g.name or "onnx_model", "onnx_model"), _graph_dtype(g))
        self.names.original.pop(self.g.name, None)
        self.env: dict = {}
        self.pending: dict = {}  # outside input name -> (elem type, dims): data whose layout is set by its first use
        self.consumers: dict = {}
        for n in g.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.loss = loss
        # a convolutional graph: its (N, C, d1[, d2]) inputs enter in the IR's spatial layout (C, m, d...)
        self.spatial = any(n.op_type in SPATIAL_OP_TYPES for n in g.node)
        self.roles: dict = {}  # IR param/state name -> where the file uses it ("ONNX node 'g' (Gemm) input B")

    # ---- values ---------------------------------------------------------------------------
    def value(self, name):
        """What ONNX value ``name`` is now. Identity makes aliases; an alias of a graph input (a
        name in ``env``) sees what the input's first use decided: data, or a constant."""
        v = self.env[name]
        while isinstance(v, str) and self.env.get(v, v) != v:
            v = self.env[v]
        return v

    def tensor(self, v, where, what) -> Tensor:
        """A constant: an initializer, a Constant, or a graph input in a weight position (its value
        then comes at run time, as ONNX lets any input feed a weight)."""
        if isinstance(v, Tensor):
            return v
        if isinstance(v, str) and v in self.pending:
            elem, dims = self.pending.pop(v)
            if dims is None or any(d is None for d in dims):
                raise UnsupportedNode(where, "", f"{what} {show(v)} must have a fixed shape, got {_dims(dims or ())}")
            if elem not in FLOAT_TYPES and elem not in INT_TYPES:
                raise UnsupportedNode(where, "", f"{what} {show(v)} has ONNX element type {elem}")
            t = Tensor(tuple(dims), lambda a, n=v: np.asarray(a[n]), frozenset([v]))
            self.env[v] = t
            self.g.bound_inputs.append(v)
            return t
        raise UnsupportedNode(where, "", f"{what} must be a constant (an initializer), got a batch-sized value")

    def operand(self, v, x: Data, where, what):
        """The second operand of an op on data ``x``: a constant when it broadcasts over the batch
        (fewer axes, or a leading 1), else data."""
        if isinstance(v, str) and v in self.pending:
            dims = self.pending[v][1] or ()
            rank = x.brank + (1 if x.layout == "channels" else len(x.fshape))
            if len(dims) < rank or (x.brank >= 1 and len(dims) == rank and dims[0] == 1):
                return self.tensor(v, where, what)
            return self.data(v, where, "", what)
        return v

    def data(self, v, where, op, what="input") -> Data:
        if isinstance(v, str):  # a graph input whose layout the first use decides
            return self.lay_out(v, where, op, "spatial" if self.spatial_input(v) else "flat")
        if not isinstance(v, Data):
            raise UnsupportedNode(where, op, f"{what} is a constant; bngraph imports ops on batch-sized data "
                                  f"(fold constants before exporting)")
        if v.head and op != "NegativeLogLikelihoodLoss":
            raise UnsupportedNode(where, op, f"reads the output of a {v.head.replace('_', ' ')}: the IR has softmax "
                                  f"only inside its loss, so a Softmax/LogSoftmax is imported as the graph's last op")
        return v

    def spatial_input(self, name) -> bool:
        """A graph input of a convolutional graph shaped (N, C, d1[, d2]): it enters as the IR's
        spatial (C, m, d1[, d2]), so that any op, not only a convolution, may read it first."""
        dims = self.pending[name][1] if name in self.pending else None
        return self.spatial and dims is not None and len(dims) - 2 in SPATIAL_RANKS

    def lay_out(self, name, where, op, kind="flat", axis=None) -> Data:
        """Declare graph input ``name`` as data in the given layout (its first use decides).
        ``flat``: features = the dims from ``axis`` on (default 1), batch = the dims before;
        ``channels``: features = dim ``axis`` (default 1), every other dim flattened into the batch;
        ``flat_t``: a (features, N) matrix; ``spatial``: (N, C, d1[, d2]) as the IR's (C, m, d1[, d2])."""
        elem, dims = self.pending.pop(name)
        if elem not in FLOAT_TYPES:
            raise UnsupportedNode(where, op, f"input {show(name)} has ONNX element type {elem}; data must be "
                                  f"float or double")
        rank = len(dims)
        if kind == "spatial":
            return self._lay_out_spatial(name, where, op, dims)
        if axis is None:
            axis = 0 if kind == "flat" and rank == 1 else 1 if kind in ("flat", "channels") else 0
        if kind == "channels" and not (rank >= 2 and 0 <= axis < rank):
            raise UnsupportedNode(where, op, f"input {show(name)} has shape {_dims(dims)}: no features axis {axis} "
                                  f"with a batch beside it")
        fdims = dims[axis:] if kind == "flat" else dims[axis:axis + 1] if kind == "channels" else dims[:1]
        if any(d is None for d in fdims):
            raise UnsupportedNode(where, op, f"input {show(name)} has shape {_dims(dims)}: its feature "
                                  f"dimensions must be fixed numbers")
        ir = self.names.claim(name, "x")
        features = math.prod(fdims)
        if features == 0:
            raise UnsupportedNode(where, op, f"input {show(name)} has no features: shape {_dims(dims)}")
        self.g.input(ir, features)
        self.g.inputs_spec.append(InputSpec(name, ir, kind, axis, tuple(fdims)))
        brank = rank - 1 if kind == "channels" else 1 if kind == "flat_t" else axis
        d = Data(ir, tuple(fdims), layout="channels" if kind == "channels" else "flat", brank=brank,
                 caxis=axis if kind == "channels" else 1)
        self.env[name] = d
        return d

    def _lay_out_spatial(self, name, where, op, dims) -> Data:
        if len(dims) - 2 not in SPATIAL_RANKS or any(d is None or d < 1 for d in dims[1:]):
            raise UnsupportedNode(where, op, f"input {show(name)} has shape {_dims(dims)}: expected (N, C, L) or "
                                  f"(N, C, H, W) with C and the spatial sizes fixed positive numbers")
        ir = self.names.claim(name, "x")
        self.g.input(ir, tuple(dims[1:]))
        self.g.inputs_spec.append(InputSpec(name, ir, "spatial", 1, tuple(dims[1:])))
        d = Data(ir, tuple(dims[1:]), layout="spatial")
        self.env[name] = d
        return d

    def param(self, name: str, recipe: Tensor, original=None, role=None) -> None:
        """IR value ``name`` computed by ``recipe``; ``role`` says where the file uses its source,
        for messages about the values (``ONNX node 'g' (Gemm) input B``)."""
        self.g.recipes[name] = recipe
        if original is not None:
            self.g.original_names[name] = original
        if role is not None:
            self.roles[name] = role

    def layer_name(self, node, fallback):
        return self.names.claim(node.name or (node.output[0] if node.output else fallback), fallback)


def _source(node, i):
    """The name of a node's input ``i`` (for ``original_names``), or None."""
    return node.input[i] if len(node.input) > i else None


def _role(where, op, what) -> str:
    return f"ONNX node {where} ({op}) input {what}"


def _f32(v) -> float:
    """An ONNX float attribute (stored as float32) as the shortest decimal that is that float32:
    epsilon=1e-5 reads back as 1e-05, not 9.999999747378752e-06."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="0"))


def _dims(dims):
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _graph_dtype(g):
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        t = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else None
        if vi.name not in inits and t in FLOAT_TYPES:
            return FLOAT_TYPES[t]
    return "f32"
