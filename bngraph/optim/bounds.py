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

from .records import Bin, If, OptimizerRecord, Ref, Set, is_scalar, walk
from .render_numpy import _var, scalar_text


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
    return _dtype_facts(dtype)[:2]


def _dtype_facts(dtype) -> tuple:
    """``(big, small, cast, name)`` of ``dtype`` (a name or a NumPy dtype), made once per key: a
    step asks for them on every stretch."""
    facts = _LIMITS.get(dtype)
    if facts is None:
        dt = np.dtype(dtype)
        fi = np.finfo(dt)
        cast = np.float32 if dt == np.float32 else float  # a constant as the update uses it
        facts = _LIMITS[dtype] = (float(fi.max) / 4, math.sqrt(float(fi.tiny)), cast, dt.name)
    return facts


class Bounds:
    """The interval analysis of one record, rendered once as straight-line Python over floats
    (``source``; a lo and a hi variable per value, a check after every operation), so that a step
    evaluates it in a few microseconds; evaluated on input intervals by :meth:`run`."""

    def __init__(self, record: OptimizerRecord):
        self.record = record
        self.targets = tuple(sorted({s.target for s in walk(record.body) if isinstance(s, Set)}))
        self.source = _Renderer(record, self.targets).source()
        scope = {"math": math, "Unproved": Unproved}
        exec(compile(self.source, f"<bngraph bounds of {record.name}>", "exec"), scope)
        self._bound = scope["bound"]

    def run(self, values: dict, dtype, inputs: dict) -> dict:
        """The intervals of the arrays the update writes (``p`` and slots), from the input
        intervals ``inputs`` (``"p"``, ``"g"``, slot key -> ``(lo, hi)``) and the launch's
        ``values`` (:meth:`OptimizerRecord.values`); Unproved when a bound fails."""
        big, small, cast, dname = _dtype_facts(dtype)
        for name, (lo, hi) in inputs.items():
            if not (-big <= lo and hi <= big):  # (lo <= hi; NaN fails too)
                what = "the params" if name == "p" else "the gradients" if name == "g" else f"the slot {name!r}"
                raise Unproved(f"{what} hold values up to {max(abs(lo), abs(hi)):.3g}, beyond {big:.3g} "
                               f"(a quarter of {dname}'s largest)")
        try:
            out = self._bound(values, inputs, big, small, cast)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError):  # (TypeError: a complex root)
            raise Unproved("a constant of the update cannot be computed in double precision") from None
        return {k: v for k, v in out.items() if k in inputs}


_TOO_BIG = "a value of the update may exceed a quarter of its dtype's largest"


class _Renderer:
    """The source of ``bound(v, S, big, small, cast) -> {array: (lo, hi)}``: the record's body over
    intervals (``S``: the input intervals by name; ``v``: the launch's values)."""

    def __init__(self, record, targets):
        self.record, self.targets, self.lines, self.n = record, targets, [], 0

    def source(self) -> str:
        head = ["def bound(v, S, big, small, cast):",
                f'    """{self.record.name}: rendered from its record (bngraph.optim.bounds)."""',
                '    p_lo, p_hi = S["p"]', '    g_lo, g_hi = S["g"]']
        head += [f'    s_{t}_lo, s_{t}_hi = S.get("{t}", (0.0, 0.0))' for t in self.targets if t != "p"]
        self.block(self.record.body, 1)
        tail = ["    return {" + ", ".join(f'"{t}": ({_var(t)}_lo, {_var(t)}_hi)' for t in self.targets) + "}"]
        return "\n".join(head + self.lines + tail) + "\n"

    def block(self, stmts, depth) -> None:
        pad = "    " * depth
        for s in stmts:
            if isinstance(s, If):
                c = s.cond
                test = (f'float(v["{c.name}"]) != 0' if c.op == "flag" else f'float(v["{c.name}"]) {c.op} {c.value!r}')
                self.lines.append(f"{pad}if {test}:")
                start = len(self.lines)
                self.block(s.then, depth + 1)
                if len(self.lines) == start:
                    self.lines.append(f"{pad}    pass")
                if s.orelse:
                    self.lines.append(f"{pad}else:")
                    self.block(s.orelse, depth + 1)
            else:  # Set (an array) or Let (a local)
                name = _var(s.target) if isinstance(s, Set) else f"l_{s.name}"
                lo, hi = self.expr(s.expr, pad)
                self.lines.append(f"{pad}{name}_lo, {name}_hi = {lo}, {hi}")

    def temp(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def expr(self, e, pad) -> tuple:
        """Lines computing ``e``'s interval; its (lo, hi) variable names."""
        add, t = self.lines.append, None
        if is_scalar(e):
            t = self.temp()
            add(f"{pad}{t} = {scalar_text(e, self.record.name)}  # as the update computes it (double precision)")
            add(f"{pad}if not abs({t}) <= big:")
            add(f'{pad}    raise Unproved(f"a constant of the update is {{{t}!r}}, too large for its dtype")')
            add(f"{pad}{t} = float(cast({t}))  # used in the params' dtype")
            return t, t
        if isinstance(e, Ref):
            v = _var(e.name) if e.kind == "array" else f"l_{e.name}"
            return f"{v}_lo", f"{v}_hi"
        t = self.temp()
        lo, hi = f"{t}_lo", f"{t}_hi"
        if isinstance(e, Bin) and e.op == "*" and _same(e.a, e.b):  # a square: never negative
            a0, a1 = self.expr(e.a, pad)
            add(f"{pad}{lo} = 0.0 if {a0} <= 0.0 <= {a1} else min({a0} * {a0}, {a1} * {a1})")
            add(f"{pad}{hi} = max({a0} * {a0}, {a1} * {a1})")
        elif isinstance(e, Bin):
            (a0, a1), (b0, b1) = self.expr(e.a, pad), self.expr(e.b, pad)
            if e.op == "+":
                add(f"{pad}{lo}, {hi} = {a0} + {b0}, {a1} + {b1}")
            elif e.op == "-":
                add(f"{pad}{lo}, {hi} = {a0} - {b1}, {a1} - {b0}")
            else:
                if e.op == "/":
                    add(f"{pad}if not ({b0} >= small or {b1} <= -small):")
                    add(f'{pad}    raise Unproved(f"a denominator may be 0 (or below {{small:.3g}})")')
                q = f"({a0} {e.op} {b0}, {a0} {e.op} {b1}, {a1} {e.op} {b0}, {a1} {e.op} {b1})"
                add(f"{pad}{t} = {q}")
                add(f"{pad}{lo}, {hi} = min({t}), max({t})")
        elif e.fn == "sqrt":
            a0, a1 = self.expr(e.args[0], pad)
            add(f"{pad}if {a0} < 0.0:")
            add(f'{pad}    raise Unproved("a square root\'s argument may be negative")')
            add(f"{pad}{lo}, {hi} = math.sqrt({a0}), math.sqrt({a1})")
        elif e.fn == "maximum":
            (a0, a1), (b0, b1) = self.expr(e.args[0], pad), self.expr(e.args[1], pad)
            add(f"{pad}{lo}, {hi} = max({a0}, {b0}), max({a1}, {b1})")
        else:
            raise ValueError(f"{self.record.name}: {e.fn} of arrays has no bound")
        add(f"{pad}if not (-big <= {lo} and {hi} <= big):  # NaN fails too")
        add(f'{pad}    raise Unproved("{_TOO_BIG}")')
        return lo, hi


def _same(a, b) -> bool:
    """The same value: one array or local read twice (``d * d``)."""
    return a is b or (isinstance(a, Ref) and isinstance(b, Ref) and (a.name, a.kind) == (b.name, b.kind))


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
