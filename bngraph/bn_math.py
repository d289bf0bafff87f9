"""The batch-norm arithmetic that the op table's plain and synchronized batch norm share
(``bngraph.ops``, ``bngraph.ops_collective``): the per-unit scale and shift, and the running
statistics' update from a batch's statistics and count."""
from __future__ import annotations

import numpy as np


def bn_scale_shift(gamma, beta, mu, var, eps):
    """s = gamma / sqrt(var + eps),  t = beta - mu * s   (so that BN(z) = z*s + t)."""
    s = gamma / np.sqrt(var + eps)
    return s, beta - mu * s


def running_blend(rm, rv, mu, var, count, momentum):
    """(1 - momentum)*running + momentum*batch statistic, the variance made unbiased with the
    count it is over (var*n/(n-1); NaN for a count of one)."""
    unbiased = var * (count / (count - 1)) if count > 1 else np.full_like(var, np.nan)
    return (1 - momentum) * rm + momentum * mu, (1 - momentum) * rv + momentum * unbiased
