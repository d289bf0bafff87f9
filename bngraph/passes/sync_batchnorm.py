"""sync_batchnorm and global_mean_loss: a training program for data-parallel replicas.

Both run on a training program (``train_step``: after autodiff, where a batch norm's forward and
backward are both nodes) and write the collective ops of :mod:`bngraph.ops_collective`:

    batchnorm[_act](z) -> bn_partial_sum -> allreduce -> bn_partial_m2 -> allreduce -> batchnorm_sync
    batchnorm[_act]_grad -> batchnorm_sync_reduce -> allreduce -> batchnorm_sync_grad
    running_update -> running_update_sync (the unbiased variance with the global count)
    loss (the mean over this replica's examples) -> the mean over all: the seed dL/dL = D_r/D

On one replica every allreduce is the identity and the program computes what it computed before
(up to rounding). With R replicas on shards of one global batch it computes what one process
computes on the whole batch: PyTorch ``SyncBatchNorm``'s algorithm with the global count, so
uneven shards are exact; the gradients are sums of local parts (the gradient hook of
:mod:`bngraph.distributed` adds them up over the replicas).
"""
from __future__ import annotations

from ..ir import TensorType, Value
from ..ops import LOSS_OPS
from .base import PassError, PassResult, graph_pass, make_node

SYNC_VALID = ("training programs (after autodiff) that run as data-parallel replicas, one per process or GPU, each "
              "on its shard of the global batch; on one replica it changes nothing but rounding")
BN_FORWARD = ("batchnorm", "batchnorm_act")
BN_BACKWARD = ("batchnorm_grad", "batchnorm_act_grad")


def _val(name, dtype, shape=()):
    return Value(name, TensorType(dtype, tuple(shape)))


def _act_attrs(node) -> dict:
    a = node.attr
    out = {"eps": a["eps"]}
    if "act" in a:
        out.update(act=a["act"], negative_slope=a.get("negative_slope", 0.0))
    return out


def _base(node) -> str:
    mean = node.outputs[1].name
    return mean[: -len(".mean")] if mean.endswith(".mean") else mean


def _forward(node):
    """The synchronized forward of one training-mode batch norm: (nodes, count name)."""
    z, gamma, beta = node.inputs[:3]
    y, mean, var = node.outputs
    b, dt, units = _base(node), y.type.dtype, mean.type.shape
    count, s, m2 = f"{b}.count", f"{b}.sum", f"{b}.m2"
    nodes = [
        make_node("bn_partial_sum", [z], [_val(f"{count}.local", dt), _val(f"{s}.local", dt, units)]),
        make_node("allreduce", [f"{count}.local", f"{s}.local"], [_val(count, dt), _val(s, dt, units)]),
        make_node("bn_partial_m2", [z, s, count], [mean, _val(f"{m2}.local", dt, units)]),
        make_node("allreduce", [f"{m2}.local"], [_val(m2, dt, units)]),
        make_node("batchnorm_sync", [z, gamma, beta, mean.name, m2, count], [y, var], _act_attrs(node)),
    ]
    return nodes, count


def _backward(grad, fwd, count):
    """batchnorm[_act]_grad -> local sums, allreduce, the elementwise dz."""
    if grad.op == "batchnorm_grad":
        dy, z, gamma, mean, var = grad.inputs
        da, a = dy, fwd.outputs[0].name  # no activation: a is not read
    else:
        da, a, z, gamma, mean, var = grad.inputs
    dz, dgamma, dbeta = grad.outputs
    b = _base(fwd)
    attrs = _act_attrs(grad)
    return [
        # the local parts of dbeta and dgamma: gradients like any other, summed over the replicas by the hook
        make_node("batchnorm_sync_reduce", [da, a, z, mean, var], [dbeta, dgamma], attrs),
        make_node("allreduce", [dbeta.name, dgamma.name], [_val(f"{b}.s1", dbeta.type.dtype, dbeta.type.shape),
                                                           _val(f"{b}.s2", dgamma.type.dtype, dgamma.type.shape)]),
        make_node("batchnorm_sync_grad", [da, a, z, gamma, mean, var, f"{b}.s1", f"{b}.s2", count], [dz], attrs),
    ]


@graph_pass("sync_batchnorm", SYNC_VALID, registry=None)
def sync_batchnorm(g) -> PassResult:
    """batchnorm(z) -> batchnorm_sync(z, allreduce(local sums)); its grad -> allreduce(sum dy, sum dy*z_hat)

    Training-mode batch norm (flat or spatial: the same op on the (C, m*d...) view) normalizes
    with the statistics of the global batch; eval-mode batch norm is left alone.
    """
    fwd_of, count_of, new_nodes, changes = {}, {}, {}, []
    for n in g.nodes:
        if n.op in BN_FORWARD and n.attr.get("mode") == "train":
            nodes, count = _forward(n)
            new_nodes[id(n)] = nodes
            fwd_of[n.outputs[1].name] = n  # by its mean
            count_of[n.outputs[1].name] = count
    if not fwd_of:
        return PassResult(g, notes=("no training-mode batch norm: nothing to synchronize",))
    grads = 0
    for n in g.nodes:
        if n.op == "running_update" and n.inputs[2] in fwd_of:
            rm, rv, mean, var, _ = n.inputs
            new_nodes[id(n)] = [make_node("running_update_sync", [rm, rv, mean, var, count_of[mean]], n.outputs,
                                          n.attr)]
        elif n.op in BN_BACKWARD and n.attr.get("mode") == "train":
            mean = n.inputs[-2]
            if mean not in fwd_of:
                raise PassError(f"sync_batchnorm: %{n.name} ({n.op}) reads %{mean}, which no training-mode batch "
                                f"norm computes")
            new_nodes[id(n)] = _backward(n, fwd_of[mean], count_of[mean])
            grads += 1
    for mean, n in fwd_of.items():
        units = n.outputs[1].type.shape[0]
        spatial = " (per channel over the batch and the positions)" if n.outputs[0].type.rank > 2 else ""
        changes.append(f"synchronized {_base(n)} ({n.op}, {units} units{spatial}) over the replicas: its mean and "
                       f"variance are the global batch's (allreduce of the local count and sum, then of the M2 "
                       f"around the global mean); running_var uses the global count")
    if grads:
        changes.append(f"synchronized the backward of {grads} batch norm(s): one allreduce each of the local "
                       f"(sum dy, sum dy*z_hat), then dz = gamma*inv_std*(dy - S1/N - z_hat*S2/N)")
    nodes = [m for n in g.nodes for m in new_nodes.get(id(n), [n])]
    return PassResult(g.rebuild(nodes=nodes), tuple(changes))


@graph_pass("global_mean_loss", "training programs of data-parallel replicas whose loss is a mean "
            "(reduction='mean', the default)", registry=None)
def global_mean_loss(g) -> PassResult:
    """loss = S_r/D_r -> loss = sum S_r / sum D_r;  dL/dL = 1 -> D_r / sum D_r

    The mean over the global batch, divided where one process divides: every replica's gradients
    are then its parts of the global gradient, and the reported loss is the global one.
    """
    loss = g.loss_node
    if loss is None or loss.op not in LOSS_OPS:
        raise PassError(f"global_mean_loss: graph {g.name} has no loss")
    reduction = loss.attr.get("reduction", "mean")
    if reduction != "mean":
        raise PassError(f"global_mean_loss: the loss %{loss.name} has reduction={reduction!r}; data-parallel "
                        f"training supports the mean (the default)")
    L, dt = loss.out.name, loss.out.type.dtype
    seed = next((n for n in g.nodes if n.op == "fill" and n.out.name == f"{loss.name}.grad"), None)
    if seed is None:
        raise PassError(f"global_mean_loss: graph {g.name} has no seed %{loss.name}.grad (run it after autodiff)")
    attrs = {"loss": loss.op}
    if loss.attr.get("ignore_index") is not None:
        attrs["ignore_index"] = loss.attr["ignore_index"]
    glob = f"{L}.global"
    nodes = [
        make_node("loss_count", loss.inputs, [_val(f"{L}.count.local", dt)], attrs),
        make_node("mul", [L, f"{L}.count.local"], [_val(f"{L}.sum.local", dt)]),
        make_node("allreduce", [f"{L}.sum.local", f"{L}.count.local"], [_val(f"{L}.sum", dt), _val(f"{L}.count", dt)]),
        make_node("div", [f"{L}.sum", f"{L}.count"], [_val(glob, dt)]),
        make_node("div", [f"{L}.count.local", f"{L}.count"], [seed.out]),  # the seed: D_r / D
    ]
    out = [n for m in g.nodes for n in (nodes if m is seed else [m])]
    outputs = [(k, glob if k == "loss" else v) for k, v in g.outputs]
    return PassResult(g.rebuild(nodes=out, outputs=outputs),
                      (f"the loss %{L} ({loss.op}) is the mean over the global batch: the seed dL/dL is this "
                       f"replica's share of the denominator, D_r/D (allreduce of the local sum and count)",))
