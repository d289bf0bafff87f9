"""Initial values for a graph's params and state, seeded (same seed, same values).

Roles come from how a value is used: a matmul's weight gets PyTorch's ``nn.Linear`` default
(uniform in +-1/sqrt(fan_in)), a bias the same bound from its matmul's fan-in; batch-norm gamma = 1,
beta = 0, running_mean = 0, running_var = 1 (PyTorch's defaults).
"""
from __future__ import annotations

import numpy as np

from .ir import DTYPES


def init_values(g, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dtype = DTYPES[g.dtype]
    producers = g.producers()
    role: dict = {}
    for n in g.nodes:
        if n.op == "matmul" and not n.attr["ta"]:
            role.setdefault(n.inputs[0], ("weight", n.inputs[0]))
        elif n.op in ("bias_add", "bias_add_act"):
            src = producers.get(n.inputs[0])
            fan_from = src.inputs[0] if src is not None and src.op == "matmul" else None
            role.setdefault(n.inputs[1], ("bias", fan_from))
        elif n.op in ("batchnorm", "batchnorm_act"):
            for i, r in zip(n.inputs[1:], ("ones", "zeros", "zeros", "ones")):
                role.setdefault(i, (r, None))
    values = {}
    for v in (*g.params, *g.state):  # in declaration order, so the draw order is stable
        shape = tuple(v.type.shape)
        kind, ref = role.get(v.name, ("weight" if len(shape) == 2 else "zeros", v.name))
        if kind == "ones":
            a = np.ones(shape)
        elif kind == "zeros":
            a = np.zeros(shape)
        else:
            if kind == "weight":
                fan_in = shape[1] if len(shape) == 2 else 1
            else:
                ws = next((p.type.shape for p in g.params if p.name == ref), None)
                fan_in = ws[1] if ws is not None and len(ws) == 2 else shape[0]
            bound = 1 / np.sqrt(fan_in)
            a = rng.uniform(-bound, bound, size=shape)
        values[v.name] = a.astype(dtype)
    return values
