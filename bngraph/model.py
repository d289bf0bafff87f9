"""A compiled model: live params and state on a target's runtime, and the generated programs.

Data at this API is samples-by-rows, ``X: (m, n_features)``, like scikit-learn and PyTorch; the
generated code works on ``(features, m)``, so each batch is transposed once on the way in and the
output once on the way out. Params and their gradients live in flat buffers (one per dtype, a view
per param, :mod:`bngraph.flat`); the generated ``train_step`` writes the gradients straight into
their views, and a built-in optimizer updates the whole buffer at once. Everything that touches a
device array goes through the runtime (``self.runtime``): the model never assumes NumPy arrays.
"""
from __future__ import annotations

import os

import numpy as np
from numpy.typing import ArrayLike

from . import checkpoint, training
from .compiler import PROGRAM_DOCS, build_programs
from .distributed.program import agreed, distribute_programs, resolve
from .datacheck import check_assignments, check_batch_size, check_model_size, check_seed
from .errors import CheckpointError, DataError, ProgramError, TrainingDiverged  # noqa: F401  (re-exported)
from .flat import FlatLayout
from .graph import as_graph
from .init import init_values
from .metrics import metrics
from .model_inputs import ModelInputs
from .ir import DTYPES, IRError, ir_dtype
from .ops import OPS, class_weights, loss_options, needs_batch_statistics
from .step import StepContext, TrainingStep
from .verifier import verify
from .training import History  # noqa: F401  (re-exported)


class Model:
    """A graph compiled for a target, with its live params and running statistics.

    Made by :func:`bngraph.compile` (or :func:`bngraph.load` from a checkpoint). Data is rows of
    examples, ``X: (m, n_features)``; ``y`` what the loss takes (class labels, real targets).

    * training: ``fit(X, y, optimizer=, epochs=, lr_schedule=, callbacks=, ...)`` -> ``History``;
      ``train_step(X, y, optimizer)`` one step, all or nothing (``TrainingDiverged`` changes nothing);
    * inference: ``forward(X)`` / ``model(X)`` (the loss's input, e.g. logits), ``predict(X)``
      (class indices, 0/1, values), ``evaluate(X, y)`` (loss and the metrics the loss fits);
    * looking inside: ``summary()``, ``graph`` and ``report`` (the IR after the passes, what each
      pass did), ``programs``, ``source`` (the generated code), ``params``, ``state``, ``grads``;
    * values: ``set_params``, ``set_state``; checkpoints: ``save(path)``, ``load_checkpoint(path)``;
      deployment: ``export_inference()``.

    See docs/training.md for the whole contract.
    """

    def __init__(self, graph, target="numpy", dtype="float32", seed=0, passes=None, print_after=False, device=None,
                 cuda_graph=False, weights=None, distributed=None):
        from .backends import get_target

        target_def = get_target(target)
        if callable(getattr(graph, "check_compilable", None)):  # an import says what a model cannot be made of
            graph.check_compilable()
        self.dtype = np.dtype(DTYPES[graph.dtype if dtype is None else ir_dtype(dtype)])
        self.target = target
        self.seed = check_seed("compile", seed)
        check_model_size(verify(as_graph(graph)), self.dtype.itemsize)  # a clear line, not a huge failed allocation
        self.passes = None if passes is None else _pass_names(passes)  # what a checkpoint records
        built = build_programs(graph, self.dtype.name, None if passes is None else _pass_list(passes),
                               print_after=print_after)
        self.source_graph = built.source
        self.graph = built.graph
        self.programs = built.programs
        self.report = built.pipeline
        self.distributed = resolve(distributed)  # data parallel (bngraph.distributed): train_step for the replicas
        self.programs, self.distributed_changes = distribute_programs(self.programs, self.distributed)
        loaded = target_def.load(self.programs, built.source.dtype, self.graph.name, docs=PROGRAM_DOCS, device=device)
        self.sources = loaded.rendered.sources
        self.source = "\n".join(self.sources.values())
        self.runtime, self.executable = loaded.runtime, loaded.executable
        if cuda_graph:  # the training step captured once per batch size and replayed
            if not self.runtime.captures:
                raise IRError(f"cuda_graph=True needs a target whose runtime captures graphs (cuda); "
                              f"target {target} does not")
        # initial values for the graph as written (drawn, then those the graph or the caller gives),
        # mapped through the passes (a folded bias moves into its running mean)
        values = self.report.remap({**init_values(self.source_graph, seed), **self._start_values(graph, weights)})
        self.layout = FlatLayout([(p.name, p.type.shape, DTYPES[p.type.dtype]) for p in self.graph.params])
        with self.runtime.queue():  # the runtime's queue (the model's own stream on a GPU), not the thread's
            self._P = self.layout.allocate(self.runtime.xp)  # params: one flat buffer per dtype, a view per param
            self._G = self.layout.allocate(self.runtime.xp)  # their gradients, in the same layout
            for k, view in self._P.views.items():
                view[...] = self.runtime.asarray(values[k], self.dtype)
            self._S = {s.name: self.runtime.asarray(np.array(values[s.name], self.dtype), self.dtype)
                       for s in self.graph.state}
        self.optimizer = None
        self.epoch = 0  # epochs completed by fit
        self.fit_state = None  # fit's seed, batch size and place in an epoch (bngraph.training), saved in checkpoints
        self.history = History()  # every epoch fit has run on this model (checkpoints carry it; bg.report draws it)
        self._describe_io()
        # the training step (bngraph/step.py): programs, flat buffers, checks, update, commit, the
        # step count and capture, owned by one object; a target may bring its own (the CUDA guarded step)
        self.trainer = TrainingStep(StepContext(self.runtime, self.executable, self.layout, self._P, self._G, self._S,
                                                tuple(k.removeprefix("state.") for k in self._state_keys), self.dtype,
                                                self._feeds, self._host_feeds,
                                                lambda program, feeds, m: self._run(program, feeds, m),
                                                replicas=self.distributed and self.distributed.replicas),
                                    capture=cuda_graph)
        self.original_names = dict(getattr(graph, "original_names", None) or {}) if weights is None else {}

    def _start_values(self, graph, weights) -> dict:
        """The values of the graph as written that do not come from ``init``: those an imported graph
        carries (``weights=None``), the caller's (a dict), or none (``weights="init"``); checked like
        ``set_params`` (names, shapes, finite in the model's dtype, a variance >= 0)."""
        if isinstance(weights, str):
            if weights != "init":
                raise ValueError(f"compile: weights must be None (the graph's own, if it carries any), 'init' "
                                 f"(draw every value afresh) or a dict name -> array, got {weights!r}")
            return {}
        carried = weights is None
        if carried:
            weights = getattr(graph, "weights", None) if getattr(graph, "carries_weights", False) else None
            if not weights:
                return {}
        if not isinstance(weights, dict):
            raise TypeError(f"compile: weights must be None, 'init' or a dict name -> array, got "
                            f"{type(weights).__name__}")
        g = self.source_graph
        shapes = {v.name: v.type.shape for v in (*g.params, *g.state)}
        nonneg = {n.inputs[i] for n in g.nodes for i in OPS[n.op].nonnegative_inputs if i < len(n.inputs)}
        where = f"compile({g.name}): the graph's own weights" if carried else "compile: weights"
        return check_assignments(weights, shapes, where, "param or state value", self.dtype, nonneg)

    # ---- params and state ------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps taken (the training step's count, ``model.trainer``)."""
        return self.trainer.step

    @step.setter
    def step(self, value: int):
        self.trainer.step = value

    @property
    def params(self) -> dict:
        """name -> array, live (views of the flat parameter buffer, which training updates in place)."""
        return dict(self._P.views)

    @property
    def grads(self) -> dict:
        """name -> the gradient of the last training step (views of the flat gradient buffer)."""
        return dict(self._G.views)

    @property
    def state(self) -> dict:
        return dict(self._S)

    def _checked(self, values: dict, live: dict, what) -> dict:
        """``values`` as host arrays in the model's dtype, every name, shape and value checked: real,
        finite *in that dtype* (1e39 overflows float32), and >= 0 where the op table says so (a
        running variance: a negative one makes eval-mode outputs NaN)."""
        return check_assignments(values, {k: tuple(v.shape) for k, v in live.items()}, f"set_{what}",
                                 what[:-1] if what.endswith("s") else what, self.dtype, self._nonnegative,
                                 self._folded_hint)

    def _folded_hint(self, name) -> str:
        """Why ``name``, a param of the graph as written, is not one of this model's (or '')."""
        if name not in {p.name for p in self.source_graph.params}:
            return ""
        return " (it was folded away by the passes: " + "; ".join(
            s for _, ch in self.report.report for s in ch if name in s) + ")"

    def stage(self, params: dict | None = None, state: dict | None = None):
        """Check ``params`` and ``state`` as ``set_params`` and ``set_state`` do, all before any is
        written, and return a function that writes them: a caller that has more to check (a
        checkpoint: fit's place, the optimizer's state) writes nothing until everything is checked."""
        checked = [(self._checked(values, live, what), live)
                   for values, live, what in ((params, self._P.views, "params"), (state, self._S, "state"))
                   if values is not None]

        def write():
            with self.runtime.queue():
                for values, live in checked:
                    for k, a in values.items():
                        live[k][...] = self.runtime.asarray(a, self.dtype)
        return write

    def set_params(self, values: dict):
        """Copy values in (shape-checked, all checked before any is written)."""
        self.stage(params=values)()

    def set_state(self, values: dict):
        """Copy running statistics in, like ``set_params`` (a running variance must be >= 0)."""
        self.stage(state=values)()

    # ---- data ----------------------------------------------------------------------------------
    def _describe_io(self):
        g = self.source_graph
        loss = g.loss_node
        self.loss_kind = loss.op
        vals = g.values()
        features = [v for v in g.inputs if v.name != loss.inputs[1]]
        if len(features) != 1 or loss.inputs[1] not in {v.name for v in g.inputs}:
            raise IRError(f"graph {g.name}: a model takes one feature input and the loss's labels/targets as a graph "
                          f"input; got inputs {', '.join('%' + v.name for v in g.inputs)} and the loss reads "
                          f"%{loss.inputs[1]}")
        self._ignore_index = loss_options(loss.attr)[1] if OPS[loss.op].class_labels else None
        self._x_input = features[0]
        self._y_input = vals[loss.inputs[1]]
        xs = self._x_input.type.shape  # (features, m), or a spatial (C, m, d...)
        self.n_features = xs[0] if len(xs) == 2 else (xs[0], *xs[2:])  # per example: an int, or (C, d...)
        self.n_outputs = vals[loss.inputs[0]].type.shape[0]
        self.classes = self._y_input.classes
        self.inputs = ModelInputs(self._x_input.name, self._y_input.name, self.n_features, self.n_outputs,
                                  self.classes, self.dtype, self.loss_kind, self._ignore_index,
                                  needs_batch_statistics(self.graph))  # a batch of one cannot be normalized
        held = {v.name for v in (*self.graph.params, *self.graph.state)}
        self._nonnegative = {n.inputs[i] for n in self.graph.nodes for i in OPS[n.op].nonnegative_inputs
                             if i < len(n.inputs) and n.inputs[i] in held}  # running variances
        # the state a step updates (running statistics); the rest (a loss's class weights) is constant
        updated = {k for k, _ in self.graph.outputs}
        self._state_keys = [f"state.{s.name}" for s in self.graph.state if f"state.{s.name}" in updated]

    def _check_x(self, X, where) -> np.ndarray:
        return self.inputs.check_x(X, where)

    def _check_y(self, y, m, where) -> np.ndarray:
        return self.inputs.check_y(y, m, where)

    def _feeds(self, X, y=None) -> dict:
        """Host data (rows are examples) -> device arrays in the compiler's (features, m) layout."""
        return {k: self.runtime.asarray(a, dt) for k, (a, dt) in self.inputs.layout_feeds(X, y).items()}

    def _host_feeds(self, X, y) -> dict:
        """The same, as contiguous host arrays (for a runtime to copy into its own buffers)."""
        return {k: np.ascontiguousarray(a, dt) for k, (a, dt) in self.inputs.layout_feeds(X, y).items()}

    def _run(self, program: str, feeds: dict, m: int) -> dict:
        grads = self._G.views if self.executable.plans[program].has_grads else None
        return self.executable.run(program, feeds, self._P.views, self._S, grads, m)

    # ---- the training API ----------------------------------------------------------------------
    def train_step(self, xb: ArrayLike, yb: ArrayLike, optimizer=None) -> float:
        """One optimizer step on one mini-batch (rows are examples). Returns the loss.

        Everything is checked before anything changes; a NaN/inf loss or gradient raises
        TrainingDiverged and leaves params, state and the optimizer untouched."""
        X, y = agreed(self.distributed, self._check_batch, xb, yb)  # data parallel: bad data on one shard stops all
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the step checks for NaN/inf itself
            return self.trainer.run(X, y, self._optimizer(optimizer))

    def _check_batch(self, xb, yb) -> tuple:
        X = self._check_x(xb, "train_step")
        y = self._check_y(yb, X.shape[0], "train_step")
        if X.shape[0] < 2 and self.inputs.batch_statistics:
            raise DataError(
                "train_step: a training step needs at least 2 examples: batch norm in training mode normalizes "
                "with the mini-batch's own variance, which is 0 for a single example (PyTorch raises 'Expected "
                "more than 1 value per channel when training'). fit() merges a last batch of one example into "
                "the batch before it.")
        return X, y

    def _optimizer(self, optimizer):
        return training.use_optimizer(self, optimizer)

    def forward(self, X: ArrayLike, training: bool = False, batch_size: int | None = None) -> np.ndarray:
        """The loss's input (e.g. logits), shaped (batch, outputs). ``training=True`` normalizes with
        the batch's own statistics (state is not updated). ``batch_size`` bounds memory in eval mode."""
        X = self._check_x(X, "forward")
        if batch_size is not None:
            check_batch_size("forward", batch_size)
        return self._forward(X, training, batch_size)

    def __call__(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """``model(X)``: the eval-mode forward pass, ``model.forward(X)``."""
        return self.forward(X, batch_size=batch_size)

    def _forward(self, X, training, batch_size):
        """forward on data already checked."""
        program = "forward_train" if training else "forward"
        if training and X.shape[0] < 2 and self.inputs.batch_statistics:
            raise DataError("forward(training=True) needs at least 2 examples (batch statistics of one example "
                            "have zero variance)")
        if training or batch_size is None or X.shape[0] <= batch_size:
            return self._out(self._run(program, self._feeds(X), X.shape[0]))
        return np.concatenate([self._out(self._run(program, self._feeds(X[i:i + batch_size]), len(X[i:i + batch_size])))
                               for i in range(0, X.shape[0], batch_size)])

    def _out(self, results) -> np.ndarray:
        return np.array(self.runtime.to_numpy(results["out"]).T)  # a host copy: the buffer is reused

    def predict(self, X: ArrayLike, batch_size: int | None = 1024) -> np.ndarray:
        """Class indices (softmax_cross_entropy), 0/1 (sigmoid_bce) or values (mse)."""
        return OPS[self.loss_kind].predict(self.forward(X, batch_size=batch_size))

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = 1024) -> dict:
        """Mean loss (inference mode) and the metrics the loss fits: ``accuracy`` (class labels;
        sigmoid_bce: at probability 0.5), ``rmse`` and ``mae`` (mse). See :mod:`bngraph.metrics`."""
        X = self._check_x(X, "evaluate")
        y = self._check_y(y, X.shape[0], "evaluate")
        if batch_size is not None:
            check_batch_size("evaluate", batch_size)
        return self._evaluate(X, y, batch_size)

    def _evaluate(self, X, y, batch_size=1024) -> dict:
        """evaluate on data already checked, with the generated ``evaluate`` program in chunks: the
        mean loss is the chunks' means weighted by what each averages over (:meth:`_loss_share`),
        a loss with reduction='sum' the chunks' sum."""
        n = X.shape[0]
        step = n if batch_size is None else batch_size
        total, count, outs = 0.0, 0.0, []
        summed = loss_options(self.graph.loss_node.attr)[0] == "sum"
        for a in range(0, n, step):
            Xb, yb = X[a:a + step], y[a:a + step]
            res = self._run("evaluate", self._feeds(Xb, yb), Xb.shape[0])
            loss = self.runtime.to_float(res["loss"])
            share = 1.0 if summed else self._loss_share(yb)
            if share:  # a chunk whose examples are all ignored (share 0, loss NaN) counts for nothing
                total += loss * share
                count += share
            outs.append(self._out(res))
        result = {"loss": total if summed else total / count if count else float("nan")}
        outs = np.concatenate(outs)
        if self._ignore_index is not None:  # ignored examples have no right answer
            outs, y = outs[y != self._ignore_index], y[y != self._ignore_index]
        return {**result, **metrics(self.loss_kind, outs, y)}

    def _loss_share(self, y) -> float:
        """What a chunk's mean loss averages over: its examples, or ``sum_i w_i`` for a class loss
        with class weights or ignore_index (``w_i = weight[y_i]``, 0 where ignored)."""
        node = self.graph.loss_node
        ignore = loss_options(node.attr)[1]
        if len(node.inputs) < 3 and ignore is None:
            return float(len(y))
        weight = None
        if len(node.inputs) > 2:
            live = {**self._P.views, **self._S}
            weight = np.asarray(self.runtime.to_numpy(live[node.inputs[2]]), np.float64)
        return float(class_weights(np.asarray(y), weight, ignore, np.float64)[1].sum())

    def fit(self, X: ArrayLike, y: ArrayLike, optimizer=None, epochs: int = 1, batch_size: int | None = None,
            shuffle: bool | None = None, seed: int | None = None, validation_data: tuple | None = None,
            verbose: bool | None = None, lr_schedule=None, checkpoint: str | os.PathLike | None = None,
            callbacks: list | None = None, report: str | os.PathLike | None = None) -> History:
        """Train for ``epochs`` more epochs; returns the per-epoch history.

        Mini-batches t = 1..T per epoch, reshuffled each epoch from (seed, epoch number) so that
        the same seed gives the same result and a resumed run continues exactly. ``batch_size``,
        ``shuffle`` and ``seed`` default to those of this model's last fit (recorded in
        checkpoints), else 64, True and 0. A last batch of a single example is merged into the
        batch before it (batch norm cannot normalize one example). ``lr_schedule`` sets
        ``optimizer.lr`` before each step: a :mod:`bngraph.schedules` object (PyTorch's
        schedulers; its place is recorded in ``fit_state`` and checkpoints), ``fn(epoch) -> lr``
        (Keras's: epoch from 0) or ``fn(epoch, step) -> lr`` (epoch and the global step, from 1),
        told apart by the signature. ``callbacks``: :mod:`bngraph.callbacks` objects (early
        stopping, best-model checkpoints, your own). ``checkpoint``: a path saved (atomically)
        after every epoch. Ctrl-C stops at the next step boundary (KeyboardInterrupt; the model is
        as after a whole step, and a checkpoint saved then resumes mid-epoch). ``verbose``: None
        = a progress bar on a terminal and one line per epoch, False = quiet. ``report``: a path where
        the HTML report of the model (``bg.report``: graph, passes, code, training curves) is written
        at the end of training."""
        return training.fit(self, X, y, optimizer, epochs, batch_size, shuffle, seed, validation_data, verbose,
                            lr_schedule, checkpoint, callbacks=callbacks, report=report)

    def summary(self, print_fn=None) -> None:
        """Print the layers (ops, output shapes, parameters), the totals and what the passes
        removed or fused (Keras's ``summary``). ``print_fn``: a function given the text instead
        of printing it, e.g. ``lines.append``; the text itself is
        :func:`bngraph.summary.summary_text` ``(model)``."""
        from .summary import summary_text

        (print if print_fn is None else print_fn)(summary_text(self))

    def export_inference(self, target=None, device=None):
        """This model for inference, in one call: batch norm folded into the weights (the inference
        pipeline on the trained graph), the folded params computed from the live ones, and the
        inference program rendered for this target, or for ``target`` on its ``device`` (one
        that lowers only forward ops will do). See :mod:`bngraph.export`."""
        from .export import export_inference

        return export_inference(self, target, device)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write params, state, optimizer state, step and graph to ``path`` (.npz) atomically: a
        temporary file in the same folder, then a rename, so a crash leaves the old file intact."""
        return checkpoint.save(self, path)

    def load_checkpoint(self, path: str | os.PathLike, optimizer=None):
        """Restore a checkpoint of *this* graph into this model (a different graph is an error)."""
        return checkpoint.load_into(self, path, optimizer)

    def __repr__(self):
        n = sum(s.size for s in self.layout.segments.values())
        return f"<bngraph.Model {self.graph.name}: target={self.target}, dtype={self.dtype.name}, {n} parameters>"


def _pass_list(passes) -> list:
    """``passes`` as a list of names and Pass objects, each one checked: a name must be registered;
    a Pass object may be your own, registered or not, but not one that shares a registered pass's name
    (a checkpoint records passes by name, and loading it must find the same pass)."""
    from .passes import PASSES, Pass

    if isinstance(passes, (str, Pass)):
        passes = [passes]
    out = []
    for p in passes:
        if isinstance(p, str):
            if p not in PASSES:
                raise IRError(f"compile: unknown pass {p!r}; registered passes: {', '.join(PASSES)} (a pass of your "
                              f"own: give its Pass object, or register it with the graph_pass decorator to name it)")
        elif isinstance(p, Pass):
            if p.name in PASSES and PASSES[p.name] is not p:
                raise IRError(f"compile: pass {p.name!r} is not the registered pass of that name; rename it (a "
                              f"checkpoint records passes by name)")
        else:
            raise IRError(f"compile: passes must be pass names or Pass objects (bngraph.passes.graph_pass), got "
                          f"{type(p).__name__} {p!r}")
        out.append(p)
    return out


def _pass_names(passes) -> list:
    """The passes' names, which a checkpoint records; ``bg.load`` finds them in ``PASSES``, so a pass of
    your own must be registered (imported) where the checkpoint is loaded."""
    return [p if isinstance(p, str) else p.name for p in _pass_list(passes)]


def load(path: str | os.PathLike, optimizer=None, device: int | str | None = None) -> Model:
    """Rebuild a model from a checkpoint: the graph, compiled the same way, with params, state, step,
    epoch, fit's place and optimizer state (a custom optimizer: pass an instance, its state is
    loaded into it -- hyperparameters included, with a warning naming those that change).
    ``device``: where the checkpoint's target runs it (cuda: a GPU index or "emulator")."""
    return checkpoint.rebuild(path, Model, optimizer, device)


read_checkpoint = checkpoint.read


def compile(graph, target: str = "numpy", dtype: str = "float32", seed: int = 0, passes: list | None = None,
            print_after: bool = False, device: int | str | None = None, cuda_graph: bool = False,
            weights: str | dict | None = None, distributed=None) -> Model:
    """Compile ``graph`` for ``target``: run the training pipeline (or ``passes``), differentiate,
    generate and load the code, and set the starting values. ``device`` picks the target's
    device (the numpy target runs on the host; cuda: a GPU index, or "emulator" for the CPU).
    ``cuda_graph``: capture the training step once per batch size and replay it (cuda).

    ``weights``: where params and running statistics start. ``None`` (the default): a graph that
    carries weights (``bg.from_onnx``, ``bg.from_torch``) starts from them, values it lacks and
    every value of any other graph are drawn by ``init`` (seeded by ``seed``); ``"init"``: draw every
    value afresh, ignoring the graph's own; a dict (names of the graph as written -> arrays): start
    from those, draw the rest. Values go through the passes' remap (a bias folded into batch norm
    moves into its running mean) and are checked like ``set_params``."""
    return Model(graph, target=target, dtype=dtype, seed=seed, passes=passes, print_after=print_after, device=device,
                 cuda_graph=cuda_graph, weights=weights, distributed=distributed)
