"""A trained model exported for inference: batch norm folded into the weights, in one call.

``model.export_inference()`` runs the inference pipeline (``to_inference``, then
``fold_bias, fold_bn_into_weights, fuse_bn, fuse_bias_act, dce``) on the model's *trained* graph
-- the one its params belong to, so a bias that training folded away is not asked for -- computes
the folded params from the live values with the pipeline's remap, and renders the inference
program for the model's target::

    inf = model.export_inference()
    inf.graph       # the inference graph (no batch norm left after a matmul)
    inf.params      # {"fc1.W_folded": array, "fc1.b_folded": array, ...}  host NumPy arrays
    inf.state       # running statistics still read (a batch norm not after a matmul), else {}
    inf.source      # the generated module: one forward(x, P, S, B) function
    inf.forward(X)  # (batch, outputs), equal to model.forward(X) up to rounding
    inf.save("deploy/")  # mlp_numpy_inference.py and mlp_inference_params.npz

``model.export_inference(target=..., device=...)`` renders and runs it on another registered target
instead, one that may lower only forward ops (docs/targets.md, "An inference-only target").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .datacheck import check_batch_size, check_x
from .fileio import atomic_write


@dataclass
class InferenceModel:
    """The result of :meth:`bngraph.Model.export_inference` (docs/deploy.md).

    ``graph``: the inference graph; ``params``/``state``: the folded params and the state still
    read, host NumPy arrays by IR name; ``sources``: the generated module(s), ``{file name: text}``
    (one ``forward(x, P, S, B)`` function and ``alloc_forward(m)``); ``report``: the inference
    pipeline's PipelineResult."""

    graph: object
    params: dict
    state: dict
    sources: dict
    report: object  # the inference pipeline's PipelineResult (what was folded, and why)
    n_features: int | tuple  # per example: an int, or a spatial input's (C, L) / (C, H, W)
    dtype: np.dtype
    _runtime: object
    _executable: object

    @property
    def source(self) -> str:
        """The generated code as one string."""
        return "\n".join(self.sources.values())

    def forward(self, X, batch_size: int | None = 1024) -> np.ndarray:
        """The loss's input (e.g. logits), shaped (batch, outputs), from the folded params."""
        X = check_x(X, self.n_features, "export forward", dtype=self.dtype)
        step = X.shape[0] if batch_size is None else check_batch_size("export forward", batch_size)
        rt = self._runtime
        P = {k: rt.asarray(v, self.dtype) for k, v in self.params.items()}
        S = {k: rt.asarray(v, self.dtype) for k, v in self.state.items()}
        name = self.graph.inputs[0].name
        outs = []
        for a in range(0, X.shape[0], step):
            Xb = X[a:a + step]
            # (m, features) -> (features, m); a spatial (m, C, d...) -> (C, m, d...): one transpose
            x = Xb.T if Xb.ndim == 2 else np.ascontiguousarray(np.swapaxes(Xb, 0, 1))
            res = self._executable.run("forward", {name: rt.asarray(x, self.dtype)}, P, S, None, Xb.shape[0])
            outs.append(np.array(rt.to_numpy(res["out"]).T))
        return np.concatenate(outs)

    def save(self, folder) -> list:
        """Write the module(s) and ``<graph>_inference_params.npz`` (params and state by name) into
        ``folder``, atomically; returns the paths."""
        folder = os.fspath(folder)
        paths = []
        for name, src in self.sources.items():
            path = os.path.join(folder, inference_file_name(name))
            atomic_write(path, lambda f, src=src: f.write(src), binary=False, make_folder=True)
            paths.append(path)
        arrays = {**self.params, **self.state}
        path = os.path.join(folder, f"{self.graph.name}_inference_params.npz")
        atomic_write(path, lambda f: np.savez(f, **arrays), make_folder=True)
        return [*paths, path]


def inference_file_name(name: str) -> str:
    """``mlp_numpy.py`` -> ``mlp_numpy_inference.py``: an inference module never overwrites the
    training module (``bngraph emit --inference --out DIR``, ``InferenceModel.save``)."""
    root, ext = os.path.splitext(name)
    return f"{root}_inference{ext}"


def export_inference(model, target: str | None = None, device=None) -> InferenceModel:
    """``Model.export_inference``: see the module docstring. ``target``: the registered target the
    inference program is rendered for and runs on (None: the model's, on the model's runtime);
    ``device``: that target's device (a runtime of its own). The inference program holds forward
    ops only, so a target that lowers no gradient (inference-only) runs it."""
    from .backends import get_target
    from .compiler import PROGRAM_DOCS, inference_graph

    res = inference_graph(model.graph, model.dtype.name)
    rt = model.runtime
    live = {**model.params, **model.state}
    values = res.remap({k: np.array(rt.to_numpy(v)) for k, v in live.items()})
    g = res.graph
    params = {p.name: np.asarray(values[p.name], model.dtype) for p in g.params}
    state = {s.name: np.asarray(values[s.name], model.dtype) for s in g.state}
    docs = {"forward": PROGRAM_DOCS["forward_inference"]}
    name = model.target if target is None else target
    runtime = rt if name == model.target and device is None else None  # else a runtime of that target
    loaded = get_target(name).load({"forward": g}, g.dtype, g.name, docs=docs, device=device, runtime=runtime)
    return InferenceModel(g, params, state, loaded.rendered.sources, res, model.n_features, model.dtype,
                          loaded.runtime, loaded.executable)
