"""Reading an ONNX file safely: the model, its initializers and attributes, with sizes checked
before anything is allocated, external data refused (a path in the file would name files to read)
and nothing unpickled (ONNX is protobuf; string tensors are refused). A model must pass
``onnx.checker`` (full check: with shape and type inference) and declare an ai.onnx opset this
``onnx`` knows; each node's attributes must be its schema's, of the schema's type."""
from __future__ import annotations

import math
import os

import numpy as np

from .deps import require
from .names import MAX_ELEMENTS, MAX_TOTAL_ELEMENTS, UnsafeModel, check_dims, show

MAX_FILE_BYTES = 2 << 30  # protobuf's own limit

# ONNX TensorProto data types bngraph reads (others are refused with their name)
FLOAT_TYPES = {1: "f32", 11: "f64"}
INT_TYPES = {6: np.int32, 7: np.int64}


def load_model(src):
    """(ModelProto, label) from a path, bytes or a ModelProto; the label names the model in
    messages (the path, or the graph's name). Only decoded here: :func:`check_model` checks it."""
    onnx = require("onnx", "bg.from_onnx")
    if isinstance(src, onnx.ModelProto):
        return src, f"ONNX model {show(src.graph.name)}"
    if isinstance(src, (bytes, bytearray)):
        label = "the ONNX bytes"
        if len(src) > MAX_FILE_BYTES:
            raise UnsafeModel(f"{label}: larger than {MAX_FILE_BYTES} bytes")
        try:
            return onnx.load_model_from_string(bytes(src)), label
        except Exception as e:  # protobuf's DecodeError and friends
            raise UnsafeModel(f"{label}: not a readable ONNX file ({type(e).__name__}: {one_line(e)})") from None
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise UnsafeModel(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            return onnx.load(path, load_external_data=False), path
        except Exception as e:  # protobuf's DecodeError and friends
            raise UnsafeModel(f"{path}: not a readable ONNX file ({type(e).__name__}: {one_line(e)})") from None
    raise TypeError(f"from_onnx expects a path, bytes or an onnx.ModelProto, got {type(src).__name__}")


def one_line(text, limit: int = 500) -> str:
    """A message from onnx or protobuf (which may quote the file's names) as one printable line."""
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def model_opset(model, label: str) -> int:
    """The model's ai.onnx opset: declared once, and one this ``onnx`` knows (onnx.checker lets a
    newer one through; onnxruntime refuses it, and bngraph cannot know its operators)."""
    onnx = require("onnx", "bg.from_onnx")
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    top = onnx.defs.onnx_opset_version()
    if len(versions) != 1:
        raise UnsafeModel(f"{label}: declares {'no' if not versions else len(versions)} ai.onnx opsets "
                          f"(opset_import); a model declares one, from 1 to {top}")
    if not 1 <= versions[0] <= top:
        raise UnsafeModel(f"{label}: declares ai.onnx opset {versions[0]}; onnx {onnx.__version__} knows opsets "
                          f"1 to {top}")
    return versions[0]


def check_model(model, label: str) -> None:
    """onnx.checker with full_check (shape and type inference), as one clear error."""
    onnx = require("onnx", "bg.from_onnx")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise UnsafeModel(f"{label}: not a valid ONNX model (onnx.checker: {one_line(e)})") from None


def check_attribute_types(node, opset: int, where: str) -> None:
    """Each attribute of ``node`` (an ai.onnx op) is one its schema at ``opset`` has, of that type:
    ``transB="0"`` is a string, not the int the importer would read as true."""
    onnx = require("onnx", "bg.from_onnx")
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except Exception:
        raise UnsupportedNode(where, node.op_type, f"is not an ai.onnx operator at opset {opset}") from None
    for a in node.attribute:
        spec = schema.attributes.get(a.name)
        if spec is None:
            raise UnsupportedNode(where, node.op_type, f"attribute {show(a.name)} is not supported: "
                                  f"{node.op_type}-{schema.since_version} (opset {opset}) has "
                                  f"{', '.join(sorted(schema.attributes)) or 'no attributes'}")
        if a.type != spec.type.value:
            got = onnx.AttributeProto.AttributeType.Name(a.type) if a.type in \
                onnx.AttributeProto.AttributeType.values() else a.type
            raise UnsupportedNode(where, node.op_type, f"attribute {show(a.name)} has type {got}; "
                                  f"{node.op_type}-{schema.since_version} expects {spec.type.name}")


def tensor_array(t, where: str) -> np.ndarray:
    """An initializer or Constant's TensorProto as an array, after checking what it declares."""
    onnx = require("onnx", "bg.from_onnx")
    dims = check_each_dim(where, check_dims(where, list(t.dims), "tensor"), f"tensor {show(t.name)}")
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
    check_each_dim(where, check_dims(where, [d or 1 for d in dims], f"value {show(vi.name)}"),
                   f"value {show(vi.name)}")
    return tt.elem_type, tuple(dims)


def check_each_dim(where: str, dims: tuple, what: str) -> tuple:
    """Each dimension within the element limit, even where another is 0 (``[0, 2**62]`` holds no
    elements, yet NumPy refuses to make it)."""
    for d in dims:
        if d > MAX_ELEMENTS:
            raise UnsafeModel(f"{where}: {what} has a dimension {d} in {tuple(dims)}, more than the limit of "
                              f"{MAX_ELEMENTS} (refused before allocating)")
    return dims


def check_total(graph, where: str):
    n = sum(math.prod(p.type.shape) for p in (*graph.params, *graph.state))
    if n > MAX_TOTAL_ELEMENTS:
        raise UnsafeModel(f"{where}: the model's params and state hold {n} elements, more than the limit of "
                          f"{MAX_TOTAL_ELEMENTS} (refused before allocating)")


class UnsupportedNode(UnsafeModel):
    """A node bngraph cannot import: the message names the node, its op type and why."""

    def __init__(self, where: str, op_type: str, why: str):
        super().__init__(f"ONNX node {where} ({op_type}): {why}")
