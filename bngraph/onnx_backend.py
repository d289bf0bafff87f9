"""The ONNX backend adapter (``onnx.backend.base.Backend``): ``bngraph.onnx_backend.prepare(model)``.
Defined in :mod:`bngraph.interop.onnx_backend`; needs the ``onnx`` extra."""
from .interop.onnx_backend import (BngraphBackend, BngraphRep, is_compatible, prepare, run_model,  # noqa: F401
                                   supports_device)

__all__ = ["BngraphBackend", "BngraphRep", "is_compatible", "prepare", "run_model", "supports_device"]
