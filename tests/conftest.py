"""Shared fixtures: the contract DSL example and a zoo of graphs covering every builder method;
and the ``gpu`` marker's hook.

Set ``BNGRAPH_UPDATE_GOLDEN=1`` to rewrite the golden files under tests/golden/ (then review the
diff before committing it).

Tests marked ``@pytest.mark.gpu`` run only where CuPy imports and sees a CUDA device; elsewhere they
are skipped with the reason (``pytest -rs`` shows it). The check runs once, when the first gpu
test is about to run: a session without gpu tests never imports CuPy.
"""
from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg

GOLDEN = Path(__file__).parent / "golden"


@functools.lru_cache(maxsize=None)
def cuda_unavailable() -> str | None:
    """None when CuPy imports and a CUDA device is present, else the reason gpu tests are skipped."""
    try:
        import cupy
    except Exception as e:  # not installed, or installed for another CUDA version
        return f"needs CuPy and a CUDA GPU: CuPy does not import ({type(e).__name__}: {e})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or no device visible
        return f"needs a CUDA GPU: CuPy finds none ({type(e).__name__}: {e})"
    return None if count > 0 else "needs a CUDA GPU: CuPy finds 0 devices"


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        reason = cuda_unavailable()
        if reason is not None:
            pytest.skip(reason)


def check_golden(name: str, text: str):
    """Compare ``text`` with tests/golden/<name> exactly (or rewrite it with BNGRAPH_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("BNGRAPH_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n")
    expected = path.read_text()
    assert text + "\n" == expected, f"{path} differs from the printed IR (BNGRAPH_UPDATE_GOLDEN=1 rewrites it)"


def build_dsl_example() -> bg.Graph:
    """The contract example (docs/ir.md shows the same graph)."""
    g = bg.Graph("mlp")
    x = g.input("x", 64)
    y = g.labels("y", 10)
    h = g.matmul(x, 128, bias=True, name="fc1")
    h = g.batchnorm(h, name="bn1", eps=1e-5, momentum=0.1)
    h = g.relu(h)
    logits = g.matmul(h, 10, name="out")
    g.softmax_cross_entropy(logits, y)
    return g


@pytest.fixture
def dsl_example() -> bg.Graph:
    return build_dsl_example()


# ---- a zoo of graphs: every loss, activation, with/without bias/BN, float32/float64 ---------------


def _hand_built(dtype):
    """Every DSL builder method at least once, and ops only reachable through add_node."""
    g = bg.Graph("hand", dtype)
    x = g.input("x", 6)
    t = g.input("target", 3)
    h = g.matmul(x, 8, bias=False, name="fc1")
    h = g.batchnorm(h, name="bn1", eps=1e-3, momentum=0.25)
    h = g.leaky_relu(h, negative_slope=0.2)
    h = g.matmul(h, 8, name="fc2")
    h = g.tanh(h)
    h = g.bias_add(h, name="shift")
    h = g.sigmoid(h)
    h = g.activation(h, "relu", name="act")
    h = g.identity(h)
    out = g.matmul(h, 3, name="out")
    g.mse(out, t)
    return g


def _fused_and_eval(dtype):
    """Ops produced by passes (eval-mode batchnorm, batchnorm_act, bias_add_act, transposed matmul)."""
    g = bg.Graph("fused", dtype)
    x = g.input("x", 5)
    y = g.labels("y", 4)
    W = g.param("fc1.W", (5, 7))  # stored transposed: used as matmul[ta=true]
    z = g.add_node("matmul", [W, x], {"ta": True}, ["fc1"]).out
    gamma, beta = g.param("bn1.gamma", (7,)), g.param("bn1.beta", (7,))
    rm, rv = g.state_value("bn1.running_mean", (7,)), g.state_value("bn1.running_var", (7,))
    a = g.add_node("batchnorm_act", [z, gamma, beta, rm, rv],
                   {"mode": "eval", "act": "leaky_relu", "negative_slope": 0.1}, ["bn1"]).out
    W2, b2 = g.param("fc2.W", (6, 7)), g.param("fc2.b", (6,))
    z2 = g.add_node("matmul", [W2, a], {}, ["fc2.matmul"]).out
    a2 = g.add_node("bias_add_act", [z2, b2], {"act": "tanh"}, ["fc2"]).out
    g2, be2 = g.param("bn2.gamma", (6,)), g.param("bn2.beta", (6,))
    rm2, rv2 = g.state_value("bn2.running_mean", (6,)), g.state_value("bn2.running_var", (6,))
    a3 = g.add_node("batchnorm", [a2, g2, be2, rm2, rv2], {"mode": "eval", "eps": 1e-3}, ["bn2"]).out
    logits = g.matmul(a3, 4, name="out")
    g.softmax_cross_entropy(logits, y)
    g.outputs.append(("out", logits.name))
    return g


def _zoo() -> dict:
    zoo = {"dsl_example": build_dsl_example}
    for loss, act, bias, bn, dtype in itertools.product(
        ("softmax_cross_entropy", "mse", "sigmoid_bce"),
        tuple(bg.ACTIVATIONS),
        (True, False),
        (True, False),
        ("f32", "f64"),
    ):
        key = f"mlp-{loss}-{act}-{'bias' if bias else 'nobias'}-{'bn' if bn else 'nobn'}-{dtype}"
        zoo[key] = lambda loss=loss, act=act, bias=bias, bn=bn, dtype=dtype: bg.mlp(
            [5, 7, 6, 3], activation=act, batchnorm=bn, bias=bias, loss=loss, dtype=dtype,
            negative_slope=0.05, momentum=0.3, eps=1e-4)
    zoo["mlp-single-layer"] = lambda: bg.mlp([4, 2])
    zoo["mlp-deep"] = lambda: bg.mlp([3, 4, 4, 4, 4, 2], activation="tanh")
    for dtype in ("f32", "f64"):
        zoo[f"hand-{dtype}"] = lambda dtype=dtype: _hand_built(dtype)
        zoo[f"fused-eval-{dtype}"] = lambda dtype=dtype: _fused_and_eval(dtype)
    return zoo


ZOO = _zoo()


@pytest.fixture(params=sorted(ZOO))
def zoo_graph(request) -> bg.Graph:
    return ZOO[request.param]()


def random_values(g: bg.Graph, rng: np.random.Generator, m: int = 6):
    """Feeds (compiler layout) and param/state values for ``g`` with batch size ``m``."""
    feeds, values = {}, {}
    for v in g.inputs:
        if v.classes is not None:
            feeds[v.name] = rng.integers(0, v.classes, size=m)
        else:
            feeds[v.name] = rng.standard_normal(v.type.concrete_shape(m)).astype(np.dtype(bg.ir.DTYPES[v.type.dtype]))
    for v in (*g.params, *g.state):
        a = rng.standard_normal(v.type.shape)
        if v.name.endswith("running_var"):
            a = np.abs(a) + 0.5
        values[v.name] = a.astype(np.dtype(bg.ir.DTYPES[v.type.dtype]))
    return feeds, values


@pytest.fixture
def sigint_default():
    """SIGINT with Python's default handler (KeyboardInterrupt), as in a terminal, for the Ctrl-C
    tests: pytest started in the background by a shell script inherits SIGINT ignored, and then
    os.kill(pid, SIGINT) would do nothing. The handler before is restored after the test."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
