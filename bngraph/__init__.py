"""bngraph: a small computation-graph compiler for neural networks with batch normalization.

    import bngraph as bg
    g = bg.Graph("mlp")
    x = g.input("x", 64)
    ...
    print(g)                       # the IR as text
"""
from .dsl import mlp
from .graph import Graph
from .interpreter import interpret
from .ir import IRError, Node, TensorType, Value
from .ops import ACTIVATIONS, OPS
from .parser import ParseError, parse
from .verifier import VerifyError, verify

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Graph", "IRError", "Node", "OPS", "ParseError", "TensorType", "Value",
    "VerifyError", "interpret", "mlp", "parse", "verify",
]
