"""Graphs: the lookups every graph answers, and the frozen graph that compiler stages pass around.

Two classes share :class:`GraphBase` (the read-only lookups, printing and equality):

* :class:`bngraph.Graph` (in :mod:`bngraph.dsl`): the mutable builder behind the Python DSL;
* :class:`FrozenGraph`: an immutable graph (tuples, no attribute assignment, hashable). Passes,
  autodiff, the verifier and the code generators take and return frozen graphs; ``g.build()``
  makes one from a builder, and :func:`as_graph` accepts either.

A builder and a frozen graph with the same contents are equal, so ``bg.parse(str(g)) == g`` holds
for a builder ``g``. This module does not import the DSL (the DSL imports it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import re

from .ir import FLOAT_DTYPES, NAME_PATTERN, IRError, Node, Value, ir_dtype
from .ops import needs_batch_statistics
from .printer import format_graph


def check_header(name, dtype) -> str:
    """The graph name must parse back; the default dtype must be a float. Returns the IR dtype."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise IRError(f"graph name must be an identifier (as the parser reads it), got {name!r}")
    dt = ir_dtype(dtype)
    if dt not in FLOAT_DTYPES:  # the dtype of new params and float inputs
        raise IRError(f"graph {name}: dtype must be float32 or float64, got {dtype!r}")
    return dt


class GraphBase(ABC):
    """Lookups over ``name, dtype, inputs, params, state, nodes, outputs`` (``outputs``: ordered
    ``(key, value name)`` pairs), shared by the builder and the frozen graph."""

    name: str
    dtype: str
    inputs: tuple
    params: tuple
    state: tuple
    nodes: tuple
    outputs: tuple

    @abstractmethod
    def build(self) -> "FrozenGraph":
        """The frozen graph: the builder builds one, a frozen graph is itself."""

    def values(self) -> dict:
        """name -> Value for every input, param, state and node output."""
        vals = {v.name: v for v in (*self.inputs, *self.params, *self.state)}
        for n in self.nodes:
            for o in n.outputs:
                vals[o.name] = o
        return vals

    def value(self, name: str) -> Value:
        try:
            return self.values()[name]
        except KeyError:
            raise IRError(f"graph {self.name}: no value named %{name}") from None

    def producers(self) -> dict:
        """value name -> the node that produces it."""
        return {o.name: n for n in self.nodes for o in n.outputs}

    def users(self) -> dict:
        """value name -> list of nodes that read it (graph outputs are not nodes: see output_names)."""
        use: dict = {}
        for n in self.nodes:
            for i in n.inputs:
                use.setdefault(i, []).append(n)
        return use

    def output(self, key: str) -> str:
        for k, v in self.outputs:
            if k == key:
                return v
        raise IRError(f"graph {self.name} has no output {key!r} (outputs: {', '.join(k for k, _ in self.outputs)})")

    def has_output(self, key: str) -> bool:
        return any(k == key for k, _ in self.outputs)

    @property
    def output_names(self) -> set:
        return {v for _, v in self.outputs}

    @property
    def loss_node(self) -> Node | None:
        if not self.has_output("loss"):
            return None
        return self.producers().get(self.output("loss"))

    def param_names(self) -> list:
        return [p.name for p in self.params]

    def state_names(self) -> list:
        return [s.name for s in self.state]

    @property
    def is_training(self) -> bool:
        """A graph is a training graph when any batchnorm in it normalizes with batch statistics."""
        return needs_batch_statistics(self)

    def _contents(self) -> tuple:
        # dtype is not compared: it is only the default for new values (the values carry types)
        return (self.name, tuple(self.inputs), tuple(self.params), tuple(self.state), tuple(self.nodes),
                tuple(tuple(o) for o in self.outputs))

    def __eq__(self, other) -> bool:
        if not isinstance(other, GraphBase):
            return NotImplemented
        return self._contents() == other._contents()

    __hash__ = None  # a builder changes; FrozenGraph defines a hash

    def __str__(self) -> str:
        return format_graph(self)

    def __repr__(self) -> str:
        return f"<bngraph.{type(self).__name__} {self.name}: {len(self.nodes)} nodes, {len(self.params)} params>"


class FrozenGraph(GraphBase):
    """An immutable graph: what passes, autodiff and the backends work on.

    Every part is a tuple of immutable values (Values and Nodes are frozen dataclasses), attribute
    assignment is refused, and the graph is hashable. :meth:`rebuild` makes a new graph with some
    parts replaced.
    """

    def __init__(self, name: str = "graph", dtype="f32", *, inputs=(), params=(), state=(), nodes=(), outputs=()):
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "dtype", check_header(name, dtype))
        set_(self, "inputs", tuple(inputs))
        set_(self, "params", tuple(params))
        set_(self, "state", tuple(state))
        set_(self, "nodes", tuple(nodes))
        set_(self, "outputs", tuple((str(k), str(v)) for k, v in outputs))
        set_(self, "_hash", None)

    def __setattr__(self, key, value):
        raise AttributeError(f"graph {self.name} is frozen: build a new one with g.rebuild({key}=...)")

    def __delattr__(self, key):
        raise AttributeError(f"graph {self.name} is frozen")

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._contents()))
        return self._hash

    def __reduce__(self):
        # copy and pickle go through __init__; the cached hash is not carried (str hashes differ
        # between processes)
        return (_frozen, (self.name, self.dtype, self.inputs, self.params, self.state, self.nodes, self.outputs))

    def build(self) -> "FrozenGraph":
        return self

    def rebuild(self, *, name=None, dtype=None, inputs=None, params=None, state=None, nodes=None,
                outputs=None) -> "FrozenGraph":
        """A new graph with some parts replaced (the rest shared: nodes are immutable)."""
        return FrozenGraph(
            self.name if name is None else name,
            self.dtype if dtype is None else dtype,
            inputs=self.inputs if inputs is None else inputs,
            params=self.params if params is None else params,
            state=self.state if state is None else state,
            nodes=self.nodes if nodes is None else nodes,
            outputs=self.outputs if outputs is None else outputs,
        )


def _frozen(name, dtype, inputs, params, state, nodes, outputs) -> FrozenGraph:
    return FrozenGraph(name, dtype, inputs=inputs, params=params, state=state, nodes=nodes, outputs=outputs)


def as_graph(g) -> FrozenGraph:
    """The frozen graph of ``g``: a builder is built once, a frozen graph is returned as is."""
    if isinstance(g, GraphBase):
        return g.build()
    raise TypeError(f"expected a bngraph graph (bngraph.Graph or FrozenGraph), got {type(g).__name__}")
