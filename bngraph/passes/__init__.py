"""Compiler passes over the graph IR and the pass manager (docs/passes.md).

    from bngraph.passes import run_pipeline, to_inference, TRAINING_PIPELINE, INFERENCE_PIPELINE
    res = run_pipeline(g, TRAINING_PIPELINE, print_after=True)
    print(res.format_report())
    new_values = res.remap(values)          # params/state for the new graph

Each pass: ``PASSES[name].run(g) -> PassResult(graph, changes, remap, notes)``; the input graph
is never mutated and is returned as is when nothing changed.
"""
from .base import PASSES, Pass, PassError, PassResult, Uses, compose, graph_pass, register

# imported in pipeline order, so that PASSES lists them in that order
# isort: off
from .fold_bias import fold_bias
from .fuse_bn import fuse_bn
from .fold_bn_into_weights import fold_bn_into_weights
from .fuse_bias_act import fuse_bias_act
from .dce import dce
from .fuse_loss_grad import fuse_loss_grad  # a target's pre-lowering pass (the CUDA target's), after autodiff
# isort: on
from .inference import to_inference
from .manager import INFERENCE_PIPELINE, TRAINING_PIPELINE, PipelineResult, run_pipeline

__all__ = [
    "INFERENCE_PIPELINE", "PASSES", "Pass", "PassError", "PassResult", "PipelineResult", "TRAINING_PIPELINE",
    "Uses", "compose", "dce", "fold_bias", "fold_bn_into_weights", "fuse_bias_act", "fuse_bn", "fuse_loss_grad",
    "graph_pass", "register", "run_pipeline", "to_inference",
]
