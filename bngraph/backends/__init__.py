"""Code-generating backends. A backend turns optimized graphs into code and loads it.

``get_backend(name)`` returns a registered :class:`Backend`; the NumPy backend is built in, a CUDA
backend implements the same interface.
"""
from .base import BACKENDS, Backend, get_backend, register_backend
from .numpy_backend import NumpyBackend

register_backend(NumpyBackend())

__all__ = ["BACKENDS", "Backend", "NumpyBackend", "get_backend", "register_backend"]
