"""The CUDA target: templates/cuda/, the lowering table (lowerings.py), the renderer, and two
runtimes: CuPy on an NVIDIA GPU (runtime.py), and an emulator that runs the same kernels on the
CPU, one thread per block (emulator.py; ``device="emulator"``), for testing without a GPU."""
from ..base import Target
from .renderer import CudaRenderer


def make_runtime(device=None):
    """``device="emulator"``: the CPU emulator; anything else: a GPU through CuPy (imported here,
    lazily, so that rendering never needs it)."""
    if device == "emulator":
        from .emulator import EmulatorRuntime

        return EmulatorRuntime()
    from .runtime import CudaRuntime

    return CudaRuntime(device)


TARGET = Target("cuda", CudaRenderer(), make_runtime)

__all__ = ["CudaRenderer", "TARGET", "make_runtime"]
