"""Optimizers: SGD, RMSprop, Adam and AdamW, with PyTorch's formulas and defaults.

An optimizer updates a dict of NumPy parameter arrays *in place*, from a dict of gradients with
the same names::

    import bngraph.optim as optim
    opt = optim.Adam(lr=1e-3)
    for batch in batches:
        grads = ...                     # {"W1": dW1, "gamma1": dgamma1, "beta1": dbeta1, ...}
        opt.step(params, grads)         # params[name][...] is updated; nothing is reallocated

The protocol (all the training loop relies on; any object with these members works)::

    class Optimizer:
        lr: float                       # the loop's lr-schedule hook may set this between steps
        def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None
        def state_dict(self) -> dict
        def load_state_dict(self, d: dict) -> None

- ``step`` updates ``params[name]`` in place, in the parameter's own dtype (float32 stays
  float32). ``grads`` has the same names; a parameter with no entry in ``grads`` is left unchanged
  and its state does not advance (like a PyTorch parameter whose ``.grad`` is None). A gradient
  for a name that is not in ``params`` is an error (checked, like shapes, before anything
  changes). The optimizer never knows whether an array is a weight matrix, a batch-norm
  ``gamma`` or a batch-norm ``beta``: they are all just parameters. The gradient arrays are
  never modified.
- ``state_dict()`` returns everything needed to resume, as copies::

      {"type": "Adam",                      # the class name
       "hyper": {"lr": ..., "beta1": ..., ...},   # the constructor arguments, current values
       "step": 12,                          # number of step() calls
       "slots": {"W1": {"exp_avg": array, "exp_avg_sq": array, "step": array(12)}, ...}}

- ``load_state_dict(d)`` restores all of it (hyperparameters, including ``lr``, too).

To write your own optimizer, subclass :class:`Optimizer` and implement ``update`` (one parameter
at a time; the base class handles the loop over names, missing gradients, the step counter and
``state_dict``) or override ``step`` itself. See ``docs/optimizers.md``.

Names: Adam's decay rates are ``beta1`` and ``beta2`` (PyTorch's ``betas=(beta1, beta2)``);
in this project a bare ``beta`` is the batch-norm shift parameter. The lecture's momentum
``v = beta*v + (1-beta)*dW`` is ``SGD(momentum=beta, dampening=beta)`` (except on the first step:
PyTorch, and so this module, start the buffer at the first gradient rather than at zero), and the
lecture's RMSprop ``beta`` is ``alpha``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "make", "from_state_dict", "NAMES"]


def _number(name: str, value: Any) -> float:
    """``value`` as a finite Python float, or a ValueError naming the hyperparameter."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_nonneg(name: str, value: Any) -> float:
    value = _number(name, value)
    if value < 0:
        raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")
    return value


def _check_beta(name: str, value: Any) -> float:
    value = _number(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name} value: {value} (must be in [0, 1))")
    return value


class Optimizer:
    """Base class: keeps ``lr``, the other hyperparameters, a step counter and per-parameter slots.

    Subclasses pass their constructor arguments to ``super().__init__(lr=lr, name=value, ...)``;
    they become attributes and the ``"hyper"`` entry of ``state_dict()``. Then implement either

    - ``update(self, p, g, slots)``: update one parameter array ``p`` in place from its gradient
      ``g`` (already in ``p``'s dtype); ``slots`` is this parameter's own dict of state arrays
      (empty on the first call; put ``np.ndarray`` values in it), or
    - ``step(self, params, grads)`` directly (then increment ``self.step_count`` yourself and
      keep per-parameter state in ``self.slots(name)`` if you want ``state_dict`` to carry it).
    """

    def __init__(self, lr: float = 1e-3, **hyper: Any) -> None:
        self.lr = lr  # validated by the property setter
        self._hyper_names: tuple[str, ...] = ("lr",) + tuple(hyper)
        for name, value in hyper.items():
            if name.startswith("_") or hasattr(type(self), name) or name in (
                    "step_count", "state"):
                raise ValueError(f"hyperparameter name {name!r} clashes with an Optimizer "
                                 f"attribute; choose another name")
            setattr(self, name, value)
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    # -- lr: a validated attribute, so a schedule that sets a bad value fails at once -----------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = _number("lr", value)
        if value < 0:
            raise ValueError(f"Invalid learning rate: {value} (must be >= 0)")
        self._lr = value

    # -- hyperparameters ---------------------------------------------------------------------------
    @property
    def hyper(self) -> dict[str, Any]:
        """The current hyperparameters (the constructor arguments), ``lr`` included."""
        return {name: getattr(self, name) for name in self._hyper_names}

    def _validate(self) -> None:
        """Check the hyperparameters (subclasses override); called after ``load_state_dict``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args})"

    # -- the update ----------------------------------------------------------------------------
    def slots(self, name: str) -> dict[str, np.ndarray]:
        """The state dict of parameter ``name`` (created empty on first use)."""
        return self.state.setdefault(name, {})

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update ``params`` in place from ``grads``; names missing from ``grads`` are skipped.

        Everything is checked before anything changes: a bad gradient leaves all params and
        the optimizer's state as they were."""
        unknown = [name for name in grads if name not in params]
        if unknown:
            raise ValueError(f"gradients for unknown parameters {unknown}; "
                             f"the parameters are {sorted(params)}")
        work = []
        for name, g in grads.items():
            if g is None:
                continue
            p = params[name]
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"parameter {name!r} must be a floating-point numpy array, "
                                f"got {type(p).__name__} "
                                f"{getattr(p, 'dtype', '')}".rstrip())
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"gradient for {name!r} has shape {g.shape}, "
                                 f"but the parameter has shape {p.shape}")
            for key, arr in self.state.get(name, {}).items():
                if arr.ndim and arr.shape != p.shape:
                    raise ValueError(f"optimizer state {key!r} for {name!r} has shape "
                                     f"{arr.shape}, but the parameter has shape {p.shape} "
                                     f"(state loaded from a different model?)")
            work.append((name, p, g.astype(p.dtype, copy=False)))
        for name, p, g in work:
            slots = self.slots(name)
            for key, arr in slots.items():
                if arr.ndim and arr.dtype != p.dtype:  # e.g. float64 state into float32 params
                    slots[key] = arr.astype(p.dtype)
            self.update(p, g, slots)
        self.step_count += 1

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        """Update one parameter in place. Override this (or ``step``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update() or step()")

    # -- saving and resuming -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: type, hyperparameters, step counter, slots (copies)."""
        return {
            "type": type(self).__name__,
            "hyper": dict(self.hyper),
            "step": int(self.step_count),
            "slots": {name: {key: np.array(arr, copy=True) for key, arr in slots.items()}
                      for name, slots in self.state.items()},
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore a ``state_dict()`` of the same optimizer type (copies the arrays)."""
        missing = [k for k in ("type", "hyper", "step", "slots") if k not in d]
        if missing:
            raise ValueError(f"not an optimizer state dict: missing keys {missing}")
        if d["type"] != type(self).__name__:
            raise ValueError(f"state dict is for a {d['type']} optimizer, "
                             f"cannot load it into {type(self).__name__}")
        hyper = dict(d["hyper"])
        unknown = sorted(set(hyper) - set(self._hyper_names))
        if unknown:
            raise ValueError(f"unknown hyperparameters for {type(self).__name__}: {unknown}")
        old = self.hyper
        try:
            for name, value in hyper.items():
                setattr(self, name, value)
            self._validate()
        except Exception:
            for name, value in old.items():
                setattr(self, name, value)
            raise
        self.step_count = int(d["step"])
        self.state = {str(name): {str(key): np.array(arr, copy=True)
                                  for key, arr in slots.items()}
                      for name, slots in d["slots"].items()}


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and L2 weight decay.

    PyTorch's ``torch.optim.SGD``: with ``d = g + weight_decay*p``,
    ``v = d`` on the first step, then ``v = momentum*v + (1-dampening)*d``;
    the step direction is ``d + momentum*v`` (nesterov) or ``v``; ``p -= lr*direction``.
    Without momentum, ``p -= lr*d``.
    """

    def __init__(self, lr: float = 1e-3, momentum: float = 0, dampening: float = 0, *,
                 nesterov: bool = False, weight_decay: float = 0) -> None:
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay)
        self._validate()

    def _validate(self) -> None:
        self.momentum = _check_nonneg("momentum", self.momentum)
        self.dampening = _number("dampening", self.dampening)
        self.weight_decay = _check_nonneg("weight_decay", self.weight_decay)
        self.nesterov = bool(self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={self.momentum}, dampening={self.dampening})")

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        d = g
        if wd != 0:
            d = np.multiply(p, wd)  # d = g + wd*p: a new array, the caller's g is untouched
            d += g
        tmp = np.empty_like(p)
        if mu != 0:
            buf = slots.get("momentum_buffer")
            if buf is None:  # PyTorch starts the buffer at the first (undampened) gradient
                buf = slots["momentum_buffer"] = np.array(d, copy=True)
            else:
                buf *= mu
                if self.dampening == 0:
                    buf += d
                else:
                    buf += np.multiply(d, 1 - self.dampening, out=tmp)
            if self.nesterov:
                np.multiply(buf, mu, out=tmp)
                tmp += d
                d = tmp
            else:
                d = buf
        p -= np.multiply(d, lr, out=tmp)


class RMSprop(Optimizer):
    """RMSprop, PyTorch's ``torch.optim.RMSprop`` (default ``lr=1e-2`` as in PyTorch).

    With ``d = g + weight_decay*p``: ``s = alpha*s + (1-alpha)*d**2``; ``denom = sqrt(s) + eps``
    (``centered``: ``a = alpha*a + (1-alpha)*d``, ``denom = sqrt(s - a**2) + eps``);
    ``p -= lr*d/denom``, or with momentum ``b = momentum*b + d/denom; p -= lr*b``.
    """

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, *,
                 momentum: float = 0, weight_decay: float = 0, centered: bool = False) -> None:
        super().__init__(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                         weight_decay=weight_decay, centered=centered)
        self._validate()

    def _validate(self) -> None:
        self.alpha = _number("alpha", self.alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Invalid alpha value: {self.alpha} (must be in [0, 1])")
        self.eps = _check_nonneg("eps", self.eps)
        self.momentum = _check_nonneg("momentum", self.momentum)
        self.weight_decay = _check_nonneg("weight_decay", self.weight_decay)
        self.centered = bool(self.centered)

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        alpha, eps = self.alpha, self.eps
        if self.weight_decay != 0:
            d = np.multiply(p, self.weight_decay)  # d = g + wd*p: a new array, the caller's
            d += g                                 # g is never modified
            g = d
        tmp = np.empty_like(p)
        sq = slots.get("square_avg")
        if sq is None:
            sq = slots["square_avg"] = np.zeros_like(p)
        sq *= alpha
        sq += np.multiply(np.multiply(g, g, out=tmp), 1 - alpha, out=tmp)
        if self.centered:
            ga = slots.get("grad_avg")
            if ga is None:
                ga = slots["grad_avg"] = np.zeros_like(p)
            ga += np.multiply(np.subtract(g, ga, out=tmp), 1 - alpha, out=tmp)  # lerp
            np.multiply(ga, ga, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += eps
        np.divide(g, tmp, out=tmp)
        if self.momentum > 0:
            buf = slots.get("momentum_buffer")
            if buf is None:
                buf = slots["momentum_buffer"] = np.zeros_like(p)
            buf *= self.momentum
            buf += tmp
            p -= np.multiply(buf, self.lr, out=tmp)
        else:
            tmp *= self.lr
            p -= tmp


class Adam(Optimizer):
    """Adam (optionally AMSGrad), PyTorch's ``torch.optim.Adam`` with ``betas=(beta1, beta2)``.

    Per parameter, with its own step count ``t`` and ``d = g + weight_decay*p`` (L2, coupled):
    ``m = beta1*m + (1-beta1)*d``; ``v = beta2*v + (1-beta2)*d**2`` (AMSGrad: use
    ``vmax = max(vmax, v)`` instead of ``v`` below);
    ``p -= lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps)``.
    """

    _decoupled = False

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0, *, amsgrad: bool = False) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
        self._validate()

    def _validate(self) -> None:
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)):
                raise ValueError(f"{name} must be a number, got {value!r}; "
                                 f"PyTorch's betas=(b1, b2) is beta1=b1, beta2=b2 here")
            setattr(self, name, _check_beta(name, value))
        self.eps = _check_nonneg("eps", self.eps)
        self.weight_decay = _check_nonneg("weight_decay", self.weight_decay)
        self.amsgrad = bool(self.amsgrad)

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        lr, b1, b2, eps, wd = self.lr, self.beta1, self.beta2, self.eps, self.weight_decay
        if not slots:
            slots["step"] = np.array(0, dtype=np.int64)
            slots["exp_avg"] = np.zeros_like(p)
            slots["exp_avg_sq"] = np.zeros_like(p)
        if self.amsgrad and "max_exp_avg_sq" not in slots:
            slots["max_exp_avg_sq"] = np.zeros_like(p)
        step = slots["step"]
        step += 1
        t = int(step)
        m, v = slots["exp_avg"], slots["exp_avg_sq"]
        tmp = np.empty_like(p)
        if wd != 0:
            if self._decoupled:
                p *= 1 - lr * wd
            else:
                d = np.multiply(p, wd)  # d = g + wd*p: a new array, the caller's g is
                d += g                  # never modified
                g = d
        m += np.multiply(np.subtract(g, m, out=tmp), 1 - b1, out=tmp)  # lerp, as PyTorch
        v *= b2
        v += np.multiply(np.multiply(g, g, out=tmp), 1 - b2, out=tmp)
        step_size = lr / (1 - b1 ** t)
        bias_correction2_sqrt = (1 - b2 ** t) ** 0.5
        if self.amsgrad:
            vmax = slots["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        np.sqrt(v, out=tmp)
        tmp /= bias_correction2_sqrt
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp


class AdamW(Adam):
    """AdamW, PyTorch's ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Each step first shrinks ``p *= 1 - lr*weight_decay``, then does the Adam update with the
    plain gradient (no L2 term). Default ``weight_decay=1e-2`` as in PyTorch.
    """

    _decoupled = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, *,
                 amsgrad: bool = False) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


_TYPES: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in (SGD, RMSprop, Adam, AdamW)}

_FACTORIES: dict[str, Callable[..., Optimizer]] = {
    "sgd": SGD,
    "momentum": lambda **kw: SGD(**{"momentum": 0.9, **kw}),
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}

#: The names ``make`` accepts.
NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make(name: str | Optimizer, lr: float | None = None, **kw: Any) -> Optimizer:
    """An optimizer by name: ``"sgd"``, ``"momentum"`` (SGD with ``momentum=0.9``),
    ``"rmsprop"``, ``"adam"``, ``"adamw"`` (case-insensitive). ``lr=None`` keeps the class
    default; other keyword arguments go to the constructor. An optimizer object is returned
    unchanged (so a loop can accept either)."""
    if not isinstance(name, str):
        if callable(getattr(name, "step", None)):
            if lr is not None or kw:
                raise ValueError("lr and other arguments apply only when the optimizer is "
                                 "given by name, not to an optimizer object")
            return name
        raise TypeError(f"optimizer must be a name or an optimizer object, got {name!r}")
    factory = _FACTORIES.get(name.strip().lower())
    if factory is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(NAMES)} "
                         f"(or pass an optimizer object)")
    if lr is not None:
        kw["lr"] = lr
    return factory(**kw)


def from_state_dict(d: dict) -> Optimizer:
    """Rebuild a built-in optimizer (SGD, RMSprop, Adam, AdamW) from its ``state_dict()``."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError("not an optimizer state dict (no 'type' key)")
    cls = _TYPES.get(d["type"])
    if cls is None:
        raise ValueError(f"unknown optimizer type {d['type']!r} (built in: "
                         f"{', '.join(_TYPES)}); for your own optimizer, create it and call "
                         f"its load_state_dict(d) instead")
    opt = cls(**d.get("hyper", {}))
    opt.load_state_dict(d)
    return opt
