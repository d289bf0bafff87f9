"""The convolutional row: the training step of a small CNN on 1x28x28 inputs, both sides and its floor.

The network (float32, Adam lr 1e-4 or SGD with momentum 0.9, softmax cross-entropy), as PyTorch's

    nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Flatten(), nn.Linear(c2 * 7 * 7, 10))

and the same graph in bngraph's DSL (``bg.compile`` with its default passes: the conv biases fold
away before the batch norms). Both sides see the same random batch.

The floor, as for the MLP rows (floors.py): the step's GEMMs timed alone plus the least
elementwise traffic at copy bandwidth. A conv's GEMMs are its im2col products at their shapes
(forward ``W (F, C*k*k) @ cols (C*k*k, m*H*W)``, ``dW = dy @ cols^T``, ``dcols = W^T @ dy`` for all
but the first conv); the im2col gathers themselves are not counted (an implicit-GEMM kernel has
none). Traffic, float32 words: per conv block, batch norm + ReLU 2 n forward and 4 n backward
(n = F*m*H*W, as floors.py), the 2x2 max pool 1.25 n forward (read n, write n/4) and 1.25 n + n
backward (read dy and the input, write dx); the loss 2 C m; the optimizer 7 P (Adam), 5 P (SGD with
momentum). Bandwidth is a copy's of the largest activation (the layers' share) and of the
parameters (the optimizer's).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import bngraph as bg

from . import floors
from .sides import LR, bngraph_optimizer, torch_optimizer

F32 = 4
SIDE = 28  # the input is 1 x SIDE x SIDE


@dataclass(frozen=True)
class CnnConfig:
    channels: tuple = (16, 32)
    batch: int = 64
    optimizer: str = "adam"
    side: int = SIDE
    classes: int = 10

    @property
    def label(self) -> str:
        c1, c2 = self.channels
        return f"cnn 1x{self.side}x{self.side} c{c1}-c{c2} b{self.batch} {self.optimizer}"

    @property
    def blocks(self) -> list:
        """[(in channels, out channels, side of the conv's output)] of the two conv blocks."""
        c1, c2 = self.channels
        return [(1, c1, self.side), (c1, c2, self.side // 2)]

    @property
    def flat(self) -> int:
        return self.channels[1] * (self.side // 4) ** 2


def data(cfg: CnnConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((cfg.batch, 1, cfg.side, cfg.side)).astype(np.float32)
    return X, rng.integers(0, cfg.classes, cfg.batch)


def graph(cfg: CnnConfig):
    g = bg.Graph("cnn")
    h, y = g.input("x", (1, cfg.side, cfg.side)), g.labels("y", cfg.classes)
    for i, (_, c, _) in enumerate(cfg.blocks, start=1):
        h = g.relu(g.batchnorm(g.conv(h, c, 3, padding=1, name=f"conv{i}"), name=f"bn{i}"))
        h = g.maxpool(h, 2, name=f"pool{i}")
    g.softmax_cross_entropy(g.matmul(g.flatten(h, name="flatten"), cfg.classes, name="out"), y)
    return g


def bngraph_step(cfg: CnnConfig):
    model = bg.compile(graph(cfg))
    opt = bngraph_optimizer(cfg.optimizer)
    X, y = data(cfg)
    return lambda: model.train_step(X, y, opt)


def torch_module(cfg: CnnConfig):
    import torch
    from torch import nn

    layers = []
    for c_in, c_out, _ in cfg.blocks:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    torch.manual_seed(0)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cfg.flat, cfg.classes))


def torch_step(cfg: CnnConfig):
    import torch
    from torch import nn

    module = torch_module(cfg)
    module.train()
    opt = torch_optimizer(cfg.optimizer, module.parameters())
    loss_fn = nn.CrossEntropyLoss()
    Xn, yn = data(cfg)
    X, y = torch.from_numpy(Xn), torch.from_numpy(yn)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module(X), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


# ---- the floor ---------------------------------------------------------------------------------


def gemm_shapes(cfg: CnnConfig) -> list:
    """[(a shape, b shape)] of the step's products, operands as stored (no transposes needed)."""
    m, out = cfg.batch, []
    for i, (c_in, c_out, side) in enumerate(cfg.blocks):
        k, cols = c_in * 9, m * side * side
        out.append(((c_out, k), (k, cols)))  # forward
        out.append(((c_out, cols), (cols, k)))  # dW = dy @ cols^T
        if i > 0:
            out.append(((k, c_out), (c_out, cols)))  # dcols = W^T @ dy
    n_in, n_out = cfg.flat, cfg.classes
    out += [((n_out, n_in), (n_in, m)), ((n_out, m), (m, n_in)), ((n_in, n_out), (n_out, m))]
    return out


def gemm_runner(cfg: CnnConfig):
    rng = np.random.default_rng(2)
    jobs = []
    for a_shape, b_shape in gemm_shapes(cfg):
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = rng.standard_normal(b_shape).astype(np.float32)
        jobs.append((a, b, np.empty((a_shape[0], b_shape[1]), np.float32)))

    def run():
        for a, b, out in jobs:
            np.matmul(a, b, out=out)
    return run


def n_params(cfg: CnnConfig) -> int:
    """bngraph's parameters: conv weights, gamma and beta (the conv biases fold away), the head."""
    convs = sum(c_out * c_in * 9 + 2 * c_out for c_in, c_out, _ in cfg.blocks)
    return convs + cfg.flat * cfg.classes + cfg.classes


def largest_activation(cfg: CnnConfig) -> int:
    return max(c_out * cfg.batch * side * side for _, c_out, side in cfg.blocks)


def train_traffic(cfg: CnnConfig) -> dict:
    m = cfg.batch
    per_block = sum((6 + 1.25 + 2.25) * c_out * m * side * side for _, c_out, side in cfg.blocks)
    layers = F32 * int(per_block + 2 * cfg.classes * m)
    return {"layers": layers, "optimizer": F32 * floors.OPTIMIZER_PASSES[cfg.optimizer] * n_params(cfg)}


def row(runner, cfg: CnnConfig) -> dict:
    """Time both sides and the floor in interleaved rounds: a row of the training table."""
    import time

    bg_step = bngraph_step(cfg)
    sizes = {"optimizer": n_params(cfg), "layers": largest_activation(cfg)}
    sides = {"bngraph": bg_step, "torch": torch_step(cfg), "floor: gemms": gemm_runner(cfg)}
    for k, n in sizes.items():
        sides[f"floor: copy {k}"] = floors.copy_runner(n, runner.args.threads, runner.pool)
    t0 = time.perf_counter()
    bg_step()
    res = runner.time(sides, runner.rounds_for(time.perf_counter() - t0))
    med = {k: v.median for k, v in res.items()}
    traffic = train_traffic(cfg)
    floor = floors.floor_seconds(med["floor: gemms"], traffic, {k: med[f"floor: copy {k}"] for k in sizes}, sizes)
    t = res["bngraph"]
    return {"kind": "train", "net": "cnn", "config": cfg.label, "channels": list(cfg.channels), "side": cfg.side,
            "batch": cfg.batch, "optimizer": cfg.optimizer, "lr": LR[cfg.optimizer], "groups": ["cnn"],
            "timings": {k: v.to_json() for k, v in res.items()}, "floor_s": floor, "gemm_s": med["floor: gemms"],
            "traffic_bytes": traffic, "compile_s": None, "rounds_kept": t.kept, "rounds_dropped": t.dropped,
            "clean": t.clean, "bngraph_s": med["bngraph"], "torch_s": med["torch"], "torch_compile_s": None,
            "vs_torch": med["bngraph"] / med["torch"], "vs_floor": med["bngraph"] / floor}
