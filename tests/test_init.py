"""Initial values (bngraph.init): roles read from the op table's ``init_roles``, values drawn in the
graph's declaration order, PyTorch's defaults.

The expected values are spelled out here from the rule itself -- one uniform draw per weight or
bias, in params-then-state order, bound 1/sqrt(fan_in) -- so any change to what a model starts
from (and so to every training result compared with PyTorch) fails here first.
"""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.init import init_values, value_roles

from conftest import ZOO


def _expected(g, seed, bounds: dict) -> dict:
    """ones/zeros by name, uniform(-bound, bound) for the names in ``bounds``, drawn in order."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(bg.ir.DTYPES[g.dtype])
    out = {}
    for v in (*g.params, *g.state):
        shape = tuple(v.type.shape)
        if v.name in bounds:
            out[v.name] = rng.uniform(-bounds[v.name], bounds[v.name], size=shape).astype(dtype)
        elif v.name.endswith((".gamma", ".running_var")):
            out[v.name] = np.ones(shape, dtype)
        else:
            out[v.name] = np.zeros(shape, dtype)
    return out


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_mlp_initial_values_follow_pytorch(dtype):
    g = bg.mlp([5, 7, 6, 3], dtype=dtype)
    b5, b7, b6 = (1 / np.sqrt(n) for n in (5, 7, 6))  # nn.Linear: both W and b use 1/sqrt(in_features)
    want = _expected(g, 4, {"fc1.W": b5, "fc1.b": b5, "fc2.W": b7, "fc2.b": b7, "out.W": b6, "out.b": b6})
    got = init_values(g, seed=4)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_roles_come_from_the_op_table():
    g = bg.mlp([5, 7, 3])
    assert value_roles(g) == {
        "fc1.W": ("weight", "fc1.W"), "fc1.b": ("bias", "fc1.W"),
        "bn1.gamma": ("ones", None), "bn1.beta": ("zeros", None),
        "bn1.running_mean": ("zeros", None), "bn1.running_var": ("ones", None),
        "out.W": ("weight", "out.W"), "out.b": ("bias", "out.W"),
    }


def test_fused_and_transposed_graphs():
    # bias_add_act after matmul takes the matmul's fan-in; a bias after a non-matmul its own size;
    # a transposed weight (ta=true) is still drawn as a weight from its own shape
    g = ZOO["fused-eval-f64"]()
    roles = value_roles(g)
    assert roles["fc2.b"] == ("bias", "fc2.W") and roles["fc1.W"] == ("weight", "fc1.W")
    assert roles["bn2.gamma"] == ("ones", None) and roles["bn2.running_var"] == ("ones", None)
    want = _expected(g, 0, {"fc1.W": 1 / np.sqrt(7), "fc2.W": 1 / np.sqrt(7), "fc2.b": 1 / np.sqrt(7),
                            "out.W": 1 / np.sqrt(6), "out.b": 1 / np.sqrt(6)})
    got = init_values(g)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_same_seed_same_values_builder_or_frozen():
    g = bg.mlp([4, 6, 2])
    a, b, c = init_values(g, 1), init_values(g.build(), 1), init_values(g, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc1.W"], c["fc1.W"])
