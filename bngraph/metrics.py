"""The figures ``evaluate`` reports beside the loss, by the loss: ``accuracy`` where the loss's op
defines one (class labels: the argmax is the label; ``sigmoid_bce``: the probability is on the
target's side of 0.5), and for ``mse`` (real-valued targets) ``rmse`` and ``mae`` over all outputs.
Computed on the host, in float64, from the eval-mode outputs (rows are examples)."""
from __future__ import annotations

import numpy as np

from .ops import OPS


def _errors(out, y) -> np.ndarray:
    out = np.asarray(out, np.float64)
    return out - np.asarray(y, np.float64).reshape(out.shape)  # (m,) targets of one output: no broadcasting


def _rmse(out, y) -> float:
    return float(np.sqrt(np.mean(np.square(_errors(out, y)))))


def _mae(out, y) -> float:
    return float(np.mean(np.abs(_errors(out, y))))


REGRESSION = {"rmse": _rmse, "mae": _mae}
BY_LOSS = {"mse": REGRESSION}  # loss op -> its extra metrics (name -> (out, y) -> float)


def metrics(loss: str, out, y) -> dict:
    """name -> value of every metric the loss ``loss`` fits, for outputs ``out`` and targets ``y``."""
    result = {}
    acc = OPS[loss].accuracy(out, y) if OPS[loss].accuracy is not None and len(y) else None
    if acc is not None:
        result["accuracy"] = float(acc)
    for name, fn in BY_LOSS.get(loss, {}).items():
        if len(y):
            result[name] = fn(out, y)
    return result


def names(inputs) -> list:
    """The keys ``evaluate`` returns for a model whose inputs are ``inputs`` (``model.inputs``)."""
    out = np.zeros((1, inputs.n_outputs))
    y = np.zeros(1, np.int64) if inputs.classes is not None else np.zeros((1, inputs.n_outputs))
    return ["loss", *metrics(inputs.loss, out, y)]
