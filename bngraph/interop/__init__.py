"""Interop and deployment: ONNX import/export, the ONNX backend adapter (``bngraph.onnx_backend``),
PyTorch import, standalone inference code and graph pictures. docs/interop.md describes them.

Optional libraries (onnx, onnxruntime, torch) are imported when a feature needs them; a missing
one is a :class:`MissingDependency` naming the extra to install (``pip install 'bngraph[onnx]'``).
"""
from .deps import MissingDependency
from .dot import to_dot
from .from_onnx import from_onnx
from .imported import ImportedGraph
from .names import UnsafeModel
from .onnx_export import to_onnx
from .onnx_read import UnsupportedNode
from .standalone import write_standalone
from .torch_import import from_torch

__all__ = ["ImportedGraph", "MissingDependency", "UnsafeModel", "UnsupportedNode", "from_onnx", "from_torch",
           "to_dot", "to_onnx", "write_standalone"]
