"""Adam and AdamW, PyTorch's ``torch.optim.Adam``/``AdamW``: the update math once
(:func:`adam_update`), used by the per-parameter reference path and by the flat path alike."""
from __future__ import annotations

from ..flat import array_namespace
from .base import Optimizer, check_nonneg, flag, number
from .records import ADAM_RECORD, ADAMW_RECORD
from .recorded import RecordUpdate


def adam_update(xp, p, g, m, v, vmax, d, tmp, lr, t, *, beta1, beta2, eps, weight_decay,
                decoupled) -> None:
    """One Adam step on ``p`` in place (any shape). ``m``, ``v``: the moments; ``vmax``: AMSGrad's
    running max of ``v`` (else None); ``d``, ``tmp``: scratch like ``p``. ``lr`` and the step
    count ``t`` (this step's, from 1) are data: a device kernel reads them from memory."""
    if weight_decay != 0:
        if decoupled:
            xp.multiply(p, 1 - lr * weight_decay, out=p)  # AdamW: p *= 1 - lr*wd
        else:
            xp.multiply(p, weight_decay, out=d)           # d = g + wd*p
            xp.add(d, g, out=d)
            g = d
    xp.subtract(g, m, out=tmp)                # m += (1-beta1)*(d - m): a lerp, as PyTorch
    xp.multiply(tmp, 1 - beta1, out=tmp)
    xp.add(m, tmp, out=m)
    xp.multiply(v, beta2, out=v)              # v = beta2*v + (1-beta2)*d**2
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, 1 - beta2, out=tmp)
    xp.add(v, tmp, out=v)
    step_size = lr / (1 - beta1 ** t)
    bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
    if vmax is not None:
        xp.maximum(vmax, v, out=vmax)
        v = vmax
    xp.sqrt(v, out=tmp)                       # p -= step_size * m / (sqrt(v)/sqrt(bc2) + eps)
    xp.divide(tmp, bias_correction2_sqrt, out=tmp)
    xp.add(tmp, eps, out=tmp)
    xp.divide(m, tmp, out=tmp)
    xp.multiply(tmp, step_size, out=tmp)
    xp.subtract(p, tmp, out=p)


class Adam(RecordUpdate, Optimizer):
    """Adam (optionally AMSGrad), PyTorch's ``torch.optim.Adam`` with ``betas=(beta1, beta2)``.

    Per parameter, with its own step count ``t`` and ``d = g + weight_decay*p`` (L2, coupled):
    ``m = beta1*m + (1-beta1)*d``; ``v = beta2*v + (1-beta2)*d**2`` (AMSGrad: use
    ``vmax = max(vmax, v)`` instead of ``v`` below);
    ``p -= lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps)``.
    """

    _decoupled = False
    record = ADAM_RECORD  # the fused update, its kernel and its vector: rendered from the record

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0, *, amsgrad: bool = False,
                 groups=None) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, groups=groups)

    def check_hyper(self, hp: dict) -> dict:
        hp = super().check_hyper(hp)
        for name in ("beta1", "beta2"):
            if isinstance(hp[name], (tuple, list)):
                raise ValueError(f"{name} must be a number, got {hp[name]!r}; "
                                 f"PyTorch's betas=(b1, b2) is beta1=b1, beta2=b2 here")
            hp[name] = number(name, hp[name])
            if not 0.0 <= hp[name] < 1.0:
                raise ValueError(f"Invalid {name} value: {hp[name]} (must be in [0, 1))")
        hp["eps"] = check_nonneg("eps", hp["eps"])
        hp["weight_decay"] = check_nonneg("weight_decay", hp["weight_decay"])
        hp["amsgrad"] = flag("amsgrad", hp["amsgrad"])
        return hp

    def _lazy_slots(self, hp: dict) -> tuple:
        return ("max_exp_avg_sq",) if hp["amsgrad"] else ()  # step and the moments appear together

    def update(self, p, g, slots: dict) -> None:
        xp, hp = array_namespace(p), self._active
        if not slots:  # the state appears on the first step, as in PyTorch
            slots["step"] = xp.zeros((), dtype=xp.int64)
            slots["exp_avg"] = xp.zeros_like(p)
            slots["exp_avg_sq"] = xp.zeros_like(p)
        if hp["amsgrad"] and "max_exp_avg_sq" not in slots:
            slots["max_exp_avg_sq"] = xp.zeros_like(p)
        step = slots["step"]
        xp.add(step, 1, out=step)
        coupled_decay = hp["weight_decay"] != 0 and not self._decoupled
        d = xp.empty_like(p) if coupled_decay else None
        # the reference: the hand-written adam_update (the rendered update is tested against it)
        adam_update(xp, p, g, slots["exp_avg"], slots["exp_avg_sq"], slots["max_exp_avg_sq"] if hp["amsgrad"] else None,
                    d, xp.empty_like(p), hp["lr"], self._step_number(step), beta1=hp["beta1"], beta2=hp["beta2"],
                    eps=hp["eps"], weight_decay=hp["weight_decay"], decoupled=self._decoupled)


class AdamW(Adam):
    """AdamW, PyTorch's ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Each step first shrinks ``p *= 1 - lr*weight_decay``, then does the Adam update with the
    plain gradient (no L2 term). Default ``weight_decay=1e-2`` as in PyTorch.
    """

    _decoupled = True
    record = ADAMW_RECORD

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, *,
                 amsgrad: bool = False, groups=None) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, groups=groups)
