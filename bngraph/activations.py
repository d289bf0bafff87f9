"""The activation functions: one table, used by the plain activation ops and by every fused op
(``bias_add_act``, ``batchnorm_act``, their gradients) in :mod:`bngraph.ops`.

The derivative is written in terms of the *output* ``y = g(x)`` (what fused ops keep around), which
is why ``negative_slope`` must be ``>= 0`` (``y > 0`` exactly when ``x > 0``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable  # (x, negative_slope) -> y
    derivative: Callable  # (y, negative_slope) -> dy/dx, from the output
    formula: str


def _leaky(x, s):
    return np.where(x > 0, x, x * s)


def sigmoid(x):
    """1/(1 + exp(-x)), numerically stable in both tails."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1 + e)
    return out


ACTIVATIONS = {
    "identity": Activation("identity", lambda x, s: x, lambda y, s: np.ones_like(y), "g(x) = x"),
    "relu": Activation("relu", lambda x, s: np.maximum(x, 0), lambda y, s: (y > 0).astype(y.dtype), "g(x) = max(x, 0)"),
    "leaky_relu": Activation(
        "leaky_relu",
        _leaky,
        lambda y, s: np.where(y > 0, 1.0, s).astype(y.dtype),
        "g(x) = x if x > 0 else negative_slope*x",
    ),
    "tanh": Activation("tanh", lambda x, s: np.tanh(x), lambda y, s: 1 - y * y, "g(x) = tanh(x)"),
    "sigmoid": Activation("sigmoid", lambda x, s: sigmoid(x), lambda y, s: y * (1 - y), "g(x) = 1/(1 + exp(-x))"),
}


def act_fn(attrs) -> Callable:
    """x -> g(x) for the activation named by ``attrs['act']`` (with its ``negative_slope``)."""
    a = ACTIVATIONS[attrs["act"]]
    s = attrs.get("negative_slope", 0.0)
    return lambda x: a.forward(x, s)


def act_derivative(attrs) -> Callable:
    """y -> g'(x), computed from the output y = g(x)."""
    a = ACTIVATIONS[attrs["act"]]
    s = attrs.get("negative_slope", 0.0)
    return lambda y: a.derivative(y, s)
