"""Optimizer records (:mod:`bngraph.optim.records`) as CUDA kernels: one kernel per record,
rendered from its scalar math (templates/cuda/optim.cu.j2), compiled as a small module of its own
by the runtime's compiler and launched once per stretch of the flat parameter buffer, every
hyperparameter (lr and the step count included) read from a device vector ``h`` in the record's
order. Any optimizer with a record and no overridden ``update``/``step`` gets one, a record
written in a test as much as a built-in; anything else keeps the array-module path
(``optimizer.step_flat`` on the runtime's arrays) or the protocol (``step``)."""
from __future__ import annotations

import numpy as np

from ...optim.base import Optimizer
from ...optim.records import Bin, Cond, If, Let, Num, OptimizerRecord, Ref, Set, is_scalar, walk
from ..base import template_env

BLOCK = 256
MODE_CHECK, MODE_COMMIT, MODE_STORE = np.int32(0), np.int32(1), np.int32(2)  # optim.cu.j2's modes
STATUS_CLEAR = (0, 0, 2**63 - 1, 2**63 - 1, 2**63 - 1)  # step.cu.j2's status before any flag
CTYPES = {"float32": "float", "float64": "double"}


def record_of(opt) -> OptimizerRecord | None:
    """The record whose kernel updates exactly as ``opt`` does, else None (a user's ``update``)."""
    rec = getattr(type(opt), "record", None)
    return rec if isinstance(opt, Optimizer) and isinstance(rec, OptimizerRecord) and opt.fused else None


def builtin_kind(opt) -> str | None:
    """The kernel's name (``optim_<kind>``) for ``opt``, or None when it has no record."""
    rec = record_of(opt)
    return None if rec is None else rec.name


def slot_args(record: OptimizerRecord, p, slots: dict) -> tuple:
    """The slot arrays a kernel takes, in the record's order (``p`` stands in for a slot that is off)."""
    return tuple(slots.get(s.name, p) for s in record.slots)


def launch_args(record: OptimizerRecord, stretch) -> tuple:
    """``(slot arrays, h)`` of one launch on a fused step's ``stretch``
    (:class:`bngraph.optim.flatstep.Stretch`)."""
    return slot_args(record, stretch.p, stretch.slots), record.vector(stretch.hp, stretch.t, stretch.fresh)


def grid_for(n: int) -> tuple:
    return (max(1, min((n + BLOCK - 1) // BLOCK, 65535)),)


# ---- rendering --------------------------------------------------------------------------------

def render_kernel(record: OptimizerRecord) -> str:
    """The CUDA source of ``optim_<name>``: the record's statements, element by element."""
    r = _Kernel(record)
    body = r.block(record.body, 2)
    return template_env("cuda").get_template("optim.cu.j2").module.kernel(
        name=record.name, slots=[s.name for s in record.slots], hyper=list(record.hyper),
        scalars=list(r.scalars.items()), locals=[f"l_{n}" for n in sorted(r.locals)],
        targets=[(t, "p" if t == "p" else f"s_{t}") for t in targets(record)], body=body)


def targets(record: OptimizerRecord) -> list:
    """The arrays the update writes, in the order of ``which`` in the status: ``p``, then the slots
    in the record's order."""
    written = {s.target for s in walk(record.body) if isinstance(s, Set)}
    return [t for t in ("p", *(s.name for s in record.slots)) if t in written]


def module_source(record: OptimizerRecord, dtype) -> str:
    """The module the runtime compiles for ``record`` in ``dtype``: the status protocol of the
    guarded step (step.cu.j2) and the kernel."""
    return template_env("cuda").get_template("optim.cu.j2").render(
        ctype=CTYPES[np.dtype(dtype).name], optimizer_kernels=[render_kernel(record)])


class _Kernel:
    def __init__(self, record):
        self.record = record
        self.scalars: dict = {}  # constant name -> C text (double), cast to real once
        self.locals: set = set()

    def block(self, stmts, depth) -> list:
        pad, out = "    " * depth, []
        for s in stmts:
            if isinstance(s, If):
                out.append(f"{pad}if ({self.cond(s.cond)}) {{")
                out += self.block(s.then, depth + 1)
                out.append(f"{pad}}}" + (" else {" if s.orelse else ""))
                if s.orelse:
                    out += self.block(s.orelse, depth + 1) + [f"{pad}}}"]
            elif isinstance(s, Set):  # into its register; stored after the element's checks
                out.append(f"{pad}n_{s.target} = {self.expr(s.expr)}; w_{s.target} = true;")
            elif isinstance(s, Let):
                self.locals.add(s.name)
                out.append(f"{pad}l_{s.name} = {self.expr(s.expr)};")
        return out

    def h(self, name: str) -> str:
        return f"h[{self.record.hyper.index(name)}]"

    def cond(self, c: Cond) -> str:
        return f"{self.h(c.name)} != 0" if c.op == "flag" else f"{self.h(c.name)} {c.op} {c.value!r}"

    def array(self, name: str) -> str:
        return "g[i]" if name == "g" else f"n_{name}"  # p and the slots: their registers

    def expr(self, e) -> str:
        if is_scalar(e):
            text = f"(real){self.scalar(e)}"
            for k, v in self.scalars.items():
                if v == text:
                    return k
            self.scalars[f"c{len(self.scalars)}"] = text
            return f"c{len(self.scalars) - 1}"
        if isinstance(e, Ref):
            return self.array(e.name) if e.kind == "array" else f"l_{e.name}"
        if isinstance(e, Bin):
            return f"({self.expr(e.a)} {e.op} {self.expr(e.b)})"
        if e.fn == "sqrt":
            return f"sqrt({self.expr(e.args[0])})"
        if e.fn == "maximum":
            return f"nan_max({self.expr(e.args[0])}, {self.expr(e.args[1])})"
        raise ValueError(f"{self.record.name}: {e.fn} of arrays has no kernel")

    def scalar(self, e) -> str:
        """A hyperparameter expression in double precision, as the vector holds them."""
        if isinstance(e, Num):
            return repr(e.value)
        if isinstance(e, Ref):
            return self.h(e.name)
        if isinstance(e, Bin):
            return f"({self.scalar(e.a)} {e.op} {self.scalar(e.b)})"
        if e.fn in ("sqrt", "pow"):
            return f"{e.fn}({', '.join(self.scalar(a) for a in e.args)})"
        raise ValueError(f"{self.record.name}: {e.fn} of scalars has no kernel")


# ---- loading and launching ----------------------------------------------------------------------

class RecordKernels:
    """A record's kernel compiled by ``runtime`` for one dtype (the compiler caches by text)."""

    def __init__(self, runtime, record: OptimizerRecord, dtype):
        self.name = f"optim_{record.name}"
        self.source = runtime.optimizer_source(record, dtype)
        self.launch = runtime.launcher.bind(runtime.compiler.compile(self.source))


class FusedUpdate:
    """A record's update as this target's kernel, launched at once with a fresh ``h`` array and no
    guard: ``opt.bind(..., kernel=)`` calls it once per stretch of the flat buffer
    (``(opt, p, g, slots, hp, t, fresh)``). The guarded step (:mod:`.step`) launches the same
    kernel itself, after its checks, reading ``h`` from device memory."""

    def __init__(self, record: OptimizerRecord, runtime):
        self.record, self.runtime = record, runtime
        self.kernels: dict = {}  # dtype name -> RecordKernels
        self.status = self.header = None

    def for_dtype(self, dtype) -> RecordKernels:
        key = np.dtype(dtype).name
        if key not in self.kernels:
            self.kernels[key] = RecordKernels(self.runtime, self.record, dtype)
        return self.kernels[key]

    def __call__(self, opt, p, g, slots, hp, t, fresh):
        rt, k = self.runtime, self.for_dtype(p.dtype)
        if self.status is None:  # never flagged: the kernels' guard reads zeros
            self.status = rt.asarray(np.array(STATUS_CLEAR, np.uint64), np.uint64)
            self.header = rt.asarray(np.zeros(2), np.float64)
        h = self.record.vector(hp, t, fresh)
        k.launch(k.name, grid_for(p.size), (BLOCK,), self.status, self.header, np.int64(0), p, g,
                 *slot_args(self.record, p, slots), rt.asarray(h, np.float64), np.int64(p.size), MODE_STORE)


def make_kernel(runtime, opt):
    """A :class:`FusedUpdate` for ``opt.bind(..., kernel=)``, or None when ``opt`` has no record
    (a record's kernel is a module of its own, compiled by ``runtime``)."""
    rec = record_of(opt)
    return None if rec is None else FusedUpdate(rec, runtime)
