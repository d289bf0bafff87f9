"""Scenarios of the CUDA execution model under a sanitizer, run in a Python started with the
sanitizer's runtime (bngraph.backends.cuda_target.sanitizers.environment) by
tests/test_cuda_model_mutations.py:

    python tests/cuda_model_scenarios.py address programs zoo step optimizers ...

prints one line per scenario: ``<name>: ok``, ``<name>: fault: <the KernelFault's first line>``
or ``<name>: wrong: <the assertion's first line>``. A scenario is a run of real kernels (every
program of a model, the class losses, a guarded fit, the optimizers), or one planted bug
(cuda_model_support.MUTATIONS), or a small kernel that overflows a signed int (the UBSan probe).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bngraph as bg  # noqa: E402
from bngraph.backends import get_target  # noqa: E402
from bngraph.backends.cuda_target.threads import KernelFault, threads_runtime  # noqa: E402
from cuda_model_support import compare_programs, model_device, planted  # noqa: E402


def programs(device):
    """Every activation, bias, batch norm (train, eval, gradients; rows whole and in segments), the
    pointwise losses and the arithmetic ops."""
    from test_binary_ops import arithmetic_graph  # add, sub, mul, div, neg; mse
    from test_cuda_target import layered_graph

    compare_programs(layered_graph("softmax_cross_entropy", "f64", widths=(3, 7, 1, 6)), device, sizes=(3, 33))
    compare_programs(bg.mlp([3, 1, 2], loss="sigmoid_bce"), device, sizes=(4097,), programs=("train_step",))
    compare_programs(arithmetic_graph("f64"), device, sizes=(33,), programs=("train_step",))


def zoo(device):
    from test_loss_variants import kernel_zoo, zoo_reference, zoo_values

    g = kernel_zoo("f64")
    t = get_target("cuda")
    exe = t.runtime(device).load(t.renderer.render({"forward": g}, g.dtype, g.name))
    feeds, state = zoo_values(np.random.default_rng(1), "f64", 1100)
    want = zoo_reference(g, feeds, state)
    got = exe.run("forward", {k: exe.runtime.asarray(v, v.dtype) for k, v in feeds.items()}, {},
                  {k: exe.runtime.asarray(v, v.dtype) for k, v in state.items()}, None, 1100)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k]), v, rtol=1e-12, atol=1e-13, err_msg=k)


def step(device):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((48, 4)), rng.integers(0, 3, 48)
    schedule = lambda epoch, step: 1e200 if step == 4 else 1e-2  # noqa: E731  (step 5 diverges: the guard)
    model = bg.compile(bg.mlp([4, 6, 3]), target="cuda", device=device, dtype="float64", cuda_graph=True)
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=8, verbose=False,
                     lr_schedule=schedule)
    assert "loss is nan at step 5" in hist.stop_reason, hist.stop_reason


def optimizers(device):
    from bngraph.flat import FlatLayout

    model = bg.compile(bg.mlp([40, 30, 3]), target="cuda", device=device, dtype="float64")
    layout = FlatLayout([(k, v.shape, "float64") for k, v in model.params.items()])
    for make in (lambda: bg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                 lambda: bg.optim.RMSprop(lr=1e-2, centered=True, momentum=0.5),
                 lambda: bg.optim.Adam(lr=1e-2, amsgrad=True, weight_decay=0.1)):
        P, G = layout.allocate(np), layout.allocate(np)
        G.buffers["float64"][...] = 0.5
        opt = make()
        opt.bind(layout, np, kernel=model.executable.optimizer_kernel(opt))
        for _ in range(2):
            opt.step_flat(P, G)


def ubsan_probe(device):
    src = ('extern "C" __global__ void overflow(int* out, int k) {\n'
           '    out[threadIdx.x] = (int)(blockIdx.x * blockDim.x + threadIdx.x) * k;  // signed overflow for large k\n'
           '}\n')
    rt = threads_runtime(device)
    rt.launcher.bind(rt.compiler.compile(src))("overflow", (1,), (32,), np.zeros(32, np.int32), np.int32(2**30))


def mutation(name):
    def run(device):
        m = {"tail_off_by_one": 1000, "missing_barrier": 600, "overlapping_threads": 600}.get(name, 33)
        with planted(name):
            compare_programs(bg.mlp([4, 7, 3]), device, sizes=(m,), programs=("forward_train",))

    return run


SCENARIOS = {"programs": programs, "zoo": zoo, "step": step, "optimizers": optimizers, "ubsan_probe": ubsan_probe,
             **{f"plant:{n}": mutation(n) for n in ("tail_off_by_one", "missing_barrier", "overlapping_threads")}}


def main(argv) -> int:
    kind, names = argv[0], argv[1:]
    for name in names:
        start = time.perf_counter()
        try:
            SCENARIOS[name](model_device(sanitizer=kind, seed=7))
        except KernelFault as e:
            outcome = f"fault: {str(e).splitlines()[0]}"
        except AssertionError as e:
            outcome = f"wrong: {(str(e).strip().splitlines() or ['?'])[0]}"
        else:
            outcome = "ok"
        print(f"{name}: {outcome} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
