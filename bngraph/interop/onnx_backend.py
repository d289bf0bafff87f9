"""The ONNX backend adapter: ``onnx.backend.base.Backend`` for bngraph, so that
``onnx.backend.test.BackendTest`` runs ONNX's own node tests against the compiler.

    import bngraph.onnx_backend as backend
    rep = backend.prepare(model, device="CPU")    # import + passes + code generation, once
    outputs = rep.run([x, ...])                   # the generated code, with the layout change

Device ``CPU`` runs the NumPy target, ``CUDA`` the CUDA target (CuPy and a GPU needed);
``prepare(model, target="cuda", target_device="emulator")`` runs the CUDA target's kernels on the CPU.
Outputs that are graph inputs (through Identity) pass through unchanged, and integer Add/Sub/Mul/Div
are computed in float64 and converted back: see :mod:`.onnx_boundary`.
"""
from __future__ import annotations

import numpy as np

from .deps import require

require("onnx", "bngraph.onnx_backend")

from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict  # noqa: E402

from ..ir import IRError  # noqa: E402
from .from_onnx import from_onnx  # noqa: E402
from .names import UnsafeModel  # noqa: E402
from .onnx_boundary import Boundary  # noqa: E402
from .program import ImportedProgram  # noqa: E402

TARGETS = {DeviceType.CPU: "numpy", DeviceType.CUDA: "cuda"}


class BngraphRep(BackendRep):
    def __init__(self, model, device: str = "CPU", target: str | None = None, target_device=None):
        super().__init__()
        self.model = model
        self.boundary = Boundary(model)
        self.imported = self.program = None  # nothing to compute when every output passes through
        if self.boundary.model is not None:
            self.imported = from_onnx(self.boundary.model, loss=None)
            self.program = ImportedProgram(self.imported, target or TARGETS[Device(device).type], target_device)
        inits = {t.name for t in model.graph.initializer}
        self._all_inputs = [vi.name for vi in model.graph.input]
        self._fed_inputs = [n for n in self._all_inputs if n not in inits]
        self._outputs = [o.name for o in model.graph.output]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            arrays = dict(inputs)
        else:
            inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            names = self._all_inputs if len(inputs) == len(self._all_inputs) else self._fed_inputs
            if len(inputs) != len(names):
                raise ValueError(f"expected {len(self._fed_inputs)} inputs ({', '.join(self._fed_inputs)}), "
                                 f"got {len(inputs)}")
            arrays = dict(zip(names, inputs))
        b = self.boundary
        out = {}
        if self.program is not None:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # IEEE results, as ONNX's
                out = self.program.run(b.to_float(arrays))
            out = b.from_float(out)
        for name, source in b.passthrough.items():
            if source not in arrays:
                raise IRError(f"missing input {source!r} (output {name!r} is that input)")
            a = arrays[source]
            out[name] = np.array(a, copy=True) if isinstance(a, np.ndarray) else a
        return namedtupledict("Outputs", self._outputs)(*[out[n] for n in self._outputs])


class BngraphBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        try:
            boundary = Boundary(model)
            if boundary.model is not None:
                from_onnx(boundary.model, loss=None)
        except (UnsafeModel, ValueError):
            return False
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", target: str | None = None, target_device=None,
                **kwargs) -> BngraphRep:
        """``target``/``target_device`` override the device's target (e.g. ``"cuda"``, ``"emulator"``:
        the CUDA target's kernels on the CPU)."""
        super().prepare(model, device, **kwargs)  # onnx.checker
        return BngraphRep(model, device, target, target_device)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        d = Device(device)
        if d.type == DeviceType.CPU:
            return True
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False


prepare = BngraphBackend.prepare
run_model = BngraphBackend.run_model
supports_device = BngraphBackend.supports_device
is_compatible = BngraphBackend.is_compatible
