"""The lowering plan: what every target needs to know about a program before it writes a line.

``plan_program(name, graph, lowerings, target)`` walks a program (a graph: ``train_step``,
``forward``...) once and decides, independently of the target's language,

* the identifier of every value (``fc1.W`` -> ``fc1_W``), unique within the function;
* for each node, its :class:`Lowering` (from the target's table keyed by op: a missing entry is one
  clear error, "target X has no lowering for op Y (node %z)") and the template variant it picks;
* where each output is written: a batch-sized buffer (``B``, allocated once per batch size), the
  gradient view of a parameter (``G``: the train step writes ``grad.<param>`` straight into the
  flat gradient buffer), or nowhere (a small per-unit value the target allocates as it likes);
* the temporaries each node needs (per-unit ones by name; batch-sized ones get buffers too);
* which buffers share one array (:mod:`bngraph.backends.liveness`: batch-sized buffers whose lives
  do not overlap): ``Plan.slots``, and for each step the arrays it takes over (``Step.reuses``);
* how to read the batch size, and what the program returns.

A target's renderer turns the plan into text; its runtime allocates the plan's buffers with
``Plan.allocate(m, empty)``: one array per slot, every buffer key mapped to its slot's array.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ir import BATCH, DTYPES, IRError, Node
from .liveness import is_batch_sized, live_ranges, previous_occupants, share


class LoweringError(IRError):
    """A target cannot lower an op (or a program lacks what the target needs)."""


@dataclass(frozen=True)
class Lowering:
    """How one target lowers one op.

    ``template``: a file under ``templates/<target>/``, or ``attrs -> file name`` when the op has
    variants (train/eval...): the variant is chosen here, in Python, not inside the template.
    ``temps``: per-unit temporaries, named ``<first output>.<temp>``. ``temp_buffers``: batch-sized
    temporaries shaped like the first output (``attrs -> names`` when it depends on a variant), or
    as ``temp_buffer_types(node, input types)`` says (``{temp: TensorType}``: a conv's im2col
    columns, typed ``(C*k*o, m)``).
    ``alias``: the output is the input itself (identity): no buffer, no code beyond a name.
    ``context``: ``(node, input expressions) -> dict`` of extra template variables computed in Python.
    ``const``: the output is a compile-time constant (``fill``): no buffer and no code; a target
    that sets it writes the value into the code that reads it.
    """

    template: str | Callable[[dict], str]
    temps: tuple = ()
    temp_buffers: tuple | Callable[[dict], tuple] = ()
    alias: bool = False
    context: Callable | None = None
    const: bool = False
    temp_buffer_types: Callable | None = None  # last: Lowering's positional fields keep their places

    def template_for(self, attrs: dict) -> str:
        """The template file for a node with these attributes."""
        return self.template(attrs) if callable(self.template) else self.template

    def temp_buffers_for(self, attrs: dict) -> tuple:
        """The batch-sized temporaries for a node with these attributes."""
        return tuple(self.temp_buffers(attrs)) if callable(self.temp_buffers) else tuple(self.temp_buffers)


@dataclass(frozen=True)
class Dest:
    """Where an output is written: ``kind`` 'buffer' (``B[key]``) or 'grad' (``G[key]``, key = the param)."""

    kind: str
    key: str


@dataclass
class Step:
    """One node of the program, lowered."""

    node: Node
    lowering: Lowering
    template: str
    outs: list  # identifiers of the outputs
    dests: list  # a Dest or None per output
    temps: dict  # temp name -> identifier
    temp_buffers: dict  # temp name -> buffer key
    reuses: dict = field(default_factory=dict)  # buffer key this step writes -> the key whose array it takes over


@dataclass
class Plan:
    """A program, planned: see the module docstring."""

    name: str
    graph: object
    target: str
    idents: dict  # IR value name -> identifier (inputs and node outputs)
    kinds: dict  # IR value name -> 'input', 'param', 'state', 'node' or 'const'
    types: dict  # IR value name -> TensorType
    steps: list
    buffers: list  # [(key, TensorType)], batch-sized (every output with buffer_all), in first-use order
    grads: dict  # param name -> the value holding its gradient (the grad.* outputs)
    copies: list  # [(param, value)]: gradients that could not be written in place (copied at the end)
    batch: tuple  # (input name, axis): where the batch size m is read
    outputs: list  # [(key, value name)]
    aliases: dict = field(default_factory=dict)  # value -> the value it is (identity)
    consts: dict = field(default_factory=dict)  # value -> its float value (const lowerings: fill)
    slots: dict = field(default_factory=dict)  # buffer key -> array number: keys with one number share an array
    live: dict = field(default_factory=dict)  # buffer key -> (first step, last step) that uses it

    @property
    def inputs(self) -> list:
        return list(self.graph.inputs)

    @property
    def has_grads(self) -> bool:
        return bool(self.grads)

    def buffer_shapes(self, m: int) -> list:
        """``[(key, concrete shape, dtype)]`` at batch size ``m``, one per buffer (shared or not)."""
        return [(k, t.concrete_shape(m), t.dtype) for k, t in self.buffers]

    @property
    def arrays(self) -> list:
        """``[(keys, TensorType)]``: one entry per array, in slot order, with the buffer keys it holds
        (in first-use order). Without sharing (empty ``slots``) every buffer is an array of its own."""
        if not self.slots:
            return [([k], t) for k, t in self.buffers]
        out: dict = {}
        for k, t in self.buffers:
            out.setdefault(self.slots[k], ([], t))[0].append(k)
        return [out[s] for s in sorted(out)]

    def array_shapes(self, m: int) -> list:
        """``[(keys, concrete shape, dtype)]`` at batch size ``m``: what a runtime allocates."""
        return [(keys, t.concrete_shape(m), t.dtype) for keys, t in self.arrays]

    def nbytes(self, m: int, shared: bool = True) -> int:
        """Bytes of the buffers at batch size ``m``: of the arrays (``shared``) or of one array per buffer."""
        shapes = [(s, dt) for _, s, dt in (self.array_shapes(m) if shared else self.buffer_shapes(m))]
        return sum(int(np.prod(s, dtype=np.int64)) * np.dtype(DTYPES[dt]).itemsize for s, dt in shapes)

    def allocate(self, m: int, empty) -> dict:
        """``{buffer key: array}`` at batch size ``m``, from ``empty(shape, numpy dtype)`` (a runtime's):
        one array per slot, every key of a slot mapped to it. A captured graph replays on these
        arrays, so a runtime keeps one such dict per batch size (``Executable.buffers``, ``Replays``)."""
        bufs = {}
        for keys, shape, dt in self.array_shapes(m):
            a = empty(shape, DTYPES[dt])
            bufs.update((k, a) for k in keys)
        return {k: bufs[k] for k, _ in self.buffers}  # in the plan's order

    def expr(self, name: str) -> str:
        """How the generated code names a value: params and state through the ``P`` and ``S``
        dicts every program takes, a constant by its literal, everything else by its identifier."""
        kind = self.kinds[name]
        if kind == "const":
            return repr(self.consts[name])
        if kind == "param":
            return f'P["{name}"]'
        if kind == "state":
            return f'S["{name}"]'
        return self.idents[name]

    def signature(self) -> list:
        """The generated function's arguments: the inputs, then ``P, S[, G], B``."""
        return [self.expr(v.name) for v in self.inputs] + ["P", "S"] + (["G"] if self.has_grads else []) + ["B"]

    def returns(self) -> list:
        """``[(output key, expression)]``: gradients are returned as their ``G`` arrays."""
        return [(k, f'G["{k[len("grad."):]}"]' if k.startswith("grad.") else self.expr(v)) for k, v in self.outputs]

    @staticmethod
    def dest_expr(dest) -> str | None:
        """The array an output is written into: ``B["key"]`` (a buffer) or ``G["param"]``."""
        if dest is None:
            return None
        return f'{"B" if dest.kind == "buffer" else "G"}["{dest.key}"]'

    def reuse_notes(self, step: Step) -> list:
        """What a step's comment says about the arrays it takes over: ``B["act1.grad"] reuses the
        array of B["out.matmul"] (no longer read)``, one line per buffer it writes into a shared array."""
        return [f'B["{k}"] reuses the array of B["{prev}"] (no longer read)' for k, prev in step.reuses.items()]

    def buffer_summary(self) -> str | None:
        """One line for the generated function: how many batch-sized buffers, in how many arrays,
        and how many small (per-unit) ones (None when there are no buffers)."""
        if not self.buffers:
            return None
        big = [k for k, t in self.buffers if is_batch_sized(t)]
        arrays = {self.slots.get(k, k) for k in big}
        small = len(self.buffers) - len(big)
        line = f"B: {_count(len(big), 'batch-sized buffer')} in {_count(len(arrays), 'array')}"
        if len(arrays) < len(big):
            line += " (buffers whose lives do not overlap share one)"
        return line + (f", {_count(small, 'small buffer')} of their own" if small else "")

    def resolve(self, name: str) -> str:
        """Follow identity aliases to the value that holds the data."""
        while name in self.aliases:
            name = self.aliases[name]
        return name


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


class Namer:
    """IR value names -> identifiers (``fc1.W`` -> ``fc1_W``), unique within one function."""

    def __init__(self, reserved=()):
        self.taken = set(reserved)
        self.names: dict = {}

    def __call__(self, ir_name: str) -> str:
        if ir_name not in self.names:
            base = "".join(c if c.isalnum() or c == "_" else "_" for c in ir_name)
            if not base or base[0].isdigit() or keyword.iskeyword(base):
                base = "v_" + base
            name, k = base, 1
            while name in self.taken:
                k += 1
                name = f"{base}_{k}"
            self.taken.add(name)
            self.names[ir_name] = name
        return self.names[ir_name]


def plan_program(name: str, g, lowerings: dict, target: str, reserved=(), buffer_all: bool = False,
                 share_buffers: bool = True) -> Plan:
    """Plan program ``name`` (graph ``g``) for a target whose lowering table is ``lowerings``.

    ``buffer_all``: every output gets a buffer, not only the batch-sized ones (a device target
    cannot allocate small arrays on the fly inside a step, or inside a captured graph).
    ``share_buffers``: batch-sized buffers whose lives do not overlap share arrays
    (:mod:`bngraph.backends.liveness`); False gives every buffer its own (tests compare the two)."""
    namer = Namer(reserved)
    idents, kinds, types = {}, {}, {}
    for v in g.inputs:
        idents[v.name], kinds[v.name], types[v.name] = namer(v.name), "input", v.type
    for v in (*g.params, *g.state):
        kinds[v.name], types[v.name] = v.kind, v.type
    producers = {o.name: (n, i) for n in g.nodes for i, o in enumerate(n.outputs)}

    # gradients go straight into their parameter's view when a node (not an alias) produces them
    grads, grad_dest, copies = {}, {}, []
    for key, v in g.outputs:
        if key.startswith("grad."):
            grads[key[len("grad."):]] = v
    for param, v in grads.items():
        n = producers.get(v, (None,))[0]
        low = _lowering(lowerings, n, target) if n is not None else None
        if low is not None and v not in grad_dest and not (low.alias or low.const):
            grad_dest[v] = param
        else:
            copies.append((param, v))

    steps, buffers, aliases, consts = [], [], {}, {}
    for n in g.nodes:
        low = _lowering(lowerings, n, target)
        outs, dests = [], []
        for o in n.outputs:
            idents[o.name], kinds[o.name], types[o.name] = namer(o.name), "node", o.type
            outs.append(idents[o.name])
            if low.alias or low.const:
                dests.append(None)
            elif o.name in grad_dest:
                dests.append(Dest("grad", grad_dest[o.name]))
            elif buffer_all or is_batch_sized(o.type):
                dests.append(Dest("buffer", o.name))
                buffers.append((o.name, o.type))
            else:
                dests.append(None)
        if low.alias:
            aliases[n.outputs[0].name] = n.inputs[0]
        if low.const:
            kinds[n.outputs[0].name] = "const"
            consts[n.outputs[0].name] = float(n.attr["value"])
        first = n.outputs[0].name
        temps = {t: namer(f"{first}.{t}") for t in low.temps}
        tbufs = {}
        ttypes = low.temp_buffer_types(n, [types[i] for i in n.inputs]) if low.temp_buffer_types else {}
        for t in low.temp_buffers_for(n.attr):
            key = f"{first}.{t}"
            tbufs[t] = key
            buffers.append((key, ttypes.get(t, n.outputs[0].type)))
        steps.append(Step(n, low, low.template_for(n.attr), outs, dests, temps, tbufs))

    batch = next(((v.name, list(v.type.shape).index(BATCH)) for v in g.inputs if BATCH in v.type.shape), None)
    if batch is None:
        raise LoweringError(f"program {name} of graph {g.name} has no batch-sized input to read the batch size from")
    plan = Plan(name, g, target, idents, kinds, types, steps, buffers, grads, copies, batch, list(g.outputs), aliases,
                consts)
    plan.live = live_ranges(plan)
    plan.slots = share(plan, plan.live) if share_buffers else {k: i for i, (k, _) in enumerate(buffers)}
    reuses = previous_occupants(plan.slots, plan.live)
    for step in steps:
        written = [d.key for d in step.dests if d is not None and d.kind == "buffer"] + list(step.temp_buffers.values())
        step.reuses = {k: reuses[k] for k in written if k in reuses}
    return plan


def _lowering(lowerings: dict, n: Node, target: str) -> Lowering:
    try:
        return lowerings[n.op]
    except KeyError:
        raise LoweringError(f"target {target} has no lowering for op {n.op} (node %{n.name})") from None
