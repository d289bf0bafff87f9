"""What every pass shares: the Pass record, its result, the registry and small graph helpers.

A pass is a function ``FrozenGraph -> PassResult`` wrapped in a :class:`Pass` with a name, a
one-line algebra (the first line of the function's docstring, e.g. ``batchnorm(bias_add(z, b)) ->
batchnorm(z)``) and a sentence saying when it is valid. Passes cannot mutate their input (a
:class:`~bngraph.graph.FrozenGraph` and its nodes are immutable): a pass builds a new graph with
``g.rebuild(...)`` -- or returns the input object itself when nothing changed, so the pipeline can
tell. ``Pass.run`` accepts a DSL builder too and freezes it first.

When a rewrite changes which parameters exist, the pass also returns a ``remap``: a function from
a ``{param/state name: array}`` dict valid for the old graph to a new dict valid for the new graph
(``fold_bias`` moves the bias into the running mean, ``fold_bn_into_weights`` computes the folded
weights). A remap never mutates its argument.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..graph import FrozenGraph, as_graph
from ..ir import IRError, Node, Value
from ..ops import get_op

Remap = Callable[[dict], dict]


class PassError(IRError):
    """A pass cannot run on this graph; the message says why and what to do instead."""


@dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    ``graph`` is the input object itself when nothing changed. ``changes`` are sentences for users
    ("removed fc1.b (128 parameters): ..."); empty means nothing changed. ``remap`` maps a value
    dict for the old graph to one for the new graph (None: the values carry over unchanged).
    ``notes`` are rewrites the pass considered and skipped, each with its reason
    ("kept fc1.b: %fc1 is also used by %foo (tanh)"); they are not changes.
    """

    graph: FrozenGraph
    changes: tuple = ()
    remap: Remap | None = None
    notes: tuple = ()


@dataclass(frozen=True)
class Pass:
    """A named graph transformation: ``run(g) -> PassResult`` (``g`` a builder or a frozen graph)."""

    name: str
    algebra: str  # one line, e.g. "batchnorm(bias_add(z, b)) -> batchnorm(z)   # train: b is dead; ..."
    valid_when: str
    fn: Callable = field(repr=False, compare=False)

    def run(self, g) -> PassResult:
        """Run the pass on ``g`` (a builder is built first); refuses a result that is not a PassResult
        holding a FrozenGraph."""
        res = self.fn(as_graph(g))
        if not isinstance(res, PassResult):
            raise PassError(f"pass {self.name} returned {type(res).__name__}, expected a PassResult")
        if not isinstance(res.graph, FrozenGraph):
            raise PassError(f"pass {self.name} returned a {type(res.graph).__name__} graph, expected a FrozenGraph "
                            f"(build it with g.rebuild(...))")
        return res

    __call__ = run


PASSES: dict[str, Pass] = {}


def register(p: Pass) -> Pass:
    """Add a pass to the registry (so pipelines can name it)."""
    if p.name in PASSES:
        raise ValueError(f"pass {p.name} registered twice")
    PASSES[p.name] = p
    return p


def graph_pass(name: str, valid_when: str, *, registry: dict | None = PASSES):
    """Decorator: ``fn(g) -> PassResult`` becomes a :class:`Pass` named ``name``; the first line of
    ``fn``'s docstring is its algebra. Registered in ``PASSES`` unless ``registry=None``."""

    def wrap(fn) -> Pass:
        doc = (fn.__doc__ or "").strip()
        if not doc:
            raise ValueError(f"pass {name}: the function needs a docstring whose first line is its algebra")
        p = Pass(name, doc.splitlines()[0].strip(), valid_when, fn)
        if registry is not None:
            if name in registry:
                raise ValueError(f"pass {name} registered twice")
            registry[name] = p
        return p

    return wrap


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


class Uses:
    """Who reads each value of a graph: nodes (with the input position) and graph output keys.

    A value that is a graph output counts as used: a rewrite that changes it would change what the
    graph returns.
    """

    def __init__(self, g):
        self.by_nodes: dict = {}  # value name -> [(node, input index)]
        for n in g.nodes:
            for i, name in enumerate(n.inputs):
                self.by_nodes.setdefault(name, []).append((n, i))
        self.by_outputs: dict = {}  # value name -> [output key]
        for k, v in g.outputs:
            self.by_outputs.setdefault(v, []).append(k)

    def count(self, name: str) -> int:
        """How many uses ``name`` has: node inputs and graph outputs."""
        return len(self.by_nodes.get(name, ())) + len(self.by_outputs.get(name, ()))

    def nodes(self, name: str) -> list:
        """The nodes that read ``name`` (a node reading it twice is listed twice)."""
        return [n for n, _ in self.by_nodes.get(name, ())]

    def is_output(self, name: str) -> bool:
        """Whether ``name`` is returned by the graph."""
        return name in self.by_outputs

    def only_node_user(self, name: str):
        """The one node reading ``name`` when that is its only use (not a graph output), else None."""
        uses = self.by_nodes.get(name, ())
        if len(uses) == 1 and not self.is_output(name):
            return uses[0][0]
        return None

    def others(self, name: str, allowed=()) -> list:
        """Descriptions of the uses of ``name`` other than the (node, index) pairs in ``allowed``."""
        allowed_ids = {(id(n), i) for n, i in allowed}
        out = [f"%{n.name} ({n.op})" for n, i in self.by_nodes.get(name, ()) if (id(n), i) not in allowed_ids]
        out += [f"graph output {k}" for k in self.by_outputs.get(name, ())]
        return out


def describe(items: list) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(dict.fromkeys(items))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def numel(v: Value) -> int:
    return int(np.prod(v.type.shape, dtype=np.int64))


def count_words(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def make_node(op: str, inputs, outputs, attrs=None) -> Node:
    """A node with normalized attributes (defaults filled, types coerced) as the verifier expects."""
    where = outputs[0].name if outputs else op
    attrs = get_op(op, where).normalize_attrs(where, dict(attrs or {}))
    return Node.make(op, inputs, outputs, attrs)


def used_names(nodes, outputs) -> set:
    """Names read by ``nodes`` or returned by ``outputs``."""
    used = {i for n in nodes for i in n.inputs}
    used.update(v for _, v in outputs)
    return used


def drop_unused(values: list, nodes, outputs, candidates=None) -> tuple:
    """Split ``values`` (graph inputs, params or state) into (kept, removed): a value is removed when
    no node reads it and it is no graph output. Only names in ``candidates`` are considered (all
    when None)."""
    used = used_names(nodes, outputs)
    kept, removed = [], []
    for v in values:
        if v.name not in used and (candidates is None or v.name in candidates):
            removed.append(v)
        else:
            kept.append(v)
    return kept, removed


def need(values: dict, name: str, passname: str, why: str):
    """``values[name]`` or a KeyError saying which pass's remap needed it and for what."""
    try:
        return values[name]
    except KeyError:
        raise KeyError(f"{passname} remap: needs the value of {name} {why}") from None


def compose(remaps) -> Remap:
    """One remap doing each of ``remaps`` in order (None entries are skipped; none: identity copy)."""
    remaps = [r for r in remaps if r is not None]

    def remap(values: dict) -> dict:
        out = dict(values)
        for r in remaps:
            out = r(out)
        return out

    return remap


def bn_label(node: Node) -> str:
    """How sentences name a batchnorm: the prefix of its gamma param (``bn1``) -- stable across
    passes, unlike the node's output name, which becomes the activation's name once fused."""
    gamma = node.inputs[1]
    return gamma[: -len(".gamma")] if gamma.endswith(".gamma") else node.name


def bn_stat_words(node: Node) -> tuple:
    """("mean", "var") in training mode, ("running_mean", "running_var") in eval mode."""
    return ("mean", "var") if node.attr.get("mode") == "train" else ("running_mean", "running_var")
