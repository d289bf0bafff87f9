"""How far two float32 evaluations of one program may differ: a bound from the program's own
conditioning at these inputs, not from the seed that passed (issue 17, finding 5).

A fixed tolerance cannot hold for float32 batch norm at small batch sizes. At m = 2 the batch
variance of a unit is ((z1 - z2)/2)^2, as small as the data make it; the float32 rounding of the
stored z, mean and variance (relative u = 2^-24 each) becomes an error of u*|z|/sqrt(var + eps) in
the normalised value (1/sqrt(eps) = 316 at most, times |z|/std), and the backward's compact
formula cancels its terms to (1 - z_hat^2) ~ eps/(var + eps) of their size, so gradients lose
further digits. Over 200 seeds of params and data (15 models of tests/test_cuda_target.py's
float32 matrix, m = 2, 3, 7, 9) the float32 kernels and the float32 NumPy target differed by up to
4.5e-4 (a gradient of size 2.3, at m = 2), and the tolerance used before (rtol 1e-4, atol 1e-5
times the output's scale), which held at m = 7 and 9, failed 5 times, all at m = 2, by up to 1.85x.

So the tolerance is computed per output from the conditioning, estimated by rounding on purpose:
the program is interpreted in float64 from the same (float32) inputs, params and state, once
exactly and ``SAMPLES`` times with every node's result multiplied by (1 ± u), random signs (one
float32 rounding of every stored intermediate, where both float32 targets round: Monte Carlo
arithmetic). ``e`` is the largest deviation of a perturbed run from the exact one; it grows with
every amplification on the output's path (1/std, cancellation, saturated activations) as the real
float32 error does. The bound on the difference of two float32 evaluations is

    |a - b| <= ULPS_PER_OP * ROUNDINGS_PER_NODE * (e + u * scale)

* ULPS_PER_OP = 4 (tests/test_cuda_numerics.py): room for each rounding's worst case against the
  random signs of the estimate, and for two evaluations erring in opposite directions;
* ROUNDINGS_PER_NODE = 8: the estimate rounds once per node, an implementation several times
  inside one (the NumPy target's float32 batch norm: mean, centring, variance, rsqrt, scale,
  shift, activation, and the backward's sums);
* u * scale: one rounding of the output itself (``scale`` its largest magnitude, at least 1), for
  outputs whose estimate happens to be 0.

Measured over the same 200 seeds (every output of every program, 3000 model-seed pairs): the
largest |a - b| / bound was 0.27 for the IEEE emulator against the NumPy target, 0.18 (1800 pairs) for
device="emulator-gpu-math" (with tests/test_cuda_numerics.py's FMA/FTZ allowance on top), no
failure. Where the program is well conditioned the bound is a few u per node (a few 1e-6 for
outputs of size 1), tighter than the old 1e-5: tests/test_cuda_numerics.py shows a gradient off by
a relative 1e-4 failing.
"""
from __future__ import annotations

import numpy as np

from bngraph.ops import get_op

U32 = 2.0 ** -24
ULPS_PER_OP = 4
ROUNDINGS_PER_NODE = 8
SAMPLES = 4


def interpret(program, feeds: dict, values: dict, rng=None) -> dict:
    """``program`` evaluated node by node in the arrays' precision; with ``rng``, each node's
    floating result multiplied by (1 + u*s), s = +-1 at random (one float32 rounding)."""
    env = {**feeds, **values}
    for n in program.nodes:
        outs = get_op(n.op).ref([env[i] for i in n.inputs], n.attr)
        for o, a in zip(n.outputs, outs):
            a = np.asarray(a)
            if rng is not None and a.dtype.kind == "f":
                a = a * (1 + U32 * rng.choice([-1.0, 1.0], size=a.shape))
            env[o.name] = a
    return {k: env[v] for k, v in program.outputs}


def float32_bounds(model, program: str, feeds: dict, seed: int = 0) -> dict:
    """Output key -> how far two float32 evaluations of ``model``'s ``program`` on ``feeds`` (the
    device arrays the model was fed) may differ (the module's bound)."""
    wide = lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)  # noqa: E731
    prog = model.programs[program]
    feeds = {k: wide(model.runtime.to_numpy(v)) for k, v in feeds.items()}
    values = {k: wide(model.runtime.to_numpy(v)) for k, v in {**model.params, **model.state}.items()}
    exact = interpret(prog, feeds, values)
    rng = np.random.default_rng(seed)
    runs = [interpret(prog, feeds, values, rng) for _ in range(SAMPLES)]
    out = {}
    for k, want in exact.items():
        e = max(float(np.max(np.abs(np.asarray(r[k]) - want), initial=0.0)) for r in runs)
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        out[k] = ULPS_PER_OP * ROUNDINGS_PER_NODE * (e + U32 * scale)
    return out
