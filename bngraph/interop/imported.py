"""What an import produces: a :class:`ImportedGraph` (a ``bg.Graph`` that also knows its values and
where they came from) and the boundary between the outside layout and the IR's.

Outside (ONNX, PyTorch) the batch is axis 0: ``X: (N, features...)``; inside the compiler a value is
``(features, m)``. Each graph input and output records how it crosses (:class:`InputSpec`,
:class:`OutputSpec`): a transpose for rows, a reshape when feature or batch axes were flattened, and
for convolutions and pools ``(N, C, d1[, d2]) <-> (C, N, d1[, d2])`` (the IR's spatial values), for
spatial batch norm outside a convolutional graph ``(N, C, d1, ...) <-> (C, N*d1*...)`` (per-channel
statistics over N and the spatial axes are exactly the IR's batchnorm on that view); a softmax over axis k of N-D data uses the
same change with the features on axis k.

Params are not copied at import: each IR param or state value has a :class:`Tensor` recipe, a
function of the source arrays by their outside name (initializers, or graph inputs whose value
comes at run time, as ONNX allows). ``imported.weights`` evaluates them with the file's own arrays;
``imported.bind(arrays)`` with others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..dsl import Graph
from ..ir import DTYPES, IRError
from .names import show


@dataclass(frozen=True)
class Tensor:
    """A constant: ``get(arrays) -> ndarray`` from the source arrays by outside name."""

    shape: tuple
    get: Callable
    sources: frozenset = frozenset()

    def map(self, fn, shape=None) -> "Tensor":
        get = self.get
        return Tensor(self.shape if shape is None else shape, lambda a: fn(get(a)), self.sources)


def literal(array) -> Tensor:
    a = np.asarray(array)
    return Tensor(a.shape, lambda _: a)


@dataclass(frozen=True)
class Data:
    """A batch-sized value: IR value ``ir`` of shape ``(prod(fshape), m)`` (a spatial one: ``(C, m, d...)``).

    ``layout``: ``flat`` (outside shape = batch dims + ``fshape``), ``spatial`` (outside
    ``(N, C, d1[, d2])``, the IR value ``(C, m, d1[, d2])``: ``fshape = (C, d1, ...)``) or ``channels`` (the C features
    on outside axis ``caxis``, every other axis flattened into the batch in order: ``(N, C, *spatial)``
    -> ``(C, N*prod(spatial))`` for ``caxis=1``; ``fshape = (C,)``). ``rows``: the batch dims were
    flattened into one axis (after a Flatten). ``head``: 'softmax' or 'log_softmax' over the IR's
    features axis, applied at the output boundary. ``affine``: (W, b) param names when the value is
    a matmul's output (with its bias), so that a constant scale can fold into them."""

    ir: str
    fshape: tuple
    layout: str = "flat"
    brank: int = 1  # outside batch axes (0: one example without a batch axis)
    rows: bool = False
    head: str | None = None
    affine: tuple | None = None
    caxis: int = 1  # channels layout: the outside axis of the features

    @property
    def features(self) -> int:
        return math.prod(self.fshape)


@dataclass(frozen=True)
class InputSpec:
    """How an outside input enters. kind: ``flat`` (batch = the first ``axis`` dims, the rest are
    features), ``flat_t`` (a (features, N) matrix: Gemm transA), ``channels`` (the features on
    outside axis ``axis``, the other axes flattened into the batch in C order) or ``labels`` (class
    indices with ``axis`` dims, (N,) or (N, d1, ...) beside N-D scores: flattened in C order, as the
    channels layout flattens the scores' batch axes)."""

    name: str  # outside name
    ir: str
    kind: str
    axis: int = 1
    fshape: tuple = ()

    def to_ir(self, a: np.ndarray, dtype) -> tuple:
        """(IR array, batch dims) for an outside array ``a``."""
        if self.kind == "labels":
            a = np.asarray(a)
            if a.ndim != self.axis or not np.issubdtype(a.dtype, np.integer):
                raise IRError(f"input {self.name!r}: labels must be a {self.axis}-D integer array, got "
                              f"{a.dtype}{a.shape}")
            return a.reshape(-1).astype(np.int64), a.shape
        a = np.asarray(a, dtype=dtype)
        if self.kind == "flat_t":
            self._expect(a.ndim == 2 and a.shape[0] == self.fshape[0], a, f"({self.fshape[0]}, N)")
            return np.ascontiguousarray(a), a.shape[1:]
        if self.kind == "spatial":  # (N, C, d1, ...) -> (C, N, d1, ...): the IR's spatial layout, one transpose
            self._expect(a.ndim == 1 + len(self.fshape) and a.shape[1:] == tuple(self.fshape), a,
                         f"(N, {', '.join(map(str, self.fshape))})")
            return np.ascontiguousarray(np.swapaxes(a, 0, 1)), a.shape[:1]
        if self.kind == "channels":  # (d0, ..., C, ...) -> (C, the other axes flattened in order)
            k, c = self.axis, self.fshape[0]
            want = f"(N, {c}, ...)" if k == 1 else f"{c} on axis {k} (of at least {max(k + 1, 2)} axes)"
            self._expect(a.ndim >= max(k + 1, 2) and a.shape[k] == c, a, want)
            batch = a.shape[:k] + a.shape[k + 1:]  # explicit sizes: -1 cannot be inferred for an empty batch
            return np.ascontiguousarray(np.moveaxis(a, k, 0).reshape(c, math.prod(batch))), batch
        batch, feat = a.shape[: self.axis], a.shape[self.axis:]
        self._expect(a.ndim == self.axis + len(self.fshape) and feat == tuple(self.fshape), a,
                     f"({', '.join(['N'] * self.axis + [str(d) for d in self.fshape])})")
        return np.ascontiguousarray(a.reshape(math.prod(batch), math.prod(feat)).T), batch

    def _expect(self, ok, a, want):
        if not ok:
            raise IRError(f"input {self.name!r}: expected shape {want}, got {a.shape}")


@dataclass(frozen=True)
class OutputSpec:
    """How an IR result leaves: kind ``flat``/``channels``/``spatial`` (a batch-sized value;
    ``channels``: the features go back to outside axis ``axis``; ``spatial``: (C, m, d...) back
    to (N, C, d...)), ``scalar`` (a loss), ``vector`` (per-unit, e.g. a
    running mean) or ``population_var`` (a running variance converted from bngraph's unbiased
    update to ONNX's: ``rv - (1 - momentum)*var/(n - 1)``, ``extra`` = (the key of the IR batch
    variance, ONNX momentum, its IR value, the positions per example: n = m*positions values per
    channel of a spatial value)). ``head`` is applied over the IR's features axis (axis 0
    of the ``(features, m)`` result) before the layout changes back: one rule for every layout."""

    name: str  # outside name
    key: str  # the program output key
    ir: str  # the IR value it reads
    kind: str
    fshape: tuple = ()
    rows: bool = False
    head: str | None = None
    extra: tuple = ()
    axis: int = 1

    @property
    def needs(self) -> tuple:
        """(program output key, IR value) pairs this output reads."""
        pairs = [(self.key, self.ir)]
        if self.kind == "population_var":
            pairs.append((self.extra[0], self.extra[2]))
        return tuple(pairs)

    def from_ir(self, out: dict, batch: tuple, m: int) -> np.ndarray:
        a = np.asarray(out[self.key])
        if self.kind == "scalar":
            return a.reshape(())
        if self.kind == "vector":
            return a.copy()
        if self.kind == "population_var":  # m counts the examples; each statistic is over m*positions values
            var, momentum = np.asarray(out[self.extra[0]]), self.extra[1]
            n = m * (self.extra[3] if len(self.extra) > 3 else 1)
            return a - (1 - momentum) * var / max(n - 1, 1)
        if self.head:  # over the features: axis 0 of the IR's (features, m), whatever the layout outside
            a = HEADS[self.head](a)
        if self.kind == "spatial":  # (C, m, d1, ...) -> (N, C, d1, ...)
            a = np.swapaxes(a, 0, 1).reshape(*batch, a.shape[0], *a.shape[2:])
        elif self.kind == "channels":  # (C, the other axes flattened) -> C back on its axis
            a = np.moveaxis(a.reshape(a.shape[0], *batch), 0, self.axis)
        else:
            dims = (m,) if self.rows else tuple(batch)
            a = a.T.reshape(tuple(dims) + tuple(self.fshape))
        return np.array(a)  # a copy (ascontiguousarray makes 0-d 1-d)


def _softmax(a):
    e = np.exp(a - a.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _log_softmax(a):
    s = a - a.max(axis=0, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=0, keepdims=True))


# A classifier's output transform over the features (axis 0 of the IR's (features, m)), applied to the
# logits on the host like OpDef.predict: the IR keeps softmax inside its loss (softmax_cross_entropy
# reads logits), so a trailing Softmax/LogSoftmax is the head.
HEADS = {"softmax": _softmax, "log_softmax": _log_softmax}


class ImportedGraph(Graph):
    """A ``bg.Graph`` built from another format, with the values that came with it.

    * ``weights``: IR param/state name -> array, from the file (params whose source is a graph
      input without an initializer are missing: they come at run time or from ``compile``'s init);
    * ``original_names``: IR name -> the name in the file (used again on export);
    * ``inputs_spec``/``outputs_spec``: the layout change at the boundary, per outside input/output;
    * ``training_outputs``: the file's batch norm runs in training mode (ONNX ``training_mode=1``).
    """

    carries_weights = True  # bg.compile starts from ``weights`` (unless told weights="init")

    def __init__(self, name: str, dtype="f32"):
        super().__init__(name, dtype)
        self.recipes: dict = {}  # IR param/state name -> Tensor
        self.original_names: dict = {}
        self.inputs_spec: list = []
        self.outputs_spec: list = []
        self.training_outputs = False
        self.added_loss = False  # the loss was chosen by the importer, not read from the file
        self.source_arrays: dict = {}  # outside name -> array (initializers)
        self.bound_inputs: list = []  # graph inputs read as weights: their values come at run time

    @property
    def weights(self) -> dict:
        """IR param/state name -> array, from the file (missing: values the file does not hold)."""
        return self.bind({}, missing_ok=True)

    def bind(self, arrays: dict, missing_ok: bool = False) -> dict:
        """IR values computed from the file's arrays overridden by ``arrays`` (outside names)."""
        known = {**self.source_arrays, **arrays}
        dt = DTYPES[self.dtype]
        out = {}
        for name, t in self.recipes.items():
            missing = sorted(s for s in t.sources if s not in known)
            if missing:
                if missing_ok:
                    continue
                raise IRError(f"{name}: needs the value of {', '.join(repr(s) for s in missing)}, which the file "
                              f"does not hold (a graph input without an initializer): feed it")
            out[name] = np.asarray(t.get(known), dtype=dt).reshape(self.value(name).type.shape)
        return out

    def check_compilable(self) -> None:
        """A ``bg.Model`` has one forward output: refuse a graph with several, naming them (the
        backend adapter, :mod:`bngraph.onnx_backend`, runs every output of a file)."""
        data = [s for s in self.outputs_spec if s.kind in ("flat", "channels", "spatial")]
        if len(data) > 1:
            raise IRError(f"compile: bngraph compiles a graph with one output; this one has {len(data)}: "
                          f"{', '.join(show(s.name) for s in data)} (bngraph.onnx_backend runs every output)")

    def compile(self, target: str = "numpy", dtype=None, seed: int = 0, **kwargs):
        """``bg.compile`` in this graph's dtype (by default). Like ``bg.compile``, the model starts
        from the imported values, loaded through the passes' remap (a bias folded into batch norm
        moves into its running mean); values the file lacks start as ``init`` draws them. Needs a
        loss (see ``from_onnx(loss=...)``)."""
        from ..model import compile as bg_compile

        return bg_compile(self, target=target, dtype=self.dtype if dtype is None else dtype, seed=seed, **kwargs)
