"""An :class:`~bngraph.optim.records.OptimizerRecord`'s update rendered as array-module code:
``update(xp, p, g, s, D, T, v)`` updates one stretch (``p``, ``g``, the slots ``s`` by name) in
place with ``out=`` passes, using the two scratch arrays ``D`` and ``T`` (like the stretch), and
reads the hyperparameters from ``v`` (:meth:`~bngraph.optim.records.OptimizerRecord.values`).

Each binary operation is one pass, written into the statement's target (``p``, a slot) or a
scratch array; an operand is read before the pass that overwrites it, which the renderer checks
(a record that would need a third scratch array is refused when it is rendered). Scalars (sub-
expressions of hyperparameters) are Python floats computed once per call, so a float32 stretch
gets them as float32, exactly as ``xp.multiply(x, 1 - beta1, out=x)`` does.
"""
from __future__ import annotations

from .records import Bin, Cond, Fn, If, Let, Num, Ref, Set, is_scalar, refs, walk

SCRATCH = ("D", "T")
UFUNCS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide", "maximum": "maximum", "sqrt": "sqrt"}
_CACHE: dict = {}


class RecordError(ValueError):
    """A record the renderer cannot turn into passes (the message says why)."""


def numpy_update(record):
    """The record's update as a Python function (rendered once per record, cached)."""
    fn = _CACHE.get(id(record))
    if fn is None or fn.record is not record:
        source = render(record)
        scope: dict = {}
        exec(compile(source, f"<bngraph optimizer {record.name}>", "exec"), scope)
        fn = scope["update"]
        fn.record, fn.source = record, source
        _CACHE[id(record)] = fn
    return fn


def render(record) -> str:
    """The Python source of ``update(xp, p, g, s, D, T, v)`` for ``record``."""
    r = _Renderer(record)
    body = r.block(record.body, 1)
    head = ["def update(xp, p, g, s, D, T, v):",
            f'    """{record.name}: rendered from its record (bngraph.optim.records)."""']
    head += [f'    {_var(x.name)} = s.get("{x.name}")' for x in record.slots]
    head += [f"    {name} = {text}" for text, name in r.scalars.items()]
    return "\n".join(head + body) + "\n"


def scalar_text(e, record_name: str = "record") -> str:
    """A hyperparameter expression as Python over the launch's values ``v`` (double precision):
    what the hand-written updates computed (``(1 - beta2 ** t) ** 0.5``: sqrt is ``** 0.5`` here, as
    it was). The update's constants, and the bound that proves it (:mod:`bngraph.optim.bounds`)."""
    if isinstance(e, Num):
        return repr(e.value)
    if isinstance(e, Ref):
        return f'v["{e.name}"]'
    if isinstance(e, Bin):
        return f"({scalar_text(e.a, record_name)} {e.op} {scalar_text(e.b, record_name)})"
    if e.fn == "sqrt":
        return f"({scalar_text(e.args[0], record_name)} ** 0.5)"
    if e.fn == "pow":
        return f"({scalar_text(e.args[0], record_name)} ** {scalar_text(e.args[1], record_name)})"
    raise RecordError(f"{record_name}: {e.fn} of scalars")


def _var(name: str) -> str:
    return name if name in ("p", "g") else f"s_{name}"


class _Renderer:
    def __init__(self, record):
        self.record = record
        self.scalars: dict = {}  # Python text -> constant name
        self.order = list(walk(record.body))
        self.where: dict = {}    # local -> the storages it may be in (static: the union over branches)

    # ---- statements --------------------------------------------------------------------------
    def block(self, stmts, depth) -> list:
        pad, out = "    " * depth, []
        for s in stmts:
            if isinstance(s, If):
                before = dict(self.where)
                then = self.block(s.then, depth + 1)
                after_then, self.where = self.where, dict(before)
                orelse = self.block(s.orelse, depth + 1)
                for k in set(after_then) | set(self.where):  # either branch may have run
                    self.where[k] = after_then.get(k, set()) | self.where.get(k, set())
                out.append(f"{pad}if {self.cond(s.cond)}:")
                out += then or [f"{pad}    pass"]
                if orelse:
                    out += [f"{pad}else:"] + orelse
            elif isinstance(s, Set):
                out += [pad + line for line in self.emit(s.expr, _var(s.target), self.busy(s))]
            elif isinstance(s, Let):
                out += [pad + line for line in self.let(s)]
        return out

    def let(self, s: Let) -> list:
        e = s.expr
        if isinstance(e, Ref) and e.kind in ("array", "local"):  # an alias: nothing computed
            self.where[s.name] = self.reads(e)
            return [f"l_{s.name} = {self.operand(e)}"]
        if is_scalar(e):
            raise RecordError(f"{self.record.name}: Let {s.name!r} of hyperparameters only: use the expression itself")
        busy = self.busy(s)
        reads = self.reads(e)
        # where the value goes decides how many scratch arrays a piece touches (its cache footprint):
        # in place of an operand that surely dies here, else D for a value kept across statements,
        # the temporaries of one statement going to T (free()), as the hand-written updates did
        dying = {next(iter(self.where[n])) for n in refs(e, "local") if len(self.where[n]) == 1} & set(SCRATCH)
        candidates = sorted(dying) + [x for x in SCRATCH if x not in reads] + [x for x in SCRATCH if x in reads]
        for target in candidates:
            if target in busy:
                continue
            try:
                lines = self.emit(e, target, busy)
            except RecordError:
                continue
            self.where[s.name] = {target}
            return lines + [f"l_{s.name} = {target}"]
        raise RecordError(f"{self.record.name}: Let {s.name!r} needs a third scratch array")

    def busy(self, stmt) -> set:
        """Scratch arrays holding a local that a later statement reads (the assigned one excluded)."""
        i = next(k for k, s in enumerate(self.order) if s is stmt)
        later = set()
        for s in self.order[i + 1:]:
            if isinstance(s, (Set, Let)):
                later |= refs(s.expr, "local")
        assigned = stmt.name if isinstance(stmt, Let) else None
        return {x for name in later if name != assigned for x in self.where.get(name, ()) if x in SCRATCH}

    def cond(self, c: Cond) -> str:
        v = f'v["{c.name}"]'
        return v if c.op == "flag" else f"{v} {c.op} {c.value!r}"

    # ---- expressions -------------------------------------------------------------------------
    def reads(self, e) -> set:
        """The storages (p, g, slots, D, T) that evaluating ``e`` reads."""
        out = {_var(n) for n in refs(e, "array")}
        for n in refs(e, "local"):
            if n not in self.where:
                raise RecordError(f"{self.record.name}: local {n!r} is read before it is set")
            out |= self.where[n]
        return out

    def leaf(self, e) -> bool:
        return isinstance(e, Ref) and e.kind != "hyper" or is_scalar(e)

    def operand(self, e) -> str:
        if isinstance(e, Ref) and e.kind == "array":
            return _var(e.name)
        if isinstance(e, Ref) and e.kind == "local":
            return f"l_{e.name}"
        text = self.scalar(e)
        return self.scalars.setdefault(text, f"c{len(self.scalars)}")

    def scalar(self, e) -> str:
        return scalar_text(e, self.record.name)

    def free(self, avoid: set) -> str:
        for x in reversed(SCRATCH):  # a statement's temporaries: T first
            if x not in avoid:
                return x
        raise RecordError(f"{self.record.name}: the update needs a third scratch array")

    def emit(self, e, out: str, avoid: set) -> list:
        """Passes that leave ``e`` in ``out``, writing nothing but ``out`` and scratch arrays not
        in ``avoid`` (values needed later); every read happens before its storage is written."""
        if out in avoid:
            raise RecordError(f"{self.record.name}: {out} holds a value needed later")
        if self.leaf(e):
            return [f"{out}[...] = {self.operand(e)}"]
        if isinstance(e, Fn) and e.fn == "pow":
            raise RecordError(f"{self.record.name}: pow of arrays is not a pass")
        name = UFUNCS[e.op if isinstance(e, Bin) else e.fn]
        args = (e.a, e.b) if isinstance(e, Bin) else e.args
        if len(args) == 1:
            (a,) = args
            if self.leaf(a):
                return [f"xp.{name}({self.operand(a)}, out={out})"]
            return self.emit(a, out, avoid) + [f"xp.{name}({out}, out={out})"]
        a, b = args
        la, lb = self.leaf(a), self.leaf(b)
        if la and lb:
            return [f"xp.{name}({self.operand(a)}, {self.operand(b)}, out={out})"]
        if lb:  # a into out, then out op b; if b reads out, a goes to a scratch first
            if out not in self.reads(b):
                return self.emit(a, out, avoid | self.reads(b)) + [f"xp.{name}({out}, {self.operand(b)}, out={out})"]
            tmp = self.free(avoid | {out} | self.reads(b))
            return (self.emit(a, tmp, avoid | {out} | self.reads(b))
                    + [f"xp.{name}({tmp}, {self.operand(b)}, out={out})"])
        if la:  # b into out, then a op out; if a reads out, b goes to a scratch
            if out not in self.reads(a):
                return self.emit(b, out, avoid | self.reads(a)) + [f"xp.{name}({self.operand(a)}, {out}, out={out})"]
            tmp = self.free(avoid | {out} | self.reads(a))
            return (self.emit(b, tmp, avoid | {out} | self.reads(a))
                    + [f"xp.{name}({self.operand(a)}, {tmp}, out={out})"])
        if out not in self.reads(b):  # a into out, b into a scratch
            tmp = self.free(avoid | {out})
            return (self.emit(a, out, avoid | self.reads(b)) + self.emit(b, tmp, avoid | {out})
                    + [f"xp.{name}({out}, {tmp}, out={out})"])
        tmp = self.free(avoid | {out} | self.reads(a))  # b reads out: b first
        return (self.emit(b, tmp, avoid | self.reads(a)) + self.emit(a, out, avoid | {tmp})
                + [f"xp.{name}({out}, {tmp}, out={out})"])
