"""The two sides of every comparison, built from one config: bngraph's compiled model and the
PyTorch module a user would write for the same network (``nn.Linear`` with its default bias,
``nn.BatchNorm1d``, ``nn.ReLU``; ``nn.CrossEntropyLoss``; ``torch.optim`` with its defaults), on
the same data. A *step* is what a training loop calls once per mini-batch: forward, loss,
backward, optimizer update, running statistics, and the loss as a Python float.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import bngraph as bg

LR = {"adam": 1e-4, "momentum": 1e-3}


@dataclass(frozen=True)
class Config:
    widths: tuple
    batch: int
    optimizer: str = "adam"  # adam | momentum (SGD with momentum 0.9)

    @property
    def net(self) -> str:
        return "-".join(map(str, self.widths))

    @property
    def label(self) -> str:
        return f"{self.net} b{self.batch} {self.optimizer}"


def data(cfg: Config, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((cfg.batch, cfg.widths[0])).astype(np.float32)
    y = rng.integers(0, cfg.widths[-1], cfg.batch)
    return X, y


def c_target_runs() -> bool:
    """True where the c target can compile (a C++ compiler is found)."""
    try:
        from bngraph.backends.c_target.runtime import compiler, flags

        flags(compiler())
        return True
    except Exception:  # noqa: BLE001 (no compiler, or one that cannot build a kernel)
        return False


# ---- bngraph -----------------------------------------------------------------------------------

def bngraph_optimizer(name: str):
    return bg.optim.Adam(lr=LR["adam"]) if name == "adam" else bg.optim.SGD(lr=LR["momentum"], momentum=0.9)


def bngraph_step(cfg: Config, target: str = "numpy"):
    model = bg.compile(bg.mlp(list(cfg.widths)), target=target)
    opt = bngraph_optimizer(cfg.optimizer)
    X, y = data(cfg)
    return lambda: model.train_step(X, y, opt)


def bngraph_inference(widths, batch):
    """The inference pipeline's forward (batch norm folded into the weights) on trained-looking
    values: initial params with non-trivial running statistics, folded once by the pipeline's remap."""
    from bngraph.backends import get_target
    from bngraph.compiler import inference_graph

    from bngraph.init import init_values

    g = bg.mlp(list(widths))
    values = init_values(g.build(), seed=0)
    rng = np.random.default_rng(1)
    for k in [v.name for v in g.build().state]:
        values[k] = (rng.random(values[k].shape) + 0.5).astype(np.float32)
    res = inference_graph(g)
    values = res.remap(values)
    target = get_target("numpy")
    rendered = target.renderer.render({"forward": res.graph}, res.graph.dtype, res.graph.name)
    runtime = target.runtime()
    exe = runtime.load(rendered)
    P = {v.name: values[v.name] for v in res.graph.params}
    S = {v.name: values[v.name] for v in res.graph.state}
    X = data(Config(tuple(widths), batch))[0]
    name = rendered.plans["forward"].inputs[0].name

    def forward():
        out = exe.run("forward", {name: X.T}, P, S, None, batch)["out"]
        return out.T  # (batch, outputs), as the API gives it (a view: the caller copies if it keeps it)
    return forward


# ---- PyTorch -------------------------------------------------------------------------------------

def torch_module(widths):
    import torch
    from torch import nn

    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def torch_optimizer(name, params):
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=LR["adam"])
    return torch.optim.SGD(params, lr=LR["momentum"], momentum=0.9)


def torch_step(cfg: Config, compiled: bool = False):
    """The PyTorch step; with ``compiled``, ``torch.compile`` of the module (forward and, through
    AOTAutograd, backward) and of the optimizer step. Returns (step, compile seconds): compiling
    happens in the first calls, which are timed apart here."""
    import torch
    from torch import nn

    module = torch_module(cfg.widths)
    module.train()
    opt = torch_optimizer(cfg.optimizer, module.parameters())
    loss_fn = nn.CrossEntropyLoss()
    Xn, yn = data(cfg)
    X, y = torch.from_numpy(Xn), torch.from_numpy(yn)
    fwd = torch.compile(module) if compiled else module
    opt_step = torch.compile(opt.step) if compiled else opt.step

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(fwd(X), y)
        loss.backward()
        opt_step()
        return loss.item()

    compile_s = 0.0
    if compiled:
        t0 = time.perf_counter()
        for _ in range(3):  # compiles forward and backward, then the optimizer (lr is a constant)
            step()
        compile_s = time.perf_counter() - t0
    return step, compile_s


def torch_inference(widths, batch):
    import torch

    module = torch_module(widths)
    rng = np.random.default_rng(1)
    for m in module:
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_var.copy_(torch.from_numpy((rng.random(m.num_features) + 0.5).astype(np.float32)))
            m.running_mean.copy_(torch.from_numpy((rng.random(m.num_features) + 0.5).astype(np.float32)))
    module.eval()
    X = torch.from_numpy(data(Config(tuple(widths), batch))[0])

    def forward():
        with torch.inference_mode():
            return module(X)
    return forward
