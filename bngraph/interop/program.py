"""Running an imported graph as the file describes it: one program rendered by a bngraph target,
with the layout change at the boundary. The ONNX backend adapter is this plus the ONNX API.

Eval-mode files run the inference pipeline (batch norm folded into the weights); files whose batch
norm is in training mode run in training mode with the fusing passes only (``fold_bias`` would
move the running mean's frame, which ONNX returns).
"""
from __future__ import annotations

import numpy as np

from ..backends import get_target
from ..ir import DTYPES, IRError
from ..passes import INFERENCE_PIPELINE, run_pipeline, to_inference
from ..verifier import verify

TRAIN_MODE_PASSES = ("fuse_bn", "fuse_bias_act", "dce")


class ImportedProgram:
    """``run(arrays) -> {outside output name: array}``; ``arrays`` by outside input name."""

    def __init__(self, imported, target: str = "numpy", device=None, passes=None):
        self.imported = imported
        g = imported.build()
        outputs = [pair for spec in imported.outputs_spec for pair in spec.needs]
        if not outputs:
            raise IRError(f"graph {g.name}: no outputs to compute")
        if imported.training_outputs:
            prog = g.rebuild(outputs=outputs)
            chosen = TRAIN_MODE_PASSES if passes is None else passes
        else:
            prog = to_inference(g.rebuild(outputs=outputs))
            chosen = INFERENCE_PIPELINE if passes is None else passes
        self.pipeline = run_pipeline(verify(prog, allow_dead=True), chosen)
        self.graph = self.pipeline.graph
        self.dtype = np.dtype(DTYPES[g.dtype])
        loaded = get_target(target).load({"forward": self.graph}, g.dtype, g.name,
                                         docs={"forward": f"The imported graph {g.name}."}, device=device)
        self.rendered, self.runtime, self.executable = loaded.rendered, loaded.runtime, loaded.executable
        self.source = "\n".join(self.rendered.sources.values())
        self._values_key = None

    def run(self, arrays: dict) -> dict:
        imp, rt = self.imported, self.runtime
        feeds, batch, m = {}, None, None
        for spec in imp.inputs_spec:
            if spec.name not in arrays:
                raise IRError(f"missing input {spec.name!r}")
            a, b = spec.to_ir(arrays[spec.name], self.dtype)
            used = {v.name for v in self.graph.inputs}
            n = a.shape[0] if spec.kind == "labels" else a.shape[1] if spec.kind == "spatial" else a.shape[-1]
            if m is not None and n != m:
                raise IRError(f"input {spec.name!r} has a batch of {n}, the other inputs {m}")
            if spec.kind != "labels" and batch is None:
                batch = tuple(b)
            m = n
            if spec.ir in used:
                feeds[spec.ir] = rt.asarray(a, a.dtype)
        if m is None:
            raise IRError("the graph has no batch-sized input")
        values = self.pipeline.remap(imp.bind({k: v for k, v in arrays.items() if k in imp.bound_inputs}))
        P = {p.name: rt.asarray(values[p.name], self.dtype) for p in self.graph.params}
        S = {s.name: rt.asarray(values[s.name], self.dtype) for s in self.graph.state}
        out = self.executable.run("forward", feeds, P, S, None, m)
        host = {k: rt.to_numpy(v) for k, v in out.items()}
        batch = batch if batch is not None else (m,)
        return {spec.name: spec.from_ir(host, batch, m) for spec in imp.outputs_spec}
