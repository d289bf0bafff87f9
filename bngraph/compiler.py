"""From a DSL graph to programs and code: the driver behind ``bg.compile`` and ``bg.emit``.

A compiled model holds four *programs*, each an ordinary graph rendered by the target:

* ``train_step``: the training pipeline's graph + autodiff: forward with batch statistics, loss,
  backward, new running statistics (outputs ``loss``, ``grad.*``, ``state.*``);
* ``forward``: the same model in inference mode (running statistics), output ``out``;
* ``forward_train``: the forward pass with batch statistics, output ``out`` (no state update);
* ``evaluate``: ``forward`` plus the loss (outputs ``loss`` and ``out``): validation loss and
  accuracy come from generated code like everything else that touches batch-sized data.

The passes a user chooses (``passes=``, default the training pipeline) apply to every program.

``emit(..., inference=True)`` renders the inference pipeline instead (batch norm folded into the
weights), for reading or for deployment.
"""
from __future__ import annotations

from dataclasses import dataclass

from .autodiff import grad_graph, require_loss
from .graph import as_graph
from .ir import IRError, Value, ir_dtype
from .ops import BN_OPS
from .passes import INFERENCE_PIPELINE, TRAINING_PIPELINE, dce, run_pipeline, to_inference
from .verifier import verify

PROGRAM_DOCS = {
    "train_step": "One training step on a mini-batch: forward with the batch's own statistics, loss, "
                  "backward.\n    Returns the loss, grad.<param> for every param and state.<name>, the new running "
                  "statistics.\n    Reads P and S, writes only into B and G (the gradients).",
    "forward": "Inference: batch norm with the running statistics. Returns out, the loss's input.",
    "forward_inference": "Inference with batch norm folded into the weights (the inference pipeline). P holds "
                         "the folded params:\n    PipelineResult.remap computes them from trained ones. Returns out.",
    "forward_train": "Forward pass with the batch's own statistics (training mode), without updating "
                     "state. Returns out.",
    "evaluate": "Inference (running statistics) with the loss: returns loss (the mean over this batch) and out.",
}


def cast_graph(g, dtype) -> "Graph":
    """The same graph with every float value in ``dtype`` ('f32'/'f64' or a NumPy name)."""
    g = as_graph(g)  # frozen: a model must not change when the user goes on building g
    dt = ir_dtype(dtype)
    if dt not in ("f32", "f64"):
        raise IRError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt == g.dtype and all(v.type.dtype in (dt, "i64") for v in g.values().values()):
        return g

    def cv(v: Value) -> Value:
        t = v.type
        return Value(v.name, t.with_dtype(dt), v.kind, v.classes) if t.is_float else v

    nodes = [n.replace(outputs=tuple(cv(o) for o in n.outputs)) for n in g.nodes]
    return g.rebuild(dtype=dt, inputs=[cv(v) for v in g.inputs], params=[cv(v) for v in g.params],
                     state=[cv(v) for v in g.state], nodes=nodes)


def forward_program(g) -> "Graph":
    """Output the loss's input as ``out``; dce drops the loss, the state updates and what only they used."""
    loss = require_loss(g)
    return dce.run(g.rebuild(outputs=[("out", loss.inputs[0])])).graph


@dataclass
class Programs:
    """What compiling one graph produces (before code generation)."""

    source: object  # the graph as given (cast to the dtype)
    graph: object  # after the training pipeline: the model as optimized
    programs: dict  # name -> graph
    pipeline: object  # PipelineResult of the training pipeline (report, remap, snapshots)


def evaluate_program(g) -> "Graph":
    """The inference graph of ``g`` with its loss kept: outputs ``loss`` and ``out``."""
    loss = require_loss(g)
    inf = to_inference(g)  # eval-mode BN, no state updates, output out = the loss's prediction input
    inputs = {v.name: v for v in g.inputs}
    target = inputs.get(loss.inputs[1])
    if target is None:
        raise IRError(f"graph {g.name}: the loss %{loss.name} reads %{loss.inputs[1]}, which is not a graph input")
    kept = {v.name for v in (*inf.inputs, *inf.params, *inf.state)}
    # what only the loss reads comes back with it: the labels/targets, a class loss's class weights
    back = [v for v in (*g.inputs, *g.params, *g.state) if v.name in loss.inputs and v.name not in kept]
    return inf.rebuild(inputs=[*inf.inputs, *(v for v in back if v.kind == "input")],
                       params=[*inf.params, *(v for v in back if v.kind == "param")],
                       state=[*inf.state, *(v for v in back if v.kind == "state")],
                       nodes=[*inf.nodes, loss], outputs=[("loss", loss.name), *inf.outputs])


def build_programs(g, dtype="float32", passes=None, print_after=False, file=None) -> Programs:
    g = cast_graph(g, dtype)
    verify(g)
    require_loss(g)
    if g.is_training is False and any(n.op in BN_OPS for n in g.nodes):
        raise IRError(f"graph {g.name} is an inference graph (batch norm in eval mode): it cannot be trained")
    chosen = TRAINING_PIPELINE if passes is None else passes
    res = run_pipeline(g, chosen, print_after=print_after, file=file)
    opt = res.graph
    train = grad_graph(opt)
    verify(train, after="autodiff")
    fwd_train = verify(forward_program(opt), after="forward_program")
    programs = {"train_step": train, "forward": _eval_pipeline(to_inference(opt), chosen, opt),
                "forward_train": fwd_train, "evaluate": _eval_pipeline(evaluate_program(opt), chosen, opt)}
    return Programs(g, opt, programs, res)


def _eval_pipeline(g, passes, trained):
    """The user's passes on an eval-mode program. They already ran on the trained graph, so they may
    fuse again (eval-mode BN) but must not add or remove params or state (which a remap would have to
    carry): the program runs on the trained model's values."""
    res = run_pipeline(g, passes)
    before = {v.name for v in (*g.params, *g.state)}
    after = {v.name for v in (*res.graph.params, *res.graph.state)}
    known = {v.name for v in (*trained.params, *trained.state)}
    changed = sorted((before - after) | (after - known))
    if changed:
        raise IRError(f"graph {g.name}: the passes {list(passes)} change the params/state of the eval-mode "
                      f"program ({', '.join(changed)}); it must run on the trained model's values")
    return res.graph


def inference_graph(g, dtype="float32", passes=None, print_after=False, file=None):
    """The inference pipeline's result (a PipelineResult): batch norm folded into the weights."""
    g = cast_graph(g, dtype)
    verify(g)
    start = to_inference(g)
    return run_pipeline(start, INFERENCE_PIPELINE if passes is None else passes, print_after=print_after, file=file)


def emit(g, target: str = "numpy", dtype="float32", inference: bool = False, passes=None) -> dict:
    """Generated source for ``g``: {file name: source}. No model (and no values) needed.

    ``inference=False``: the training module (train_step, forward, forward_train);
    ``inference=True``: one ``forward`` function of the inference pipeline's graph.
    """
    from .backends import get_target

    target_def = get_target(target)
    if inference:
        graph = inference_graph(g, dtype, passes).graph
        programs = {"forward": graph}
    else:
        programs = build_programs(g, dtype, passes).programs
    docs = {**PROGRAM_DOCS, "forward": PROGRAM_DOCS["forward_inference"]} if inference else PROGRAM_DOCS
    return target_def.render(programs, ir_dtype(dtype), g.name, docs=docs).sources
