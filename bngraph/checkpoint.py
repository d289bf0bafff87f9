"""Checkpoints: a model's graph, params, state, step/epoch and optimizer state in one ``.npz``.

Arrays leave the device through the model's runtime (``to_numpy``) and come back through it; a
save is atomic (a temporary file in the same folder, then a rename), and a restore checks
everything before it writes anything.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import optim as optim_mod
from .errors import CheckpointError
from .fileio import atomic_write
from .version import __version__

FORMAT = "bngraph-checkpoint-1"


def meta(model) -> dict:
    opt = model.optimizer
    return {
        "format": FORMAT, "version": __version__, "graph": str(model.source_graph),
        "dtype": model._dtype_name, "target": model.target, "seed": model.seed, "passes": model.passes,
        "step": model.step, "epoch": model.epoch,
        "optimizer": None if opt is None else {"type": type(opt).__name__},
    }


def save(model, path) -> str:
    """``Model.save``: see its docstring."""
    path = os.fspath(path)
    rt = model.runtime
    values = {**model.params, **model.state}
    bad = [k for k, v in values.items() if not rt.all_finite(v)]
    if bad:
        raise CheckpointError(f"refusing to save {path}: {', '.join(bad)} contain NaN or inf (training diverged); "
                              f"the previous checkpoint, if any, is left as it was")
    arrays = {f"param/{k}": rt.to_numpy(v) for k, v in model.params.items()}
    arrays.update({f"state/{k}": rt.to_numpy(v) for k, v in model.state.items()})
    m = meta(model)
    if model.optimizer is not None and hasattr(model.optimizer, "state_dict"):
        sd = model.optimizer.state_dict()
        m["optimizer"] = {k: v for k, v in sd.items() if k != "slots"}
        for p, slots in sd.get("slots", {}).items():
            for s, a in slots.items():
                arrays[f"optim/{p}/{s}"] = rt.to_numpy(a)
    arrays["meta"] = np.array(json.dumps(m))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def read(path):
    """``(meta, arrays)`` of a checkpoint file, or a CheckpointError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        m = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a bngraph checkpoint ({e})") from None
    if m.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bngraph checkpoint (format {m.get('format')!r})")
    return m, arrays


def load_into(model, path, optimizer=None):
    """``Model.load_checkpoint``: restore a checkpoint of *this* graph into ``model``."""
    m, arrays = read(path)
    if m["graph"] != str(model.source_graph):
        raise CheckpointError(f"{path}: the checkpoint is of a different graph:\n"
                              f"{first_difference(m['graph'], str(model.source_graph))}")
    restore(model, m, arrays, optimizer, path)
    return model


def load(path, optimizer=None):
    """Rebuild a model from a checkpoint: the graph, compiled the same way, with params, state, step,
    epoch and optimizer state (a custom optimizer: pass an instance, its state is loaded into it)."""
    from .model import Model
    from .parser import parse

    m, arrays = read(path)
    model = Model(parse(m["graph"]), target=m["target"], dtype=m["dtype"], seed=m["seed"], passes=m["passes"])
    restore(model, m, arrays, optimizer, path)
    return model


def restore(model, m, arrays, optimizer, path):
    """Check everything, build the optimizer, then write: a failure leaves the model as it was."""
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
    mine_p, mine_s = model.params, model.state
    if set(params) != set(mine_p) or set(state) != set(mine_s):
        raise CheckpointError(f"{path}: params/state do not match this model's (compiled with other passes?): "
                              f"checkpoint has {sorted(params)}, model has {sorted(mine_p)}")
    for k, v in {**params, **state}.items():
        shape = tuple((mine_p.get(k) if k in mine_p else mine_s[k]).shape)
        if v.shape != shape:
            raise CheckpointError(f"{path}: {k} has shape {v.shape}, this model's is {shape}")
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"{path}: {k} contains NaN or inf")
    om = m.get("optimizer")
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
    model.set_params(params)
    model.set_state(state)
    model.step, model.epoch = int(m["step"]), int(m["epoch"])
    model.optimizer = optimizer


def first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), start=1):
        if x != y:
            return f"  line {i} in the checkpoint: {x.strip()}\n  line {i} in this model:     {y.strip()}"
    return "  (one graph is longer than the other)"
