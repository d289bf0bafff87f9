"""The benchmark suite: which rows, how each is timed, the table and the JSON.

Rows (float32, ReLU, batch norm, softmax cross-entropy):
* main: 64-128-128-10 b32 and 784-1024-1024-1024-10 at b64, b256, b1024, with Adam and with SGD
  with momentum 0.9; bngraph against PyTorch eager and ``torch.compile`` (compile time apart);
* sweeps (Adam): the big net's width 256..4096 at b256, and its batch 16..4096;
* inference: eval mode, bngraph's inference pipeline (batch norm folded into the weights) against
  PyTorch's ``module.eval()`` under ``torch.inference_mode()``, as examples per second;
* cnn: the training step of a small CNN (two conv + batch norm + ReLU + max pool blocks, a linear
  head) on 1x28x28 inputs against PyTorch eager (benchmarks/cnn.py);
* memory: the peak resident memory of a training step (Adam), both sides, each in a fresh process.
Every timed row also times its floor (floors.py) in the same interleaved rounds (timing.py).
"""
from __future__ import annotations

import json
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cnn, floors, memory
from .sides import (Config, bngraph_inference, bngraph_step, c_target_runs, torch_inference, torch_step)
from .timing import Meter, interleaved, wait_for_quiet

SMALL = (64, 128, 128, 10)
BIG = (784, 1024, 1024, 1024, 10)
TINY = (16, 32, 32, 4)


def plan(quick: bool, sweeps: bool = True) -> dict:
    """The rows to run: {'train': [(Config, compile?, groups)], 'inference': [...], 'memory': [...]}."""
    if quick:
        return {"train": [(Config(TINY, 16, "adam"), False, ("main",))],
                "inference": [(TINY, 64)], "cnn": [cnn.CnnConfig((4, 8), 8, "adam", side=12)],
                "memory": [Config(TINY, 16, "adam")]}
    rows: dict = {}
    for opt in ("adam", "momentum"):
        for cfg in (Config(SMALL, 32, opt), Config(BIG, 64, opt), Config(BIG, 256, opt), Config(BIG, 1024, opt)):
            rows[cfg] = ["main"]
    if sweeps:
        for w in (256, 512, 1024, 2048, 4096):
            rows.setdefault(Config((784, w, w, w, 10), 256, "adam"), []).append("width")
        for b in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            rows.setdefault(Config(BIG, b, "adam"), []).append("batch")
    return {"train": [(cfg, "main" in groups, tuple(groups)) for cfg, groups in rows.items()],
            "inference": [(SMALL, 1024), (BIG, 64), (BIG, 1024)],
            "cnn": [cnn.CnnConfig((16, 32), 64, "adam"), cnn.CnnConfig((16, 32), 64, "momentum")],
            "memory": [Config(SMALL, 32, "adam"), Config(BIG, 64, "adam"), Config(BIG, 256, "adam"),
                       Config(BIG, 1024, "adam")]}


class Runner:
    def __init__(self, args, log=print):
        self.args, self.log = args, log
        self.meter = Meter(threshold=args.threshold)
        self.pool = ThreadPoolExecutor(max(1, args.threads - 1)) if args.threads > 1 else None
        self.c = getattr(args, "c", True) and c_target_runs()  # the c target's side, where it compiles

    def time(self, sides: dict, rounds: int) -> dict:
        a = self.args
        if a.wait_quiet:
            wait_for_quiet(self.meter, max_wait_s=a.wait_quiet, log=self.log)
        return interleaved(sides, rounds=rounds, warmup=a.warmup, warmup_s=a.warmup_seconds, block_s=a.block,
                           gap_s=a.gap,
                           meter=self.meter, max_rounds=a.max_rounds_factor * rounds,
                           max_seconds=a.max_seconds, log=self.log if a.verbose else None)

    def rounds_for(self, cfg_cost_s: float) -> int:
        """Fewer rounds for slow rows (each round runs every side at least twice)."""
        if self.args.rounds:
            return self.args.rounds
        return 15 if cfg_cost_s < 0.05 else 10 if cfg_cost_s < 0.3 else 7

    def train_row(self, cfg: Config, with_compile: bool, groups) -> dict:
        bg_step = bngraph_step(cfg)
        t_step, _ = torch_step(cfg)
        sides = {"bngraph": bg_step, "torch": t_step}
        if self.c:
            sides["bngraph c"] = bngraph_step(cfg, target="c")
        compile_s = None
        if with_compile and self.args.compile:
            try:
                sides["torch.compile"], compile_s = torch_step(cfg, compiled=True)
            except Exception as e:  # no C++ compiler, an unsupported platform...
                self.log(f"    torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); row without it")
        traffic = floors.train_traffic(cfg.widths, cfg.batch, cfg.optimizer)
        sizes = {"optimizer": floors.n_params(cfg.widths), "layers": max(cfg.widths[1:-1]) * cfg.batch}
        sides["floor: gemms"] = floors.gemm_runner(cfg.widths, cfg.batch)
        for k, n in sizes.items():
            sides[f"floor: copy {k}"] = floors.copy_runner(n, self.args.threads, self.pool)
        t0 = time.perf_counter()
        bg_step()
        res = self.time(sides, self.rounds_for(time.perf_counter() - t0))
        med = {k: v.median for k, v in res.items()}
        floor = floors.floor_seconds(med["floor: gemms"], traffic, {k: med[f"floor: copy {k}"] for k in sizes}, sizes)
        row = {"kind": "train", "config": cfg.label, "widths": list(cfg.widths), "batch": cfg.batch,
               "optimizer": cfg.optimizer, "groups": list(groups),
               "timings": {k: v.to_json() for k, v in res.items()},
               "floor_s": floor, "gemm_s": med["floor: gemms"], "traffic_bytes": traffic,
               "compile_s": compile_s, **_rounds(res),
               "bngraph_s": med["bngraph"], "torch_s": med["torch"], "torch_compile_s": med.get("torch.compile"),
               "vs_torch": med["bngraph"] / med["torch"], "vs_floor": med["bngraph"] / floor}
        if "torch.compile" in med:
            row["vs_torch_compile"] = med["bngraph"] / med["torch.compile"]
        if "bngraph c" in med:
            row.update(c_s=med["bngraph c"], c_vs_torch=med["bngraph c"] / med["torch"], c_vs_floor=med["bngraph c"] / floor,
                       c_vs_numpy=med["bngraph c"] / med["bngraph"])
        return row

    def inference_row(self, widths, batch) -> dict:
        sides = {"bngraph": bngraph_inference(widths, batch), "torch": torch_inference(widths, batch),
                 "floor: gemms": floors.gemm_runner(widths, batch, backward=False),
                 "floor: copy layers": floors.copy_runner(max(widths[1:]) * batch, self.args.threads, self.pool)}
        res = self.time(sides, self.rounds_for(0.01))
        med = {k: v.median for k, v in res.items()}
        size = max(widths[1:]) * batch
        floor = floors.floor_seconds(med["floor: gemms"], {"layers": floors.inference_traffic(widths, batch)},
                                     {"layers": med["floor: copy layers"]}, {"layers": size})
        net = "-".join(map(str, widths))
        return {"kind": "inference", "config": f"{net} b{batch} eval", "widths": list(widths), "batch": batch,
                "timings": {k: v.to_json() for k, v in res.items()}, "floor_s": floor,
                **_rounds(res), "bngraph_s": med["bngraph"], "torch_s": med["torch"],
                "bngraph_per_s": batch / med["bngraph"], "torch_per_s": batch / med["torch"],
                "vs_torch": med["bngraph"] / med["torch"], "vs_floor": med["bngraph"] / floor}

    def memory_row(self, cfg: Config) -> dict | None:
        sides = ("bngraph", "torch") + (("bngraph-c",) if self.c else ())
        got = {side: memory.measure(side, cfg.widths, cfg.batch, cfg.optimizer) for side in sides}
        if got["bngraph"] is None or got["torch"] is None:
            return None
        b, t = got["bngraph"]["peak_bytes"], got["torch"]["peak_bytes"]
        c = got.get("bngraph-c")
        return {"kind": "memory", "config": cfg.label, "widths": list(cfg.widths), "batch": cfg.batch,
                "optimizer": cfg.optimizer, "bngraph_bytes": b, "torch_bytes": t, "vs_torch": b / t if t else math.nan,
                "c_bytes": c["peak_bytes"] if c else None}


def _rounds(res: dict) -> dict:
    t = res["bngraph"]
    return {"rounds_kept": t.kept, "rounds_dropped": t.dropped, "clean": t.clean}


def _kept(r: dict) -> str:
    """'kept / dropped', with a warning when the medians had to use disturbed rounds too."""
    return f"{r['rounds_kept']} / {r['rounds_dropped']}" + ("" if r["clean"] else " (busy machine: all rounds used)")


def machine(threads: int, env: dict) -> dict:
    import torch

    import bngraph

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpu_count(),
            "cpu": _cpu_model(), "numpy": np.__version__, "torch": torch.__version__,
            "bngraph": bngraph.__version__, "threads": threads, "env": env}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        info["numpy_blas"] = "?"
    info["torch_blas"] = "MKL" if torch.backends.mkl.is_available() else "?"
    return info


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def run(args, env: dict, log=print) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only once per process)
        pass
    todo = plan(args.quick, sweeps=args.sweeps)
    runner = Runner(args, log)
    report = {"machine": machine(args.threads, env), "settings": _settings(args), "rows": []}
    started = time.perf_counter()
    for cfg, with_compile, groups in (todo["train"] if getattr(args, "train", True) else []):
        log(f"  train {cfg.label} ...")
        report["rows"].append(runner.train_row(cfg, with_compile, groups))
        log("    " + format_row(report["rows"][-1]))
    if args.inference:
        for widths, batch in todo["inference"]:
            log(f"  inference {'-'.join(map(str, widths))} b{batch} ...")
            report["rows"].append(runner.inference_row(widths, batch))
    if args.cnn:
        for cfg in todo["cnn"]:
            log(f"  train {cfg.label} ...")
            report["rows"].append(cnn.row(runner, cfg))
            log("    " + format_row(report["rows"][-1]))
    if args.memory:
        for cfg in todo["memory"]:
            log(f"  memory {cfg.label} ...")
            row = runner.memory_row(cfg)
            if row is not None:
                report["rows"].append(row)
    report["seconds"] = time.perf_counter() - started
    return report


def _settings(args) -> dict:
    keys = ("threads", "rounds", "warmup", "warmup_seconds", "block", "gap", "threshold", "max_rounds_factor", "max_seconds",
            "quick", "compile", "sweeps", "train", "inference", "cnn", "memory", "blas_timeout", "c")
    return {k: getattr(args, k, None) for k in keys}


def _ms(s) -> str:
    return "-" if s is None or (isinstance(s, float) and math.isnan(s)) else (f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}")


def format_row(r: dict) -> str:
    if r["kind"] == "train":
        tc = f"{_ms(r['torch_compile_s'])} ({r['vs_torch_compile']:.2f}x, compile {r['compile_s']:.0f} s)" \
            if r.get("torch_compile_s") else "-"
        c = (f"c {_ms(r['c_s'])} ms, c/torch {r['c_vs_torch']:.2f}, c/floor {r['c_vs_floor']:.2f} | "
             if r.get("c_s") else "")
        return (f"{r['config']:<34} bngraph {_ms(r['bngraph_s'])} ms | torch {_ms(r['torch_s'])} ms | "
                f"bngraph/torch {r['vs_torch']:.2f} | floor {_ms(r['floor_s'])} ms, bngraph/floor {r['vs_floor']:.2f} | "
                f"{c}torch.compile {tc} | rounds kept / dropped {_kept(r)}")
    if r["kind"] == "inference":
        return (f"{r['config']:<34} bngraph {r['bngraph_per_s']:,.0f}/s | torch {r['torch_per_s']:,.0f}/s | "
                f"time bngraph/torch {r['vs_torch']:.2f} | bngraph/floor {r['vs_floor']:.2f} | "
                f"rounds kept / dropped {_kept(r)}")
    return (f"{r['config']:<34} peak bngraph {r['bngraph_bytes'] / 2**20:.1f} MiB | torch "
            f"{r['torch_bytes'] / 2**20:.1f} MiB | bngraph/torch {r['vs_torch']:.2f}")


def markdown(report: dict) -> str:
    """The tables of a report, as Markdown (what docs/benchmarks.md shows)."""
    rows = report["rows"]
    out = ["| config | bngraph ms | PyTorch eager ms | bngraph / eager | torch.compile ms (compile s) | "
           "bngraph / compile | floor ms | bngraph / floor | rounds kept / dropped |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "train"):
        tc = f"{_ms(r['torch_compile_s'])} ({r['compile_s']:.0f})" if r.get("torch_compile_s") else "-"
        vc = f"{r['vs_torch_compile']:.2f}" if r.get("vs_torch_compile") else "-"
        out.append(f"| {r['config']} | {_ms(r['bngraph_s'])} | {_ms(r['torch_s'])} | **{r['vs_torch']:.2f}** | {tc} | "
                   f"{vc} | {_ms(r['floor_s'])} | {r['vs_floor']:.2f} | {_kept(r)} |")
    ctrain = [r for r in rows if r["kind"] == "train" and r.get("c_s")]
    if ctrain:
        out += ["", "| config (c target) | c ms | numpy target ms | PyTorch eager ms | c / eager | c / numpy | floor ms | "
                "c / floor |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {_ms(r['c_s'])} | {_ms(r['bngraph_s'])} | {_ms(r['torch_s'])} | "
                f"**{r['c_vs_torch']:.2f}** | {r['c_vs_numpy']:.2f} | {_ms(r['floor_s'])} | {r['c_vs_floor']:.2f} |"
                for r in ctrain]
    inf = [r for r in rows if r["kind"] == "inference"]
    if inf:
        out += ["", "| inference (eval) | bngraph examples/s | PyTorch examples/s | bngraph / PyTorch time | "
                "bngraph / floor | rounds kept / dropped |", "|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['bngraph_per_s']:,.0f} | {r['torch_per_s']:,.0f} | {r['vs_torch']:.2f} | "
                f"{r['vs_floor']:.2f} | {_kept(r)} |" for r in inf]
    mem = [r for r in rows if r["kind"] == "memory"]
    if mem:
        out += ["", "| peak memory of a training step | bngraph MiB | PyTorch MiB | bngraph / PyTorch |",
                "|---|---|---|---|"]
        out += [f"| {r['config']} | {r['bngraph_bytes'] / 2**20:.1f} | {r['torch_bytes'] / 2**20:.1f} | "
                f"{r['vs_torch']:.2f} |" for r in mem]
        cmem = [r for r in mem if r.get("c_bytes")]
        if cmem:
            out += ["", "| peak memory (c target) | c MiB | numpy target MiB | c / numpy |", "|---|---|---|---|"]
            out += [f"| {r['config']} | {r['c_bytes'] / 2**20:.1f} | {r['bngraph_bytes'] / 2**20:.1f} | "
                    f"{r['c_bytes'] / r['bngraph_bytes']:.2f} |" for r in cmem]
    return "\n".join(out)


def write_json(report: dict, path: str):
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=float)
        f.write("\n")
