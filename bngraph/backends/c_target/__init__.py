"""The c target: the CUDA target's kernels compiled for the host CPU, in parallel (docs/c.md).

``renderer.py`` renders the CUDA target's lowering table and templates in the host dialect
(``host.py``: each launch a team of threads) plus a Python host driver; ``runtime.py``
compiles them with the host's C++ compiler (``-O3 -march=native``, cached by hash), keeps
arrays in NumPy and calls NumPy's BLAS for the matrix products. Rendering needs no compiler
(``bg.emit(g, target="c")``); running says in one line when there is none."""
from ..base import Target
from .renderer import CRenderer


def make_runtime(device=None):
    """The c target's runtime on the host CPU (``device`` None or ``"cpu"``)."""
    from .runtime import CRuntime

    return CRuntime(device)


TARGET = Target("c", CRenderer(), make_runtime)

__all__ = ["CRenderer", "TARGET", "make_runtime"]
