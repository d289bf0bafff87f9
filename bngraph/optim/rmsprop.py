"""RMSprop, PyTorch's ``torch.optim.RMSprop``: the update math once (:func:`rmsprop_update`)."""
from __future__ import annotations

from ..flat import array_namespace
from .base import Optimizer, check_nonneg, flag, number
from .records import RMSPROP_RECORD
from .recorded import RecordUpdate


def rmsprop_update(xp, p, g, sq, ga, buf, d, tmp, lr, *, alpha, eps, momentum, weight_decay,
                   centered) -> None:
    """One RMSprop step on ``p`` in place (any shape). ``sq``: the square average; ``ga``: the
    gradient average (centered, else None); ``buf``: the momentum buffer (momentum > 0, else
    None); all start at 0. ``d``, ``tmp``: scratch like ``p``. ``lr`` is data."""
    if weight_decay != 0:
        xp.multiply(p, weight_decay, out=d)        # d = g + wd*p
        xp.add(d, g, out=d)
        g = d
    xp.multiply(sq, alpha, out=sq)                 # s = alpha*s + (1-alpha)*d**2
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, 1 - alpha, out=tmp)
    xp.add(sq, tmp, out=sq)
    if centered:
        xp.subtract(g, ga, out=tmp)                # a += (1-alpha)*(d - a), a lerp as PyTorch
        xp.multiply(tmp, 1 - alpha, out=tmp)
        xp.add(ga, tmp, out=ga)
        xp.multiply(ga, ga, out=tmp)               # sqrt(s - a**2)
        xp.subtract(sq, tmp, out=tmp)
        xp.sqrt(tmp, out=tmp)
    else:
        xp.sqrt(sq, out=tmp)
    xp.add(tmp, eps, out=tmp)                      # d / (sqrt(.) + eps)
    xp.divide(g, tmp, out=tmp)
    if momentum > 0:
        xp.multiply(buf, momentum, out=buf)        # b = momentum*b + d/denom; p -= lr*b
        xp.add(buf, tmp, out=buf)
        xp.multiply(buf, lr, out=tmp)
    else:
        xp.multiply(tmp, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


class RMSprop(RecordUpdate, Optimizer):
    """RMSprop, PyTorch's ``torch.optim.RMSprop`` (default ``lr=1e-2`` as in PyTorch).

    With ``d = g + weight_decay*p``: ``s = alpha*s + (1-alpha)*d**2``; ``denom = sqrt(s) + eps``
    (``centered``: ``a = alpha*a + (1-alpha)*d``, ``denom = sqrt(s - a**2) + eps``);
    ``p -= lr*d/denom``, or with momentum ``b = momentum*b + d/denom; p -= lr*b``.
    """

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, *,
                 momentum: float = 0, weight_decay: float = 0, centered: bool = False,
                 groups=None) -> None:
        super().__init__(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                         weight_decay=weight_decay, centered=centered, groups=groups)

    def check_hyper(self, hp: dict) -> dict:
        hp = super().check_hyper(hp)
        hp["alpha"] = number("alpha", hp["alpha"])
        if not 0.0 <= hp["alpha"] <= 1.0:
            raise ValueError(f"Invalid alpha value: {hp['alpha']} (must be in [0, 1])")
        for name in ("eps", "momentum", "weight_decay"):
            hp[name] = check_nonneg(name, hp[name])
        hp["centered"] = flag("centered", hp["centered"])
        return hp

    record = RMSPROP_RECORD  # the fused update, its kernel and its vector: rendered from the record

    def update(self, p, g, slots: dict) -> None:
        # the reference: the hand-written rmsprop_update (the rendered update is tested against it)
        xp, hp = array_namespace(p), self._active
        for key in self._slot_keys(hp):
            if key not in slots:
                slots[key] = xp.zeros_like(p)
        d = xp.empty_like(p) if hp["weight_decay"] != 0 else None
        rmsprop_update(xp, p, g, slots["square_avg"], slots.get("grad_avg"), slots.get("momentum_buffer"), d,
                       xp.empty_like(p), hp["lr"], alpha=hp["alpha"], eps=hp["eps"], momentum=hp["momentum"],
                       weight_decay=hp["weight_decay"], centered=hp["centered"])
