"""The Graph: inputs, params, state, nodes in topological order, and keyed outputs.

``Graph`` is both the IR container and (through :class:`bngraph.dsl.GraphBuilder`) the Python DSL.
"""
from __future__ import annotations

import re

from .dsl import GraphBuilder
from .ir import FLOAT_DTYPES, NAME_PATTERN, IRError, Node, Value, ir_dtype


class Graph(GraphBuilder):
    """A computation graph, and the DSL that builds it (see :mod:`bngraph.dsl`).

    The builder methods (``g.matmul(...)`` etc.) append nodes; nodes themselves are immutable and
    passes return new graphs.
    """

    def __init__(self, name: str = "graph", dtype="f32", *, inputs=(), params=(), state=(), nodes=(), outputs=()):
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise IRError(f"graph name must be an identifier (as the parser reads it), got {name!r}")
        self.name = name
        self.dtype = ir_dtype(dtype)
        if self.dtype not in FLOAT_DTYPES:  # the dtype of new params and float inputs
            raise IRError(f"graph {name}: dtype must be float32 or float64, got {dtype!r}")
        self.inputs = list(inputs)
        self.params = list(params)
        self.state = list(state)
        self.nodes = list(nodes)
        self.outputs = [tuple(o) for o in outputs]  # (key, value name) pairs
        self._counters = {}

    # ---- lookups ---------------------------------------------------------------------------
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
        return any(n.attr.get("mode") == "train" for n in self.nodes)

    # ---- building new graphs -----------------------------------------------------------------
    def rebuild(self, *, name=None, dtype=None, inputs=None, params=None, state=None, nodes=None, outputs=None) -> "Graph":
        """A new graph with some parts replaced (the rest shared: nodes are immutable)."""
        g = Graph(
            self.name if name is None else name,
            self.dtype if dtype is None else dtype,
            inputs=self.inputs if inputs is None else inputs,
            params=self.params if params is None else params,
            state=self.state if state is None else state,
            nodes=self.nodes if nodes is None else nodes,
            outputs=self.outputs if outputs is None else outputs,
        )
        g._counters = dict(self._counters)
        return g

    def copy(self) -> "Graph":
        return self.rebuild()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        # dtype is not compared: it is only the default for new values (the values carry types)
        return (
            self.name == other.name
            and self.inputs == other.inputs
            and self.params == other.params
            and self.state == other.state
            and self.nodes == other.nodes
            and self.outputs == other.outputs
        )

    __hash__ = None

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)

    def __repr__(self) -> str:
        return f"<bngraph.Graph {self.name}: {len(self.nodes)} nodes, {len(self.params)} params>"
