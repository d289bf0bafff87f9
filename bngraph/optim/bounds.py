"""Can this fused update overflow? Interval bounds of an optimizer record's update, on the host.

A built-in optimizer's fused update runs in place on the live params and slots, with no copy:
a copy of params and slots every step would cost the CPU step ~15% on the 784-1024x3-10 net.
For that to stay all or nothing, the step proves before it runs that the update cannot make a
param or a slot NaN or inf. The proof is interval arithmetic over the record's scalar math
(:mod:`bngraph.optim.records`), evaluated in double precision for each group and dtype:

* inputs: ``|p| <= P``, ``|g| <= G`` and ``|slot| <= S`` measured each step by one reduction
  per flat buffer (:meth:`bngraph.backends.base.Runtime.abs_bound`; the gradients' is the finite
  check the step already made, the params' replaces the check after the update there was); a
  slot's lower end is tracked from the last proved step, so that ``exp_avg_sq >= 0`` is known
  for its square root (measured exactly when unknown: after ``bind``, ``load_state_dict``, a
  reference-path step, a rollback);
* the hyperparameters are points (their combinations computed as the update computes them, in
  double precision, then used in the params' dtype);
* the step is **proved** when every intermediate and every result stays within a quarter of
  the dtype's largest value (rounding cannot carry such a value to inf), every ``sqrt`` takes a
  non-negative interval (a sum or product of non-negative floats is non-negative after rounding
  too) and every division a denominator bounded away from 0 by at least ``sqrt(tiny)``;
  ``x * x`` of one value is a square (non-negative).

Anything not proved (``eps=0``; centered RMSprop's ``sqrt(square_avg - grad_avg**2)``, whose sign
intervals cannot show; values near the dtype's limit) is not a failure: the step then runs on a
snapshot of params and slots and is rolled back if it does overflow (:mod:`bngraph.snapshot`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .records import Bin, If, Num, OptimizerRecord, Ref, Set, holds, is_scalar


class Unproved(Exception):
    """The bound failed: what could not be shown (a sentence)."""


@dataclass
class Verdict:
    """``proved``: the update cannot make anything NaN/inf; ``slots``: (key, dtype) -> the
    interval every slot value lies in after the update (when proved); ``why``: else, why not."""

    proved: bool
    slots: dict
    why: str = ""


_LIMITS: dict = {}


def limits(dtype) -> tuple:
    """``(largest magnitude allowed for any value, smallest allowed denominator)`` in ``dtype``."""
    key = np.dtype(dtype).name
    if key not in _LIMITS:
        fi = np.finfo(np.dtype(dtype))
        _LIMITS[key] = (float(fi.max) / 4, math.sqrt(float(fi.tiny)))
    return _LIMITS[key]


class Bounds:
    """The interval analysis of one record, evaluated on given input intervals."""

    def __init__(self, record: OptimizerRecord):
        self.record = record
        self.targets = {s.target for s in _sets(record.body)}

    def run(self, values: dict, dtype, inputs: dict) -> dict:
        """The intervals of the arrays the update writes (``p`` and slots), from the input
        intervals ``inputs`` (``"p"``, ``"g"``, slot key -> ``(lo, hi)``) and the launch's
        ``values`` (:meth:`OptimizerRecord.values`); Unproved when a bound fails."""
        big, small = limits(dtype)
        for name, (lo, hi) in inputs.items():
            if not (abs(lo) <= big and abs(hi) <= big):
                what = "the params" if name == "p" else "the gradients" if name == "g" else f"the slot {name!r}"
                raise Unproved(f"{what} hold values up to {max(abs(lo), abs(hi)):.3g}, beyond {big:.3g} "
                               f"(a quarter of {np.dtype(dtype).name}'s largest)")
        env = dict(inputs)
        self._exec(self.record.body, env, values, dtype, big, small)
        return {k: env[k] for k in self.targets if k in env}

    def _exec(self, stmts, env, values, dtype, big, small) -> None:
        for s in stmts:
            if isinstance(s, If):
                self._exec(s.then if holds(s.cond, values) else s.orelse, env, values, dtype, big, small)
            else:  # Set (an array) or Let (a local: "$name")
                key = s.target if isinstance(s, Set) else "$" + s.name
                env[key] = self._expr(s.expr, env, values, dtype, big, small)

    def _expr(self, e, env, values, dtype, big, small) -> tuple:
        if is_scalar(e):
            x = float(np.asarray(_scalar(e, values), dtype=np.float64))
            if not abs(x) <= big:
                raise Unproved(f"a constant of the update is {x!r}, too large for {np.dtype(dtype).name}")
            x = float(np.asarray(x, dtype=dtype))  # used in the params' dtype
            return x, x
        if isinstance(e, Ref):
            return env[e.name if e.kind == "array" else "$" + e.name]
        if isinstance(e, Bin):
            a = self._expr(e.a, env, values, dtype, big, small)
            if e.op == "*" and _same(e.a, e.b):  # a square: never negative
                lo, hi = sorted((a[0] * a[0], a[1] * a[1]))
                r = (0.0 if a[0] <= 0.0 <= a[1] else lo, hi)
            else:
                b = self._expr(e.b, env, values, dtype, big, small)
                r = _BIN[e.op](a, b, small)
        elif e.fn == "sqrt":
            a = self._expr(e.args[0], env, values, dtype, big, small)
            if a[0] < 0.0:
                raise Unproved("a square root's argument may be negative")
            r = (math.sqrt(a[0]), math.sqrt(a[1]))
        elif e.fn == "maximum":
            a = self._expr(e.args[0], env, values, dtype, big, small)
            b = self._expr(e.args[1], env, values, dtype, big, small)
            r = (max(a[0], b[0]), max(a[1], b[1]))
        else:
            raise Unproved(f"{e.fn} of arrays has no bound")
        if not (abs(r[0]) <= big and abs(r[1]) <= big):
            raise Unproved(f"a value of the update may exceed {big:.3g} (a quarter of "
                           f"{np.dtype(dtype).name}'s largest)")
        return r


def _same(a, b) -> bool:
    """The same value: one array or local read twice (``d * d``)."""
    return a is b or (isinstance(a, Ref) and isinstance(b, Ref) and (a.name, a.kind) == (b.name, b.kind))


def _sets(body):
    for s in body:
        if isinstance(s, If):
            yield from _sets(s.then)
            yield from _sets(s.orelse)
        elif isinstance(s, Set):
            yield s


def _div(a, b, small):
    if not (b[0] >= small or b[1] <= -small):
        raise Unproved(f"a denominator may be 0 (or below {small:.3g})")
    q = (a[0] / b[0], a[0] / b[1], a[1] / b[0], a[1] / b[1])
    return min(q), max(q)


def _mul(a, b, small):
    q = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(q), max(q)


_BIN = {"+": lambda a, b, s: (a[0] + b[0], a[1] + b[1]),
        "-": lambda a, b, s: (a[0] - b[1], a[1] - b[0]),
        "*": _mul, "/": _div}


def _scalar(e, values) -> float:
    """A hyperparameter expression in double precision, as the update computes it."""
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Ref):
        return float(values[e.name])
    if isinstance(e, Bin):
        a, b = _scalar(e.a, values), _scalar(e.b, values)
        try:
            return {"+": a + b, "-": a - b, "*": a * b}[e.op] if e.op != "/" else a / b
        except ZeroDivisionError:
            return math.inf
    args = [_scalar(a, values) for a in e.args]
    try:
        return math.sqrt(args[0]) if e.fn == "sqrt" else math.pow(*args)
    except (ValueError, OverflowError):
        return math.inf


_ANALYSES: dict = {}


def analysis(record: OptimizerRecord) -> Bounds:
    """The record's analysis (made once per record)."""
    a = _ANALYSES.get(id(record))
    if a is None or a.record is not record:
        a = _ANALYSES[id(record)] = Bounds(record)
    return a


def certify(record: OptimizerRecord, plan, p_bound: dict, g_bound: dict, slots: dict) -> Verdict:
    """Whether the fused step ``plan`` (:class:`~bngraph.optim.flatstep.FusedPlan`) is proved not to
    overflow, given ``|p| <= p_bound[dtype]``, ``|g| <= g_bound[dtype]`` and the slot intervals
    ``slots[(key, dtype)]``; with the slot intervals after it."""
    a, out = analysis(record), dict(slots)
    for gp in plan.groups:
        for s in plan.stretches[gp.index]:
            dt = s.dtype
            inputs = {"p": (-p_bound[dt], p_bound[dt]), "g": (-g_bound[dt], g_bound[dt])}
            for key in s.slots:
                inputs[key] = slots[(key, dt)]
            try:
                result = a.run(record.values(s.hp, s.t, s.fresh), dt, inputs)
            except Unproved as e:
                return Verdict(False, {}, str(e))
            for key in s.slots:  # with the old interval: the slot's other stretches may keep their values
                if key in result:
                    (lo, hi), old = result[key], out[(key, dt)]
                    out[(key, dt)] = (min(lo, old[0]), max(hi, old[1]))
    return Verdict(True, out)


def prove(opt, P, G, p_bound: dict, g_bound: dict, runtime) -> Verdict:
    """Whether ``opt``'s next fused step on the flat params ``P`` and grads ``G`` is proved not to
    make a param or a slot NaN/inf, given ``|p| <= p_bound[dtype]`` and ``|g| <= g_bound[dtype]``.
    Each slot's interval: its magnitude measured now (``runtime.abs_bound``: NaN/inf, or a value
    written into it from outside, shows), its lower end tracked from the last proved step
    (``binding.intervals``; it keeps ``exp_avg_sq`` >= 0 for the square root), measured exactly
    (``runtime.value_range``) when unknown. Nothing changes: the caller keeps ``verdict.slots``
    as ``binding.intervals`` once the step has run."""
    record = getattr(type(opt), "record", None)
    if not isinstance(record, OptimizerRecord):
        return Verdict(False, {}, f"{type(opt).__name__} has no record to bound its update")
    plan = opt.plan_fused(P, G)
    if plan is None:
        return Verdict(False, {}, "this step takes the reference path")
    b = opt.binding
    tracked = b.intervals or {}
    known = {}
    for key in {(k, s.dtype) for stretches in plan.stretches.values() for s in stretches for k in s.slots}:
        a = b.slots[key[0]].buffers[key[1]]
        if key in tracked:
            m = runtime.abs_bound(a)
            known[key] = (max(tracked[key][0], -m), m)
        else:
            known[key] = runtime.value_range(a)
    return certify(record, plan, p_bound, g_bound, known)
