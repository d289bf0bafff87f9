"""A compiled model: live params and state, the generated code, and the training loop.

Data at this API is samples-by-rows, ``X: (m, n_features)``, like scikit-learn and PyTorch; the
generated code works on ``(features, m)``, so each batch is transposed once on the way in and the
output once on the way out.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np

from . import __version__, optim as optim_mod
from .compiler import PROGRAM_DOCS, build_programs
from .fileio import atomic_write
from .init import init_values
from .ir import DTYPES, IRError, ir_dtype
from .ops import BN_OPS, OPS


class DataError(ValueError):
    """Bad data given to train_step/forward/fit: says what is wrong and where (which row)."""


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; nothing was updated by that step."""


class CheckpointError(ValueError):
    pass


class History(list):
    """Per-epoch records (dicts: epoch, loss, val_loss, val_accuracy, lr, seconds...).

    ``stop_reason`` is None when every epoch ran, else a sentence saying why training stopped."""

    stop_reason: str | None = None

    def column(self, key):
        return [r.get(key) for r in self]


class Model:
    """Made by :func:`bngraph.compile`; see the README for the contract."""

    MAX_BUFFER_SETS = 4  # batch sizes whose buffers are kept (the last short batch is one more)

    def __init__(self, graph, target="numpy", dtype="float32", seed=0, passes=None, print_after=False):
        from .backends import get_backend

        self._dtype_name = DTYPES[graph.dtype if dtype is None else ir_dtype(dtype)]
        self.dtype = np.dtype(self._dtype_name)
        self.target = target
        self.seed = seed
        self.passes = None if passes is None else _pass_names(passes)
        self.backend = get_backend(target)
        built = build_programs(graph, self._dtype_name, self.passes, print_after=print_after)
        self.source_graph = built.source
        self.graph = built.graph
        self.programs = built.programs
        self.report = built.pipeline
        self.sources = self.backend.emit(self.programs, built.source.dtype, graph.name, docs=PROGRAM_DOCS)
        self.source = "\n".join(self.sources.values())
        self._module = self.backend.load(self.sources, graph.name)
        self._buffers: dict = {}
        # initial values for the graph as written, then mapped through the passes (folded params go)
        values = self.report.remap(init_values(self.source_graph, seed))
        self._values = {k: self.backend.asarray(v, self.dtype) for k, v in values.items()}
        self._param_names = self.graph.param_names()
        self._state_names = self.graph.state_names()
        self.optimizer = None
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # epochs completed by fit
        self._describe_io()

    # ---- params and state ------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """name -> array, live (the arrays training updates in place)."""
        return {k: self._values[k] for k in self._param_names}

    @property
    def state(self) -> dict:
        return {k: self._values[k] for k in self._state_names}

    def _set(self, values: dict, names, what):
        for k, v in values.items():
            if k not in names:
                folded = k in {p.name for p in self.source_graph.params}
                hint = (" (it was folded away by the passes: "
                        + "; ".join(s for _, ch in self.report.report for s in ch if k in s) + ")") if folded else ""
                raise KeyError(f"set_{what}: {k!r} is not a {what[:-1] if what.endswith('s') else what} of this "
                               f"model{hint}; expected one of {', '.join(names)}")
            a = np.asarray(v)
            dst = self._values[k]
            if a.shape != dst.shape:
                raise ValueError(f"set_{what}: {k} expected shape {dst.shape}, got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"set_{what}: {k} contains NaN or inf")
        for k, v in values.items():
            self._values[k][...] = self.backend.asarray(v, self.dtype)

    def set_params(self, values: dict):
        """Copy values in (shape-checked, all checked before any is written)."""
        self._set(values, self._param_names, "params")

    def set_state(self, values: dict):
        self._set(values, self._state_names, "state")

    # ---- data checks -------------------------------------------------------------------------
    def _describe_io(self):
        g = self.source_graph
        self.loss_kind = g.loss_node.op
        loss = g.loss_node
        vals = g.values()
        features = [v for v in g.inputs if v.name != loss.inputs[1]]
        if len(features) != 1 or loss.inputs[1] not in {v.name for v in g.inputs}:
            raise IRError(f"graph {g.name}: a model takes one feature input and the loss's labels/targets as a graph "
                          f"input; got inputs {', '.join('%' + v.name for v in g.inputs)} and the loss reads "
                          f"%{loss.inputs[1]}")
        self._x_input = features[0]
        self._y_input = vals[loss.inputs[1]]
        self.n_features = self._x_input.type.shape[0]
        self.n_outputs = vals[loss.inputs[0]].type.shape[0]
        self.classes = self._y_input.classes
        self._bn_training = any(n.op in BN_OPS for n in self.graph.nodes)  # a batch of one cannot be normalized

    def _check_x(self, X, where) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim == 1 and self.n_features == X.shape[0]:
            raise DataError(f"{where}: X must be 2-D (batch, {self.n_features}); got one example of shape "
                            f"{X.shape} (use X[None, :] for a batch of one)")
        if X.ndim != 2:
            raise DataError(f"{where}: X expected shape (batch, {self.n_features}), got {X.shape}")
        if X.shape[1] != self.n_features:
            raise DataError(f"{where}: X expected shape (batch, {self.n_features}) for input %{self._x_input.name}, "
                            f"got {X.shape} ({X.shape[1]} features)")
        if X.shape[0] == 0:
            raise DataError(f"{where}: X is empty")
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise DataError(f"{where}: X must be real numbers, got dtype {X.dtype}")
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(f"{where}: X row {r} contains NaN or inf ({int(bad.sum())} bad rows)")
        return X

    def _check_y(self, y, m, where) -> np.ndarray:
        y = np.asarray(y)
        if self.classes is not None:
            if y.ndim != 1 or y.shape[0] != m:
                raise DataError(f"{where}: labels expected shape ({m},) (one class index per row of X), got {y.shape}")
            if not np.issubdtype(y.dtype, np.integer):
                if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                    y = y.astype(np.int64)
                else:
                    bad = int(np.argmax(~np.isfinite(y) | (y != np.round(y)))) if np.issubdtype(y.dtype, np.floating) else 0
                    raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype} "
                                    f"(row {bad}: {y[bad]!r})")
            bad = (y < 0) | (y >= self.classes)
            if bad.any():
                r = int(np.argmax(bad))
                raise DataError(f"{where}: label {y[r]} at row {r} is out of range: expected 0 <= label < {self.classes}")
            return y.astype(np.int64, copy=False)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y[:, None]
        if y.shape != (m, self.n_outputs):
            raise DataError(f"{where}: targets expected shape ({m}, {self.n_outputs}), got {y.shape}")
        bad = ~np.isfinite(y).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: targets row {int(np.argmax(bad))} contains NaN or inf")
        return y

    def _feeds(self, X, y=None):
        feeds = {self._x_input.name: self.backend.asarray(X.T, self.dtype)}
        if y is not None:
            yt = y if self.classes is not None else y.T
            feeds[self._y_input.name] = self.backend.asarray(yt, np.int64 if self.classes is not None else self.dtype)
        return feeds

    def _run(self, program: str, feeds: dict, m: int) -> dict:
        key = (program, m)
        bufs = self._buffers.pop(key, None)
        if bufs is None:
            bufs = getattr(self._module, f"alloc_{program}")(m)
            if len(self._buffers) >= self.MAX_BUFFER_SETS:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = bufs  # most recently used last
        g = self.programs[program]
        args = [feeds[v.name] for v in g.inputs]
        return getattr(self._module, program)(*args, self._values, self._values, bufs)

    # ---- the training API ----------------------------------------------------------------------
    def train_step(self, xb, yb, optimizer=None) -> float:
        """One optimizer step on one mini-batch (rows are examples). Returns the loss.

        Everything is checked before anything changes; a NaN/inf loss or gradient raises
        TrainingDiverged and leaves params, state and the optimizer untouched."""
        X = self._check_x(xb, "train_step")
        y = self._check_y(yb, X.shape[0], "train_step")
        if X.shape[0] < 2 and self._bn_training:
            raise DataError(
                "train_step: a training step needs at least 2 examples: batch norm in training mode normalizes "
                "with the mini-batch's own variance, which is 0 for a single example (PyTorch raises 'Expected "
                "more than 1 value per channel when training'). fit() merges a last batch of one example into "
                "the batch before it.")
        return self._step(X, y, self._optimizer(optimizer))

    def _step(self, X, y, optimizer) -> float:
        """train_step on data already checked (fit checks the whole data set once)."""
        out = self._run("train_step", self._feeds(X, y), X.shape[0])
        loss = float(self.backend.to_numpy(out["loss"]))
        if not np.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {self.step + 1}; nothing was updated")
        grads = {p: out[f"grad.{p}"] for p in self._param_names}
        bad = _first_nonfinite(grads)
        if bad is not None:
            raise TrainingDiverged(f"the gradient of {bad} contains NaN or inf at step {self.step + 1}; "
                                   f"nothing was updated")
        params = self.params
        optimizer.step(params, grads)
        bad = _first_nonfinite(params)
        if bad is not None:
            raise TrainingDiverged(f"the update at step {self.step + 1} made {bad} NaN or inf (finite loss and "
                                   f"gradients: is the learning rate too large?); the parameters are no longer "
                                   f"usable: reload a checkpoint")
        for s in self._state_names:
            self._values[s][...] = out[f"state.{s}"]
        self.step += 1
        return loss

    def _optimizer(self, optimizer):
        if optimizer is None:
            if self.optimizer is None:
                raise ValueError("no optimizer: pass one, e.g. bg.optim.Adam(lr=1e-3)")
            return self.optimizer
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must have a step(params, grads) method, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        return optimizer

    def forward(self, X, training: bool = False, batch_size: int | None = None) -> np.ndarray:
        """The loss's input (e.g. logits), shaped (batch, outputs). ``training=True`` normalizes with
        the batch's own statistics (state is not updated). ``batch_size`` bounds memory in eval mode."""
        X = self._check_x(X, "forward")
        if batch_size is not None:
            _check_batch_size("forward", batch_size)
        return self._forward(X, training, batch_size)

    def _forward(self, X, training, batch_size):
        """forward on data already checked."""
        program = "forward_train" if training else "forward"
        if training and X.shape[0] < 2 and self._bn_training:
            raise DataError("forward(training=True) needs at least 2 examples (batch statistics of one example "
                            "have zero variance)")
        if training or batch_size is None or X.shape[0] <= batch_size:
            return self._forward_chunk(program, X)
        return np.concatenate([self._forward_chunk(program, X[i:i + batch_size])
                               for i in range(0, X.shape[0], batch_size)])

    def _forward_chunk(self, program, X):
        out = self._run(program, self._feeds(X), X.shape[0])["out"]
        return np.array(self.backend.to_numpy(out).T)  # a copy: the buffer is reused

    def predict(self, X, batch_size: int | None = 1024) -> np.ndarray:
        """Class indices (softmax_cross_entropy), 0/1 (sigmoid_bce) or values (mse)."""
        out = self.forward(X, batch_size=batch_size)
        if self.loss_kind == "softmax_cross_entropy":
            return out.argmax(axis=1)
        if self.loss_kind == "sigmoid_bce":
            return (out > 0).astype(np.int64)
        return out

    def evaluate(self, X, y, batch_size: int | None = 1024) -> dict:
        """Mean loss (inference mode) and, for classification, accuracy."""
        X = self._check_x(X, "evaluate")
        y = self._check_y(y, X.shape[0], "evaluate")
        if batch_size is not None:
            _check_batch_size("evaluate", batch_size)
        return self._evaluate(X, y, batch_size)

    def _evaluate(self, X, y, batch_size=1024) -> dict:
        """evaluate on data already checked (fit checks its validation data once)."""
        out = self._forward(X, False, batch_size).astype(np.float64)
        yy = y if self.classes is not None else y.T.astype(np.float64)
        loss = float(OPS[self.loss_kind].ref([out.T, yy], {})[0])
        res = {"loss": loss}
        if self.loss_kind == "softmax_cross_entropy":
            res["accuracy"] = float((out.argmax(axis=1) == y).mean())
        elif self.loss_kind == "sigmoid_bce":
            res["accuracy"] = float(((out > 0) == (y > 0.5)).mean())
        return res

    def fit(self, X, y, optimizer=None, epochs: int = 1, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
            validation_data=None, verbose=None, lr_schedule=None, checkpoint: str | None = None) -> History:
        """Train for ``epochs`` more epochs; returns the per-epoch history.

        Mini-batches t = 1..T per epoch, reshuffled each epoch from (seed, epoch number) so that
        the same seed gives the same result and a resumed run continues exactly. A last batch of a
        single example is merged into the batch before it (batch norm cannot normalize one
        example). ``lr_schedule(epoch, step) -> lr`` sets ``optimizer.lr`` before each step.
        ``checkpoint``: a path saved (atomically) after every epoch. ``verbose``: None = a progress
        bar on a terminal and one line per epoch, False = quiet."""
        X = self._check_x(X, "fit")
        y = self._check_y(y, X.shape[0], "fit")
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = self._check_x(Xv, "fit validation_data")
            yv = self._check_y(yv, Xv.shape[0], "fit validation_data")
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
        _check_batch_size("fit", batch_size)
        optimizer = self._optimizer(optimizer)
        X = X.astype(self.dtype, copy=False)  # cast once, not per batch
        n = X.shape[0]
        if self._bn_training and (n < 2 or batch_size < 2):
            raise DataError(f"fit: batch norm needs at least 2 examples per batch (got {n} examples, "
                            f"batch_size {batch_size})")
        bar = _Progress(verbose)
        history = History()
        final = self.epoch + epochs
        for _ in range(epochs):
            ep = self.epoch + 1
            order = np.random.default_rng([seed, ep]).permutation(n) if shuffle else np.arange(n)
            bounds = _batch_bounds(n, batch_size, merge_single=self._bn_training)
            t0, losses = time.perf_counter(), []
            for t, (a, b) in enumerate(bounds, start=1):
                if lr_schedule is not None:
                    optimizer.lr = float(lr_schedule(ep, self.step + 1))
                idx = order[a:b]
                try:
                    losses.append(self._step(X[idx], y[idx], optimizer))
                except TrainingDiverged as e:
                    history.stop_reason = (f"stopped early at epoch {ep}, step {t} of {len(bounds)} "
                                           f"(global step {self.step + 1}): {e}")
                    bar.close()
                    bar.line(history.stop_reason)
                    return history
                bar.update(ep, final, t, len(bounds), losses[-1])
            rec = {"epoch": ep, "loss": float(np.mean(losses)), "steps": len(bounds),
                   "lr": float(getattr(optimizer, "lr", float("nan"))), "seconds": time.perf_counter() - t0}
            if validation_data is not None:
                for k, v in self._evaluate(Xv, yv).items():
                    rec[f"val_{k}"] = v
            self.epoch = ep
            history.append(rec)
            bar.close()
            bar.line(_format_record(rec))
            if checkpoint:
                self.save(checkpoint)
        return history

    # ---- checkpoints ---------------------------------------------------------------------------
    def _meta(self) -> dict:
        opt = self.optimizer
        return {
            "format": "bngraph-checkpoint-1", "version": __version__, "graph": str(self.source_graph),
            "dtype": self._dtype_name, "target": self.target, "seed": self.seed, "passes": self.passes,
            "step": self.step, "epoch": self.epoch,
            "optimizer": None if opt is None else {"type": type(opt).__name__},
        }

    def save(self, path):
        """Write params, state, optimizer state, step and graph to ``path`` (.npz) atomically: a
        temporary file in the same folder, then a rename, so a crash leaves the old file intact."""
        path = os.fspath(path)
        bad = [k for k in (*self._param_names, *self._state_names) if not np.all(np.isfinite(self._values[k]))]
        if bad:
            raise CheckpointError(f"refusing to save {path}: {', '.join(bad)} contain NaN or inf (training diverged); "
                                  f"the previous checkpoint, if any, is left as it was")
        arrays = {f"param/{k}": self.backend.to_numpy(self._values[k]) for k in self._param_names}
        arrays.update({f"state/{k}": self.backend.to_numpy(self._values[k]) for k in self._state_names})
        meta = self._meta()
        if self.optimizer is not None and hasattr(self.optimizer, "state_dict"):
            sd = self.optimizer.state_dict()
            meta["optimizer"] = {k: v for k, v in sd.items() if k != "slots"}
            for p, slots in sd.get("slots", {}).items():
                for s, a in slots.items():
                    arrays[f"optim/{p}/{s}"] = np.asarray(a)
        arrays["meta"] = np.array(json.dumps(meta))
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_checkpoint(self, path, optimizer=None):
        """Restore a checkpoint of *this* graph into this model (a different graph is an error)."""
        meta, arrays = read_checkpoint(path)
        if meta["graph"] != str(self.source_graph):
            raise CheckpointError(f"{path}: the checkpoint is of a different graph:\n"
                                  f"{_first_difference(meta['graph'], str(self.source_graph))}")
        self._restore(meta, arrays, optimizer, path)
        return self

    def _restore(self, meta, arrays, optimizer, path):
        """Check everything, build the optimizer, then write: a failure leaves the model as it was."""
        params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        state = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
        if set(params) != set(self._param_names) or set(state) != set(self._state_names):
            raise CheckpointError(f"{path}: params/state do not match this model's (compiled with other passes?): "
                                  f"checkpoint has {sorted(params)}, model has {sorted(self._param_names)}")
        for k, v in {**params, **state}.items():
            if v.shape != self._values[k].shape:
                raise CheckpointError(f"{path}: {k} has shape {v.shape}, this model's is {self._values[k].shape}")
            if not np.all(np.isfinite(v)):
                raise CheckpointError(f"{path}: {k} contains NaN or inf")
        om = meta.get("optimizer")
        if om is not None and "hyper" in om:
            sd = dict(om)
            slots: dict = {}
            for k, v in arrays.items():
                if k.startswith("optim/"):
                    p, s = k[6:].rsplit("/", 1)
                    slots.setdefault(p, {})[s] = v
            sd["slots"] = slots
            try:
                if optimizer is None:
                    optimizer = optim_mod.from_state_dict(sd)
                elif not callable(getattr(optimizer, "load_state_dict", None)):
                    raise TypeError(f"the checkpoint holds {om.get('type')} state but the given "
                                    f"{type(optimizer).__name__} has no load_state_dict(d) method")
                else:
                    optimizer.load_state_dict(sd)
            except (ValueError, TypeError, KeyError) as e:
                raise CheckpointError(f"{path}: cannot restore the optimizer: {e}") from None
        self.set_params(params)
        self.set_state(state)
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])
        self.optimizer = optimizer

    def __repr__(self):
        n = sum(int(np.prod(self._values[k].shape)) for k in self._param_names)
        return f"<bngraph.Model {self.graph.name}: target={self.target}, dtype={self._dtype_name}, {n} parameters>"


def _pass_names(passes) -> list:
    """Pass names (what a checkpoint records): registered Pass objects become their names."""
    from .passes import PASSES

    if isinstance(passes, str):
        passes = [passes]
    names = []
    for p in passes:
        name = p if isinstance(p, str) else getattr(p, "name", None)
        if name not in PASSES or not (isinstance(p, str) or PASSES[name] is p):
            raise IRError(f"compile: pass {p!r} is not registered in bngraph.passes.PASSES; register it (the "
                          f"graph_pass decorator) so that checkpoints can name it")
        names.append(name)
    return names


def read_checkpoint(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a bngraph checkpoint ({e})") from None
    if meta.get("format") != "bngraph-checkpoint-1":
        raise CheckpointError(f"{path}: not a bngraph checkpoint (format {meta.get('format')!r})")
    return meta, arrays


def load(path, optimizer=None) -> Model:
    """Rebuild a model from a checkpoint: the graph, compiled the same way, with params, state, step,
    epoch and optimizer state (a custom optimizer: pass an instance, its state is loaded into it)."""
    from .parser import parse

    meta, arrays = read_checkpoint(path)
    model = Model(parse(meta["graph"]), target=meta["target"], dtype=meta["dtype"], seed=meta["seed"],
                  passes=meta["passes"])
    model._restore(meta, arrays, optimizer, path)
    return model


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), start=1):
        if x != y:
            return f"  line {i} in the checkpoint: {x.strip()}\n  line {i} in this model:     {y.strip()}"
    return "  (one graph is longer than the other)"


def _first_nonfinite(arrays: dict):
    """The name of the first array holding NaN or inf, else None. One sum per array (NaN and inf
    propagate through it; a sum that overflows is divergence too), no boolean temporaries."""
    with np.errstate(over="ignore", invalid="ignore"):
        for name, a in arrays.items():
            if not np.isfinite(np.sum(a)):
                return name
    return None


def _check_batch_size(where, batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")


def _batch_bounds(n, batch_size, merge_single):
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def _format_record(rec):
    parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}"]
    if "val_loss" in rec:
        parts.append(f"val_loss {rec['val_loss']:.4f}")
    if "val_accuracy" in rec:
        parts.append(f"val_accuracy {rec['val_accuracy']:.4f}")
    parts.append(f"{rec['seconds']:.2f}s")
    return "  ".join(parts)


class _Progress:
    """A one-line progress bar on a terminal (stderr); lines per epoch otherwise; nothing if quiet."""

    def __init__(self, verbose, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = verbose is False or verbose == 0
        self.bar = not self.quiet and _isatty(self.stream)
        self.open = False
        self.last = 0.0

    def update(self, epoch, epochs, t, T, loss):
        now = time.perf_counter()
        if not self.bar or (t < T and now - self.last < 0.1):  # redraw at most 10 times a second
            return
        self.last = now
        width = 24
        done = int(width * t / T)
        self.stream.write(f"\repoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] {t}/{T} loss {loss:.4f}")
        self.stream.flush()
        self.open = True

    def close(self):
        if self.open:
            self.stream.write("\r" + " " * 72 + "\r")
            self.open = False

    def line(self, text):
        if not self.quiet:
            print(text, file=self.stream, flush=True)


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def compile(graph, target: str = "numpy", dtype="float32", seed: int = 0, passes=None, print_after=False) -> Model:
    """Compile ``graph`` for ``target``: run the training pipeline (or ``passes``), differentiate,
    generate and load the code, and initialize params (seeded)."""
    return Model(graph, target=target, dtype=dtype, seed=seed, passes=passes, print_after=print_after)
