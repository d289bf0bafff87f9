"""Graph regressor, compiled by bngraph 0.1.0 for NumPy (float32).

Generated code: do not edit. Regenerate with `bngraph emit`.
Each statement is one IR node; the comment above it is that node as `print(graph)` shows it.
Layout: activations are (features, m), m = the batch size; the caller transposes X (m, features)
once per batch. P holds the parameters, S the state (running statistics), by IR name; G the
gradient arrays train_step writes grad.<param> into (views of one flat buffer when bngraph runs
it); B preallocated buffers for one batch size (made by the matching alloc_* function), where
values whose lives do not overlap share one array (a comment says where a value reuses one).
"""
import numpy as np

DTYPE = np.float32


def forward(x, P, S, B):
    """Inference with batch norm folded into the weights (the inference pipeline). P holds the folded params:
    PipelineResult.remap computes them from trained ones. Returns out."""
    m = x.shape[1]
    # %fc1.matmul: f32[4,m] = matmul %fc1.W_folded, %x
    fc1_matmul = np.matmul(P["fc1.W_folded"], x, out=B["fc1.matmul"])
    # %act1: f32[4,m] = bias_add_act[act=tanh, negative_slope=0.0] %fc1.matmul, %fc1.b_folded
    act1 = np.add(fc1_matmul, P["fc1.b_folded"][:, None], out=B["act1"])
    np.tanh(act1, out=act1)
    # %out.matmul: f32[2,m] = matmul %out.W, %act1
    out_matmul = np.matmul(P["out.W"], act1, out=B["out.matmul"])
    # %out: f32[2,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    return {
        "out": out,
    }


def alloc_forward(m):
    """Buffers for forward at batch size m: one per batch-sized value written with out=.
    B: 4 batch-sized buffers in 4 arrays."""
    a0 = np.empty((4, m), DTYPE)
    a1 = np.empty((4, m), DTYPE)
    a2 = np.empty((2, m), DTYPE)
    a3 = np.empty((2, m), DTYPE)
    return {
        "fc1.matmul": a0,
        "act1": a1,
        "out.matmul": a2,
        "out": a3,
    }
