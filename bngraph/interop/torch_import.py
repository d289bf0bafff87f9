"""PyTorch -> bngraph: ``bg.from_torch(module, input_features)`` for an ``nn.Sequential`` of Linear,
BatchNorm1d, ReLU, LeakyReLU, Tanh, Sigmoid, Identity and Flatten (nested Sequentials too).

Weights, biases, gamma/beta and the running statistics are copied; eps and momentum carry over
unchanged (PyTorch's momentum is bngraph's: the weight of the new batch). ``TORCH_LAYERS`` is the
mapping, one entry per module type. IR names come from the module path (``fc_0``, ``bn_1``...),
the state-dict names are kept in ``original_names``.
"""
from __future__ import annotations

import numpy as np

from ..ir import IRError
from ..ops import LOSS_OPS, OPS
from .deps import require
from .imported import ImportedGraph, InputSpec, OutputSpec, literal
from .names import NameMap

TORCH_LAYERS: dict = {}  # class name -> fn(ctx, module, path, x) -> new IR value name


def layer(*class_names):
    def wrap(fn):
        for c in class_names:
            TORCH_LAYERS[c] = fn
        return fn
    return wrap


class _Ctx:
    def __init__(self, g: ImportedGraph, names: NameMap):
        self.g, self.names = g, names

    def value(self, name: str, tensor, original: str):
        a = tensor.detach().cpu().numpy().astype(np.float64)
        self.g.recipes[name] = literal(a)
        self.g.original_names[name] = original


def _features(g, x) -> int:
    return g.value(x).type.shape[0]


@layer("Linear")
def _linear(ctx, mod, path, x):
    if mod.in_features != _features(ctx.g, x):
        raise IRError(f"from_torch: {path} (Linear) takes {mod.in_features} features but receives {_features(ctx.g, x)}")
    name = ctx.names.claim(f"fc_{path}", "fc")
    out = ctx.g.matmul(x, mod.out_features, bias=mod.bias is not None, name=name).name
    ctx.value(f"{name}.W", mod.weight, f"{path}.weight")
    if mod.bias is not None:
        ctx.value(f"{name}.b", mod.bias, f"{path}.bias")
    return out


@layer("BatchNorm1d")
def _batchnorm(ctx, mod, path, x):
    if not mod.track_running_stats or mod.running_mean is None:
        raise IRError(f"from_torch: {path} (BatchNorm1d) has track_running_stats=False; bngraph's batch norm keeps "
                      f"running statistics for eval mode")
    if mod.momentum is None:
        raise IRError(f"from_torch: {path} (BatchNorm1d) has momentum=None (a cumulative average); bngraph needs "
                      f"an exponential average's momentum, e.g. 0.1")
    n = _features(ctx.g, x)
    if mod.num_features != n:
        raise IRError(f"from_torch: {path} (BatchNorm1d) has {mod.num_features} features but receives {n}")
    name = ctx.names.claim(f"bn_{path}", "bn")
    out = ctx.g.batchnorm(x, name=name, eps=float(mod.eps), momentum=float(mod.momentum)).name
    torch = require("torch", "bg.from_torch")
    gamma = mod.weight if mod.affine else torch.ones(n)
    beta = mod.bias if mod.affine else torch.zeros(n)
    for suffix, t, orig in (("gamma", gamma, "weight"), ("beta", beta, "bias"),
                            ("running_mean", mod.running_mean, "running_mean"),
                            ("running_var", mod.running_var, "running_var")):
        ctx.value(f"{name}.{suffix}", t, f"{path}.{orig}")
    return out


ACTS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Identity": "identity", "LeakyReLU": "leaky_relu"}


@layer(*ACTS)
def _activation(ctx, mod, path, x):
    kind = ACTS[type(mod).__name__]
    extra = {"negative_slope": float(mod.negative_slope)} if kind == "leaky_relu" else {}
    return ctx.g.activation(x, kind, name=ctx.names.claim(f"{kind}_{path}", kind), **extra).name


@layer("Flatten")
def _flatten(ctx, mod, path, x):
    if mod.start_dim not in (1, -1) or mod.end_dim != -1:
        raise IRError(f"from_torch: {path} (Flatten) with start_dim={mod.start_dim}, end_dim={mod.end_dim}: only "
                      f"Flatten(start_dim=1) is supported (on (batch, features) data it changes nothing)")
    return x


@layer("Sequential")
def _sequential(ctx, mod, path, x):
    for child_name, child in mod.named_children():
        x = _convert(ctx, child, f"{path}.{child_name}" if path else child_name, x)
    return x


def _convert(ctx, mod, path, x):
    fn = TORCH_LAYERS.get(type(mod).__name__)
    if fn is None:
        raise IRError(f"from_torch: {path or 'the module'} is a {type(mod).__name__}; bngraph imports "
                      f"{', '.join(sorted(TORCH_LAYERS))}")
    return fn(ctx, mod, path, x)


def from_torch(module, input_features: int, loss: str | None = "softmax_cross_entropy", name: str = "torch_model",
               dtype="f32") -> ImportedGraph:
    """Import ``module`` (an ``nn.Sequential``) taking ``input_features`` features per example.

    ``loss``: the loss put on the output so the graph can be trained (``softmax_cross_entropy``
    with labels ``y``, ``mse`` or ``sigmoid_bce`` with targets ``y``), or None. ``.compile()``
    gives a model that starts from the module's weights and running statistics."""
    require("torch", "bg.from_torch")
    if loss is not None and loss not in LOSS_OPS:
        raise IRError(f"from_torch: loss must be None or one of {', '.join(LOSS_OPS)}, got {loss!r}")
    names = NameMap()
    g = ImportedGraph(names.claim(name, "torch_model"), dtype)
    ctx = _Ctx(g, names)
    x = g.input(names.claim("x"), input_features).name
    g.inputs_spec.append(InputSpec("x", x, "flat", 1, (int(input_features),)))
    out = _convert(ctx, module, "", x)
    n_out = _features(g, out)
    g.outputs_spec.append(OutputSpec("out", "out0", out, "flat", (n_out,)))
    if loss is not None:
        y = names.claim("y")
        if OPS[loss].class_labels:
            g.labels(y, n_out)
            g.inputs_spec.append(InputSpec("y", y, "labels"))
        else:
            g.input(y, n_out)
            g.inputs_spec.append(InputSpec("y", y, "flat", 1, (n_out,)))
        g.loss(loss, out, y)
        g.added_loss = True
    return g
