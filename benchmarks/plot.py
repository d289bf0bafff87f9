"""Training-step time against batch size and against width, for bngraph, PyTorch eager,
torch.compile (where timed) and the floor; from a report of the suite (or its JSON).

    python -m benchmarks.plot bench.json docs/benchmarks.png

A panel whose rows share a sweep (batch sizes, widths) draws one line per side, a marker at every
row; where there is nothing to sweep (``--quick``, ``--no-sweeps``: rows of different nets, or a
single row) it draws bars, one group per row, so that no series is a lonely point. Every series
in the legend is drawn (the floor too, with its markers), and the title is laid out inside the
picture. Needs matplotlib: ``pip install -e '.[plot]'``.
"""
from __future__ import annotations

import json
import sys

# (report field, legend, colour, line style, marker)
SERIES = [("bngraph_s", "bngraph", "C0", "-", "o"), ("torch_s", "PyTorch eager", "C3", "-", "s"),
          ("torch_compile_s", "torch.compile", "C2", "--", "^"),
          ("floor_s", "floor (GEMMs + copy traffic)", "0.35", ":", "x")]
SWEEPS = [("batch", "batch size (784-1024-1024-1024-10, Adam)", lambda r: r["batch"]),
          ("width", "hidden width (784-w-w-w-10, b256, Adam)", lambda r: r["widths"][1])]


def _title(report: dict) -> str:
    m = report.get("machine", {})
    n = m.get("threads", "?")
    versions = f"numpy {m.get('numpy', '?')}, torch {m.get('torch', '?')}"
    return (f"training step, float32, {n} thread{'' if n == 1 else 's'} each\n"
            f"{m.get('cpu', '') or 'CPU'} ({versions})")


def _points(rows, key, field) -> list:
    return [(key(r), r[field] * 1e3) for r in rows if r.get(field) and r[field] > 0]


def _lines(ax, rows, key, label):
    """One line per side over the sweep ``key``, a marker at each row."""
    rows = sorted(rows, key=key)
    for field, name, color, style, marker in SERIES:
        pts = _points(rows, key, field)
        if pts:
            ax.plot(*zip(*pts), linestyle=style, marker=marker, color=color, label=name, markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks([x for x, _ in _points(rows, key, "bngraph_s")] or ax.get_xticks())
    ax.get_xaxis().set_major_formatter("{x:g}")  # 256, not 2^8
    ax.set_xlabel(label)


def _bars(ax, rows):
    """Bars: a group per row (its config), a bar per side that has a time."""
    fields = [s for s in SERIES if any(r.get(s[0]) and r[s[0]] > 0 for r in rows)]
    width = 0.8 / max(1, len(fields))
    for k, (field, name, color, _, _) in enumerate(fields):
        xs = [i + (k - (len(fields) - 1) / 2) * width for i, r in enumerate(rows) if r.get(field) and r[field] > 0]
        ys = [r[field] * 1e3 for r in rows if r.get(field) and r[field] > 0]
        ax.bar(xs, ys, width=width, color=color, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.get("config", "?") for r in rows], fontsize=8)
    ax.set_xlabel("config")


def figure(report: dict):
    """The matplotlib figure of ``report`` (the suite's report or its JSON)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["kind"] == "train"]
    panels = [(group, label, key) for group, label, key in SWEEPS
              if len({key(r) for r in rows if group in r.get("groups", ())}) >= 2]
    if not panels:
        panels = [(None, None, None)]  # nothing to sweep: bars
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False,
                             constrained_layout=True)
    fig.suptitle(_title(report), fontsize=9, wrap=True)  # a long CPU name wraps instead of leaving the picture
    for ax, (group, label, key) in zip(axes[0], panels):
        if group is None:
            _bars(ax, rows)
        else:
            _lines(ax, [r for r in rows if group in r["groups"]], key, label)
        ax.set_yscale("log")
        ax.set_ylabel("median step time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot(report: dict, path: str):
    fig = figure(report)  # first: says how to install matplotlib when it is missing
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    src, dst = (argv or sys.argv[1:])[:2]
    with open(src) as f:
        plot(json.load(f), dst)


if __name__ == "__main__":
    main()
