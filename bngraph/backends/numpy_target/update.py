"""How the NumPy runtime runs a fused optimizer step (:class:`HostLanes`, its ``update_executor``):
the optimizer's array-module update over each group's stretches, cut into pieces that stay in the
CPU's cache across the update's passes, and split into contiguous lanes that run at once on host
threads (NumPy releases the GIL inside its loops; every element gets the same operations whatever
the split, so the numbers do not change).

Registered for NumPy arrays, so ``opt.bind(layout, np, block=, threads=)`` without a runtime gets it too.
"""
from __future__ import annotations

import numpy as np

from ... import hostthreads
from ...optim.executors import Prepared, UpdateExecutor, check_block, register

#: The longest piece by default: 2**18 elements (1 MiB of float32), so each piece's arrays stay in the
#: CPU's cache across the update's passes (docs/optimizers.md, "Performance notes").
NUMPY_BLOCK = 1 << 18


class HostLanes(UpdateExecutor):
    """Pieces of at most ``block`` elements ("auto": :data:`NUMPY_BLOCK`; None: whole runs), each
    group split into up to ``threads`` contiguous lanes of nearly equal length on host threads
    ("auto": :func:`bngraph.hostthreads.default_threads`, read when prepared); a group too short to
    pay for a thread stays on one (:data:`bngraph.hostthreads.MIN_LANE`)."""

    def __init__(self, block: int | None | str = "auto", threads: int | str = "auto"):
        self.block = NUMPY_BLOCK if block == "auto" else check_block(block)
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive number or 'auto', got {threads!r}")
        self.threads = threads

    def prepare(self, binding) -> "Lanes":
        threads = hostthreads.default_threads() if self.threads == "auto" else self.threads
        return Lanes(binding, self.block, threads)


class Lanes(Prepared):
    """:class:`HostLanes` ready for one binding. ``lanes``: group index -> its lanes, each a list
    of pieces ``(stretch index, slice of the stretch or None, slice of the scratch)``; ``scratch``:
    lane -> its two scratch dicts (dtype -> array); ``block``, ``threads`` as prepared."""

    def __init__(self, binding, block, threads):
        self.xp, self.block, self.threads = binding.xp, block, threads
        self.lanes, longest = [], 0
        for runs in binding.runs:
            group, n_longest = _split(runs, block, threads)
            self.lanes.append(group)
            longest = max(longest, n_longest)
        xp, totals = binding.xp, binding.layout.totals
        # lane 0 (and every single-lane group): min(buffer, block) long, never shorter than a piece
        self.scratch = [tuple({dt: xp.empty(min(n, block or n), dtype=dt) for dt, n in totals.items()}
                              for _ in range(2))]
        self.scratch += [tuple({dt: xp.empty(longest, dtype=dt) for dt in totals} for _ in range(2))
                         for _ in range(max((len(g) for g in self.lanes), default=1) - 1)]

    def run(self, opt, plan) -> None:
        update = plan.array_update
        for gp in plan.groups:
            stretches, lanes = plan.stretches[gp.index], self.lanes[gp.index]
            if len(lanes) > 1:
                hostthreads.run_lanes(lambda i: self.lane(update, stretches, lanes[i], self.scratch[i]),
                                      list(range(len(lanes))))
            else:
                self.lane(update, stretches, lanes[0], self.scratch[0])

    def lane(self, update, stretches, pieces, scratch) -> None:
        """One lane's pieces of a group's ``stretches``, with the lane's ``scratch``, in order."""
        xp, (D, T) = self.xp, scratch
        for k, sub, scut in pieces:
            s = stretches[k]
            if sub is None:
                update(xp, s.p, s.g, s.slots, D[s.dtype][scut], T[s.dtype][scut], s.hp, s.t, s.fresh)
            else:
                update(xp, s.p[sub], s.g[sub], {key: a[sub] for key, a in s.slots.items()},
                       D[s.dtype][scut], T[s.dtype][scut], s.hp, s.t, s.fresh)


def _split(runs: list, block, threads: int) -> tuple:
    """A group's runs in contiguous lanes of nearly equal length (each cut into pieces of at most
    ``block``): ``(lanes, longest piece)``; one lane when the group is too short for two."""
    n = sum(stop - start for _, start, stop in runs)
    k = hostthreads.lanes_for(n, threads)
    bounds = [lo for lo, _ in hostthreads.split(0, n, k)][1:] + [n]  # where each lane ends
    lanes, lane, done, longest = [[] for _ in range(k)], 0, 0, 0
    for i, (_, start, stop) in enumerate(runs):
        at = start
        while at < stop:
            end = min(stop, at + bounds[lane] - done, at + (block or stop))
            whole = at == start and end == stop
            lanes[lane].append((i, None if whole else slice(at - start, end - start), slice(0, end - at)))
            longest = max(longest, end - at)
            done += end - at
            at = end
            if done == bounds[lane] and lane < k - 1:
                lane += 1
    return lanes, longest


register(np, HostLanes)
