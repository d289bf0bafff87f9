"""bngraph: a small computation-graph compiler for neural networks with batch normalization.

    import bngraph as bg
    g = bg.Graph("mlp")
    x = g.input("x", 64)
    y = g.labels("y", 10)
    h = g.relu(g.batchnorm(g.matmul(x, 128, name="fc1"), name="bn1"))
    g.softmax_cross_entropy(g.matmul(h, 10, name="out"), y)
    print(g)                                   # the IR as text
    model = bg.compile(g, target="numpy")      # passes, autodiff, code generation
    print(model.source)                        # the exact code that runs
"""
from .version import __version__

from . import callbacks, datasets, distributed, optim, passes, schedules
from .autodiff import grad_graph
from .backends import Target, get_target, register_target
from .compiler import emit
from .dsl import Graph, GraphBuilder, mlp
from .graph import FrozenGraph, as_graph
from .htmlreport import report
from .interop import ImportedGraph, MissingDependency, UnsafeModel, from_onnx, from_torch, to_dot, to_onnx
from .interpreter import interpret
from .ir import IRError, Node, TensorType, Value
from .model import CheckpointError, DataError, History, Model, TrainingDiverged, compile, load
from .ops import ACTIVATIONS, OPS
from .parser import ParseError, parse
from .datasets import Dataset, DatasetError, load_dataset
from .passes import (INFERENCE_PIPELINE, PASSES, TRAINING_PIPELINE, Pass, PassError, PassResult, PipelineResult,
                     run_pipeline, to_inference)
from .verifier import VerifyError, verify

__all__ = [
    "ACTIVATIONS", "CheckpointError", "DataError", "Dataset", "DatasetError", "FrozenGraph", "Graph", "GraphBuilder", "History", "INFERENCE_PIPELINE", "IRError", "Model",
    "Node", "OPS", "PASSES", "ParseError", "Pass", "PassError", "PassResult", "PipelineResult", "TRAINING_PIPELINE", "Target", "TensorType", "TrainingDiverged", "Value", "VerifyError",
    "as_graph", "callbacks", "compile", "datasets", "distributed", "emit", "get_target", "grad_graph", "interpret", "load", "load_dataset", "mlp", "optim", "parse", "passes", "register_target",
    "report", "run_pipeline", "schedules", "to_inference", "verify",
    "ImportedGraph", "MissingDependency", "UnsafeModel", "from_onnx", "from_torch", "to_dot", "to_onnx",
]
