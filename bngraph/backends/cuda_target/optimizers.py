"""The built-in optimizers as CUDA kernels (templates/cuda/optim.cu.j2): one launch per stretch of
the flat parameter buffer, every hyperparameter (lr and the step count included) read from a small
device array. Optimizers that are not built-ins, or subclasses that change the update, keep the
array-module path (``optimizer.step_flat`` with CuPy arrays) or the protocol (``step``)."""
from __future__ import annotations

import numpy as np

from ...optim import SGD, Adam, RMSprop

BLOCK = 256
KINDS = ((Adam, "adam"), (RMSprop, "rmsprop"), (SGD, "sgd"))  # AdamW is an Adam


def builtin_kind(opt) -> str | None:
    """'adam', 'rmsprop' or 'sgd' when ``opt`` updates exactly as that built-in, else None."""
    for cls, kind in KINDS:
        if isinstance(opt, cls):
            same = type(opt)._kernel is cls._kernel and type(opt).update is cls.update
            return kind if same else None
    return None


def hyper_vector(kind: str, opt, hp: dict, t, fresh) -> np.ndarray:
    """The ``h`` array of one launch, in the order the kernel reads it."""
    if kind == "sgd":
        h = [hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"], hp["nesterov"],
             "momentum_buffer" in fresh]
    elif kind == "rmsprop":
        h = [hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"], hp["momentum"], hp["centered"]]
    else:
        h = [hp["lr"], t, hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"], opt._decoupled, hp["amsgrad"]]
    return np.array([float(v) for v in h], np.float64)


def make_kernel(launch, to_device, opt):
    """``kernel(opt, p, g, slots, hp, t, fresh)`` for ``opt.bind(..., kernel=)``, or None."""
    kind = builtin_kind(opt)
    if kind is None:
        return None

    def kernel(opt, p, g, slots, hp, t, fresh):
        n = p.size
        h = to_device(hyper_vector(kind, opt, hp, t, fresh))
        if kind == "sgd":
            slot_args = (slots.get("momentum_buffer", p),)
        elif kind == "rmsprop":
            slot_args = (slots["square_avg"], slots.get("grad_avg", p), slots.get("momentum_buffer", p))
        else:
            slot_args = (slots["exp_avg"], slots["exp_avg_sq"], slots.get("max_exp_avg_sq", p))
        grid = (max(1, min((n + BLOCK - 1) // BLOCK, 65535)),)
        launch(f"optim_{kind}", grid, (BLOCK,), p, g, *slot_args, h, np.int64(n))

    return kernel
