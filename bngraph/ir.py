"""The graph IR: typed values, immutable nodes and the graph that holds them.

Layout (see docs/ir.md): inside the compiler activations are ``(features, batch)``; the batch
dimension is the symbol ``m``. A graph has

* inputs (data fed per mini-batch: features, labels, targets),
* params (learned: ``fc1.W``, ``bn1.gamma``...) and state (``bn1.running_mean``...),
* nodes in topological order, each with an op name, attributes, input value names and typed
  outputs (most ops have one output; a training-mode batchnorm also returns the batch statistics),
* outputs: an ordered list of ``key=value`` pairs (``loss``, ``out``, ``grad.fc1.W``,
  ``state.bn1.running_mean``...).

Nodes are immutable; passes build new graphs with :meth:`bngraph.graph.FrozenGraph.rebuild` and
return the same object when nothing changed. The graph classes live in :mod:`bngraph.graph` (and
the DSL builder in :mod:`bngraph.dsl`); the text form in :mod:`bngraph.printer`, a leaf module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .printer import format_node

BATCH = "m"  # the symbolic batch dimension
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.]*"  # value and graph names: what the parser reads back

DTYPES = {"f32": "float32", "f64": "float64", "i64": "int64"}
NUMPY_TO_IR = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("f32", "f64")


class IRError(ValueError):
    """A malformed graph or a bad DSL call. The message names the node and expected vs got."""


class Ints(tuple):
    """The type of an attribute holding a tuple of non-negative ints (a kernel, strides, pads).
    The IR text spells it with ``x`` between the numbers, ``3x3`` or ``1x1x0x0``; one number is a
    tuple of one (``stride=2`` for a 1-D convolution)."""

    def __new__(cls, values=()):
        return super().__new__(cls, values)


def ir_dtype(dtype) -> str:
    """Accept 'f32', 'float32', np.float32, np.dtype('float32') and return the IR spelling."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    import numpy as np

    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise IRError(f"unknown dtype {dtype!r}: expected one of float32, float64") from e
    if name not in NUMPY_TO_IR:
        if isinstance(dtype, str) and dtype != name:  # 'f16' is NumPy's float128: its number counts bytes
            raise IRError(f"unsupported dtype {dtype!r}: NumPy reads that spelling as {name} (the number counts "
                          f"bytes: 'f4' is float32, 'f8' float64); expected one of float32, float64, int64 "
                          f"(or f32, f64, i64)")
        raise IRError(f"unsupported dtype {dtype!r} (numpy {name}): expected one of float32, float64, int64")
    return NUMPY_TO_IR[name]


@dataclass(frozen=True)
class TensorType:
    """dtype ('f32', 'f64', 'i64') and shape: a tuple of ints and the batch symbol 'm'."""

    dtype: str
    shape: tuple

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise IRError(f"unknown dtype {self.dtype!r}")
        for d in self.shape:
            if not (d == BATCH or (isinstance(d, int) and d >= 0)):
                raise IRError(f"bad dimension {d!r} in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_dtype(self, dtype: str) -> "TensorType":
        """The same shape in another dtype."""
        return TensorType(dtype, self.shape)

    def concrete_shape(self, m: int) -> tuple:
        """The shape with the batch symbol ``m`` replaced by a batch size."""
        return tuple(m if d == BATCH else d for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Value:
    """A named, typed value. kind: 'input', 'param', 'state' or 'node' (a node's output).

    ``classes`` is set on integer label inputs: labels lie in ``[0, classes)``.
    """

    name: str
    type: TensorType
    kind: str = "node"
    classes: int | None = None


def _freeze_attrs(attrs: Mapping | Iterable) -> tuple:
    items = attrs.items() if isinstance(attrs, Mapping) else attrs
    return tuple(sorted((str(k), v) for k, v in items))


@dataclass(frozen=True)
class Node:
    """One operation: ``outputs = op[attrs](inputs)``. Immutable."""

    op: str
    inputs: tuple  # value names
    outputs: tuple  # Value objects (kind 'node')
    attrs: tuple = ()  # sorted (key, value) pairs

    @staticmethod
    def make(op: str, inputs: Sequence[str], outputs: Sequence[Value], attrs: Mapping | Iterable = ()):
        """A node from any sequences and an attribute dict (stored as tuples and sorted pairs)."""
        return Node(op, tuple(inputs), tuple(outputs), _freeze_attrs(attrs))

    @property
    def attr(self) -> dict:
        return dict(self.attrs)

    @property
    def name(self) -> str:
        """A node is known by its first output's name (that is what error messages show)."""
        return self.outputs[0].name

    @property
    def out(self) -> Value:
        return self.outputs[0]

    def replace(self, **changes) -> "Node":
        """A copy with some of ``op``, ``inputs``, ``outputs``, ``attrs`` (a dict) replaced."""
        d = dict(op=self.op, inputs=self.inputs, outputs=self.outputs, attrs=self.attr)
        d.update(changes)
        return Node.make(d["op"], d["inputs"], d["outputs"], d["attrs"])

    def __str__(self) -> str:
        return format_node(self)
