"""The benchmark suite cannot rot: one tiny config end to end (--quick), its JSON and Markdown,
and the pieces whose arithmetic the table relies on. Nothing here asserts a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import floors
from benchmarks.timing import TICK, Meter, Snapshot, Timing, interleaved

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_valid_json_and_markdown(tmp_path):
    pytest.importorskip("torch")
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out), "--markdown", str(md),
                           "--wait-quiet", "0", "--max-rounds-factor", "2", "--threads", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["threads"] == 1 and report["machine"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds[:2] == ["train", "inference"]
    train = report["rows"][0]
    assert train["config"] == "16-32-32-4 b16 adam"
    for side in ("bngraph", "torch", "floor: gemms", "floor: copy optimizer", "floor: copy layers"):
        t = train["timings"][side]
        assert t["rounds_kept"] + t["rounds_dropped"] >= 1
        assert len(t["times_s"]) + len(t["disturbed_times_s"]) == t["rounds_kept"] + t["rounds_dropped"]
        assert t["median_s"] > 0
    assert 0 < train["gemm_s"] < train["floor_s"]
    assert train["vs_torch"] == pytest.approx(train["bngraph_s"] / train["torch_s"])
    assert train["vs_floor"] == pytest.approx(train["bngraph_s"] / train["floor_s"])
    if "memory" in kinds:  # Linux
        mem = report["rows"][kinds.index("memory")]
        assert mem["bngraph_bytes"] >= 0 and mem["torch_bytes"] >= 0
    table = md.read_text()
    assert "| 16-32-32-4 b16 adam |" in table and "| 16-32-32-4 b64 eval |" in table
    assert "bngraph / floor" in proc.stdout


def test_meter_drops_rounds_where_others_used_the_cpu():
    m = Meter(threshold=0.05, slack_ticks=2, ncpu=2)
    a = Snapshot(wall=0.0, own=0.0, stat=(100.0, 1.0))
    quiet = Snapshot(wall=1.0, own=1.9, stat=(102.0, 1.0))          # others: 0.1 s of 2 s capacity
    busy = Snapshot(wall=1.0, own=1.0, stat=(102.0, 1.0))           # others: 1 s
    stolen = Snapshot(wall=1.0, own=1.9, stat=(101.9, 1.5))         # the hypervisor took 0.5 s
    assert not m.disturbed(a, quiet)
    assert m.disturbed(a, busy)
    assert m.disturbed(a, stolen)
    assert m.others(a, busy) == pytest.approx((1.0, 0.0))
    assert m.others(a, Snapshot(1.0, 1.0, None)) == (0.0, 0.0)      # no /proc/stat: nothing to say
    # the slack: two ticks of difference between the two clocks are forgiven on a short round
    short = Snapshot(wall=0.01, own=0.0, stat=(100.0 + 2 * TICK, 1.0))
    assert not m.disturbed(a, short)


def test_interleaved_rotates_the_order_and_counts_rounds():
    calls = []
    sides = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    res = interleaved(sides, rounds=3, warmup=1, block_s=0.0, meter=Meter(threshold=1e9))
    assert all(t.kept == 3 and t.dropped == 0 and t.clean and len(t.times) == 3 for t in res.values())
    assert all(t.reps == 1 for t in res.values())  # block_s=0: one call per block
    rounds = calls[3 + 3:]  # after warm-up and calibration: each block is an untimed call + the reps
    assert rounds == list("aabbcc" "bbccaa" "ccaabb")  # the order rotates


def test_timing_falls_back_to_all_rounds_on_a_busy_machine():
    t = Timing(times=[1.0], kept=1, dropped=5, reps=1, disturbed=[3.0, 3.0, 3.0, 3.0, 3.0])
    assert not t.clean and t.median == 3.0
    assert Timing(times=[1.0, 2.0, 3.0], kept=3, dropped=9, reps=1, disturbed=[9.0] * 9).median == 2.0


def test_floor_shapes_and_traffic():
    widths = [784, 1024, 1024, 10]
    shapes = floors.gemm_shapes(widths, 32)
    assert len(shapes) == 3 * 3 - 1  # forward + dW per layer, dA for all but the first
    flops = sum(2 * a[0] * a[1] * (b[0] if tb else b[1]) for a, ta, b, tb in shapes)
    assert flops == 6 * 32 * (784 * 1024 + 1024 * 1024 + 1024 * 10) - 2 * 2 * 32 * 784 * 1024 // 2
    assert floors.n_params(widths) == 784 * 1024 + 2 * 1024 + 1024 * 1024 + 2 * 1024 + 1024 * 10 + 10
    t = floors.train_traffic(widths, 32, "adam")
    assert t["optimizer"] == 4 * 7 * floors.n_params(widths)
    assert t["layers"] == 4 * (6 * 2048 * 32 + 2 * 10 * 32)
    # floor = gemm time + bytes at the bandwidth of each copy (read + write)
    assert floors.floor_seconds(1.0, {"x": 800}, {"x": 1.0}, {"x": 100}) == pytest.approx(2.0)
    floors.gemm_runner([4, 8, 2], 3)()  # runs
