"""The Python DSL: :class:`Graph`, the mutable builder, and the ``mlp`` sugar.

    g = bg.Graph("mlp"); x = g.input("x", 64); ...; print(g)
    frozen = g.build()          # an immutable bngraph.graph.FrozenGraph, what compiler stages take

Every method checks its inputs at once and raises :class:`IRError` naming the node, what it
expected and what it got; a call that fails leaves the graph as it was. Values are returned as
:class:`bngraph.ir.Value` objects; methods accept a Value or a value name. The lookups (``values``,
``producers``, ``output``...), printing and equality come from :class:`bngraph.graph.GraphBase`.
"""
from __future__ import annotations

import numbers
import re
from typing import Sequence

from .graph import FrozenGraph, GraphBase, check_header
from .ir import BATCH, NAME_PATTERN, IRError, Node, TensorType, Value
from .dsl_spatial import SpatialBuilder, _positive, input_shape
from .ops import ACTIVATIONS, LOSS_OPS, get_op

_NAME_RE = re.compile(NAME_PATTERN)  # parse(str(g)) == g needs names the parser can read


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise IRError(f"bad name {name!r}: expected a letter or '_' followed by letters, digits, '_' and '.'")
    return name


class Graph(SpatialBuilder, GraphBase):
    """A computation graph under construction: the builder methods (``g.matmul(...)`` etc.) append
    checked nodes. ``build()`` returns the immutable :class:`~bngraph.graph.FrozenGraph`."""

    def __init__(self, name: str = "graph", dtype="f32", *, inputs=(), params=(), state=(), nodes=(), outputs=()):
        self.dtype = check_header(name, dtype)  # the dtype of new params and float inputs
        self.name = name
        self.inputs = list(inputs)
        self.params = list(params)
        self.state = list(state)
        self.nodes = list(nodes)
        self.outputs = [tuple(o) for o in outputs]  # (key, value name) pairs
        self._counters = {}

    def build(self) -> FrozenGraph:
        """The graph as it is now, frozen; later builder calls do not change it."""
        return FrozenGraph(self.name, self.dtype, inputs=self.inputs, params=self.params, state=self.state,
                           nodes=self.nodes, outputs=self.outputs)

    # ---- names -----------------------------------------------------------------------------
    def _taken(self) -> set:
        return set(self.values()) | {k for k, _ in self.outputs}

    def _fresh(self, prefix: str) -> str:
        taken = self._taken()
        k = self._counters.get(prefix, 0)
        while True:
            k += 1
            name = f"{prefix}{k}"
            if not any(t == name or t.startswith(name + ".") for t in taken):
                self._counters[prefix] = k
                return name

    def _claim(self, name: str | None, prefix: str, suffixes=("",)) -> str:
        if name is None:
            return self._fresh(prefix)
        check_name(name)
        taken = self._taken()
        for suf in suffixes:
            if name + suf in taken:
                raise IRError(f"duplicate name: %{name + suf} is already defined in graph {self.name}")
        return name

    def _ref(self, v, where: str) -> Value:
        name = v.name if isinstance(v, Value) else v
        vals = self.values()
        if not isinstance(name, str) or name not in vals:
            raise IRError(f"{where}: input {name!r} is not a value of graph {self.name}")
        found = vals[name]
        if isinstance(v, Value) and v.type != found.type:
            raise IRError(f"{where}: value %{name} is {v.type} here but {found.type} in graph {self.name} "
                          f"(a value from another graph?)")
        return found

    # ---- graph inputs, params, state -----------------------------------------------------------
    def input(self, name: str, features) -> Value:
        """A float input fed per mini-batch: ``features`` per example (stored as (features, m)), or
        a spatial shape (channels, length) / (channels, height, width) (data (N, C, ...), stored
        as (C, m, ...))."""
        name = self._claim(name, "x")
        if isinstance(features, numbers.Integral) or isinstance(features, bool):
            _positive(name, "features", features)
        dims = input_shape(name, features)
        v = Value(name, TensorType(self.dtype, (dims[0], BATCH, *dims[1:])), "input")
        self.inputs.append(v)
        return v

    def labels(self, name: str, classes: int) -> Value:
        """Integer class labels in [0, classes), one per example."""
        name = self._claim(name, "y")
        _positive(name, "classes", classes)
        v = Value(name, TensorType("i64", (BATCH,)), "input", classes=int(classes))
        self.inputs.append(v)
        return v

    def param(self, name: str, shape: Sequence[int]) -> Value:
        """A learned parameter ``%name`` of ``shape`` (ints), for nodes added with ``add_node``."""
        name = self._claim(name, "p")
        v = Value(name, TensorType(self.dtype, tuple(int(d) for d in shape)), "param")
        self.params.append(v)
        return v

    def state_value(self, name: str, shape: Sequence[int]) -> Value:
        """A state value ``%name`` (carried between steps, not learned by gradient) of ``shape``."""
        name = self._claim(name, "s")
        v = Value(name, TensorType(self.dtype, tuple(int(d) for d in shape)), "state")
        self.state.append(v)
        return v

    # ---- nodes -------------------------------------------------------------------------------
    def add_node(self, op: str, inputs: Sequence, attrs: dict | None = None, names: Sequence[str] = ()) -> Node:
        """Append ``names = op[attrs](inputs)`` after checking it; returns the node."""
        where = names[0] if names else op
        opdef = get_op(op, where)
        ins = [self._ref(v, where) for v in inputs]
        attrs = opdef.normalize_attrs(where, attrs or {})
        types = opdef.check(where, ins, attrs)
        if len(names) != len(types):
            raise IRError(f"{where}: {op} has {len(types)} outputs, {len(names)} names given")
        taken = self._taken()
        for n in names:
            check_name(n)
            if n in taken:
                raise IRError(f"duplicate name: %{n} is already defined in graph {self.name}")
        node = Node.make(op, [v.name for v in ins], [Value(n, t) for n, t in zip(names, types)], attrs)
        self.nodes.append(node)
        return node

    def matmul(self, x, units: int, bias: bool = True, name: str | None = None) -> Value:
        """``z = W x (+ b)``: params ``name.W`` (units, in) and, with bias, ``name.b`` (units,)."""
        name = self._claim(name, get_op("matmul").prefix, (".W", ".b", ".matmul", ""))
        xv = self._ref(x, name)
        _positive(name, "units", units)
        if xv.type.rank != 2 or xv.type.shape[1] != BATCH or not xv.type.is_float:
            raise IRError(f"{name}: matmul expects a ({'features'}, {BATCH}) float input, got %{xv.name}: {xv.type}")
        W = self.param(f"{name}.W", (units, xv.type.shape[0]))
        if not bias:
            return self.add_node("matmul", [W, xv], {}, [name]).out
        b = self.param(f"{name}.b", (units,))
        z = self.add_node("matmul", [W, xv], {}, [f"{name}.matmul"]).out
        return self.add_node("bias_add", [z, b], {}, [name]).out

    def bias_add(self, x, name: str | None = None) -> Value:
        """``x + b[:, None]`` with a new param ``<name>.b``, one bias per unit of ``x``."""
        name = self._claim(name, get_op("bias_add").prefix, (".b", ""))
        xv = self._ref(x, name)
        if xv.type.rank < 2 or xv.type.shape[1] != BATCH:
            raise IRError(f"{name}: bias_add expects a (features, {BATCH}) or (channels, {BATCH}, ...) input, got {xv.type}")
        b = self.param(f"{name}.b", (xv.type.shape[0],))
        return self.add_node("bias_add", [xv, b], {}, [name]).out

    def batchnorm(self, x, name: str | None = None, eps: float = 1e-5, momentum: float = 0.1) -> Value:
        """Batch norm over the mini-batch, per unit; on a spatial value (C, m, d...) per channel over
        the batch and the positions (PyTorch's BatchNorm1d on (N, C, L), BatchNorm2d). ``momentum`` is PyTorch's: the weight of the
        *new* batch in ``running = (1 - momentum)*running + momentum*batch_stat``."""
        name = self._claim(name, get_op("batchnorm").prefix, (".gamma", ".beta", ".running_mean", ".running_var", ".mean", ".var", ""))
        xv = self._ref(x, name)
        if xv.type.rank < 2 or xv.type.shape[1] != BATCH:
            raise IRError(f"{name}: batchnorm expects a (features, {BATCH}) or (channels, {BATCH}, ...) input, "
                          f"got %{xv.name}: {xv.type}")
        attrs = get_op("batchnorm").normalize_attrs(name, {"eps": eps, "momentum": momentum, "mode": "train"})
        n = xv.type.shape[0]  # attrs are checked before any param is added: a failed call leaves g unchanged
        gamma, beta = self.param(f"{name}.gamma", (n,)), self.param(f"{name}.beta", (n,))
        rm, rv = self.state_value(f"{name}.running_mean", (n,)), self.state_value(f"{name}.running_var", (n,))
        bn = self.add_node("batchnorm", [xv, gamma, beta, rm, rv], attrs, [name, f"{name}.mean", f"{name}.var"])
        self.add_running_update(bn)
        return bn.out

    def add_running_update(self, bn: Node) -> Node:
        """The node that updates bn's running statistics from its batch statistics (train mode)."""
        z, _, _, rm, rv = bn.inputs
        upd = self.add_node(
            "running_update", [rm, rv, bn.outputs[1].name, bn.outputs[2].name, z],
            {"momentum": bn.attr["momentum"]}, [f"{rm}.next", f"{rv}.next"],
        )
        self.outputs.append((f"state.{rm}", upd.outputs[0].name))
        self.outputs.append((f"state.{rv}", upd.outputs[1].name))
        return upd

    def activation(self, x, kind: str, name: str | None = None, **attrs) -> Value:
        """The activation ``kind`` (a key of ``bg.ACTIVATIONS``) of ``x``; ``attrs`` such as ``negative_slope``."""
        if kind not in ACTIVATIONS:
            raise IRError(f"{name or kind}: unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")
        name = self._claim(name, get_op(kind).prefix)
        return self.add_node(kind, [self._ref(x, name)], attrs, [name]).out

    def relu(self, x, name=None):
        """max(x, 0)"""
        return self.activation(x, "relu", name)

    def leaky_relu(self, x, negative_slope: float = 0.01, name=None):
        """x if x > 0 else negative_slope*x  (negative_slope >= 0)"""
        return self.activation(x, "leaky_relu", name, negative_slope=negative_slope)

    def tanh(self, x, name=None):
        """tanh(x)"""
        return self.activation(x, "tanh", name)

    def sigmoid(self, x, name=None):
        """1/(1 + exp(-x))"""
        return self.activation(x, "sigmoid", name)

    def identity(self, x, name=None):
        """x (a named value; no code is generated for it)"""
        return self.activation(x, "identity", name)

    # ---- losses ------------------------------------------------------------------------------
    def _loss(self, op: str, pred, target, name: str | None, weight=None, **options) -> Value:
        prefix = get_op(op).prefix  # "loss": the first loss is %loss, as the docs show
        if name is not None:
            name = self._claim(name, prefix)
        else:
            name = prefix if prefix not in self._taken() else self._fresh(prefix)
        if self.has_output("loss"):
            raise IRError(f"{name}: graph {self.name} already has a loss (%{self.output('loss')}); one loss per graph")
        if options.get("reduction") == "none":
            raise IRError(f"{name}: reduction='none' gives one loss per example, and a graph's loss is a scalar "
                          f"that training minimizes; use 'mean' or 'sum' (add_node makes a per-example node)")
        ins = [self._ref(pred, name), self._ref(target, name)]
        if weight is not None:  # a class loss's class weights
            ins.append(self._ref(weight, name))
        node = self.add_node(op, ins, options, [name])
        self.outputs.insert(0, ("loss", name))
        return node.out

    def softmax_cross_entropy(self, logits, labels, name: str | None = None, *, weight=None, reduction: str = "mean",
                              ignore_index: int | None = None) -> Value:
        """Mean (or ``reduction='sum'``) over the batch of ``w_i * -log softmax(logits)[y_i]``, as
        PyTorch's ``F.cross_entropy``: ``weight`` is a (classes,) value holding one weight per class
        (``w_i = weight[y_i]``; a ``g.state_value``: a constant the model carries, 1 until set, never
        trained), labels equal to ``ignore_index`` count for nothing, and the mean divides by
        ``sum_i w_i``."""
        return self._loss("softmax_cross_entropy", logits, labels, name, weight, reduction=reduction,
                          ignore_index=ignore_index)

    def nll(self, log_probs, labels, name: str | None = None, *, weight=None, reduction: str = "mean",
            ignore_index: int | None = None) -> Value:
        """Negative log-likelihood of log-probabilities (``-log_probs[y_i]``, e.g. after
        ``log_softmax``), with the options of :meth:`softmax_cross_entropy` (PyTorch's ``F.nll_loss``)."""
        return self._loss("nll", log_probs, labels, name, weight, reduction=reduction, ignore_index=ignore_index)

    def log_softmax(self, x, name: str | None = None) -> Value:
        """Log-probabilities over the features (classes) of each example."""
        name = self._claim(name, get_op("log_softmax").prefix)
        return self.add_node("log_softmax", [self._ref(x, name)], {}, [name]).out

    def mse(self, pred, target, name: str | None = None) -> Value:
        """The mean over all elements of (pred - target)**2; ``target`` a float input shaped like ``pred``."""
        return self._loss("mse", pred, target, name)

    def sigmoid_bce(self, logits, target, name: str | None = None) -> Value:
        """The mean binary cross-entropy of sigmoid(logits) against ``target`` probabilities in [0, 1]."""
        return self._loss("sigmoid_bce", logits, target, name)

    def loss(self, kind: str, pred, target, name: str | None = None) -> Value:
        """The loss op ``kind`` (``softmax_cross_entropy``, ``mse``, ``sigmoid_bce``, ...) of ``pred`` against ``target``."""
        if kind not in LOSS_OPS:
            raise IRError(f"unknown loss {kind!r}; expected one of {', '.join(LOSS_OPS)}")
        return self._loss(kind, pred, target, name)


def mlp(
    widths: Sequence[int],
    activation: str = "relu",
    batchnorm: bool = True,
    bias: bool = True,
    loss: str = "softmax_cross_entropy",
    name: str = "mlp",
    dtype: str = "f32",
    eps: float = 1e-5,
    momentum: float = 0.1,
    negative_slope: float = 0.01,
):
    """Sequential sugar: ``widths = [inputs, hidden..., outputs]``; each hidden layer is
    matmul (+bias) -> batchnorm (if ``batchnorm``) -> activation; the last layer is a matmul with
    bias feeding ``loss`` (through ``log_softmax`` for ``nll``, which takes log-probabilities).
    Classification losses take labels ``y``; mse/sigmoid_bce a float ``y``."""
    widths = list(widths)
    if len(widths) < 2:
        raise IRError(f"mlp: widths needs at least [inputs, outputs], got {widths}")
    if loss not in LOSS_OPS:
        raise IRError(f"mlp: unknown loss {loss!r}; expected one of {', '.join(LOSS_OPS)}")
    for k, n in enumerate(widths):
        _positive("mlp", f"widths[{k}]", n)
    if activation not in ACTIVATIONS:
        raise IRError(f"mlp: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    g = Graph(name, dtype)
    h = g.input("x", widths[0])
    y = g.labels("y", widths[-1]) if get_op(loss).class_labels else g.input("y", widths[-1])
    for k, n in enumerate(widths[1:-1], start=1):
        h = g.matmul(h, n, bias=bias, name=f"fc{k}")
        if batchnorm:
            h = g.batchnorm(h, name=f"bn{k}", eps=eps, momentum=momentum)
        extra = {"negative_slope": negative_slope} if activation == "leaky_relu" else {}
        h = g.activation(h, activation, name=f"act{k}", **extra)
    out = g.matmul(h, widths[-1], bias=True, name="out")
    if loss == "nll":  # nll takes log-probabilities: the head is log_softmax (the forward output)
        out = g.log_softmax(out, name="log_probs")
    g.loss(loss, out, y)
    return g


GraphBuilder = Graph  # the name says what it is; bg.Graph is the public spelling
