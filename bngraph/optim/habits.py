"""Errors that meet PyTorch habits with bngraph's spelling, and values described for error messages
without dumping them (:func:`describe`)."""
from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np


def describe(value: Any) -> str:
    """``value`` for an error message, short: an array by its type, shape and dtype, a collection
    by its type and length, anything else by a repr of at most 60 characters (never a dump)."""
    shape = getattr(value, "shape", None)
    if shape is not None and getattr(value, "ndim", 0) != 0:
        return f"a {type(value).__name__} of shape {tuple(shape)} ({getattr(value, 'dtype', '?')})"
    if isinstance(value, (dict, list, tuple, set, frozenset)) or type(value).__name__.startswith("dict_"):
        try:
            n = len(value)
        except TypeError:
            n = "?"
        if n == "?" or n > 4 or any(getattr(v, "ndim", 0) for v in (value.values() if isinstance(value, dict)
                                                                     else value)):
            return f"a {type(value).__name__} of {n} items"
    if hasattr(value, "__next__"):
        return f"a {type(value).__name__} (an iterator)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: PyTorch keyword arguments with no bngraph counterpart, and why.
TORCH_ONLY = {
    "foreach": "bngraph's update is always one fused pass over flat buffers",
    "fused": "bngraph's update is always one fused pass over flat buffers",
    "capturable": "the CUDA target's step is captured whole with cuda_graph=True",
    "differentiable": "bngraph does not differentiate through the optimizer",
    "maximize": "bngraph minimizes its loss; negate the loss instead",
}


def torch_habits(cls, args: tuple, kwargs: dict) -> None:
    """A TypeError that says bngraph's spelling when a constructor call is written as for PyTorch:
    parameters first (``Adam(model.params.values())``, ``params=``), ``betas=(b1, b2)``, a PyTorch-only
    option; and an unknown keyword named with the ones the class takes. Nothing else is checked here."""
    name = cls.__name__
    first = args[0] if args else kwargs.get("params", kwargs.get("lr"))
    given_params = "params" in kwargs or (
        args and not isinstance(args[0], (numbers.Real, np.generic)) and getattr(args[0], "ndim", None) != 0)
    if given_params:
        raise TypeError(f"{name}: the first argument is the learning rate, got {describe(first)}. bngraph's "
                        f"optimizers are not given the parameters (PyTorch's {name}(model.parameters(), ...)): the "
                        f"model passes them; write {name}(lr=...) and give it to model.fit(..., optimizer=) or "
                        f"model.train_step(X, y, optimizer)")
    if "betas" in kwargs:
        b = kwargs["betas"]
        spelled = (f"beta1={b[0]!r}, beta2={b[1]!r}" if isinstance(b, (tuple, list)) and len(b) == 2
                   else "beta1=..., beta2=...")
        raise TypeError(f"{name} takes beta1= and beta2=, not PyTorch's betas=: write {name}({spelled})")
    for key in kwargs:
        if key in TORCH_ONLY:
            raise TypeError(f"{name}: PyTorch's {key}= has no bngraph counterpart ({TORCH_ONLY[key]})")
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    names = [k for k, p in params.items() if k != "self" and p.kind is not p.VAR_POSITIONAL]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}; it takes "
                        f"{', '.join(names)}")


class TorchHabits:
    """PyTorch habits get bngraph's spelling before ``__init__`` runs (:func:`torch_habits`). A base of
    its own, below ``Optimizer`` in the MRO, so that ``inspect.signature`` of every optimizer class is
    its ``__init__``'s."""

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            torch_habits(cls, args, kwargs)
        return super().__new__(cls)
