"""Peak memory of a training step, bngraph and PyTorch alike, each in a fresh process.

The child imports NumPy, PyTorch and bngraph and runs one step of a tiny model in each (so both
sides start from the same baseline, with every library's one-time set-up done); then it resets the kernel's high-water mark of its resident memory (writing 5 to
/proc/self/clear_refs), notes the resident size, builds the model and optimizer and runs a few
steps. Peak = high-water mark (VmHWM) - that baseline: params, gradients, optimizer state,
activations and every temporary of a step, as the operating system sees them (Linux only).

    python -m benchmarks.memory bngraph 784,1024,1024,1024,10 256 adam
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")


def measure_here(side: str, widths, batch: int, optimizer: str, steps: int = 3) -> dict:
    """In this (fresh) process: the peak resident memory a side's training needs, in bytes."""
    import numpy  # noqa: F401  (the baseline includes every library)
    import torch  # noqa: F401

    from .sides import Config, bngraph_step, torch_step

    cfg = Config(tuple(widths), batch, optimizer)
    tiny = Config((4, 8, 8, 2), 4, optimizer)  # both libraries' one-time set-up (thread pools, the
    bngraph_step(tiny)()                      # autograd engine, BLAS buffers...) is not the step's
    torch_step(tiny)[0]()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _status_kib("VmRSS")
    step = (bngraph_step(cfg) if side == "bngraph" else bngraph_step(cfg, target="c") if side == "bngraph-c"
            else torch_step(cfg)[0])
    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM")
    return {"side": side, "peak_bytes": (peak - base) * 1024, "baseline_bytes": base * 1024}


def measure(side: str, widths, batch: int, optimizer: str, env: dict | None = None,
            timeout: float = 600) -> dict | None:
    """:func:`measure_here` in a child process (None where /proc cannot tell)."""
    if not supported():
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.memory", side, ",".join(map(str, widths)), str(batch), optimizer]
    out = subprocess.run(cmd, cwd=root, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    side, widths, batch, optimizer = (argv or sys.argv[1:])[:4]
    print(json.dumps(measure_here(side, [int(w) for w in widths.split(",")], int(batch), optimizer)))


if __name__ == "__main__":
    main()
