"""Numeric checks for graph rewrites, for any test of a pass (yours too: it is installed with bngraph).

    from bngraph.passcheck import check_preserves, random_values, random_feeds, build_graph, Layer

``check_preserves(before, after, remap)`` runs both graphs with the reference interpreter in
float64 (a float32 graph is checked as its float64 copy: a correct pass must not fail on float32
rounding) on random inputs and random parameters -- gamma, beta and the running statistics random
too, running_var positive -- and raises :class:`PassCheckError` (an AssertionError) unless

* ``remap(values)`` did not mutate ``values`` and holds exactly the new graph's params and state;
* every output is equal, except ``state.*`` outputs: those are compared after remapping the old
  graph's new state (``remap({**old params, **old state outputs})``), since a remap may move
  quantities into the state (``fold_bias``: ``running_mean -= b``);
* (when the graph has a loss) the loss gradients agree: equal for the params both graphs have and
  the remap left unchanged; and a param the new graph no longer has must have had a zero gradient
  unless the pass folded it into new params (``fold_bn_into_weights``: ``fc1.W_folded`` is made
  from ``fc1.W``, ``bn1.gamma``...). Which removed params were folded is read off the remap: those
  whose value changes a new param's value. A graph whose gradient cannot be taken fails the check.

Each of these checks is shown to fail on a planted bug in ``tests/test_passcheck.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .autodiff import grad_graph
from .compiler import cast_graph
from .dsl import Graph
from .interpreter import interpret
from .ir import DTYPES, IRError
from .ops import BN_OPS, OPS
from .parser import parse
from .passes import dce
from .verifier import verify


class PassCheckError(AssertionError):
    """A pass changed what the graph computes (or a remap is wrong): the message says what."""


def _close(actual, desired, **kw) -> None:
    """``np.testing.assert_allclose``, failing as a :class:`PassCheckError`."""
    try:
        np.testing.assert_allclose(actual, desired, **kw)
    except AssertionError as e:
        raise PassCheckError(str(e)) from None


def _check(ok, message) -> None:
    if not ok:
        raise PassCheckError(message() if callable(message) else message)

# ------------------------------------------------------------------------------------------------
# Random values and feeds
# ------------------------------------------------------------------------------------------------


def _roles(g) -> dict:
    """param/state name -> 'gamma', 'beta', 'running_mean' or 'running_var' for BN inputs."""
    roles = {}
    for n in g.nodes:
        if n.op in BN_OPS:
            for name, role in zip(n.inputs[1:], ("gamma", "beta", "running_mean", "running_var")):
                roles[name] = role
    return roles


def random_values(g, seed: int = 0) -> dict:
    """Random params and state for ``g``: weights ~ N(0, 1/fan_in), gamma of random sign and size
    in [0.5, 1.5], beta/bias/running_mean ~ N(0, 1), running_var in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    roles = _roles(g)
    out = {}
    for v in (*g.params, *g.state):
        shape = tuple(v.type.shape)
        role = roles.get(v.name)
        if role == "running_var":
            a = rng.uniform(0.5, 2.0, shape)
        elif role == "gamma":
            a = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif len(shape) == 2:
            a = rng.normal(size=shape) / np.sqrt(max(shape[1], 1))
        else:
            a = rng.normal(size=shape)
        out[v.name] = a.astype(DTYPES[v.type.dtype])
    return out


def random_feeds(g, batch: int = 6, seed: int = 0) -> dict:
    """Random inputs: class labels for label inputs, targets in [0, 1] for sigmoid_bce, N(0, 1)
    otherwise; arrays in the compiler's layout (features, m)."""
    rng = np.random.default_rng(seed + 1_000_003)
    bce_targets = {n.inputs[1] for n in g.nodes if n.op == "sigmoid_bce"}
    feeds = {}
    for v in g.inputs:
        shape = v.type.concrete_shape(batch)
        if v.classes is not None:
            feeds[v.name] = rng.integers(0, v.classes, shape).astype(np.int64)
        elif v.name in bce_targets:
            feeds[v.name] = rng.uniform(0.0, 1.0, shape).astype(DTYPES[v.type.dtype])
        else:
            feeds[v.name] = rng.normal(size=shape).astype(DTYPES[v.type.dtype])
    return feeds


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------


def check_preserves(before, after, remap=None, *, batch: int = 6, seed: int = 0, values=None, feeds=None,
                    rtol: float = 1e-9, atol: float = 1e-10, grads: bool = True) -> dict:
    """Assert that ``after`` with ``remap(values)`` computes what ``before`` computes with
    ``values``. Returns ``{"before": outputs, "after": outputs}``."""
    before, after = cast_graph(before, "float64"), cast_graph(after, "float64")  # float32 rounding is no failure
    if values is not None:
        values = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v for k, v in values.items()}
    if feeds is not None:
        feeds = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v for k, v in feeds.items()}
    values = random_values(before, seed) if values is None else values
    feeds = random_feeds(before, batch, seed) if feeds is None else feeds
    snapshot = {k: np.array(v, copy=True) for k, v in values.items()}
    new_values = remap(values) if remap is not None else dict(values)
    _check(new_values is not values, "remap must return a new dict")
    for k, v in snapshot.items():
        _check(k in values and np.array_equal(values[k], v), f"remap mutated the values dict at {k}")
    want = {p.name for p in (*after.params, *after.state)}
    _check(set(new_values) == want, lambda: (
        f"remap should give exactly the new graph's params and state: missing {sorted(want - set(new_values))}, "
        f"extra {sorted(set(new_values) - want)}"))

    old = interpret(before, feeds, values)
    new = interpret(after, {v.name: feeds[v.name] for v in after.inputs}, new_values)
    _check(set(old) == set(new), lambda: f"outputs differ: before {sorted(old)}, after {sorted(new)}")

    state_keys = [k for k in old if k.startswith("state.")]
    carried = None
    if state_keys and remap is not None:
        # the old graph's next state, carried through the remap, is what the new graph's must be
        carried = remap({**values, **{k[len("state."):]: old[k] for k in state_keys}})
    for k in old:
        expected = old[k]
        if k.startswith("state.") and carried is not None:
            expected = carried[k[len("state."):]]
        _close(new[k], expected, rtol=rtol, atol=atol, err_msg=f"output {k}")

    if grads and before.loss_node is not None:
        check_grads_preserved(before, after, values, new_values, feeds, remap, rtol=rtol, atol=atol)
    return {"before": old, "after": new}


def loss_gradients(g, values: dict, feeds: dict) -> dict:
    """param name -> dL/dparam for every param of ``g``, from autodiff and the interpreter. Params
    the loss does not depend on (dead code, other outputs) get an exact zero; any other param
    autodiff cannot reach fails the check, as does a graph autodiff refuses."""
    loss_only = dce.run(g.rebuild(outputs=[("loss", g.output("loss"))])).graph
    try:
        train = grad_graph(loss_only)
    except IRError as e:
        raise PassCheckError(f"cannot take the gradient of graph {g.name}: {e}") from e
    out = interpret(train, {v.name: feeds[v.name] for v in train.inputs},
                       {v.name: values[v.name] for v in (*train.params, *train.state)})
    return {p.name: out[f"grad.{p.name}"] if f"grad.{p.name}" in out else np.zeros(p.type.shape)
            for p in g.params}


def folded_params(before, after, values: dict, remap) -> set:
    """The params of ``before`` that ``after`` no longer has and that the remap folds into params
    ``after`` gained: changing such a param's value changes a new param's value."""
    gone = [p.name for p in before.params if p.name not in set(after.param_names())]
    gained = [p.name for p in after.params if p.name not in set(before.param_names())]
    if remap is None or not gone or not gained:
        return set()
    base = remap(values)
    folded = set()
    for name in gone:
        moved = remap({**values, name: values[name] + 1.0})
        if any(not np.array_equal(moved[n], base[n]) for n in gained):
            folded.add(name)
    return folded


def check_grads_preserved(before, after, values, new_values, feeds, remap=None, *, rtol=1e-9, atol=1e-10):
    """Gradients of the loss: equal for the params in both graphs whose value the remap left
    unchanged; zero for params that were removed without being folded into new ones (a removed
    param must not have mattered to training). New params (``fc1.W_folded``) are not compared:
    the outputs above already show they are derived exactly from the old ones."""
    old = loss_gradients(before, values, feeds)
    new = loss_gradients(after, new_values, feeds)
    folded = folded_params(before, after, values, remap)
    after_params = set(after.param_names())
    for p in before.params:
        key = f"grad.{p.name}"
        if p.name in after_params:
            if np.array_equal(values[p.name], new_values[p.name]):
                _close(new[p.name], old[p.name], rtol=rtol, atol=atol, err_msg=key)
        elif p.name not in folded:
            _close(old[p.name], 0.0, atol=max(atol, 1e-9),
                                       err_msg=f"{p.name} was removed but its gradient is not zero")


def check_roundtrip(g, allow_dead: bool = False):
    """The printed IR parses back to an equal graph, and the graph verifies."""
    verify(g, allow_dead=allow_dead)
    text = str(g)
    _check(parse(text) == g, lambda: f"parse(print(g)) != g for\n{text}")
    return text


# ------------------------------------------------------------------------------------------------
# Test graphs: MLP-shaped, each layer with its own choices
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    units: int
    bias: bool = True
    bn: bool = True
    act: str | None = "relu"  # an activation op name, or None
    negative_slope: float = 0.01


def build_graph(inputs: int, layers, outputs: int, *, loss: str = "softmax_cross_entropy", out_bias: bool = True,
                out_bn: bool = False, dtype: str = "f64", eps: float = 1e-5, momentum: float = 0.1,
                name: str = "net"):
    """x -> [matmul (+bias) -> batchnorm? -> activation?] per layer -> matmul (+bias) -> batchnorm? -> loss."""
    g = Graph(name, dtype)
    h = g.input("x", inputs)
    y = g.labels("y", outputs) if OPS[loss].class_labels else g.input("y", outputs)
    for k, layer in enumerate(layers, start=1):
        h = g.matmul(h, layer.units, bias=layer.bias, name=f"fc{k}")
        if layer.bn:
            h = g.batchnorm(h, name=f"bn{k}", eps=eps, momentum=momentum)
        if layer.act is not None:
            extra = {"negative_slope": layer.negative_slope} if layer.act == "leaky_relu" else {}
            h = g.activation(h, layer.act, name=f"act{k}", **extra)
    h = g.matmul(h, outputs, bias=out_bias, name="out")
    if out_bn:
        h = g.batchnorm(h, name="bn_out", eps=eps, momentum=momentum)
    g.loss(loss, h, y)
    return g
