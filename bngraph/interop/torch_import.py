"""PyTorch -> bngraph: ``bg.from_torch(module, input_features)`` for an ``nn.Sequential`` of Linear,
BatchNorm1d, ReLU, LeakyReLU, Tanh, Sigmoid, Identity and Flatten (nested Sequentials too), and with
an input shape ``(C, L)`` / ``(C, H, W)`` of Conv1d/2d, BatchNorm1d/2d, MaxPool1d/2d, AvgPool1d/2d
and AdaptiveAvgPool1d/2d to one position (:mod:`.torch_spatial`).

Weights, biases, gamma/beta and the running statistics are copied; eps and momentum carry over
unchanged (PyTorch's momentum is bngraph's: the weight of the new batch). ``TORCH_LAYERS`` is the
mapping, one entry per module type. IR names come from the module path (``fc_0``, ``bn_1``...),
the state-dict names are kept in ``original_names``.

Only what is reproduced exactly is imported: a module is converted by its exact ``torch.nn`` type
(a subclass only when it keeps that type's ``forward``), hooks and parametrizations are refused, a
Sequential's children are walked with their repeats (one activation used twice is two nodes), and
a module or parameter with weights used twice is refused: the IR cannot tie two layers' weights.
"""
from __future__ import annotations

import numpy as np

from ..ir import IRError
from ..ops import LOSS_OPS, OPS
from .deps import require
from .imported import ImportedGraph, InputSpec, OutputSpec, literal
from .names import NameMap
from .torch_spatial import SPATIAL_LAYERS, describe, spatial_rank
from ..dsl_spatial import input_shape

TORCH_LAYERS: dict = {}  # torch.nn class name -> fn(ctx, module, path, x) -> new IR value name


def layer(*class_names):
    def wrap(fn):
        for c in class_names:
            TORCH_LAYERS[c] = fn
        return fn
    return wrap


class _Ctx:
    def __init__(self, g: ImportedGraph, names: NameMap):
        self.g, self.names = g, names
        self.modules: dict = {}  # id(module with weights) -> (module, its first path)
        self.tensors: dict = {}  # id(parameter or buffer) -> (tensor, its first state-dict name)

    def value(self, name: str, tensor, original: str):
        seen = self.tensors.get(id(tensor))
        if seen is not None and seen[0] is tensor:
            raise IRError(f"from_torch: {original} is the parameter {seen[1]} (weights shared between two layers): "
                          f"bngraph cannot tie two layers' weights; give each layer its own")
        self.tensors[id(tensor)] = (tensor, original)
        a = tensor.detach().cpu().numpy().astype(np.float64)
        self.g.recipes[name] = literal(a)
        self.g.original_names[name] = original


def _features(g, x) -> int:
    return g.value(x).type.shape[0]


@layer("Linear")
def _linear(ctx, mod, path, x):
    if spatial_rank(ctx.g, x):
        raise IRError(f"from_torch: {path} (Linear) receives {describe(ctx.g, x)} data; bngraph's Linear takes "
                      f"(N, features): put an nn.Flatten() before it")
    if mod.in_features != _features(ctx.g, x):
        raise IRError(f"from_torch: {path} (Linear) takes {mod.in_features} features but receives {_features(ctx.g, x)}")
    name = ctx.names.claim(f"fc_{path}", "fc")
    out = ctx.g.matmul(x, mod.out_features, bias=mod.bias is not None, name=name).name
    ctx.value(f"{name}.W", mod.weight, f"{path}.weight")
    if mod.bias is not None:
        ctx.value(f"{name}.b", mod.bias, f"{path}.bias")
    return out


BN_RANKS = {"BatchNorm1d": (0, 1), "BatchNorm2d": (2,)}  # spatial dimensions each one takes


@layer(*BN_RANKS)
def _batchnorm(ctx, mod, path, x):
    kind = next(c.__name__ for c in type(mod).__mro__ if c.__name__ in BN_RANKS)
    if not mod.track_running_stats or mod.running_mean is None:
        raise IRError(f"from_torch: {path} ({kind}) has track_running_stats=False; bngraph's batch norm keeps "
                      f"running statistics for eval mode")
    if mod.momentum is None:
        raise IRError(f"from_torch: {path} ({kind}) has momentum=None (a cumulative average); bngraph needs "
                      f"an exponential average's momentum, e.g. 0.1")
    if spatial_rank(ctx.g, x) not in BN_RANKS[kind]:
        want = "(N, C) or (N, C, L)" if kind == "BatchNorm1d" else "(N, C, H, W)"
        raise IRError(f"from_torch: {path} ({kind}) expects {want} data, receives {describe(ctx.g, x)}")
    n = _features(ctx.g, x)
    if mod.num_features != n:
        what = "channels" if spatial_rank(ctx.g, x) else "features"
        raise IRError(f"from_torch: {path} ({kind}) has {mod.num_features} {what} but receives {n}")
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
    kind = ACTS[_torch_class(mod, path).__name__]
    extra = {"negative_slope": float(mod.negative_slope)} if kind == "leaky_relu" else {}
    return ctx.g.activation(x, kind, name=ctx.names.claim(f"{kind}_{path}", kind), **extra).name


@layer("Flatten")
def _flatten(ctx, mod, path, x):
    if mod.start_dim not in (1, -1) or mod.end_dim != -1:
        raise IRError(f"from_torch: {path} (Flatten) with start_dim={mod.start_dim}, end_dim={mod.end_dim}: only "
                      f"Flatten(start_dim=1) is supported (on (batch, features) data it changes nothing)")
    if spatial_rank(ctx.g, x):  # (N, C, d...) -> (N, C*d1*...), PyTorch's order: the IR's flatten
        if mod.start_dim != 1:
            raise IRError(f"from_torch: {path} (Flatten) with start_dim={mod.start_dim} on {describe(ctx.g, x)} data: "
                          f"only start_dim=1 (keep the batch) is supported")
        return ctx.g.flatten(x, name=ctx.names.claim(f"flatten_{path}", "flatten")).name
    return x


@layer("Sequential")
def _sequential(ctx, mod, path, x):
    # _modules, not named_children(): that one skips a module met before, and a Sequential runs a
    # child at each place it holds it (act = nn.ReLU() used twice is applied twice)
    for child_name, child in mod._modules.items():
        if child is not None:
            x = _convert(ctx, child, f"{path}.{child_name}" if path else child_name, x)
    return x


HOOKS = (("_forward_hooks", "a forward hook"), ("_forward_pre_hooks", "a forward pre-hook"),
         ("_backward_hooks", "a backward hook"), ("_backward_pre_hooks", "a backward pre-hook"))


def _torch_class(mod, path):
    """The ``torch.nn`` class whose conversion reproduces ``mod``: its own type, or the supported
    base whose ``forward`` a subclass keeps. A class that only shares the name is refused."""
    torch = require("torch", "bg.from_torch")
    where = path or "the module"
    cls = type(mod)
    base = next((c for c in cls.__mro__ if c.__name__ in TORCH_LAYERS and getattr(torch.nn, c.__name__, None) is c),
                None)
    if base is None:
        same_name = getattr(torch.nn, cls.__name__, None) if cls.__name__ in TORCH_LAYERS else None
        if same_name is not None:
            raise IRError(f"from_torch: {where} is a {cls.__module__}.{cls.__qualname__}, not torch.nn."
                          f"{cls.__name__}: bngraph converts modules by their exact torch.nn type")
        raise IRError(f"from_torch: {where} is a {cls.__name__}; bngraph imports torch.nn."
                      f"{', torch.nn.'.join(sorted(TORCH_LAYERS))}")
    if base is not cls and (cls.forward is not base.forward or cls.__call__ is not base.__call__):
        raise IRError(f"from_torch: {where} is a {cls.__module__}.{cls.__qualname__}, a subclass of torch.nn."
                      f"{base.__name__} with its own forward: bngraph imports what torch.nn.{base.__name__} "
                      f"computes, and cannot know what this one does")
    if "forward" in vars(mod):
        raise IRError(f"from_torch: {where} ({base.__name__}) has its forward replaced on the instance")
    for attr, what in HOOKS:
        if getattr(mod, attr, None):
            raise IRError(f"from_torch: {where} ({base.__name__}) has {what}; bngraph cannot reproduce what a "
                          f"hook does (remove it before importing)")
    if getattr(mod, "parametrizations", None):
        raise IRError(f"from_torch: {where} ({base.__name__}) has parametrized weights "
                      f"({', '.join(mod.parametrizations)}); bngraph trains plain weights (remove the "
                      f"parametrization with torch.nn.utils.parametrize.remove_parametrizations)")
    return base


def _global_hooks():
    """The kind of global module hook registered (torch.nn.modules.module.register_module_*_hook)."""
    from torch.nn.modules import module as m

    for attr, what in (("_global_forward_hooks", "forward hook"), ("_global_forward_pre_hooks", "forward pre-hook"),
                       ("_global_backward_hooks", "backward hook"),
                       ("_global_backward_pre_hooks", "backward pre-hook")):
        if getattr(m, attr, None):
            return what
    return None


def _convert(ctx, mod, path, x):
    base = _torch_class(mod, path)
    where = path or "the module"
    if base.__name__ != "Sequential" and any(True for _ in (*mod.parameters(), *mod.buffers())):
        seen = ctx.modules.get(id(mod))
        if seen is not None and seen[0] is mod:
            raise IRError(f"from_torch: {where} is the {base.__name__} already used at {seen[1]} (one module used "
                          f"twice): bngraph cannot tie two layers' weights; use a separate module per place")
        ctx.modules[id(mod)] = (mod, where)
    return TORCH_LAYERS[base.__name__](ctx, mod, path, x)


def from_torch(module, input_features, loss: str | None = "softmax_cross_entropy", name: str = "torch_model",
               dtype="f32") -> ImportedGraph:
    """Import ``module`` (an ``nn.Sequential``) taking ``input_features`` features per example, or
    examples of shape ``(C, L)`` / ``(C, H, W)`` (data ``(N, C, L)`` / ``(N, C, H, W)``, as the module).

    ``loss``: the loss put on the output so the graph can be trained (``softmax_cross_entropy``
    with labels ``y``, ``mse`` or ``sigmoid_bce`` with targets ``y``), or None. ``.compile()``
    gives a model that starts from the module's weights and running statistics."""
    require("torch", "bg.from_torch")
    hook = _global_hooks()
    if hook is not None:
        raise IRError(f"from_torch: a global {hook} is registered (torch.nn.modules.module.register_module_*_hook); "
                      f"bngraph cannot reproduce what it does (remove it before importing)")
    if loss is not None and loss not in LOSS_OPS:
        raise IRError(f"from_torch: loss must be None or one of {', '.join(LOSS_OPS)}, got {loss!r}")
    names = NameMap()
    g = ImportedGraph(names.claim(name, "torch_model"), dtype)
    ctx = _Ctx(g, names)
    x = g.input(names.claim("x"), input_features).name
    shape = input_shape("x", input_features)
    g.inputs_spec.append(InputSpec("x", x, "spatial" if len(shape) > 1 else "flat", 1, shape))
    out = _convert(ctx, module, "", x)
    n_out = _features(g, out)
    if spatial_rank(g, out):
        g.outputs_spec.append(OutputSpec("out", "out0", out, "spatial", (n_out, *g.value(out).type.shape[2:])))
        if loss is not None:
            raise IRError(f"from_torch: the module's output is {describe(g, out)} data; loss={loss!r} needs "
                          f"(N, outputs): end the module with nn.Flatten() (and a Linear), or pass loss=None")
    else:
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


TORCH_LAYERS.update(SPATIAL_LAYERS)  # Conv1d/2d, pools: bngraph/interop/torch_spatial.py
