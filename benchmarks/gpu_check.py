"""The one script for a lent GPU: the GPU tests, then the CUDA step timings against PyTorch.

    python benchmarks/gpu_check.py [--quick] [--json PATH] [--skip-tests]

1. ``pytest -m gpu tests/test_cuda_gpu.py`` (the CUDA target against the NumPy target, PyTorch,
   CUDA-graph replay, compute-sanitizer).
2. For 64-128-128-10 at batch 32 and 784-1024-1024-1024-10 at batch 64, 256, 1024 and 4096
   (ReLU, batch norm, softmax cross-entropy, Adam, float32, no TF32): the median over 200 steps
   (after warm-up; CUDA events around each step) of bngraph eager, bngraph with its CUDA graph,
   PyTorch eager with ``Adam(fused=True)``, the same PyTorch step captured in a CUDA graph
   (``Adam(fused=True, capturable=True)``) and ``torch.compile`` (its compile time apart); the
   kernels and cuBLAS calls per bngraph step; the fused batch-norm forward kernel's bandwidth
   against a device-to-device copy of the same tensor. One table on stdout, every record in JSON.
3. A small CNN (:func:`cnn`: two conv3x3+BN+ReLU+maxpool blocks, 16 and 32 channels, a linear head,
   1x28x28 random data) at batch 64 and 256: bngraph's step (im2col + cuBLAS, spatial batch norm)
   eager and in its CUDA graph against the same net in PyTorch/cuDNN, eager and in a CUDA graph.
Nothing is installed: the machine needs CuPy, PyTorch with CUDA, and this checkout.
``--emulator`` runs only the CNN's bngraph step on the CPU emulator (a few steps, host time): that
the script and the CNN's kernels run, without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import bngraph as bg  # noqa: E402

CONFIGS = [([64, 128, 128, 10], 32), ([784, 1024, 1024, 1024, 10], 64), ([784, 1024, 1024, 1024, 10], 256),
           ([784, 1024, 1024, 1024, 10], 1024), ([784, 1024, 1024, 1024, 10], 4096)]


def cuda_median(step, cp, n):
    """Median milliseconds of ``step()`` between two CUDA events on the current stream."""
    for _ in range(10):
        step()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(n):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(times))


CNN_BATCHES = (64, 256)


def cnn():
    """The CNN row's net, 1x28x28 -> 10 classes, float32 (PyTorch's twin: :func:`torch_cnn`)."""
    g = bg.Graph("cnn", "f32")
    x, y = g.input("x", (1, 28, 28)), g.labels("y", 10)
    h = x
    for k, c in enumerate((16, 32), 1):
        h = g.maxpool(g.relu(g.batchnorm(g.conv(h, c, 3, padding=1, name=f"conv{k}"), name=f"bn{k}")), 2)
    g.softmax_cross_entropy(g.matmul(g.flatten(h), 10, name="out"), y)
    return g


def cnn_data(m):
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, m)


def bngraph_rows(widths, m, n, cp, graph=None, data=None):
    """bngraph's step as fit runs it: enqueued (``Model._submit``), the losses read after the timed
    steps (fit reads once per logging interval), so no step waits for a host read. ``graph``,
    ``data``: another net than ``bg.mlp(widths)`` (the CNN) and its batch."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], m)
    if data is not None:
        X, y = data
    make = graph or (lambda: bg.mlp(widths))
    out = {}
    for label, kw in (("bngraph eager", {}), ("bngraph CUDA graph", {"cuda_graph": True})):
        model = bg.compile(make(), target="cuda", **kw)
        opt = bg.optim.Adam(lr=1e-4)

        def step(model=model, opt=opt):
            if model._submit(X, y, opt):
                model._collect()

        out[label] = cuda_median(step, cp, n)
        losses = model._collect()
        assert model.trainer.guarded is not None and all(np.isfinite(losses))
    # launches per step: the driver's kernels and cuBLAS calls, and the guarded step's own
    model = bg.compile(make(), target="cuda")
    opt = bg.optim.Adam(lr=1e-4)
    model.train_step(X, y, opt)
    exe, guarded, counts = model.executable, model.trainer.guarded, {"kernels": 0, "gemm": 0}
    launch, gemm = exe.module.launch, exe.module.gemm

    def counting(kind, fn):
        def call(*a):
            counts[kind] += 1
            return fn(*a)
        return call

    exe.module.launch, exe.module.gemm = counting("kernels", launch), counting("gemm", gemm)
    guarded.launch = counting("kernels", guarded.launch)
    model.train_step(X, y, opt)
    exe.module.launch, exe.module.gemm, guarded.launch = launch, gemm, launch
    out["launches per step"] = f"{counts['kernels']} kernels + {counts['gemm']} gemm"
    return out, model, X


def bn_bandwidth(model, X, cp):
    """The fused BN+ReLU forward kernel of layer 1 alone against copying its input."""
    exe = model.executable
    m = X.shape[0]
    feeds = model._feeds(X, np.zeros(m, np.int64))
    res = model._run("train_step", feeds, m)  # fills the buffers
    bufs = exe.buffers("train_step", m)
    z, y = bufs["fc1.matmul"], bufs["act1"]
    mean, var = bufs["bn1.mean"], bufs["bn1.var"]
    P = model.params
    kernel = "train_step__act1"
    t_bn = cuda_median(lambda: exe.launch(kernel, (z.shape[0],), (256,), z, P["bn1.gamma"], P["bn1.beta"], y, mean, var,
                                          np.int32(m)), cp, 200)
    t_copy = cuda_median(lambda: cp.copyto(y, z), cp, 200)
    del res
    return t_bn, t_copy, 2 * z.nbytes / (t_bn * 1e-3) / 1e12


def torch_cnn(torch):
    """The CNN of :func:`cnn` in PyTorch (no conv bias: bngraph folds it away before batch norm)."""
    nn, layers, c_in = torch.nn, [], 1
    for c in (16, 32):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def torch_rows(widths, m, n, cnn_net=False):
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")

    def make():
        if cnn_net:
            return torch_cnn(torch).to(dev)
        layers = []
        for a, b in zip(widths[:-2], widths[1:-1]):
            layers += [torch.nn.Linear(a, b), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(widths[-2], widths[-1]))
        return torch.nn.Sequential(*layers).to(dev)

    x = torch.randn(m, *((1, 28, 28) if cnn_net else (widths[0],)), device=dev)
    y = torch.randint(0, widths[-1], (m,), device=dev)

    def timed(step):
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        ts = []
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return float(np.median(ts))

    out = {}
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)

    def eager():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    out["PyTorch eager (fused Adam)"] = timed(eager)

    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True, capturable=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            eager_opt_step(net, opt, x, y, F)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        F.cross_entropy(net(x), y).backward()
        opt.step()
    out["PyTorch CUDA graph"] = timed(graph.replay)

    if not cnn_net:  # the CNN row: eager and CUDA graph (torch.compile's minutes are the MLP rows')
        net = make()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
        cnet = torch.compile(net)
        t0 = time.perf_counter()

        def compiled():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(cnet(x), y).backward()
            opt.step()

        compiled()
        torch.cuda.synchronize()
        out["torch.compile compile s"] = time.perf_counter() - t0
        out["torch.compile"] = timed(compiled)
    return out


def eager_opt_step(net, opt, x, y, F):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 steps per median instead of 200")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--emulator", action="store_true", help="only the CNN's bngraph step on the CPU emulator")
    ap.add_argument("--cnn-only", action="store_true", help="only the CNN rows (after the tests)")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = ap.parse_args(argv)
    n = 20 if args.quick else 200
    if args.emulator:
        return emulator_cnn()
    if not args.skip_tests:
        r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
                            os.path.join(os.path.dirname(HERE), "tests", "test_cuda_gpu.py")])
        print(f"GPU tests: exit code {r.returncode}", flush=True)
    import cupy as cp

    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    records = []
    for widths, m in [] if args.cnn_only else CONFIGS:
        name = f"{'-'.join(map(str, widths))} b{m}"
        rec = {"config": name}
        try:
            rows, model, X = bngraph_rows(widths, m, n, cp)
            rec.update(rows)
            if widths[1] == 1024:
                t_bn, t_copy, tbps = bn_bandwidth(model, X, cp)
                rec.update({"BN fwd kernel ms": t_bn, "copy ms": t_copy, "BN TB/s": tbps, "BN / copy": t_bn / t_copy})
        except Exception as e:  # noqa: BLE001 (one failing row must not hide the others)
            rec["bngraph error"] = f"{type(e).__name__}: {e}"
        try:
            rec.update(torch_rows(widths, m, n))
        except Exception as e:  # noqa: BLE001
            rec["torch error"] = f"{type(e).__name__}: {e}"
        records.append(rec)
        print(json.dumps(rec), flush=True)
    for m in CNN_BATCHES:
        rec = {"config": f"CNN 1x28x28 conv16-conv32 b{m}"}
        try:
            rec.update(bngraph_rows([784, 10], m, n, cp, graph=cnn, data=cnn_data(m))[0])
        except Exception as e:  # noqa: BLE001
            rec["bngraph error"] = f"{type(e).__name__}: {e}"
        try:
            rec.update(torch_rows([784, 10], m, n, cnn_net=True))
        except Exception as e:  # noqa: BLE001
            rec["torch error"] = f"{type(e).__name__}: {e}"
        records.append(rec)
        print(json.dumps(rec), flush=True)
    cols = ["bngraph eager", "bngraph CUDA graph", "PyTorch eager (fused Adam)", "PyTorch CUDA graph", "torch.compile"]
    print("\n| config | " + " | ".join(cols) + " | graph / PyTorch graph | eager / PyTorch eager | kernels |")
    print("|" + "---|" * (len(cols) + 4))
    for r in records:
        cells = [f"{r[c]:.3f} ms" if isinstance(r.get(c), float) else "-" for c in cols]
        ratio = lambda a, b: f"{r[a] / r[b]:.2f}" if isinstance(r.get(a), float) and isinstance(r.get(b), float) else "-"  # noqa: E731
        print(f"| {r['config']} | " + " | ".join(cells) + f" | {ratio('bngraph CUDA graph', 'PyTorch CUDA graph')} | "
              f"{ratio('bngraph eager', 'PyTorch eager (fused Adam)')} | {r.get('launches per step', '-')} |")
    for r in records:
        if "BN / copy" in r:
            print(f"{r['config']}: BN forward {r['BN fwd kernel ms']:.4f} ms, copy {r['copy ms']:.4f} ms "
                  f"(BN at {1 / r['BN / copy']:.0%} of copy bandwidth, {r['BN TB/s']:.2f} TB/s)")
    with open(args.json, "w") as f:
        json.dump(records, f, indent=2)
    print(f"records: {args.json}")


def emulator_cnn(m=8, steps=3):
    """The CNN's guarded training step on the CPU emulator: host seconds a step, finite losses."""
    X, y = cnn_data(m)
    model = bg.compile(cnn(), target="cuda", device="emulator")
    opt = bg.optim.Adam(lr=1e-3)
    t0 = time.perf_counter()
    losses = [model.train_step(X, y, opt) for _ in range(steps)]
    dt = (time.perf_counter() - t0) / steps
    assert all(np.isfinite(losses)), losses
    print(f"CNN b{m} on the CPU emulator: {dt:.3f} s a step, losses {', '.join(f'{v:.4f}' for v in losses)}")
    return losses


if __name__ == "__main__":
    main()
