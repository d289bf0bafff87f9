"""Initial values for a graph's params and state, seeded (same seed, same values).

Roles come from how a value is used, as each op's ``init_roles`` says (``bngraph.ops``): a
``weight`` (matmul's or conv's first operand) gets PyTorch's ``nn.Linear`` / ``nn.Conv2d`` default,
uniform in +-1/sqrt(fan_in) (a conv's fan-in: in_channels/groups times the kernel's size); a ``bias`` the same bound with the fan-in of the weight that produced its node's
input (the matmul before a bias_add); ``ones`` and ``zeros`` are batch norm's gamma = 1, beta = 0,
running_mean = 0, running_var = 1 (PyTorch's defaults). A value no op gives a role is a weight
when it is 2-D, else zeros.
"""
from __future__ import annotations

import numpy as np

from .graph import as_graph
from .ir import DTYPES
from .ops import get_op

ROLES = ("weight", "bias", "ones", "zeros")


def _weight_of(node) -> str | None:
    """The input of ``node`` whose role is 'weight' (matmul's W), if any."""
    roles = get_op(node.op).init_roles
    return next((node.inputs[i] for i, r in roles.items() if r == "weight" and i < len(node.inputs)), None)


def value_roles(g) -> dict:
    """param/state name -> (role, the weight whose fan-in a bias uses, or None). The first node
    that gives a value a role decides it."""
    producers = g.producers()
    role: dict = {}
    for n in g.nodes:
        for i, r in sorted(get_op(n.op).init_roles.items()):
            if i >= len(n.inputs):
                continue
            ref = None
            if r == "weight":
                ref = n.inputs[i]
            elif r == "bias":  # the fan-in of the weight that made this node's input 0
                src = producers.get(n.inputs[0])
                ref = _weight_of(src) if src is not None else None
            role.setdefault(n.inputs[i], (r, ref))
    return role


def _fan_in(shape) -> int:
    """The inputs each output of a weight sums over: (out, in) -> in; a conv's (out, in/groups, k...)
    -> in/groups * k1*...; 0 for a vector."""
    return int(np.prod(shape[1:])) if len(shape) >= 2 else 0


def init_values(g, seed: int = 0) -> dict:
    """Initial values of ``g``'s params and state, ``{name: array}``, as ``bg.compile`` draws them:
    weights and biases as PyTorch's ``nn.Linear`` (uniform in +-1/sqrt(fan_in)), gamma 1, beta 0,
    running mean 0, running variance 1; the same ``seed`` gives the same values."""
    g = as_graph(g)
    rng = np.random.default_rng(seed)
    dtype = DTYPES[g.dtype]
    role = value_roles(g)
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
                fan_in = _fan_in(shape) or 1
            else:
                ws = next((p.type.shape for p in g.params if p.name == ref), None)
                fan_in = (_fan_in(ws) if ws is not None else 0) or shape[0]
            bound = 1 / np.sqrt(fan_in)
            a = rng.uniform(-bound, bound, size=shape)
        values[v.name] = a.astype(dtype)
    return values
