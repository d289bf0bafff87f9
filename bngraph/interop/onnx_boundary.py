"""What the ONNX backend adapter passes through, or converts, at its boundary.

* **Pass-through outputs.** ``Identity`` is an alias at import (a new name, no IR node). A graph
  output that resolves through aliases to a graph input is returned as it was fed, whatever its
  type (a tensor of any dtype, a sequence, an optional): the IR never sees it, and the model
  imported for the other outputs leaves out what only the pass-through needed.
* **Integer data.** The IR computes in float32/float64. An elementwise ``Add``/``Sub``/``Mul``/
  ``Div`` of integer graph inputs whose result is a graph output is imported as the float64 op and
  converted back at the boundary. Integers of magnitude < 2**53 are exact in float64, and so is
  an IEEE sum, difference or product whose result is such an integer; the quotient rounds to the
  nearest float64, whose truncation is still the exact ``trunc(a/b)`` when ``|a|, |b| < 2**53``
  (the quotient lies at least ``1/|b|`` from the next integer, more than half a float64 spacing
  there). Every input and result is checked at run time (:class:`~bngraph.errors.DataError`
  otherwise), then ONNX's semantics are applied: ``Div`` truncates toward zero, and every result
  wraps around like NumPy's fixed-width integers (through int64, then the output's dtype). Because
  the rounding happens at the boundary, an integer op must read graph inputs and feed only graph
  outputs; anything else is refused at import with the node named.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .deps import require
from .names import show
from .onnx_import import ALIAS_OPS
from .onnx_read import UnsupportedNode
from .onnx_spatial import refuse_indices

EXACT = 2**53  # float64 holds every integer of magnitude < 2**53 exactly
INTEGER_OPS = ("Add", "Sub", "Mul", "Div")


def _integer_dtypes():
    onnx = require("onnx", "bngraph.onnx_backend")
    T = onnx.TensorProto
    return {T.INT8: np.int8, T.UINT8: np.uint8, T.INT16: np.int16, T.UINT16: np.uint16, T.INT32: np.int32,
            T.UINT32: np.uint32, T.INT64: np.int64, T.UINT64: np.uint64}


def _elem(vi):
    t = vi.type
    return t.tensor_type.elem_type if t.HasField("tensor_type") else None


class Boundary:
    """``Boundary(model)``: ``passthrough`` (output name -> the graph input it is), ``model`` (what
    to import for the other outputs, integers as float64; None when nothing is left to compute),
    ``to_float(arrays)`` and ``from_float(outputs)`` for the integer values."""

    def __init__(self, model):
        g = model.graph
        inits = {t.name for t in g.initializer}
        self.graph_inputs = {vi.name: vi for vi in g.input if vi.name not in inits}
        self.producers = {o: n for n in g.node for o in n.output if o}
        self.passthrough = {}
        for o in g.output:
            source = self.resolve(o.name)
            if source in self.graph_inputs:
                self.passthrough[o.name] = source
        self.int_inputs: dict = {}  # graph input name -> its numpy dtype (fed as float64)
        self.int_outputs: dict = {}  # graph output name -> (numpy dtype, ONNX op type)
        computed = [o for o in g.output if o.name not in self.passthrough]
        if not computed:
            self.model = None
            return
        self.model = model if not self.passthrough else _trim(model, computed)
        self._integers()

    def resolve(self, name: str) -> str:
        """The value ``name`` is an alias of (through Identity), or ``name`` itself."""
        n = self.producers.get(name)
        while n is not None and n.op_type in ALIAS_OPS and n.input and n.input[0]:
            name = n.input[0]
            n = self.producers.get(name)
        return name

    # ---- integer data ------------------------------------------------------------------------------
    def _integers(self):
        onnx = require("onnx", "bngraph.onnx_backend")
        ints = _integer_dtypes()
        g = self.model.graph
        outputs = [o for o in g.output if _elem(o) in ints]
        if not outputs:
            return
        readers: dict = {}  # value -> the non-alias nodes that read it (through aliases)
        for n in g.node:
            if n.op_type not in ALIAS_OPS:
                for i in n.input:
                    if i:
                        readers.setdefault(self.resolve(i), []).append(n)
        for o in outputs:
            where = show(o.name)
            node = self.producers.get(self.resolve(o.name))
            if node is not None and node.op_type == "MaxPool" and o.name in node.output[1:]:
                refuse_indices(show(node.name or node.output[0]), o.name)
            if node is None or node.op_type not in INTEGER_OPS:
                op = node.op_type if node is not None else "graph output"
                raise UnsupportedNode(where, op, f"an integer result: bngraph computes integers in float64 at the "
                                      f"boundary, for {'/'.join(INTEGER_OPS)} of integer graph inputs only")
            nwhere = show(node.name or node.output[0])
            for i in node.input:
                src = self.resolve(i)
                if src not in self.graph_inputs or _elem(self.graph_inputs[src]) not in ints:
                    raise UnsupportedNode(nwhere, node.op_type, f"integer operand {show(i)} is not an integer graph "
                                          f"input: integers are computed in float64 and rounded at the boundary, "
                                          f"so an integer op reads graph inputs only (no constants, no chains)")
                self.int_inputs[src] = ints[_elem(self.graph_inputs[src])]
            other = [n for n in readers.get(node.output[0], [])]
            if other:
                raise UnsupportedNode(nwhere, node.op_type, f"its integer result is read by node "
                                      f"{show(other[0].name or other[0].output[0])} ({other[0].op_type}): integers "
                                      f"are rounded at the boundary, so an integer result must be a graph output only")
            self.int_outputs[o.name] = (ints[_elem(o)], node.op_type)
        for name in self.int_inputs:
            bad = [n for n in readers.get(name, []) if n.op_type not in INTEGER_OPS]
            if bad:
                raise UnsupportedNode(show(bad[0].name or bad[0].output[0]), bad[0].op_type,
                                      f"reads integer data {show(name)}, which is imported as float64 for "
                                      f"{'/'.join(INTEGER_OPS)} only")
        inits = {t.name for t in g.initializer}
        f32 = [vi.name for vi in g.input if vi.name not in inits and vi.name not in self.int_inputs
               and _elem(vi) == onnx.TensorProto.FLOAT]
        if f32:
            raise UnsupportedNode(show(f32[0]), "graph input", "float32 data next to integer data: the integers are "
                                  "computed in float64, and one imported graph has one float dtype")
        converted = set(self.int_inputs) | set(self.int_outputs)
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for vi in (*model.graph.input, *model.graph.output):
            if vi.name in converted:
                vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        self.model = model

    def to_float(self, arrays: dict) -> dict:
        """The integer inputs as float64 (each checked: magnitude < 2**53)."""
        out = dict(arrays)
        for name in self.int_inputs:
            if name not in out:
                continue
            a = np.asarray(out[name])
            if a.dtype.kind not in "iu":
                raise DataError(f"input {name!r}: expected integer data ({np.dtype(self.int_inputs[name]).name}), "
                                f"got {a.dtype}")
            big = (a >= EXACT) | (a <= -EXACT) if a.dtype.itemsize >= 8 else np.zeros(a.shape, bool)
            if big.any():
                raise DataError(f"input {name!r}: the integer {a[big].flat[0]} has magnitude >= 2**53; bngraph "
                                f"computes integers in float64, which is exact only below 2**53")
            out[name] = a.astype(np.float64)
        return out

    def from_float(self, outputs: dict) -> dict:
        """The integer outputs converted back, with ONNX's semantics (after checking exactness)."""
        out = dict(outputs)
        for name, (dtype, op) in self.int_outputs.items():
            r = np.asarray(out[name], dtype=np.float64)
            bad = ~np.isfinite(r) | (np.abs(r) >= EXACT)
            if bad.any():
                raise DataError(f"output {name!r} ({op} of integers): the result {r[bad].flat[0]} is not an "
                                f"integer of magnitude < 2**53 (a division by zero gives inf or nan), so float64 "
                                f"cannot compute it exactly")
            if op == "Div":
                r = np.trunc(r)  # ONNX's integer Div truncates toward zero (test_div_int32_trunc)
            out[name] = r.astype(np.int64).astype(dtype)  # wraps around like NumPy's fixed-width integers
        return out


def _trim(model, outputs):
    """A copy of ``model`` that computes ``outputs`` only: the nodes they need, and the graph inputs
    those nodes read (a pass-through input may be a sequence, which the importer refuses)."""
    onnx = require("onnx", "bngraph.onnx_backend")
    g = model.graph
    producers = {o: n for n in g.node for o in n.output if o}
    needed, names, stack = set(), {o.name for o in outputs}, [o.name for o in outputs]
    while stack:
        n = producers.get(stack.pop())
        if n is None or id(n) in needed:
            continue
        needed.add(id(n))
        names.update(i for i in n.input if i)
        stack.extend(i for i in n.input if i)
    inits = {t.name for t in g.initializer}
    trimmed = onnx.ModelProto()
    trimmed.CopyFrom(model)
    tg = trimmed.graph
    del tg.node[:], tg.input[:], tg.output[:]
    tg.node.extend(n for n in g.node if id(n) in needed)
    tg.input.extend(vi for vi in g.input if vi.name in names or vi.name in inits)
    tg.output.extend(outputs)
    return trimmed
