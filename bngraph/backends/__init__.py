"""Targets: each is a renderer (text), a lowering table keyed by op, templates and a runtime.

``get_target(name)`` returns a registered :class:`Target`; ``Target.runtime(device)`` makes a
runtime for one device. The NumPy, CUDA and C targets are built in.
"""
from .base import TARGETS, ArrayMemory, Executable, Rendered, Renderer, Runtime, Target, get_target, register_target, unregister_target
from .lowering import Lowering, LoweringError, Plan, plan_program
from .c_target import TARGET as C_TARGET
from .cuda_target import TARGET as CUDA_TARGET
from .numpy_target import TARGET as NUMPY_TARGET

register_target(NUMPY_TARGET)
register_target(CUDA_TARGET)  # renders anywhere; runs on a GPU through CuPy, or on the CPU emulator
register_target(C_TARGET)  # the CUDA kernels on the host CPU with OpenMP; runs where a C++ compiler is

__all__ = ["ArrayMemory", "Executable", "Lowering", "LoweringError", "Plan", "Rendered", "Renderer", "Runtime",
           "TARGETS", "Target", "get_target", "plan_program", "register_target", "unregister_target"]
