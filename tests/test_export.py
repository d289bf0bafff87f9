"""Exporting a trained model for inference in one call (bngraph/export.py, item 15): folded params
from the live ones, the inference program, and the same outputs as the model; the two routes
docs/passes.md shows agree."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import register_target, unregister_target

from box_target import BOX, Box


def data(n=30, features=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng


GRAPHS = {
    "bn-relu": lambda: bg.mlp([4, 6, 5, 3]),
    "bn-tanh-f64": lambda: bg.mlp([4, 6, 3], activation="tanh", dtype="f64"),
    "no-bn": lambda: bg.mlp([4, 6, 3], batchnorm=False),
    "no-bias-leaky": lambda: bg.mlp([4, 6, 3], bias=False, activation="leaky_relu"),
    "mse": lambda: bg.mlp([4, 6, 2], loss="mse"),
    "bce": lambda: bg.mlp([4, 6, 1], loss="sigmoid_bce"),
}


def trained(graph, dtype="float32", target="numpy"):
    X, rng = data()
    model = bg.compile(graph, dtype=dtype, target=target)
    if model.classes is not None:
        y = rng.integers(0, model.classes, len(X))
    elif model.loss_kind == "sigmoid_bce":
        y = rng.integers(0, 2, (len(X), 1)).astype(float)
    else:
        y = rng.standard_normal((len(X), model.n_outputs))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, verbose=False)
    return model, X


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_gives_the_models_outputs_from_folded_params(name, dtype):
    model, X = trained(GRAPHS[name](), dtype)
    before = {k: np.array(v) for k, v in {**model.params, **model.state}.items()}
    inf = model.export_inference()
    assert not any(n.op in bg.ops.BN_OPS for n in inf.graph.nodes)  # every batch norm follows a matmul here
    assert inf.state == {}
    if model.inputs.batch_statistics:
        assert any(k.endswith("_folded") for k in inf.params)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(inf.forward(X), model.forward(X), rtol=tol, atol=tol)
    np.testing.assert_allclose(inf.forward(X, batch_size=7), model.forward(X), rtol=tol, atol=tol)
    assert all(v.dtype == np.dtype(dtype) and isinstance(v, np.ndarray) for v in inf.params.values())
    assert "def forward(" in inf.source and "def train_step" not in inf.source
    for k, v in {**model.params, **model.state}.items():  # exporting changes nothing
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_export_checks_its_input_like_the_model():
    model, X = trained(GRAPHS["bn-relu"]())
    inf = model.export_inference()
    bad = X.copy()
    bad[2, 1] = 1e39
    with pytest.raises(bg.DataError, match=r"export forward: X row 2 holds 1e\+39, which overflows float32"):
        inf.forward(bad)
    with pytest.raises(bg.DataError, match=r"X expected shape \(batch, 4\)"):
        inf.forward(X[:, :3])


def test_saved_export_is_a_module_and_its_params(tmp_path):
    model, X = trained(GRAPHS["bn-relu"]())
    inf = model.export_inference()
    paths = inf.save(tmp_path / "deploy")
    assert [Path(p).name for p in paths] == ["mlp_numpy_inference.py", "mlp_inference_params.npz"]
    spec = importlib.util.spec_from_file_location("deployed", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with np.load(paths[1]) as z:
        P = {k: z[k] for k in z.files}
    assert P.keys() == inf.params.keys()
    out = module.forward(X.T.astype(np.float32), P, {}, module.alloc_forward(len(X)))["out"].T
    np.testing.assert_allclose(out, model.forward(X), rtol=1e-5, atol=1e-5)


def test_export_goes_through_the_runtime_only():
    register_target(BOX)
    try:
        model, X = trained(GRAPHS["bn-relu"](), "float64", target="box")
        assert isinstance(model.params["fc1.W"], Box)
        inf = model.export_inference()
        ref = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
        ref.set_params({k: model.runtime.to_numpy(v) for k, v in model.params.items()})
        ref.set_state({k: model.runtime.to_numpy(v) for k, v in model.state.items()})
        np.testing.assert_allclose(inf.forward(X), ref.forward(X), rtol=1e-12)
    finally:
        unregister_target("box")


def test_the_two_routes_in_docs_passes_md_agree():
    """docs/passes.md: the inference pipeline on model.graph, remapped by hand, gives the params
    export_inference computes (the doc's block itself runs in tests/test_doc_snippets.py)."""
    from bngraph.passes import INFERENCE_PIPELINE, run_pipeline, to_inference

    model, X = trained(bg.mlp([4, 8, 3]))
    folded = run_pipeline(to_inference(model.graph), INFERENCE_PIPELINE).remap({**model.params, **model.state})
    exported = model.export_inference()
    assert set(folded) >= set(exported.params)
    for k, v in exported.params.items():
        np.testing.assert_array_equal(np.asarray(folded[k], v.dtype), v, err_msg=k)