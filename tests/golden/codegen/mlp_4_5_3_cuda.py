"""Graph mlp, compiled by bngraph 0.1.0 for CUDA (float32): the host driver.

Generated code: do not edit. Regenerate with `bngraph emit --target cuda`.
Each IR node is a kernel launch from mlp_cuda.cu (two or three for a reduction over
several blocks: a loss, or rows cut into segments, chosen here from the shape at run time), or one
cuBLAS call (gemm), all on one stream with no host synchronisation; the comment above it is that node
as `print(graph)` shows it. The runtime provides `launch(kernel, grid, block, *args)`,
`gemm(ta, tb, M, N, K, A, B, C)` (row-major C = op(A) @ op(B)) and `scratch` (the partial sums).
P, S, G and B are device arrays by name as in the NumPy target: params, state, the gradient views
train_step writes into, and the buffers of one batch size, where values whose lives do not overlap
share one array (a comment says where a value reuses one).
"""
import numpy as np

BLOCK = 256  # threads per block
MAX_GRID = 65535
PARTS = 4096  # partial sums of one reduction at most: scratch holds two arrays of them
SCRATCH = 2 * PARTS  # doubles in `scratch`
LOSS_PARTS = 1024  # blocks of a loss at most
ROW = 4096  # examples a batch-norm block keeps in registers (BN_CACHE a thread)
SEGMENT = 2048  # the shortest segment of a row worth a second launch
SEGMENTS = 256  # segments of one row at most
WIDE = 264  # blocks that keep a GPU busy: 2 per SM of an H100 (132 SMs)

# set by the runtime when it loads this module; scratch: SCRATCH doubles on the device, this
# model's own, where a reduction over several blocks leaves its partial sums for the next launch
launch = gemm = scratch = None


def grid(n):
    """Blocks for a grid-stride loop over n items (elements or rows)."""
    return (max(1, min((n + BLOCK - 1) // BLOCK, MAX_GRID)),)


def loss_parts(n):
    """Blocks for a loss over n items (elements, or the examples of a class loss): about 4 items a
    thread, at most LOSS_PARTS. Each block sums its part; the loss's _total kernel adds them up."""
    return max(1, min(-(-n // (4 * BLOCK)), LOSS_PARTS))


def segments(units, m):
    """Blocks per unit for a kernel over rows of m examples (batch norm, its gradient, a bias
    gradient). 1: a block per unit (one kernel). More when a row is longer than a block keeps in
    registers (ROW), or when the units are too few to keep WIDE blocks busy and the rows are long
    (SEGMENT examples a segment or more): each row is cut into segments, a block each, and the
    node takes two kernels (_partial, then _combine). At most SEGMENTS a row and PARTS in all."""
    segs = max(-(-m // ROW), min(-(-WIDE // units), m // SEGMENT))
    return max(1, min(segs, SEGMENTS, PARTS // units))


def row_block(m):
    """Threads per block for a unit's whole row of m examples: BLOCK, or fewer for a short row (a
    power of two, at least a warp, about 4 examples a thread), so that an SM runs several units'
    blocks at once instead of one block with most of its threads idle."""
    block = 32
    while block < BLOCK and 4 * block < m:
        block *= 2
    return block


def train_step(x, y, P, S, G, B):
    """One training step on a mini-batch: forward with the batch's own statistics, loss, backward.
    Returns the loss, grad.<param> for every param and state.<name>, the new running statistics.
    Reads P and S, writes only into B and G (the gradients)."""
    m = x.shape[1]
    mi = np.int32(m)
    # B: 7 batch-sized buffers in 6 arrays (buffers whose lives do not overlap share one), 5 small buffers of their own
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = gemm(False, False, 5, m, 4, P["fc1.W"], x, B["fc1.matmul"])  # cuBLAS: (5, m) = A (5x4) @ B (4xm)
    # %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1, bn1_mean, bn1_var = B["act1"], B["bn1.mean"], B["bn1.var"]
    segs = segments(5, m)
    if segs == 1:  # a block per unit, its whole row
        launch("train_step__act1", (5,), (row_block(m),), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], act1, bn1_mean, bn1_var, mi)
    else:  # a block per segment of a row: the segments' partial sums, then each unit's from them
        launch("train_step__act1_partial", (5 * segs,), (BLOCK,), fc1_matmul, scratch, mi, np.int32(segs))
        launch("train_step__act1_combine", (5 * segs,), (BLOCK,), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], act1, bn1_mean, bn1_var, scratch, mi, np.int32(segs))
    # %bn1.running_mean.next: f32[5], %bn1.running_var.next: f32[5] = running_update[momentum=0.1] %bn1.running_mean, %bn1.running_var, %bn1.mean, %bn1.var, %fc1.matmul
    bn1_running_mean_next, bn1_running_var_next = B["bn1.running_mean.next"], B["bn1.running_var.next"]
    launch("train_step__bn1_running_mean_next", grid(5), (BLOCK,), S["bn1.running_mean"], S["bn1.running_var"], bn1_mean, bn1_var, bn1_running_mean_next, bn1_running_var_next, mi)
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = gemm(False, False, 3, m, 5, P["out.W"], act1, B["out.matmul"])  # cuBLAS: (3, m) = A (3x5) @ B (5xm)
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = B["out"]
    launch("train_step__out", grid(3 * m), (BLOCK,), out_matmul, P["out.b"], out, mi)
    # %loss.grad: f32[] = fill[dtype=f32, value=1.0]
    # a constant (1.0): written into the kernels that read %loss.grad, no kernel of its own
    # %loss: f32[], %out.grad: f32[3,m] = softmax_cross_entropy_and_grad %out, %y, %loss.grad
    # B["out.grad"] reuses the array of B["out.matmul"] (no longer read)
    loss, out_grad = B["loss"], B["out.grad"]
    parts = loss_parts(m)  # blocks, each over its part of the batch
    launch("train_step__loss", (parts,), (BLOCK,), out, y, loss, out_grad, scratch, mi, np.int32(parts))
    launch("train_step__loss_total", (1,), (BLOCK,), loss, scratch, mi, np.int32(parts))
    # %out.b.grad: f32[3] = sum_batch %out.grad
    out_b_grad = G["out.b"]
    segs = segments(3, m)
    if segs == 1:  # a block per unit, its whole row
        launch("train_step__out_b_grad", (3,), (row_block(m),), out_grad, out_b_grad, mi)
    else:  # a block per segment of a row: the segments' partial sums, then each unit's from them
        launch("train_step__out_b_grad_partial", (3 * segs,), (BLOCK,), out_grad, scratch, mi, np.int32(segs))
        launch("train_step__out_b_grad_combine", (3,), (BLOCK,), out_b_grad, scratch, mi, np.int32(segs))
    # %out.W.grad: f32[3,5] = matmul[tb=true] %out.grad, %act1
    out_W_grad = gemm(False, True, 3, 5, m, out_grad, act1, G["out.W"])  # cuBLAS: (3, 5) = A (3xm) @ B^T (5xm)
    # %act1.grad: f32[5,m] = matmul[ta=true] %out.W, %out.grad
    act1_grad = gemm(True, False, 5, m, 3, P["out.W"], out_grad, B["act1.grad"])  # cuBLAS: (5, m) = A^T (3x5) @ B (3xm)
    # %fc1.matmul.grad: f32[5,m], %bn1.gamma.grad: f32[5], %bn1.beta.grad: f32[5] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %act1.grad, %act1, %fc1.matmul, %bn1.gamma, %bn1.mean, %bn1.var
    fc1_matmul_grad, bn1_gamma_grad, bn1_beta_grad = B["fc1.matmul.grad"], G["bn1.gamma"], G["bn1.beta"]
    segs = segments(5, m)
    if segs == 1:  # a block per unit, its whole row
        launch("train_step__fc1_matmul_grad", (5,), (row_block(m),), act1_grad, act1, fc1_matmul, P["bn1.gamma"], bn1_mean, bn1_var, fc1_matmul_grad, bn1_gamma_grad, bn1_beta_grad, mi)
    else:  # a block per segment of a row: the segments' partial sums, then each unit's from them
        launch("train_step__fc1_matmul_grad_partial", (5 * segs,), (BLOCK,), act1_grad, act1, fc1_matmul, bn1_mean, bn1_var, scratch, mi, np.int32(segs))
        launch("train_step__fc1_matmul_grad_combine", (5 * segs,), (BLOCK,), act1_grad, act1, fc1_matmul, P["bn1.gamma"], bn1_mean, bn1_var, fc1_matmul_grad, bn1_gamma_grad, bn1_beta_grad, scratch, mi, np.int32(segs))
    # %fc1.W.grad: f32[5,4] = matmul[tb=true] %fc1.matmul.grad, %x
    fc1_W_grad = gemm(False, True, 5, 4, m, fc1_matmul_grad, x, G["fc1.W"])  # cuBLAS: (5, 4) = A (5xm) @ B^T (4xm)
    return {
        "loss": loss,
        "state.bn1.running_mean": bn1_running_mean_next,
        "state.bn1.running_var": bn1_running_var_next,
        "grad.fc1.W": G["fc1.W"],
        "grad.bn1.gamma": G["bn1.gamma"],
        "grad.bn1.beta": G["bn1.beta"],
        "grad.out.W": G["out.W"],
        "grad.out.b": G["out.b"],
    }


def forward(x, P, S, B):
    """Inference: batch norm with the running statistics. Returns out, the loss's input."""
    m = x.shape[1]
    mi = np.int32(m)
    # B: 4 batch-sized buffers in 4 arrays
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = gemm(False, False, 5, m, 4, P["fc1.W"], x, B["fc1.matmul"])  # cuBLAS: (5, m) = A (5x4) @ B (4xm)
    # %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1 = B["act1"]
    segs = segments(5, m)  # one pass: a block per segment of a row (per unit when 1)
    launch("forward__act1", (min(5 * segs, MAX_GRID),), (row_block(m // segs),), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], S["bn1.running_mean"], S["bn1.running_var"], act1, mi, np.int32(segs))
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = gemm(False, False, 3, m, 5, P["out.W"], act1, B["out.matmul"])  # cuBLAS: (3, m) = A (3x5) @ B (5xm)
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = B["out"]
    launch("forward__out", grid(3 * m), (BLOCK,), out_matmul, P["out.b"], out, mi)
    return {
        "out": out,
    }


def forward_train(x, P, S, B):
    """Forward pass with the batch's own statistics (training mode), without updating state. Returns out."""
    m = x.shape[1]
    mi = np.int32(m)
    # B: 4 batch-sized buffers in 4 arrays, 2 small buffers of their own
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = gemm(False, False, 5, m, 4, P["fc1.W"], x, B["fc1.matmul"])  # cuBLAS: (5, m) = A (5x4) @ B (4xm)
    # %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1, bn1_mean, bn1_var = B["act1"], B["bn1.mean"], B["bn1.var"]
    segs = segments(5, m)
    if segs == 1:  # a block per unit, its whole row
        launch("forward_train__act1", (5,), (row_block(m),), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], act1, bn1_mean, bn1_var, mi)
    else:  # a block per segment of a row: the segments' partial sums, then each unit's from them
        launch("forward_train__act1_partial", (5 * segs,), (BLOCK,), fc1_matmul, scratch, mi, np.int32(segs))
        launch("forward_train__act1_combine", (5 * segs,), (BLOCK,), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], act1, bn1_mean, bn1_var, scratch, mi, np.int32(segs))
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = gemm(False, False, 3, m, 5, P["out.W"], act1, B["out.matmul"])  # cuBLAS: (3, m) = A (3x5) @ B (5xm)
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = B["out"]
    launch("forward_train__out", grid(3 * m), (BLOCK,), out_matmul, P["out.b"], out, mi)
    return {
        "out": out,
    }


def evaluate(x, y, P, S, B):
    """Inference (running statistics) with the loss: returns loss (the mean over this batch) and out."""
    m = x.shape[1]
    mi = np.int32(m)
    # B: 4 batch-sized buffers in 4 arrays, 1 small buffer of their own
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = gemm(False, False, 5, m, 4, P["fc1.W"], x, B["fc1.matmul"])  # cuBLAS: (5, m) = A (5x4) @ B (4xm)
    # %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1 = B["act1"]
    segs = segments(5, m)  # one pass: a block per segment of a row (per unit when 1)
    launch("evaluate__act1", (min(5 * segs, MAX_GRID),), (row_block(m // segs),), fc1_matmul, P["bn1.gamma"], P["bn1.beta"], S["bn1.running_mean"], S["bn1.running_var"], act1, mi, np.int32(segs))
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = gemm(False, False, 3, m, 5, P["out.W"], act1, B["out.matmul"])  # cuBLAS: (3, m) = A (3x5) @ B (5xm)
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = B["out"]
    launch("evaluate__out", grid(3 * m), (BLOCK,), out_matmul, P["out.b"], out, mi)
    # %loss: f32[] = softmax_cross_entropy %out, %y
    loss = B["loss"]
    parts = loss_parts(m)  # blocks, each over its part of the batch
    launch("evaluate__loss", (parts,), (BLOCK,), out, y, loss, scratch, mi, np.int32(parts))
    launch("evaluate__loss_total", (1,), (BLOCK,), loss, scratch, mi, np.int32(parts))
    return {
        "loss": loss,
        "out": out,
    }
