"""Interleaved timing on a shared machine: A B C, C A B, B C A, ... after a warm-up, medians over
the rounds that nobody else disturbed.

A *round* runs every side once, in an order rotated from round to round, each side as a *block* of
``reps`` back-to-back calls (``reps`` calibrated so that a block lasts about ``block_s``); a side's
time for the round is the block's time divided by ``reps``. Before and after each round the meter
reads ``/proc/stat`` (busy and steal time of all CPUs, in clock ticks) and this process's own CPU
time (``os.times``): the busy time that is not ours is the rest of the machine's. A round where
that, or steal, exceeds a small share of the round's CPU capacity is dropped (both sides at once,
so the pairs stay paired), and the run goes on until it has the rounds it asked for or reaches its
limit of rounds or seconds. Every result says how many rounds it kept and how many it dropped.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

TICK = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per /proc/stat tick (usually 10 ms)


def read_proc_stat():
    """(busy, steal) seconds of all CPUs together since boot, from the first line of /proc/stat;
    None where there is no /proc/stat (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    # guest time is already inside user/nice; idle and iowait are not busy
    return (user + nice + system + irq + softirq) * TICK, steal * TICK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system  # all threads of this process (BLAS, OpenMP, ours)


@dataclass
class Snapshot:
    wall: float
    own: float
    stat: tuple | None


@dataclass
class Meter:
    """Says whether the machine stayed ours between two snapshots.

    ``threshold``: the largest share of the interval's CPU capacity (wall time x CPUs) that other
    processes and steal together may have used; ``slack_ticks``: ticks forgiven because /proc/stat
    and os.times sample in ticks and differ by one or two at the edges."""

    threshold: float = 0.03
    slack_ticks: float = 2.0
    ncpu: int = field(default_factory=lambda: os.cpu_count() or 1)

    def snap(self) -> Snapshot:
        return Snapshot(time.perf_counter(), own_cpu(), read_proc_stat())

    def others(self, a: Snapshot, b: Snapshot) -> tuple:
        """(CPU seconds used by the rest of the machine, steal seconds) between a and b."""
        if a.stat is None or b.stat is None:
            return 0.0, 0.0
        busy = b.stat[0] - a.stat[0]
        return max(0.0, busy - (b.own - a.own)), b.stat[1] - a.stat[1]

    def disturbed(self, a: Snapshot, b: Snapshot) -> bool:
        other, steal = self.others(a, b)
        allowed = self.threshold * (b.wall - a.wall) * self.ncpu + self.slack_ticks * TICK
        return other + steal > allowed


@dataclass
class Timing:
    """The per-call times (seconds) of one side over the kept rounds, and the round counts.

    When fewer than ``min_kept`` rounds were undisturbed (a machine busy all along), the statistics
    fall back to every round, disturbed ones included, and ``clean`` is False: the table marks it."""

    times: list
    kept: int
    dropped: int
    reps: int
    disturbed: list = field(default_factory=list)  # the times of the dropped rounds
    min_kept: int = 3

    @property
    def clean(self) -> bool:
        return self.kept >= min(self.min_kept, self.kept + self.dropped)

    @property
    def used(self) -> list:
        return self.times if self.clean else self.times + self.disturbed

    @property
    def median(self) -> float:
        return statistics.median(self.used) if self.used else float("nan")

    @property
    def best(self) -> float:
        return min(self.used) if self.used else float("nan")

    def to_json(self) -> dict:
        return {"median_s": self.median, "min_s": self.best, "rounds_kept": self.kept,
                "rounds_dropped": self.dropped, "clean": self.clean, "reps_per_round": self.reps,
                "times_s": [round(t, 9) for t in self.times],
                "disturbed_times_s": [round(t, 9) for t in self.disturbed]}


def block_time(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - t0


def calibrate(fn, block_s: float) -> int:
    """Calls per block so that a block lasts about ``block_s`` (at least one)."""
    t = max(block_time(fn, 1), 1e-7)
    reps = max(1, int(block_s / t))
    if reps > 1:  # a second look with more calls: the first one is often slow
        t = block_time(fn, reps) / reps
        reps = max(1, int(block_s / max(t, 1e-7)))
    return reps


def interleaved(sides: dict, *, rounds: int, warmup: int = 3, warmup_s: float = 0.0,
                block_s: float = 0.02, gap_s: float = 0.0, meter: Meter | None = None, max_rounds: int | None = None,
                max_seconds: float | None = None, log=None) -> dict:
    """Time every callable of ``sides`` (name -> fn) in interleaved rounds; name -> :class:`Timing`.

    Warm-up: ``warmup`` calls of each side, or as many as fill ``warmup_s`` if that is more.
    Stops after ``rounds`` undisturbed rounds, or ``max_rounds`` rounds in all (default 8x), or
    ``max_seconds`` of timing; whatever was kept by then is the result (see :class:`Timing` for
    a machine that was never quiet)."""
    meter = meter or Meter()
    names = list(sides)
    for name in names:  # warm-up: caches, allocations, lazy initialisation, thread pools
        t0, calls = time.perf_counter(), 0
        while calls < warmup or time.perf_counter() - t0 < warmup_s:
            sides[name]()
            calls += 1
    reps = {name: calibrate(sides[name], block_s) for name in names}
    max_rounds = max_rounds or 8 * rounds
    times = {name: [] for name in names}
    disturbed = {name: [] for name in names}
    kept = dropped = 0
    start = time.perf_counter()
    r = 0
    while kept < rounds and r < max_rounds:
        if max_seconds is not None and time.perf_counter() - start > max_seconds and kept + dropped > 0:
            break
        order = names[r % len(names):] + names[:r % len(names)]
        r += 1
        a = meter.snap()
        got = {}
        for name in order:
            if gap_s:
                time.sleep(gap_s)  # the previous side's worker threads stop spinning and sleep
            sides[name]()  # untimed: wakes this side's threads and brings its data back to cache
            got[name] = block_time(sides[name], reps[name]) / reps[name]
        b = meter.snap()
        if meter.disturbed(a, b):
            dropped += 1
            for name, t in got.items():
                disturbed[name].append(t)
            if log is not None:
                other, steal = meter.others(a, b)
                log(f"    round {r}: dropped (other processes {other * 1e3:.0f} ms of CPU, steal "
                    f"{steal * 1e3:.0f} ms, in {b.wall - a.wall:.2f} s)")
            continue
        kept += 1
        for name, t in got.items():
            times[name].append(t)
    return {name: Timing(times[name], kept, dropped, reps[name], disturbed[name]) for name in names}


def wait_for_quiet(meter: Meter, *, probe_s: float = 0.5, max_wait_s: float = 60.0, log=None) -> bool:
    """Sleep until a ``probe_s`` interval passes with the machine idle apart from us (or give up
    after ``max_wait_s``); True when it is quiet."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        a = meter.snap()
        time.sleep(probe_s)
        b = meter.snap()
        if not meter.disturbed(a, b):
            return True
        if time.perf_counter() > deadline:
            if log is not None:
                log("    the machine stayed busy; timing anyway (disturbed rounds are dropped)")
            return False
