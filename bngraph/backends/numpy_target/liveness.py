"""Buffers that share memory: a batch-sized value that is dead before another one is born can use
the same array, so a step holds the forward activations and a few backward buffers at a time
instead of one buffer per value (the 784-1024x3-10 net at b1024: 36 MiB of buffers, not 60).

A buffer is *live* from the step that writes it to the last step that reads it (through identity
aliases); a returned value or one copied into a gradient at the end lives to the end. Two buffers
share an array only when they have the same shape and dtype and one's last read comes strictly
before the other's first write: a step never writes into an array that one of its own inputs, or
another of its outputs or temporaries, is using, so in-place tricks inside a template stay safe.
The generated code does not change: ``B`` simply maps several keys to one array.
"""
from __future__ import annotations


def live_ranges(plan) -> dict:
    """buffer key -> (first step, last step) of ``plan``'s batch-sized buffers."""
    end = len(plan.steps)
    first, last = {}, {}
    for i, step in enumerate(plan.steps):
        for name in step.node.inputs:
            name = plan.resolve(name)
            if name in first:
                last[name] = i
        for out, dest in zip(step.node.outputs, step.dests):
            if dest is not None and dest.kind == "buffer":
                first[dest.key], last[dest.key] = i, i
        for key in step.temp_buffers.values():
            first[key], last[key] = i, i
    for _, value in plan.outputs:
        value = plan.resolve(value)
        if value in first:
            last[value] = end
    for _, value in plan.copies:
        value = plan.resolve(value)
        if value in first:
            last[value] = end
    return {k: (first[k], last[k]) for k in first}


def share(plan) -> dict:
    """buffer key -> slot number: keys with the same slot use one array (same type, disjoint lives)."""
    types = dict(plan.buffers)
    ranges = live_ranges(plan)
    slots: dict = {}            # key -> slot
    busy_until: list = []       # slot -> last step of its current occupant
    slot_type: list = []        # slot -> TensorType
    for key in sorted(ranges, key=lambda k: ranges[k]):
        start, stop = ranges[key]
        t = types[key]
        free = next((s for s in range(len(busy_until)) if slot_type[s] == t and busy_until[s] < start), None)
        if free is None:
            free = len(busy_until)
            busy_until.append(stop)
            slot_type.append(t)
        busy_until[free] = stop
        slots[key] = free
    return slots
