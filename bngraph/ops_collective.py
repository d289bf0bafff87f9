"""The op table's collective ops: ``allreduce`` and the pieces of synchronized batch norm
(registered into ``bngraph.ops.OPS``; the pass :mod:`bngraph.passes.sync_batchnorm` writes them).

Data parallel: every replica (a process, one per GPU) runs the same program on its shard of the
global batch. ``allreduce`` is the one collective: the sum of a value over the replicas; on one
replica it is the identity, which is its reference semantics here (the interpreter is one
replica). The generated code calls the process's communicator (:mod:`bngraph.distributed`).

Synchronized batch norm (the project's math notes; PyTorch ``SyncBatchNorm``'s algorithm), for one
unit over n_r examples on replica r, N = sum n_r:

* ``bn_partial_sum %z -> (count, sum)``: n_r and sum z, local;
* ``allreduce`` -> N, sum over all; ``bn_partial_m2 %z, %sum, %count -> (mean, m2)``: the global mean
  and the local M2 = sum (z - mean)^2 around it (two passes, as one process computes them: no
  sum of squares minus a squared mean); ``allreduce`` -> the global M2;
* ``batchnorm_sync[eps, act] %z, %gamma, %beta, %mean, %m2, %count -> (y, var)``: var = M2/N,
  y = g(z*s + t);
* backward: ``batchnorm_sync_reduce %da, %a, %z, %mean, %var -> (s1, s2)``: the local sums of dy
  and dy*z_hat (dy = da*g'(a)): the local parts of dbeta and dgamma; ``allreduce`` -> S1, S2;
  ``batchnorm_sync_grad %da, %a, %z, %gamma, %mean, %var, %S1, %S2, %count -> dz`` =
  gamma*inv_std*(dy - S1/N - z_hat*S2/N);
* ``running_update_sync[momentum] %rm, %rv, %mean, %var, %count``: the unbiased variance with the
  global count, var*N/(N-1);
* ``loss_count[loss] %pred, %target[, %weight]``: the denominator of a mean loss on this replica's
  examples (the examples, the elements, or the class weights' sum): the global loss divides by
  the sum of these, exactly where one process divides by its batch.

Only ``allreduce`` is differentiated (the sum's adjoint is the sum of the cotangents); the others
appear in training programs after autodiff (the pass rewrites ``train_step``), kind ``backward``.
"""
from __future__ import annotations

import numpy as np

from .activations import act_derivative, act_fn
from .bn_math import bn_scale_shift, running_blend
from .ir import IRError, TensorType
from .opdef import (OpDef, _expect_arity, _expect_float, _expect_same_dtype, _expect_units, _per_unit, _scalar,
                    register, unit_rows)


def _col(v):
    return v[:, None]


# ---- allreduce --------------------------------------------------------------------------------


def _allreduce_infer(where, types, attrs):
    if not types:
        raise IRError(f"{where}: allreduce takes at least 1 input, got 0")
    for t in types:
        _expect_float(where, "allreduce input", t)
    return tuple(types)


def _allreduce_grad(emit, node, cts):
    # y_k = sum over replicas of x_k: dx_k = sum over replicas of dy_k (psum's adjoint is psum)
    live = [i for i, c in enumerate(cts) if c is not None]
    if not live:
        return [None] * len(cts)
    summed = emit("allreduce", [cts[i] for i in live], {})
    out = [None] * len(cts)
    for i, s in zip(live, summed):
        out[i] = s
    return out


register(OpDef(
    "allreduce", "y_k = sum over the replicas of x_k, for each input (one collective; the identity on one replica)",
    _allreduce_infer, lambda ins, attrs: tuple(np.array(x, copy=True) for x in ins), _allreduce_grad,
))

# ---- synchronized batch norm: forward ------------------------------------------------------------

ACT = {"act": (str, "identity"), "negative_slope": (float, 0.0)}
SYNC_ATTRS = {"eps": (float, 1e-5), **ACT}


def _partial_sum_infer(where, types, attrs):
    _expect_arity(where, "bn_partial_sum", types, 1)
    (z,) = types
    _expect_units(where, "bn_partial_sum input", z)
    return (_scalar(z.dtype), TensorType(z.dtype, (z.shape[0],)))


def bn_partial_sum(z):
    """(count, sum): this replica's examples (times the positions) and the sum of z per unit."""
    rows = unit_rows(z)
    return np.asarray(rows.shape[1], rows.dtype), rows.sum(axis=1)


register(OpDef(
    "bn_partial_sum", "(n_r, s) = (examples here, sum(z, axis=batch)): the local part of the mean",
    _partial_sum_infer, lambda ins, attrs: bn_partial_sum(ins[0]), kind="backward",
))


def _partial_m2_infer(where, types, attrs):
    _expect_arity(where, "bn_partial_m2", types, 3)
    z, s, n = types
    _expect_units(where, "bn_partial_m2 input", z)
    _expect_same_dtype(where, types)
    _per_unit(where, "sum", s, z.shape[0])
    _check_count(where, n)
    return (s, s)


def bn_partial_m2(z, s, n):
    """(mean, m2): the global mean s/n and this replica's sum of squared deviations from it."""
    mean = s / n
    d = unit_rows(z) - _col(mean)
    return mean, (d * d).sum(axis=1)


register(OpDef(
    "bn_partial_m2", "mean = s/N (global), m2_r = sum((z - mean)^2, axis=batch) (local)",
    _partial_m2_infer, lambda ins, attrs: bn_partial_m2(*ins), kind="backward",
))


def _check_count(where, n):
    _expect_float(where, "count", n)
    if n.shape != ():
        raise IRError(f"{where}: count expected a scalar, got {n}")


def _sync_infer(where, types, attrs):
    _expect_arity(where, "batchnorm_sync", types, 6)
    z, gamma, beta, mean, m2, n = types
    _expect_units(where, "batchnorm_sync input", z)
    _expect_same_dtype(where, types)
    for what, t in (("gamma", gamma), ("beta", beta), ("mean", mean), ("m2", m2)):
        _per_unit(where, what, t, z.shape[0])
    _check_count(where, n)
    return (z, mean)  # y, the global (biased) variance


def batchnorm_sync(z, gamma, beta, mean, m2, n, attrs):
    var = m2 / n
    s, t = bn_scale_shift(gamma, beta, mean, var, attrs["eps"])
    rows = unit_rows(z)
    y = act_fn(attrs)(rows * _col(s) + _col(t))
    return y.reshape(z.shape), var


register(OpDef(
    "batchnorm_sync", "var = m2/N; a = g(z*s + t), s = gamma/sqrt(var + eps), t = beta - mean*s  (global statistics)",
    _sync_infer, lambda ins, attrs: batchnorm_sync(*ins, attrs), attrs=dict(SYNC_ATTRS), kind="backward",
))

# ---- synchronized batch norm: backward -----------------------------------------------------------


def _sync_reduce_infer(where, types, attrs):
    _expect_arity(where, "batchnorm_sync_reduce", types, 5)
    da, a, z, mean, var = types
    _expect_units(where, "batchnorm_sync_reduce input", z)
    _expect_same_dtype(where, types)
    for what, t in (("mean", mean), ("var", var)):
        _per_unit(where, what, t, z.shape[0])
    return (mean, mean)


def _dy_zhat(da, a, z, mean, var, attrs):
    """(dy, z_hat) on the (units, m*d...) view: dy = da*g'(a)."""
    da, a, z = unit_rows(da), unit_rows(a), unit_rows(z)
    dy = da if attrs["act"] == "identity" else da * act_derivative(attrs)(a)
    return dy, (z - _col(mean)) * _col(1 / np.sqrt(var + attrs["eps"]))


def batchnorm_sync_reduce(da, a, z, mean, var, attrs):
    dy, z_hat = _dy_zhat(da, a, z, mean, var, attrs)
    return dy.sum(axis=1), (dy * z_hat).sum(axis=1)


register(OpDef(
    "batchnorm_sync_reduce", "dy = da*g'(a); (s1, s2) = (sum(dy), sum(dy*z_hat)) over this replica: dbeta, dgamma's parts",
    _sync_reduce_infer, lambda ins, attrs: batchnorm_sync_reduce(*ins, attrs), attrs=dict(SYNC_ATTRS),
    kind="backward",
))


def _sync_grad_infer(where, types, attrs):
    _expect_arity(where, "batchnorm_sync_grad", types, 9)
    da, a, z, gamma, mean, var, s1, s2, n = types
    _expect_units(where, "batchnorm_sync_grad input", z)
    _expect_same_dtype(where, types)
    for what, t in (("gamma", gamma), ("mean", mean), ("var", var), ("s1", s1), ("s2", s2)):
        _per_unit(where, what, t, z.shape[0])
    _check_count(where, n)
    return (z,)


def batchnorm_sync_grad(da, a, z, gamma, mean, var, s1, s2, n, attrs):
    dy, z_hat = _dy_zhat(da, a, z, mean, var, attrs)
    k = gamma / np.sqrt(var + attrs["eps"])
    dz = _col(k) * (dy - _col(s1 / n) - z_hat * _col(s2 / n))
    return (dz.reshape(z.shape),)


register(OpDef(
    "batchnorm_sync_grad", "dz = gamma*inv_std*(dy - S1/N - z_hat*S2/N), S1, S2 summed over the replicas",
    _sync_grad_infer, lambda ins, attrs: batchnorm_sync_grad(*ins, attrs), attrs=dict(SYNC_ATTRS), kind="backward",
))

# ---- running statistics with the global count ------------------------------------------------------


def _running_sync_infer(where, types, attrs):
    _expect_arity(where, "running_update_sync", types, 5)
    rm, rv, mean, var, n = types
    _expect_float(where, "running_mean", rm)
    if rm.rank != 1:
        raise IRError(f"{where}: running_mean expected a per-unit vector, got {rm}")
    for what, t in (("running_var", rv), ("batch mean", mean), ("batch var", var)):
        _per_unit(where, what, t, rm.shape[0])
    _check_count(where, n)
    return (rm, rv)


def running_update_sync(rm, rv, mean, var, n, attrs):
    return running_blend(rm, rv, mean, var, n, attrs["momentum"])


register(OpDef(
    "running_update_sync",
    "running = (1 - momentum)*running + momentum*batch_stat; the variance unbiased with the global count, var*N/(N-1)",
    _running_sync_infer, lambda ins, attrs: running_update_sync(*ins, attrs), None,
    attrs={"momentum": (float, 0.1)}, kind="state", nonnegative_inputs=(1,), state_updates={0: 0, 1: 1},
))

# ---- the loss's denominator ---------------------------------------------------------------------------

COUNTED_LOSSES = ("softmax_cross_entropy", "nll", "mse", "sigmoid_bce")


def _loss_count_infer(where, types, attrs):
    if attrs["loss"] not in COUNTED_LOSSES:
        raise IRError(f"{where}: loss_count of {attrs['loss']!r}: expected one of {', '.join(COUNTED_LOSSES)}")
    if len(types) not in (2, 3):
        raise IRError(f"{where}: loss_count takes 2 or 3 inputs (the loss's), got {len(types)}")
    _expect_float(where, "loss_count prediction", types[0])
    return (_scalar(types[0].dtype),)


def loss_count(ins, attrs):
    """The denominator of a mean loss over these examples: sum of w_i for a class loss (1 without
    class weights, 0 where ignored), the number of elements for mse and sigmoid_bce."""
    pred = ins[0]
    if attrs["loss"] in ("mse", "sigmoid_bce"):
        return (np.asarray(pred.size, pred.dtype),)
    # array-module generic (NumPy, or CuPy's arrays through NumPy's dispatch on the CUDA target): no
    # np.asarray of the labels or of the sum, which CuPy refuses (no implicit copy to the host)
    labels, ignore = ins[1], attrs.get("ignore_index")
    keep = np.ones_like(labels, dtype=bool) if ignore is None else labels != ignore
    w = keep.astype(pred.dtype) if len(ins) < 3 else np.where(keep, ins[2][np.where(keep, labels, 0)], 0)
    return (w.sum().astype(pred.dtype),)  # bngraph.ops.class_weights' w_i, summed


register(OpDef(
    "loss_count", "D_r = the denominator of the mean loss over this replica's examples (sum of w_i, or the elements)",
    _loss_count_infer, lambda ins, attrs: loss_count(ins, attrs), attrs={"loss": (str, "softmax_cross_entropy")},
    optional_attrs={"ignore_index": (int, None)}, kind="backward",
))
