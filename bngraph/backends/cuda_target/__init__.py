"""The CUDA target: templates/cuda/, the lowering table (lowerings.py), the renderer, and one
runtime (runtime.py) built from sets of parts: NVRTC, CuPy and cuBLAS on an NVIDIA GPU
(runtime.py), or the host's C++ compiler and NumPy memory, running the same kernels on the CPU one
thread per block (emulator.py; ``device="emulator"``), or as a GPU runs them, every block's threads
concurrent (threads.py, the execution model; ``device="emulator-threads"``), for testing without a GPU."""
from ..base import Target
from .renderer import CudaRenderer


def make_runtime(device=None):
    """``device="emulator"``: the CPU emulator (IEEE); ``"emulator-gpu-math"``: the emulator with
    the GPU build's numerics (FMA contraction, float32 flush-to-zero); ``"emulator-threads"`` or a
    ``threads.ExecutionModel``: the execution model; anything else: a GPU through CuPy (imported
    here, lazily, so that rendering never needs it)."""
    if device in ("emulator", "emulator-gpu-math"):
        from .emulator import emulator_runtime

        return emulator_runtime(device)
    from .threads import DEVICES, ExecutionModel, threads_runtime

    if isinstance(device, ExecutionModel) or (isinstance(device, str) and device in DEVICES):
        return threads_runtime(device)
    from .runtime import gpu_runtime

    return gpu_runtime(device)


TARGET = Target("cuda", CudaRenderer(), make_runtime)

__all__ = ["CudaRenderer", "TARGET", "make_runtime"]
