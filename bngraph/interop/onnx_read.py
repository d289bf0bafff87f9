"""Reading an ONNX file safely: the model, its initializers and attributes, with sizes checked
before anything is allocated, external data refused (a path in the file would name files to read)
and nothing unpickled (ONNX is protobuf; string tensors are refused)."""
from __future__ import annotations

import math
import os

import numpy as np

from .deps import require
from .names import MAX_TOTAL_ELEMENTS, UnsafeModel, check_dims, show

MAX_FILE_BYTES = 2 << 30  # protobuf's own limit

# ONNX TensorProto data types bngraph reads (others are refused with their name)
FLOAT_TYPES = {1: "f32", 11: "f64"}
INT_TYPES = {6: np.int32, 7: np.int64}


def load_model(src):
    """A ModelProto from a path, bytes or a ModelProto (checked with onnx.checker, shallow)."""
    onnx = require("onnx", "bg.from_onnx")
    if isinstance(src, onnx.ModelProto):
        model = src
    elif isinstance(src, (bytes, bytearray)):
        model = onnx.load_model_from_string(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise UnsafeModel(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise UnsafeModel(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    else:
        raise TypeError(f"from_onnx expects a path, bytes or an onnx.ModelProto, got {type(src).__name__}")
    return model


def tensor_array(t, where: str) -> np.ndarray:
    """An initializer or Constant's TensorProto as an array, after checking what it declares."""
    onnx = require("onnx", "bg.from_onnx")
    dims = check_dims(where, list(t.dims), "tensor")
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise UnsafeModel(f"{where}: tensor {show(t.name)} keeps its data in an external file; bngraph reads "
                          f"only self-contained files (onnx.load_model(path) then onnx.save_model(model, path, "
                          f"save_as_external_data=False) makes one)")
    if t.data_type not in FLOAT_TYPES and t.data_type not in INT_TYPES:
        name = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() else t.data_type
        raise UnsafeModel(f"{where}: tensor {show(t.name)} has data type {name}; bngraph reads float, double, "
                          f"int32 and int64 tensors")
    n = math.prod(dims)
    itemsize = 4 if t.data_type in (1, 6) else 8
    if t.raw_data:
        if len(t.raw_data) != n * itemsize:
            raise UnsafeModel(f"{where}: tensor {show(t.name)} declares shape {dims} ({n * itemsize} bytes) but holds "
                              f"{len(t.raw_data)} bytes")
    else:
        held = {1: len(t.float_data), 11: len(t.double_data), 6: len(t.int32_data), 7: len(t.int64_data)}[t.data_type]
        if held != n:
            raise UnsafeModel(f"{where}: tensor {show(t.name)} declares shape {dims} ({n} values) but holds {held}")
    return np.array(onnx.numpy_helper.to_array(t))


def attributes(node, allowed: dict, where: str) -> dict:
    """The node's attributes as Python values; unknown ones are an error (named, shown safely).
    ``allowed``: name -> default."""
    onnx = require("onnx", "bg.from_onnx")
    out = dict(allowed)
    for a in node.attribute:
        if a.name not in allowed:
            raise UnsupportedNode(where, node.op_type, f"attribute {show(a.name)} is not supported (supported: "
                                  f"{', '.join(sorted(allowed)) or 'none'})")
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = tensor_array(v, where)
        out[a.name] = v
    return out


def value_info(vi, where: str):
    """(elem type, dims) of a graph input/output; symbolic dims are None."""
    t = vi.type
    if not t.HasField("tensor_type"):
        raise UnsupportedNode(where, "graph input/output", f"{show(vi.name)} is not a tensor (a sequence, map or "
                              f"optional): the IR's values are tensors")
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else None)
    check_dims(where, [d or 1 for d in dims], f"value {show(vi.name)}")
    return tt.elem_type, tuple(dims)


def check_total(graph, where: str):
    n = sum(math.prod(p.type.shape) for p in (*graph.params, *graph.state))
    if n > MAX_TOTAL_ELEMENTS:
        raise UnsafeModel(f"{where}: the model's params and state hold {n} elements, more than the limit of "
                          f"{MAX_TOTAL_ELEMENTS} (refused before allocating)")


class UnsupportedNode(UnsafeModel):
    """A node bngraph cannot import: the message names the node, its op type and why."""

    def __init__(self, where: str, op_type: str, why: str):
        super().__init__(f"ONNX node {where} ({op_type}): {why}")
