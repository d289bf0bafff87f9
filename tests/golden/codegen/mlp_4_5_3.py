"""Graph mlp, compiled by bngraph 0.1.0 for NumPy (float32).

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
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = np.matmul(P["fc1.W"], x, out=B["fc1.matmul"])
    # %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1, bn1_mean, bn1_var = B["act1"], np.empty(5, DTYPE), np.empty(5, DTYPE)

    def act1_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(act1_rows, fc1_matmul, act1, bn1_mean, bn1_var, P["bn1.gamma"], P["bn1.beta"])  # in lanes of units on host threads when large
    # %bn1.running_mean.next: f32[5], %bn1.running_var.next: f32[5] = running_update[momentum=0.1] %bn1.running_mean, %bn1.running_var, %bn1.mean, %bn1.var, %fc1.matmul
    bn1_running_mean_next = (1 - 0.1) * S["bn1.running_mean"] + 0.1 * bn1_mean
    bn1_running_var_next = (1 - 0.1) * S["bn1.running_var"] + 0.1 * bn1_var * (m / (m - 1))  # unbiased batch variance
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = np.matmul(P["out.W"], act1, out=B["out.matmul"])
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    # %loss: f32[] = softmax_cross_entropy %out, %y
    loss_logp = out - out.max(axis=0)  # log-softmax over classes, shifted for stability
    loss_logp -= np.log(np.exp(loss_logp).sum(axis=0))
    loss = -loss_logp[y, np.arange(m)].mean()
    # %loss.grad: f32[] = fill[dtype=f32, value=1.0]
    # a constant (1.0): written into the statements that read it, no array of its own
    # %out.grad: f32[3,m] = softmax_cross_entropy_grad %out, %y, %loss.grad
    # B["out.grad"] reuses the array of B["out.matmul"] (no longer read)
    out_grad = np.subtract(out, out.max(axis=0), out=B["out.grad"])  # softmax over classes
    np.exp(out_grad, out=out_grad)
    out_grad /= out_grad.sum(axis=0)
    out_grad[y, np.arange(m)] -= 1  # softmax - onehot(y)
    out_grad /= m
    # %out.b.grad: f32[3] = sum_batch %out.grad
    out_b_grad = out_grad.sum(axis=1, out=G["out.b"])
    # %out.W.grad: f32[3,5] = matmul[tb=true] %out.grad, %act1
    out_W_grad = np.matmul(out_grad, act1.T, out=G["out.W"])
    # %act1.grad: f32[5,m] = matmul[ta=true] %out.W, %out.grad
    act1_grad = np.matmul(P["out.W"].T, out_grad, out=B["act1.grad"])
    # %fc1.matmul.grad: f32[5,m], %bn1.gamma.grad: f32[5], %bn1.beta.grad: f32[5] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %act1.grad, %act1, %fc1.matmul, %bn1.gamma, %bn1.mean, %bn1.var
    fc1_matmul_grad, bn1_gamma_grad, bn1_beta_grad = B["fc1.matmul.grad"], G["bn1.gamma"], G["bn1.beta"]

    def fc1_matmul_grad_rows(da, a, dy, z, gamma, mean, var, dz, dgamma, dbeta):  # a block of units (rows)
        np.multiply(da, (a > 0), out=dy)  # dy = da * relu'(z~), from the output a
        inv_std = 1 / np.sqrt(var + 1e-05)  # per unit
        np.subtract(z, mean[:, None], out=dz)  # z_hat = (z - mean) * inv_std, in the dz buffer
        dz *= inv_std[:, None]
        dy.sum(axis=1, out=dbeta)  # dbeta = sum(dy)
        np.einsum("ij,ij->i", dy, dz, out=dgamma)  # dgamma = sum(dy * z_hat)
        dz *= (dgamma / m)[:, None]  # dz = gamma*inv_std * (dy - dbeta/m - z_hat*dgamma/m), in place
        dz += (dbeta / m)[:, None]
        np.subtract(dy, dz, out=dz)
        dz *= (gamma * inv_std)[:, None]

    rows(fc1_matmul_grad_rows, act1_grad, act1, B["fc1.matmul.grad.dy"], fc1_matmul, P["bn1.gamma"], bn1_mean, bn1_var, fc1_matmul_grad, bn1_gamma_grad, bn1_beta_grad)  # in lanes of units on host threads when large
    # %fc1.W.grad: f32[5,4] = matmul[tb=true] %fc1.matmul.grad, %x
    fc1_W_grad = np.matmul(fc1_matmul_grad, x.T, out=G["fc1.W"])
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


def alloc_train_step(m):
    """Buffers for train_step at batch size m: one per batch-sized value written with out=.
    B: 8 batch-sized buffers in 7 arrays (buffers whose lives do not overlap share one)."""
    a0 = np.empty((5, m), DTYPE)
    a1 = np.empty((5, m), DTYPE)
    a2 = np.empty((3, m), DTYPE)
    a3 = np.empty((3, m), DTYPE)
    a4 = np.empty((5, m), DTYPE)
    a5 = np.empty((5, m), DTYPE)
    a6 = np.empty((5, m), DTYPE)
    return {
        "fc1.matmul": a0,
        "act1": a1,
        "out.matmul": a2,
        "out": a3,
        "out.grad": a2,
        "act1.grad": a4,
        "fc1.matmul.grad": a6,
        "fc1.matmul.grad.dy": a5,
    }


def forward(x, P, S, B):
    """Inference: batch norm with the running statistics. Returns out, the loss's input."""
    m = x.shape[1]
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = np.matmul(P["fc1.W"], x, out=B["fc1.matmul"])
    # %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1_s = P["bn1.gamma"] / np.sqrt(S["bn1.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    act1_t = P["bn1.beta"] - S["bn1.running_mean"] * act1_s  # t = beta - running_mean * s, per unit
    act1 = np.multiply(fc1_matmul, act1_s[:, None], out=B["act1"])  # relu(z*s + t), in place in the output buffer
    act1 += act1_t[:, None]
    np.maximum(act1, 0, out=act1)
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = np.matmul(P["out.W"], act1, out=B["out.matmul"])
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    return {
        "out": out,
    }


def alloc_forward(m):
    """Buffers for forward at batch size m: one per batch-sized value written with out=.
    B: 4 batch-sized buffers in 4 arrays."""
    a0 = np.empty((5, m), DTYPE)
    a1 = np.empty((5, m), DTYPE)
    a2 = np.empty((3, m), DTYPE)
    a3 = np.empty((3, m), DTYPE)
    return {
        "fc1.matmul": a0,
        "act1": a1,
        "out.matmul": a2,
        "out": a3,
    }


def forward_train(x, P, S, B):
    """Forward pass with the batch's own statistics (training mode), without updating state. Returns out."""
    m = x.shape[1]
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = np.matmul(P["fc1.W"], x, out=B["fc1.matmul"])
    # %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1, bn1_mean, bn1_var = B["act1"], np.empty(5, DTYPE), np.empty(5, DTYPE)

    def act1_rows(z, a, mean, var, gamma, beta):  # a block of units (rows): each unit's statistics are its own
        z.sum(axis=1, out=mean)  # batch mean, per unit
        mean /= m
        np.subtract(z, mean[:, None], out=a)  # z - mean, in the output buffer
        np.einsum("ij,ij->i", a, a, out=var)  # batch variance (biased), per unit
        var /= m
        s = gamma / np.sqrt(var + 1e-05)  # s = gamma / sqrt(var + eps), per unit
        a *= s[:, None]  # relu((z - mean)*s + beta) = relu(z*s + t), t = beta - mean*s
        a += beta[:, None]
        np.maximum(a, 0, out=a)

    rows(act1_rows, fc1_matmul, act1, bn1_mean, bn1_var, P["bn1.gamma"], P["bn1.beta"])  # in lanes of units on host threads when large
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = np.matmul(P["out.W"], act1, out=B["out.matmul"])
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
    out = np.add(out_matmul, P["out.b"][:, None], out=B["out"])
    return {
        "out": out,
    }


def alloc_forward_train(m):
    """Buffers for forward_train at batch size m: one per batch-sized value written with out=.
    B: 4 batch-sized buffers in 4 arrays."""
    a0 = np.empty((5, m), DTYPE)
    a1 = np.empty((5, m), DTYPE)
    a2 = np.empty((3, m), DTYPE)
    a3 = np.empty((3, m), DTYPE)
    return {
        "fc1.matmul": a0,
        "act1": a1,
        "out.matmul": a2,
        "out": a3,
    }


def evaluate(x, y, P, S, B):
    """Inference (running statistics) with the loss: returns loss (the mean over this batch) and out."""
    m = x.shape[1]
    # %fc1.matmul: f32[5,m] = matmul %fc1.W, %x
    fc1_matmul = np.matmul(P["fc1.W"], x, out=B["fc1.matmul"])
    # %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
    act1_s = P["bn1.gamma"] / np.sqrt(S["bn1.running_var"] + 1e-05)  # s = gamma / sqrt(running_var + eps), per unit
    act1_t = P["bn1.beta"] - S["bn1.running_mean"] * act1_s  # t = beta - running_mean * s, per unit
    act1 = np.multiply(fc1_matmul, act1_s[:, None], out=B["act1"])  # relu(z*s + t), in place in the output buffer
    act1 += act1_t[:, None]
    np.maximum(act1, 0, out=act1)
    # %out.matmul: f32[3,m] = matmul %out.W, %act1
    out_matmul = np.matmul(P["out.W"], act1, out=B["out.matmul"])
    # %out: f32[3,m] = bias_add %out.matmul, %out.b
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
    B: 4 batch-sized buffers in 4 arrays."""
    a0 = np.empty((5, m), DTYPE)
    a1 = np.empty((5, m), DTYPE)
    a2 = np.empty((3, m), DTYPE)
    a3 = np.empty((3, m), DTYPE)
    return {
        "fc1.matmul": a0,
        "act1": a1,
        "out.matmul": a2,
        "out": a3,
    }
