"""The benchmark suite runs from any folder, and its picture says what it draws (issue 18, item 8):
no title cut off, no legend entry with nothing drawn, no series that is a lonely point."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_runs_from_another_folder_and_writes_there(tmp_path):
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "OMP_", "MKL_", "PYTHONPATH"))}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks"), "--quick", "--no-memory", "--no-inference",
                           "--json", "q.json", "--wait-quiet", "0", "--max-rounds-factor", "2", "--threads", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["rows"][0]["config"] == "16-32-32-4 b16 adam"
    assert "wrote q.json" in proc.stdout


def test_the_folder_run_as_a_script_imports_its_own_package(tmp_path):
    for target in (ROOT / "benchmarks", ROOT / "benchmarks" / "__main__.py"):
        proc = subprocess.run([sys.executable, str(target), "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m benchmarks"), proc.stderr


def _row(config, batch, widths, groups, **times):
    return {"kind": "train", "config": config, "batch": batch, "widths": widths, "groups": groups, **times}


SWEEP = {"machine": {"threads": 2, "cpu": "a CPU with a rather long name, as /proc/cpuinfo gives it, " * 2,
                     "numpy": "2.4", "torch": "2.13"},
         "rows": [_row(f"big b{b}", b, [784, 1024, 1024, 1024, 10], ["batch"], bngraph_s=b * 1e-4,
                       torch_s=b * 2e-4, floor_s=b * 5e-5) for b in (16, 64, 256)]
         + [_row(f"w{w}", 256, [784, w, w, w, 10], ["width"], bngraph_s=w * 1e-5, torch_s=w * 2e-5,
                 torch_compile_s=w * 1.5e-5, floor_s=w * 5e-6) for w in (256, 1024)]}
QUICK = {"machine": {"threads": 1, "cpu": "Intel(R) Xeon(R) Platinum 8480+ with a name longer than one panel " * 2,
                     "numpy": "2.4", "torch": "2.13"},
         "rows": [_row("16-32-32-4 b16 adam", 16, [16, 32, 32, 4], ["main"], bngraph_s=4e-4, torch_s=8e-4,
                       floor_s=2e-5), {"kind": "inference", "config": "x"}]}


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


@pytest.mark.parametrize("report", [SWEEP, QUICK], ids=["sweeps", "quick"])
def test_the_picture_draws_every_series_it_names_and_keeps_its_title_inside(report):
    pytest.importorskip("matplotlib")
    from benchmarks.plot import figure

    fig = figure(report)
    renderer = _drawn(fig)
    box = fig.bbox
    title = fig._suptitle.get_window_extent(renderer)
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and title.y1 <= box.y1  # not cut off
    for ax in fig.axes:
        names = [t.get_text() for t in ax.get_legend().get_texts()]
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        bars = {c.get_label(): c for c in ax.containers}
        for name in names:
            if name in lines:  # a line: two points at least, each with a marker
                assert len(lines[name].get_xdata()) >= 2 and lines[name].get_marker() not in (None, "", "None")
            else:
                assert len(bars[name]) >= 1  # a bar for each row that has the figure
        if report is SWEEP:
            assert "floor (GEMMs + copy traffic)" in names
    assert len(fig.axes) == (2 if report is SWEEP else 1)
    import matplotlib.pyplot as plt

    plt.close(fig)
