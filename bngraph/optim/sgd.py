"""SGD, PyTorch's ``torch.optim.SGD``: the update math once (:func:`sgd_update`), used by the
per-parameter reference path and by the flat path alike."""
from __future__ import annotations

from ..flat import array_namespace
from .base import Optimizer, check_nonneg, flag, number
from .records import SGD_RECORD
from .recorded import RecordUpdate


def sgd_update(xp, p, g, buf, d, tmp, lr, fresh, *, momentum, dampening, nesterov,
               weight_decay) -> None:
    """``p -= lr * direction`` in place, on arrays of any shape (a param, or a stretch of a flat
    buffer). ``buf``: the momentum buffer (None without momentum), set to the first gradient when
    ``fresh``; ``d``, ``tmp``: scratch like ``p`` (``d`` only used with weight decay). ``g`` is
    never written. ``lr`` is data, the other hyperparameters are constants of the update."""
    if weight_decay != 0:
        xp.multiply(p, weight_decay, out=d)       # d = g + wd*p
        xp.add(d, g, out=d)
        g = d
    if momentum != 0:
        if fresh:
            buf[...] = g                          # PyTorch starts at the first, undampened, d
        else:
            xp.multiply(buf, momentum, out=buf)   # v = mu*v + (1-dampening)*d
            if dampening == 0:
                xp.add(buf, g, out=buf)
            else:
                xp.multiply(g, 1 - dampening, out=tmp)
                xp.add(buf, tmp, out=buf)
        if nesterov:
            xp.multiply(buf, momentum, out=tmp)   # d + mu*v
            xp.add(tmp, g, out=tmp)
            g = tmp
        else:
            g = buf
    xp.multiply(g, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


class SGD(RecordUpdate, Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and L2 weight decay.

    PyTorch's ``torch.optim.SGD``: with ``d = g + weight_decay*p``,
    ``v = d`` on the first step, then ``v = momentum*v + (1-dampening)*d``;
    the step direction is ``d + momentum*v`` (nesterov) or ``v``; ``p -= lr*direction``.
    Without momentum, ``p -= lr*d``.
    """

    def __init__(self, lr: float = 1e-3, momentum: float = 0, dampening: float = 0, *,
                 nesterov: bool = False, weight_decay: float = 0, groups=None) -> None:
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay, groups=groups)

    def check_hyper(self, hp: dict) -> dict:
        hp = super().check_hyper(hp)
        hp["momentum"] = check_nonneg("momentum", hp["momentum"])
        hp["dampening"] = number("dampening", hp["dampening"])
        hp["weight_decay"] = check_nonneg("weight_decay", hp["weight_decay"])
        hp["nesterov"] = flag("nesterov", hp["nesterov"])
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={hp['momentum']}, dampening={hp['dampening']})")
        return hp

    record = SGD_RECORD  # the fused update, its kernel and its vector: rendered from the record

    def update(self, p, g, slots: dict) -> None:
        # the reference: the hand-written sgd_update (the rendered update is tested against it)
        xp, hp = array_namespace(p), self._active
        fresh = tuple(k for k in self._slot_keys(hp) if k not in slots)
        for key in fresh:
            slots[key] = xp.empty_like(p)
        d = xp.empty_like(p) if hp["weight_decay"] != 0 else None
        sgd_update(xp, p, g, slots.get("momentum_buffer"), d, xp.empty_like(p), hp["lr"],
                   "momentum_buffer" in fresh, momentum=hp["momentum"], dampening=hp["dampening"],
                   nesterov=hp["nesterov"], weight_decay=hp["weight_decay"])
