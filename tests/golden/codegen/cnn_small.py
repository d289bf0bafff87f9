"""Graph cnn, compiled by bngraph 0.1.0 for NumPy (float32).

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


def rows(fn, *arrays):
    """fn(*arrays): a node's statements on its units (rows; arrays of n units along axis 0). The
    units of a batch norm are independent, so bngraph's runtime replaces this with one that runs
    long ones in lanes of rows on host threads (bngraph.hostthreads.rows): the same numbers."""
    fn(*arrays)


def train_step(x, y, P, S, G, B):
    """One training step on a mini-batch: forward with the batch's own statistics, loss, backward.
    Returns the loss, grad.<param> for every param and state.<name>, the new running statistics.
    Reads P and S, writes only into B and G (the gradients)."""
    m = x.shape[1]
    # %conv1.conv: f32[8,m,8,8] = conv[dilation=1x1, groups=1, pads=1x1x1x1, stride=1x1] %conv1.W, %x
    conv1_conv_xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 10x10: 1x1 before, 1x1 after
    conv1_conv_cols = np.lib.stride_tricks.sliding_window_view(conv1_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 8x8, 3x3), no copy
    np.copyto(B["conv1.conv.cols"].reshape(1, 3, 3, m, 8, 8), conv1_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*8*8) in one copy, into its planned array
    conv1_conv_cols = B["conv1.conv.cols"].reshape(9, m * 64)
    conv1_conv = B["conv1.conv"]
    np.matmul(P["conv1.W"].reshape(8, 9), conv1_conv_cols, out=conv1_conv.reshape(8, m * 64))  # y = W @ cols
    # %relu1: f32[8,m,8,8], %bn1.mean: f32[8], %bn1.var: f32[8] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %conv1.conv, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    relu1, bn1_mean, bn1_var = B["relu1"], np.empty(8, DTYPE), np.empty(8, DTYPE)

    def relu1_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m * 64
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m * 64
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(relu1_rows, conv1_conv.reshape(8, -1), relu1.reshape(8, -1), bn1_mean, bn1_var, P["bn1.gamma"], P["bn1.beta"])  # in lanes of units on host threads when large; on the (8, m * 64) views: a channel's batch and positions as one row
    # %bn1.running_mean.next: f32[8], %bn1.running_var.next: f32[8] = running_update[momentum=0.1] %bn1.running_mean, %bn1.running_var, %bn1.mean, %bn1.var, %conv1.conv
    bn1_running_mean_next = (1 - 0.1) * S["bn1.running_mean"] + 0.1 * bn1_mean
    bn1_running_var_next = (1 - 0.1) * S["bn1.running_var"] + 0.1 * bn1_var * (m * 64 / (m * 64 - 1))  # unbiased batch variance over the m * 64 values per channel
    # %pool1: f32[8,m,4,4] = maxpool[dilation=1x1, kernel=2x2, pads=0x0x0x0, stride=2x2] %relu1
    pool1 = B["pool1"]
    pool1.fill(-np.inf)
    for i, j in np.ndindex(2, 2):  # the maximum of each 2x2 window: one vectorized maximum per kernel offset (strided slices, no copy)
        np.maximum(pool1, relu1[:, :, i:i + 7:2, j:j + 7:2], out=pool1)
    # %conv2.conv: f32[16,m,4,4] = conv[dilation=1x1, groups=2, pads=1x1x1x1, stride=1x1] %conv2.W, %pool1
    conv2_conv_xp = np.pad(pool1, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 6x6: 1x1 before, 1x1 after
    conv2_conv_cols = np.lib.stride_tricks.sliding_window_view(conv2_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 4x4, 3x3), no copy
    np.copyto(B["conv2.conv.cols"].reshape(8, 3, 3, m, 4, 4), conv2_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*4*4) in one copy, into its planned array
    conv2_conv_cols = B["conv2.conv.cols"].reshape(2, 36, m * 16)  # in 2 groups of rows
    conv2_conv = B["conv2.conv"]
    np.matmul(P["conv2.W"].reshape(2, 8, 36), conv2_conv_cols, out=conv2_conv.reshape(2, 8, m * 16))  # y = W @ cols per group (one batched matmul)
    # %relu2: f32[16,m,4,4], %bn2.mean: f32[16], %bn2.var: f32[16] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %conv2.conv, %bn2.gamma, %bn2.beta, %bn2.running_mean, %bn2.running_var
    relu2, bn2_mean, bn2_var = B["relu2"], np.empty(16, DTYPE), np.empty(16, DTYPE)

    def relu2_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m * 16
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m * 16
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(relu2_rows, conv2_conv.reshape(16, -1), relu2.reshape(16, -1), bn2_mean, bn2_var, P["bn2.gamma"], P["bn2.beta"])  # in lanes of units on host threads when large; on the (16, m * 16) views: a channel's batch and positions as one row
    # %bn2.running_mean.next: f32[16], %bn2.running_var.next: f32[16] = running_update[momentum=0.1] %bn2.running_mean, %bn2.running_var, %bn2.mean, %bn2.var, %conv2.conv
    bn2_running_mean_next = (1 - 0.1) * S["bn2.running_mean"] + 0.1 * bn2_mean
    bn2_running_var_next = (1 - 0.1) * S["bn2.running_var"] + 0.1 * bn2_var * (m * 16 / (m * 16 - 1))  # unbiased batch variance over the m * 16 values per channel
    # %pool2: f32[16,m,1,1] = global_avgpool %relu2
    pool2 = np.mean(relu2, axis=(2, 3), keepdims=True, out=B["pool2"])  # the mean over the 4x4 positions, per channel and example
    # %flatten1: f32[16,m] = flatten %pool2
    flatten1 = B["flatten1"]
    np.copyto(flatten1.reshape(16, 1, 1, m), np.moveaxis(pool2, 1, -1))  # (C, m, d..) -> (C, d.., m): each example's features in PyTorch's order (c, d..), one copy
    # %out.matmul: f32[10,m] = matmul %out.W, %flatten1
    out_matmul = np.matmul(P["out.W"], flatten1, out=B["out.matmul"])
    # %out: f32[10,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    # %loss: f32[] = softmax_cross_entropy %out, %y
    loss_logp = out - out.max(axis=0)  # log-softmax over classes, shifted for stability
    loss_logp -= np.log(np.exp(loss_logp).sum(axis=0))
    loss = -loss_logp[y, np.arange(m)].mean()
    # %loss.grad: f32[] = fill[dtype=f32, value=1.0]
    # a constant (1.0): written into the statements that read it, no array of its own
    # %out.grad: f32[10,m] = softmax_cross_entropy_grad %out, %y, %loss.grad
    # B["out.grad"] reuses the array of B["out.matmul"] (no longer read)
    out_grad = np.subtract(out, out.max(axis=0), out=B["out.grad"])  # softmax over classes
    np.exp(out_grad, out=out_grad)
    out_grad /= out_grad.sum(axis=0)
    out_grad[y, np.arange(m)] -= 1  # softmax - onehot(y)
    out_grad /= m
    # %out.b.grad: f32[10] = sum_batch %out.grad
    out_b_grad = out_grad.sum(axis=1, out=G["out.b"])
    # %out.W.grad: f32[10,16] = matmul[tb=true] %out.grad, %flatten1
    out_W_grad = np.matmul(out_grad, flatten1.T, out=G["out.W"])
    # %flatten1.grad: f32[16,m] = matmul[ta=true] %out.W, %out.grad
    # B["flatten1.grad"] reuses the array of B["flatten1"] (no longer read)
    flatten1_grad = np.matmul(P["out.W"].T, out_grad, out=B["flatten1.grad"])
    # %pool2.grad: f32[16,m,1,1] = unflatten[shape=16x1x1] %flatten1.grad
    # B["pool2.grad"] reuses the array of B["pool2"] (no longer read)
    pool2_grad = B["pool2.grad"]
    np.copyto(pool2_grad, np.moveaxis(flatten1_grad.reshape(16, 1, 1, m), -1, 1))  # (C*d.., m) -> (C, d.., m) -> (C, m, d..), one copy
    # %relu2.grad: f32[16,m,4,4] = global_avgpool_grad[in_size=4x4] %pool2.grad
    relu2_grad = B["relu2.grad"]
    np.divide(pool2_grad, 16, out=relu2_grad)  # dx = dy / (4*4) at every position (broadcast)
    # %conv2.conv.grad: f32[16,m,4,4], %bn2.gamma.grad: f32[16], %bn2.beta.grad: f32[16] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %relu2.grad, %relu2, %conv2.conv, %bn2.gamma, %bn2.mean, %bn2.var
    conv2_conv_grad, bn2_gamma_grad, bn2_beta_grad = B["conv2.conv.grad"], G["bn2.gamma"], G["bn2.beta"]

    def conv2_conv_grad_rows(da, a, dy, z, gamma, mean, var, dz, dgamma, dbeta):  # a block of units (rows)
        np.multiply(da, (a > 0), out=dy)  # dy = da * relu'(z~), from the output a
        inv_std = 1 / np.sqrt(var + 1e-05)  # per unit
        np.subtract(z, mean[:, None], out=dz)  # z_hat = (z - mean) * inv_std, in the dz buffer
        dz *= inv_std[:, None]
        dy.sum(axis=1, out=dbeta)  # dbeta = sum(dy)
        np.einsum("ij,ij->i", dy, dz, out=dgamma)  # dgamma = sum(dy * z_hat)
        dz *= (dgamma / (m * 16))[:, None]  # dz = gamma*inv_std * (dy - dbeta/m - z_hat*dgamma/m), in place
        dz += (dbeta / (m * 16))[:, None]
        np.subtract(dy, dz, out=dz)
        dz *= (gamma * inv_std)[:, None]

    rows(conv2_conv_grad_rows, relu2_grad.reshape(16, -1), relu2.reshape(16, -1), B["conv2.conv.grad.dy"].reshape(16, -1), conv2_conv.reshape(16, -1), P["bn2.gamma"], bn2_mean, bn2_var, conv2_conv_grad.reshape(16, -1), bn2_gamma_grad, bn2_beta_grad)  # in lanes of units on host threads when large; on the (16, m * 16) views: a channel's batch and positions as one row
    # %conv2.W.grad: f32[16,4,3,3] = conv_grad_weight[dilation=1x1, groups=2, kernel=3x3, pads=1x1x1x1, stride=1x1] %conv2.conv.grad, %pool1
    # B["conv2.W.grad.cols"] reuses the array of B["conv2.conv.cols"] (no longer read)
    conv2_W_grad_xp = np.pad(pool1, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 6x6: 1x1 before, 1x1 after
    conv2_W_grad_cols = np.lib.stride_tricks.sliding_window_view(conv2_W_grad_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 4x4, 3x3), no copy
    np.copyto(B["conv2.W.grad.cols"].reshape(8, 3, 3, m, 4, 4), conv2_W_grad_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*4*4) in one copy, into its planned array
    conv2_W_grad_cols = B["conv2.W.grad.cols"].reshape(2, 36, m * 16)  # in 2 groups of rows
    conv2_W_grad = G["conv2.W"]
    np.matmul(conv2_conv_grad.reshape(2, 8, m * 16), conv2_W_grad_cols.transpose(0, 2, 1), out=conv2_W_grad.reshape(2, 8, 36))  # dW = dy @ cols^T per group (one batched matmul)
    # %pool1.grad: f32[8,m,4,4] = conv_grad_input[dilation=1x1, groups=2, in_size=4x4, pads=1x1x1x1, stride=1x1] %conv2.W, %conv2.conv.grad
    # B["pool1.grad.dcols"] reuses the array of B["conv2.W.grad.cols"] (no longer read)
    np.matmul(P["conv2.W"].reshape(2, 8, 36).transpose(0, 2, 1), conv2_conv_grad.reshape(2, 8, m * 16), out=B["pool1.grad.dcols"].reshape(2, 36, m * 16))  # dcols = W^T @ dy per group (one batched matmul), into its planned array
    pool1_grad_dcols = B["pool1.grad.dcols"].reshape(8, 3, 3, m, 4, 4)  # (C, 3x3, m, 4x4): the rows of im2col
    pool1_grad_dxp = np.zeros((8, m, 6, 6), DTYPE)  # dx in padded coordinates (6x6), cropped at the end
    for i, j in np.ndindex(3, 3):  # col2im: each kernel offset's columns added back where im2col read them (9 vectorized adds, no scatter)
        pool1_grad_dxp[:, :, i:i + 4, j:j + 4] += pool1_grad_dcols[:, i, j]
    pool1_grad = B["pool1.grad"]
    np.copyto(pool1_grad, pool1_grad_dxp[:, :, 1:5, 1:5])  # dx: the input's positions, without the padding
    # %relu1.grad: f32[8,m,8,8] = maxpool_grad[dilation=1x1, kernel=2x2, pads=0x0x0x0, stride=2x2] %pool1.grad, %relu1, %pool1
    relu1_grad = B["relu1.grad"]
    relu1_grad.fill(0)  # dx: the kernel offsets' contributions are added into it
    relu1_grad_free = np.ones(pool1.shape, bool)  # the windows whose maximum has not had its gradient yet
    relu1_grad_nan = np.isnan(pool1)  # a window holding a NaN has it for its maximum
    for i, j in np.ndindex(2, 2):  # each window's dy goes to its maximum, the first in row-major order when tied (PyTorch's choice): 4 vectorized passes
        relu1_grad_hit = relu1[:, :, i:i + 7:2, j:j + 7:2] == pool1
        relu1_grad_hit |= relu1_grad_nan & np.isnan(relu1[:, :, i:i + 7:2, j:j + 7:2])
        relu1_grad_hit &= relu1_grad_free
        np.add(relu1_grad[:, :, i:i + 7:2, j:j + 7:2], pool1_grad, out=relu1_grad[:, :, i:i + 7:2, j:j + 7:2], where=relu1_grad_hit)  # += dy where hit, no temporary
        relu1_grad_free ^= relu1_grad_hit  # hit lies inside free: this clears it
    # %conv1.conv.grad: f32[8,m,8,8], %bn1.gamma.grad: f32[8], %bn1.beta.grad: f32[8] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %relu1.grad, %relu1, %conv1.conv, %bn1.gamma, %bn1.mean, %bn1.var
    conv1_conv_grad, bn1_gamma_grad, bn1_beta_grad = B["conv1.conv.grad"], G["bn1.gamma"], G["bn1.beta"]

    def conv1_conv_grad_rows(da, a, dy, z, gamma, mean, var, dz, dgamma, dbeta):  # a block of units (rows)
        np.multiply(da, (a > 0), out=dy)  # dy = da * relu'(z~), from the output a
        inv_std = 1 / np.sqrt(var + 1e-05)  # per unit
        np.subtract(z, mean[:, None], out=dz)  # z_hat = (z - mean) * inv_std, in the dz buffer
        dz *= inv_std[:, None]
        dy.sum(axis=1, out=dbeta)  # dbeta = sum(dy)
        np.einsum("ij,ij->i", dy, dz, out=dgamma)  # dgamma = sum(dy * z_hat)
        dz *= (dgamma / (m * 64))[:, None]  # dz = gamma*inv_std * (dy - dbeta/m - z_hat*dgamma/m), in place
        dz += (dbeta / (m * 64))[:, None]
        np.subtract(dy, dz, out=dz)
        dz *= (gamma * inv_std)[:, None]

    rows(conv1_conv_grad_rows, relu1_grad.reshape(8, -1), relu1.reshape(8, -1), B["conv1.conv.grad.dy"].reshape(8, -1), conv1_conv.reshape(8, -1), P["bn1.gamma"], bn1_mean, bn1_var, conv1_conv_grad.reshape(8, -1), bn1_gamma_grad, bn1_beta_grad)  # in lanes of units on host threads when large; on the (8, m * 64) views: a channel's batch and positions as one row
    # %conv1.W.grad: f32[8,1,3,3] = conv_grad_weight[dilation=1x1, groups=1, kernel=3x3, pads=1x1x1x1, stride=1x1] %conv1.conv.grad, %x
    # B["conv1.W.grad.cols"] reuses the array of B["conv1.conv.cols"] (no longer read)
    conv1_W_grad_xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 10x10: 1x1 before, 1x1 after
    conv1_W_grad_cols = np.lib.stride_tricks.sliding_window_view(conv1_W_grad_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 8x8, 3x3), no copy
    np.copyto(B["conv1.W.grad.cols"].reshape(1, 3, 3, m, 8, 8), conv1_W_grad_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*8*8) in one copy, into its planned array
    conv1_W_grad_cols = B["conv1.W.grad.cols"].reshape(9, m * 64)
    conv1_W_grad = G["conv1.W"]
    np.matmul(conv1_conv_grad.reshape(8, m * 64), conv1_W_grad_cols.T, out=conv1_W_grad.reshape(8, 9))  # dW = dy @ cols^T
    return {
        "loss": loss,
        "state.bn1.running_mean": bn1_running_mean_next,
        "state.bn1.running_var": bn1_running_var_next,
        "state.bn2.running_mean": bn2_running_mean_next,
        "state.bn2.running_var": bn2_running_var_next,
        "grad.conv1.W": G["conv1.W"],
        "grad.bn1.gamma": G["bn1.gamma"],
        "grad.bn1.beta": G["bn1.beta"],
        "grad.conv2.W": G["conv2.W"],
        "grad.bn2.gamma": G["bn2.gamma"],
        "grad.bn2.beta": G["bn2.beta"],
        "grad.out.W": G["out.W"],
        "grad.out.b": G["out.b"],
    }


def alloc_train_step(m):
    """Buffers for train_step at batch size m: one per batch-sized value written with out=.
    B: 24 batch-sized buffers in 18 arrays (buffers whose lives do not overlap share one)."""
    a0 = np.empty((576, m), DTYPE)
    a1 = np.empty((8, m, 8, 8), DTYPE)
    a2 = np.empty((8, m, 8, 8), DTYPE)
    a3 = np.empty((8, m, 4, 4), DTYPE)
    a4 = np.empty((1152, m), DTYPE)
    a5 = np.empty((16, m, 4, 4), DTYPE)
    a6 = np.empty((16, m, 4, 4), DTYPE)
    a7 = np.empty((16, m, 1, 1), DTYPE)
    a8 = np.empty((16, m), DTYPE)
    a9 = np.empty((10, m), DTYPE)
    a10 = np.empty((10, m), DTYPE)
    a11 = np.empty((16, m, 4, 4), DTYPE)
    a12 = np.empty((16, m, 4, 4), DTYPE)
    a13 = np.empty((16, m, 4, 4), DTYPE)
    a14 = np.empty((8, m, 4, 4), DTYPE)
    a15 = np.empty((8, m, 8, 8), DTYPE)
    a16 = np.empty((8, m, 8, 8), DTYPE)
    a17 = np.empty((8, m, 8, 8), DTYPE)
    return {
        "conv1.conv": a1,
        "conv1.conv.cols": a0,
        "relu1": a2,
        "pool1": a3,
        "conv2.conv": a5,
        "conv2.conv.cols": a4,
        "relu2": a6,
        "pool2": a7,
        "flatten1": a8,
        "out.matmul": a9,
        "out": a10,
        "out.grad": a9,
        "flatten1.grad": a8,
        "pool2.grad": a7,
        "relu2.grad": a11,
        "conv2.conv.grad": a13,
        "conv2.conv.grad.dy": a12,
        "conv2.W.grad.cols": a4,
        "pool1.grad": a14,
        "pool1.grad.dcols": a4,
        "relu1.grad": a15,
        "conv1.conv.grad": a17,
        "conv1.conv.grad.dy": a16,
        "conv1.W.grad.cols": a0,
    }


def forward(x, P, S, B):
    """Inference: batch norm with the running statistics. Returns out, the loss's input."""
    m = x.shape[1]
    # %conv1.conv: f32[8,m,8,8] = conv[dilation=1x1, groups=1, pads=1x1x1x1, stride=1x1] %conv1.W, %x
    conv1_conv_xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 10x10: 1x1 before, 1x1 after
    conv1_conv_cols = np.lib.stride_tricks.sliding_window_view(conv1_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 8x8, 3x3), no copy
    np.copyto(B["conv1.conv.cols"].reshape(1, 3, 3, m, 8, 8), conv1_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*8*8) in one copy, into its planned array
    conv1_conv_cols = B["conv1.conv.cols"].reshape(9, m * 64)
    conv1_conv = B["conv1.conv"]
    np.matmul(P["conv1.W"].reshape(8, 9), conv1_conv_cols, out=conv1_conv.reshape(8, m * 64))  # y = W @ cols
    # %relu1: f32[8,m,8,8] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %conv1.conv, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    relu1_s = P["bn1.gamma"] / np.sqrt(S["bn1.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    relu1_t = P["bn1.beta"] - S["bn1.running_mean"] * relu1_s  # t = beta - running_mean * s, per unit
    relu1 = np.multiply(conv1_conv, relu1_s[:, None, None, None], out=B["relu1"])  # relu(z*s + t), in place in the output buffer
    relu1 += relu1_t[:, None, None, None]
    np.maximum(relu1, 0, out=relu1)
    # %pool1: f32[8,m,4,4] = maxpool[dilation=1x1, kernel=2x2, pads=0x0x0x0, stride=2x2] %relu1
    pool1 = B["pool1"]
    pool1.fill(-np.inf)
    for i, j in np.ndindex(2, 2):  # the maximum of each 2x2 window: one vectorized maximum per kernel offset (strided slices, no copy)
        np.maximum(pool1, relu1[:, :, i:i + 7:2, j:j + 7:2], out=pool1)
    # %conv2.conv: f32[16,m,4,4] = conv[dilation=1x1, groups=2, pads=1x1x1x1, stride=1x1] %conv2.W, %pool1
    conv2_conv_xp = np.pad(pool1, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 6x6: 1x1 before, 1x1 after
    conv2_conv_cols = np.lib.stride_tricks.sliding_window_view(conv2_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 4x4, 3x3), no copy
    np.copyto(B["conv2.conv.cols"].reshape(8, 3, 3, m, 4, 4), conv2_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*4*4) in one copy, into its planned array
    conv2_conv_cols = B["conv2.conv.cols"].reshape(2, 36, m * 16)  # in 2 groups of rows
    conv2_conv = B["conv2.conv"]
    np.matmul(P["conv2.W"].reshape(2, 8, 36), conv2_conv_cols, out=conv2_conv.reshape(2, 8, m * 16))  # y = W @ cols per group (one batched matmul)
    # %relu2: f32[16,m,4,4] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %conv2.conv, %bn2.gamma, %bn2.beta, %bn2.running_mean, %bn2.running_var
    relu2_s = P["bn2.gamma"] / np.sqrt(S["bn2.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    relu2_t = P["bn2.beta"] - S["bn2.running_mean"] * relu2_s  # t = beta - running_mean * s, per unit
    relu2 = np.multiply(conv2_conv, relu2_s[:, None, None, None], out=B["relu2"])  # relu(z*s + t), in place in the output buffer
    relu2 += relu2_t[:, None, None, None]
    np.maximum(relu2, 0, out=relu2)
    # %pool2: f32[16,m,1,1] = global_avgpool %relu2
    pool2 = np.mean(relu2, axis=(2, 3), keepdims=True, out=B["pool2"])  # the mean over the 4x4 positions, per channel and example
    # %flatten1: f32[16,m] = flatten %pool2
    flatten1 = B["flatten1"]
    np.copyto(flatten1.reshape(16, 1, 1, m), np.moveaxis(pool2, 1, -1))  # (C, m, d..) -> (C, d.., m): each example's features in PyTorch's order (c, d..), one copy
    # %out.matmul: f32[10,m] = matmul %out.W, %flatten1
    out_matmul = np.matmul(P["out.W"], flatten1, out=B["out.matmul"])
    # %out: f32[10,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    return {
        "out": out,
    }


def alloc_forward(m):
    """Buffers for forward at batch size m: one per batch-sized value written with out=.
    B: 11 batch-sized buffers in 11 arrays."""
    a0 = np.empty((576, m), DTYPE)
    a1 = np.empty((8, m, 8, 8), DTYPE)
    a2 = np.empty((8, m, 8, 8), DTYPE)
    a3 = np.empty((8, m, 4, 4), DTYPE)
    a4 = np.empty((1152, m), DTYPE)
    a5 = np.empty((16, m, 4, 4), DTYPE)
    a6 = np.empty((16, m, 4, 4), DTYPE)
    a7 = np.empty((16, m, 1, 1), DTYPE)
    a8 = np.empty((16, m), DTYPE)
    a9 = np.empty((10, m), DTYPE)
    a10 = np.empty((10, m), DTYPE)
    return {
        "conv1.conv": a1,
        "conv1.conv.cols": a0,
        "relu1": a2,
        "pool1": a3,
        "conv2.conv": a5,
        "conv2.conv.cols": a4,
        "relu2": a6,
        "pool2": a7,
        "flatten1": a8,
        "out.matmul": a9,
        "out": a10,
    }


def forward_train(x, P, S, B):
    """Forward pass with the batch's own statistics (training mode), without updating state. Returns out."""
    m = x.shape[1]
    # %conv1.conv: f32[8,m,8,8] = conv[dilation=1x1, groups=1, pads=1x1x1x1, stride=1x1] %conv1.W, %x
    conv1_conv_xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 10x10: 1x1 before, 1x1 after
    conv1_conv_cols = np.lib.stride_tricks.sliding_window_view(conv1_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 8x8, 3x3), no copy
    np.copyto(B["conv1.conv.cols"].reshape(1, 3, 3, m, 8, 8), conv1_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*8*8) in one copy, into its planned array
    conv1_conv_cols = B["conv1.conv.cols"].reshape(9, m * 64)
    conv1_conv = B["conv1.conv"]
    np.matmul(P["conv1.W"].reshape(8, 9), conv1_conv_cols, out=conv1_conv.reshape(8, m * 64))  # y = W @ cols
    # %relu1: f32[8,m,8,8], %bn1.mean: f32[8], %bn1.var: f32[8] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %conv1.conv, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    relu1, bn1_mean, bn1_var = B["relu1"], np.empty(8, DTYPE), np.empty(8, DTYPE)

    def relu1_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m * 64
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m * 64
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(relu1_rows, conv1_conv.reshape(8, -1), relu1.reshape(8, -1), bn1_mean, bn1_var, P["bn1.gamma"], P["bn1.beta"])  # in lanes of units on host threads when large; on the (8, m * 64) views: a channel's batch and positions as one row
    # %pool1: f32[8,m,4,4] = maxpool[dilation=1x1, kernel=2x2, pads=0x0x0x0, stride=2x2] %relu1
    pool1 = B["pool1"]
    pool1.fill(-np.inf)
    for i, j in np.ndindex(2, 2):  # the maximum of each 2x2 window: one vectorized maximum per kernel offset (strided slices, no copy)
        np.maximum(pool1, relu1[:, :, i:i + 7:2, j:j + 7:2], out=pool1)
    # %conv2.conv: f32[16,m,4,4] = conv[dilation=1x1, groups=2, pads=1x1x1x1, stride=1x1] %conv2.W, %pool1
    conv2_conv_xp = np.pad(pool1, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 6x6: 1x1 before, 1x1 after
    conv2_conv_cols = np.lib.stride_tricks.sliding_window_view(conv2_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 4x4, 3x3), no copy
    np.copyto(B["conv2.conv.cols"].reshape(8, 3, 3, m, 4, 4), conv2_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*4*4) in one copy, into its planned array
    conv2_conv_cols = B["conv2.conv.cols"].reshape(2, 36, m * 16)  # in 2 groups of rows
    conv2_conv = B["conv2.conv"]
    np.matmul(P["conv2.W"].reshape(2, 8, 36), conv2_conv_cols, out=conv2_conv.reshape(2, 8, m * 16))  # y = W @ cols per group (one batched matmul)
    # %relu2: f32[16,m,4,4], %bn2.mean: f32[16], %bn2.var: f32[16] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %conv2.conv, %bn2.gamma, %bn2.beta, %bn2.running_mean, %bn2.running_var
    relu2, bn2_mean, bn2_var = B["relu2"], np.empty(16, DTYPE), np.empty(16, DTYPE)

    def relu2_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m * 16
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m * 16
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(relu2_rows, conv2_conv.reshape(16, -1), relu2.reshape(16, -1), bn2_mean, bn2_var, P["bn2.gamma"], P["bn2.beta"])  # in lanes of units on host threads when large; on the (16, m * 16) views: a channel's batch and positions as one row
    # %pool2: f32[16,m,1,1] = global_avgpool %relu2
    pool2 = np.mean(relu2, axis=(2, 3), keepdims=True, out=B["pool2"])  # the mean over the 4x4 positions, per channel and example
    # %flatten1: f32[16,m] = flatten %pool2
    flatten1 = B["flatten1"]
    np.copyto(flatten1.reshape(16, 1, 1, m), np.moveaxis(pool2, 1, -1))  # (C, m, d..) -> (C, d.., m): each example's features in PyTorch's order (c, d..), one copy
    # %out.matmul: f32[10,m] = matmul %out.W, %flatten1
    out_matmul = np.matmul(P["out.W"], flatten1, out=B["out.matmul"])
    # %out: f32[10,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    return {
        "out": out,
    }


def alloc_forward_train(m):
    """Buffers for forward_train at batch size m: one per batch-sized value written with out=.
    B: 11 batch-sized buffers in 11 arrays."""
    a0 = np.empty((576, m), DTYPE)
    a1 = np.empty((8, m, 8, 8), DTYPE)
    a2 = np.empty((8, m, 8, 8), DTYPE)
    a3 = np.empty((8, m, 4, 4), DTYPE)
    a4 = np.empty((1152, m), DTYPE)
    a5 = np.empty((16, m, 4, 4), DTYPE)
    a6 = np.empty((16, m, 4, 4), DTYPE)
    a7 = np.empty((16, m, 1, 1), DTYPE)
    a8 = np.empty((16, m), DTYPE)
    a9 = np.empty((10, m), DTYPE)
    a10 = np.empty((10, m), DTYPE)
    return {
        "conv1.conv": a1,
        "conv1.conv.cols": a0,
        "relu1": a2,
        "pool1": a3,
        "conv2.conv": a5,
        "conv2.conv.cols": a4,
        "relu2": a6,
        "pool2": a7,
        "flatten1": a8,
        "out.matmul": a9,
        "out": a10,
    }


def evaluate(x, y, P, S, B):
    """Inference (running statistics) with the loss: returns loss (the mean over this batch) and out."""
    m = x.shape[1]
    # %conv1.conv: f32[8,m,8,8] = conv[dilation=1x1, groups=1, pads=1x1x1x1, stride=1x1] %conv1.W, %x
    conv1_conv_xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 10x10: 1x1 before, 1x1 after
    conv1_conv_cols = np.lib.stride_tricks.sliding_window_view(conv1_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 8x8, 3x3), no copy
    np.copyto(B["conv1.conv.cols"].reshape(1, 3, 3, m, 8, 8), conv1_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*8*8) in one copy, into its planned array
    conv1_conv_cols = B["conv1.conv.cols"].reshape(9, m * 64)
    conv1_conv = B["conv1.conv"]
    np.matmul(P["conv1.W"].reshape(8, 9), conv1_conv_cols, out=conv1_conv.reshape(8, m * 64))  # y = W @ cols
    # %relu1: f32[8,m,8,8] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %conv1.conv, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    relu1_s = P["bn1.gamma"] / np.sqrt(S["bn1.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    relu1_t = P["bn1.beta"] - S["bn1.running_mean"] * relu1_s  # t = beta - running_mean * s, per unit
    relu1 = np.multiply(conv1_conv, relu1_s[:, None, None, None], out=B["relu1"])  # relu(z*s + t), in place in the output buffer
    relu1 += relu1_t[:, None, None, None]
    np.maximum(relu1, 0, out=relu1)
    # %pool1: f32[8,m,4,4] = maxpool[dilation=1x1, kernel=2x2, pads=0x0x0x0, stride=2x2] %relu1
    pool1 = B["pool1"]
    pool1.fill(-np.inf)
    for i, j in np.ndindex(2, 2):  # the maximum of each 2x2 window: one vectorized maximum per kernel offset (strided slices, no copy)
        np.maximum(pool1, relu1[:, :, i:i + 7:2, j:j + 7:2], out=pool1)
    # %conv2.conv: f32[16,m,4,4] = conv[dilation=1x1, groups=2, pads=1x1x1x1, stride=1x1] %conv2.W, %pool1
    conv2_conv_xp = np.pad(pool1, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: padded to 6x6: 1x1 before, 1x1 after
    conv2_conv_cols = np.lib.stride_tricks.sliding_window_view(conv2_conv_xp, (3, 3), axis=(2, 3))  # the 3x3 windows: a strided view (C, m, 4x4, 3x3), no copy
    np.copyto(B["conv2.conv.cols"].reshape(8, 3, 3, m, 4, 4), conv2_conv_cols.transpose(0, 4, 5, 1, 2, 3))  # im2col: (C*3*3, m*4*4) in one copy, into its planned array
    conv2_conv_cols = B["conv2.conv.cols"].reshape(2, 36, m * 16)  # in 2 groups of rows
    conv2_conv = B["conv2.conv"]
    np.matmul(P["conv2.W"].reshape(2, 8, 36), conv2_conv_cols, out=conv2_conv.reshape(2, 8, m * 16))  # y = W @ cols per group (one batched matmul)
    # %relu2: f32[16,m,4,4] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %conv2.conv, %bn2.gamma, %bn2.beta, %bn2.running_mean, %bn2.running_var
    relu2_s = P["bn2.gamma"] / np.sqrt(S["bn2.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    relu2_t = P["bn2.beta"] - S["bn2.running_mean"] * relu2_s  # t = beta - running_mean * s, per unit
    relu2 = np.multiply(conv2_conv, relu2_s[:, None, None, None], out=B["relu2"])  # relu(z*s + t), in place in the output buffer
    relu2 += relu2_t[:, None, None, None]
    np.maximum(relu2, 0, out=relu2)
    # %pool2: f32[16,m,1,1] = global_avgpool %relu2
    pool2 = np.mean(relu2, axis=(2, 3), keepdims=True, out=B["pool2"])  # the mean over the 4x4 positions, per channel and example
    # %flatten1: f32[16,m] = flatten %pool2
    flatten1 = B["flatten1"]
    np.copyto(flatten1.reshape(16, 1, 1, m), np.moveaxis(pool2, 1, -1))  # (C, m, d..) -> (C, d.., m): each example's features in PyTorch's order (c, d..), one copy
    # %out.matmul: f32[10,m] = matmul %out.W, %flatten1
    out_matmul = np.matmul(P["out.W"], flatten1, out=B["out.matmul"])
    # %out: f32[10,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    # %loss: f32[] = softmax_cross_entropy %out, %y
    loss_logp = out - out.max(axis=0)  # log-softmax over classes, shifted for stability
    loss_logp -= np.log(np.exp(loss_logp).sum(axis=0))
    loss = -loss_logp[y, np.arange(m)].mean()
    return {
        "loss": loss,
        "out": out,
    }


def alloc_evaluate(m):
    """Buffers for evaluate at batch size m: one per batch-sized value written with out=.
    B: 11 batch-sized buffers in 11 arrays."""
    a0 = np.empty((576, m), DTYPE)
    a1 = np.empty((8, m, 8, 8), DTYPE)
    a2 = np.empty((8, m, 8, 8), DTYPE)
    a3 = np.empty((8, m, 4, 4), DTYPE)
    a4 = np.empty((1152, m), DTYPE)
    a5 = np.empty((16, m, 4, 4), DTYPE)
    a6 = np.empty((16, m, 4, 4), DTYPE)
    a7 = np.empty((16, m, 1, 1), DTYPE)
    a8 = np.empty((16, m), DTYPE)
    a9 = np.empty((10, m), DTYPE)
    a10 = np.empty((10, m), DTYPE)
    return {
        "conv1.conv": a1,
        "conv1.conv.cols": a0,
        "relu1": a2,
        "pool1": a3,
        "conv2.conv": a5,
        "conv2.conv.cols": a4,
        "relu2": a6,
        "pool2": a7,
        "flatten1": a8,
        "out.matmul": a9,
        "out": a10,
    }
