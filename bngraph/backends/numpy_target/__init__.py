"""The NumPy target: templates/numpy/, the lowering table (lowerings.py), the renderer and the runtime."""
from ..base import Target
from .renderer import NumpyRenderer
from .runtime import NumpyRuntime

TARGET = Target("numpy", NumpyRenderer(), NumpyRuntime)

__all__ = ["NumpyRenderer", "NumpyRuntime", "TARGET"]
