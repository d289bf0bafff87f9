"""Training-step time against batch size and against width, for bngraph, PyTorch eager,
torch.compile (where timed) and the floor; from a report of the suite (or its JSON).

    python -m benchmarks.plot bench.json docs/benchmarks.png

Needs matplotlib: ``pip install -e '.[plot]'``.
"""
from __future__ import annotations

import json
import sys

SERIES = [("bngraph_s", "bngraph", "C0", "o-"), ("torch_s", "PyTorch eager", "C3", "s-"),
          ("torch_compile_s", "torch.compile", "C2", "^--"), ("floor_s", "floor (GEMMs + copy traffic)", "0.35", ":")]


def plot(report: dict, path: str):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["kind"] == "train"]
    panels = [("batch", "batch size (784-1024-1024-1024-10, Adam)", lambda r: r["batch"]),
              ("width", "hidden width (784-w-w-w-10, b256, Adam)", lambda r: r["widths"][1])]
    panels = [(g, label, key) for g, label, key in panels if any(g in r["groups"] for r in rows)]
    if not panels:  # e.g. --quick or --no-sweeps: every row on one axis, by batch
        panels = [(None, "batch size", lambda r: r["batch"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    m = report.get("machine", {})
    fig.suptitle(f"training step, float32, {m.get('threads', '?')} threads each: {m.get('cpu', '')} "
                 f"(numpy {m.get('numpy', '?')}, torch {m.get('torch', '?')})", fontsize=9)
    for ax, (group, label, key) in zip(axes[0], panels):
        sel = sorted((r for r in rows if group is None or group in r["groups"]), key=key)
        xs = [key(r) for r in sel]
        for field, name, color, style in SERIES:
            pts = [(x, r[field] * 1e3) for x, r in zip(xs, sel) if r.get(field) and r[field] > 0]
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=name, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("median step time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    src, dst = (argv or sys.argv[1:])[:2]
    with open(src) as f:
        plot(json.load(f), dst)


if __name__ == "__main__":
    main()
