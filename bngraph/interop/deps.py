"""Optional dependencies: each interop feature imports its library here, lazily, and a missing one
is one clear error naming the package that installs it (``pip install 'onnx>=1.15'``; in a checkout of
bngraph, ``pip install '.[onnx]'``)."""
from __future__ import annotations

import importlib

# module -> (extra, what it is for, the requirement the extra installs: pyproject.toml's)
EXTRAS = {
    "onnx": ("onnx", "reading and writing ONNX files", "onnx>=1.15"),
    "onnxruntime": ("onnxruntime", "running exported ONNX files", "onnxruntime>=1.17"),
    "torch": ("torch", "importing PyTorch modules", "torch>=2.0"),
}


class MissingDependency(ImportError):
    """An optional library is not installed; the message says which extra installs it."""


def require(module: str, feature: str):
    """Import ``module`` for ``feature`` (e.g. 'bg.from_onnx') or raise :class:`MissingDependency`."""
    extra, purpose, requirement = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"{feature} needs the optional package {module!r} ({purpose}), which is not installed: "
            f"pip install '{requirement}' (in a checkout of bngraph: pip install '.[{extra}]')") from e
