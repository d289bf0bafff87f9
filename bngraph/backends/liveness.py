"""Buffers that share memory, for every target: a batch-sized value that is dead before another one
is born can use the same array, so a step holds the forward activations and a few backward buffers
at a time instead of one buffer per value (the 784-1024x3-10 net at b1024: 36 MiB of buffers on the
NumPy target, not 60; 32 MiB on the CUDA target, not 48).

A buffer is *live* from the step that writes it to the last step that reads it (through identity
aliases); a returned value or one copied into a gradient at the end lives to the end. Two buffers
share an array only when both are batch-sized, have the same shape and dtype, and one's last read
comes strictly before the other's first write: a step never writes into an array that one of its
own inputs, or another of its outputs or temporaries, is using, so in-place tricks inside a
template (or a kernel's ``__restrict__`` pointers) stay safe. The per-unit buffers a device target
keeps (``buffer_all``: a batch norm's mean, the loss) each keep an array of their own.

The plan (:func:`bngraph.backends.lowering.plan_program`) runs this once per program and records
the result (``Plan.slots``, ``Plan.live``, ``Step.reuses``); every target allocates through
``Plan.allocate``, so ``B`` maps several keys to one array and the generated code keeps its names.
"""
from __future__ import annotations

from ..ir import BATCH
from ..ops_spatial import is_spatial


def is_batch_sized(t) -> bool:
    """A ``(features, m)`` value or a spatial ``(C, m, d...)`` one: what gets a buffer per batch
    size, and what may share one."""
    return (t.rank == 2 and BATCH in t.shape) or is_spatial(t)


def live_ranges(plan) -> dict:
    """buffer key -> (first step, last step) of ``plan``'s buffers."""
    end = len(plan.steps)
    first, last = {}, {}
    for i, step in enumerate(plan.steps):
        for name in step.node.inputs:
            name = plan.resolve(name)
            if name in first:
                last[name] = i
        for dest in step.dests:
            if dest is not None and dest.kind == "buffer":
                first[dest.key], last[dest.key] = i, i
        for key in step.temp_buffers.values():
            first[key], last[key] = i, i
    for _, value in (*plan.outputs, *plan.copies):  # returned, or copied into G after the last step
        value = plan.resolve(value)
        if value in first:
            last[value] = end
    return {k: (first[k], last[k]) for k in first}


def share(plan, ranges: dict | None = None) -> dict:
    """buffer key -> slot number: keys with the same slot use one array (batch-sized, same type,
    disjoint lives). Greedy in order of first write: a buffer takes the first free slot of its
    type, else a new one; slots are numbered in order of first use."""
    types = dict(plan.buffers)
    ranges = live_ranges(plan) if ranges is None else ranges
    slots: dict = {}            # key -> slot
    busy_until: list = []       # slot -> last step of its current occupant
    slot_type: list = []        # slot -> TensorType, None for a slot that is never shared
    for key in sorted(ranges, key=lambda k: ranges[k]):
        start, stop = ranges[key]
        t = types[key]
        shareable = is_batch_sized(t)
        free = next((s for s in range(len(busy_until)) if shareable and slot_type[s] == t and busy_until[s] < start),
                    None)
        if free is None:
            free = len(busy_until)
            busy_until.append(stop)
            slot_type.append(t if shareable else None)
        busy_until[free] = stop
        slots[key] = free
    return slots


def previous_occupants(slots: dict, ranges: dict) -> dict:
    """buffer key -> the key whose array it takes over (the slot's occupant just before it), for
    the keys that reuse an array; the generated code says so in a comment."""
    by_slot: dict = {}
    for key in sorted(slots, key=lambda k: ranges[k]):
        by_slot.setdefault(slots[key], []).append(key)
    return {later: earlier for keys in by_slot.values() for earlier, later in zip(keys, keys[1:])}
