"""Optional dependencies: each interop feature imports its library here, lazily, and a missing one
is one clear error naming the extra that installs it (``pip install 'bngraph[onnx]'``)."""
from __future__ import annotations

import importlib

# module -> (extra, what it is for)
EXTRAS = {
    "onnx": ("onnx", "reading and writing ONNX files"),
    "onnxruntime": ("onnxruntime", "running exported ONNX files"),
    "torch": ("torch", "importing PyTorch modules"),
}


class MissingDependency(ImportError):
    """An optional library is not installed; the message says which extra installs it."""


def require(module: str, feature: str):
    """Import ``module`` for ``feature`` (e.g. 'bg.from_onnx') or raise :class:`MissingDependency`."""
    extra, purpose = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"{feature} needs the optional package {module!r} ({purpose}), which is not installed: "
            f"pip install 'bngraph[{extra}]'") from e
