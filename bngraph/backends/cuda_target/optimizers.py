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


STATUS_CLEAR = (0, 0, 2**63 - 1, 2**63 - 1, 2**63 - 1)  # step.cu.j2's status before any flag


def slot_args(kind: str, p, slots: dict) -> tuple:
    """The slot arrays a kernel takes, in its order (``p`` stands in for a slot that is off)."""
    if kind == "sgd":
        return (slots.get("momentum_buffer", p),)
    if kind == "rmsprop":
        return (slots["square_avg"], slots.get("grad_avg", p), slots.get("momentum_buffer", p))
    return (slots["exp_avg"], slots["exp_avg_sq"], slots.get("max_exp_avg_sq", p))


def grid_for(n: int) -> tuple:
    return (max(1, min((n + BLOCK - 1) // BLOCK, 65535)),)


class FusedUpdate:
    """A built-in optimizer's update as this target's kernels: ``opt.bind(..., kernel=)`` calls it
    once per stretch of the flat buffer (``(opt, p, g, slots, hp, t, fresh)``).

    On its own it launches at once, with a fresh ``h`` array and no guard. Inside a guarded step
    (:mod:`.step`), ``recording`` is a list: each call is recorded as ``(kind, p, g, slots, h)``
    instead, and the step launches the kernels itself, after its checks, reading ``h`` from
    device memory; the step also increments the step counters (``counts_steps``)."""

    def __init__(self, kind: str, launch, runtime):
        self.kind, self.launch, self.runtime = kind, launch, runtime
        self.recording = None
        self.counts_steps = False
        self._status = self._header = None

    def __call__(self, opt, p, g, slots, hp, t, fresh):
        h = hyper_vector(self.kind, opt, hp, t, fresh)
        if self.recording is not None:
            self.recording.append((self.kind, p, g, slot_args(self.kind, p, slots), h))
            return
        rt = self.runtime
        if self._status is None:  # never flagged: the kernels' guard reads zeros
            self._status = rt.asarray(np.array(STATUS_CLEAR, np.uint64), np.uint64)
            self._header = rt.asarray(np.zeros(2), np.float64)
        self.launch(f"optim_{self.kind}", grid_for(p.size), (BLOCK,), self._status, self._header, np.int64(0), p, g,
                    *slot_args(self.kind, p, slots), rt.asarray(h, np.float64), np.int64(p.size))


def make_kernel(launch, runtime, opt):
    """A :class:`FusedUpdate` for ``opt.bind(..., kernel=)``, or None when ``opt`` is not a built-in."""
    kind = builtin_kind(opt)
    return None if kind is None else FusedUpdate(kind, launch, runtime)
