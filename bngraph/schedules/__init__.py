"""Learning-rate schedules for ``fit(lr_schedule=...)``, with PyTorch's semantics.

Each class is the ``torch.optim.lr_scheduler`` class of the same name, without the optimizer
argument: ``fit`` sets ``optimizer.lr`` before every step. A schedule counts **epochs** or
**steps** (``per``), as PyTorch users call ``scheduler.step()``: after each epoch for StepLR,
MultiStepLR, ExponentialLR, LinearLR, CosineAnnealingLR, CosineAnnealingWarmRestarts and
ReduceLROnPlateau (``per="step"`` makes the first six count optimizer steps instead), after each
step for OneCycleLR. The lr at index ``k`` (epochs or steps since the schedule started) is
PyTorch's after ``k`` calls of ``scheduler.step()``; its base lr is the optimizer's lr when the
schedule starts (PyTorch's ``initial_lr``).

A schedule starts the first time ``fit`` uses it; its place (base lr, where it started, a
plateau's counters) is recorded in ``model.fit_state["schedule"]``, which checkpoints carry: a
model loaded from a checkpoint and given a schedule of the same type and arguments continues it
exactly, mid-epoch too. The whole-run lengths (``CosineAnnealingLR(T_max=None)``,
``OneCycleLR()`` without ``total_steps``) are taken from the fit that starts the schedule.
"""
from .base import Schedule, SequentialLR
from .decay import (CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, LinearLR, MultiStepLR, OneCycleLR,
                    StepLR)
from .plateau import ReduceLROnPlateau
from .text import TYPES, from_config, parse, recorded

__all__ = ["Schedule", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR",
           "CosineAnnealingWarmRestarts", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau", "TYPES", "from_config",
           "parse", "recorded"]
