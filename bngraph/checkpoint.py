"""Checkpoints: a model's graph, params, state, step/epoch, fit's place and the optimizer's state
in one ``.npz``.

Arrays leave the device through the model's runtime (``to_numpy``) and come back through it; a
save is atomic (a temporary file in the same folder, then a rename). Reading checks everything
before anything is written: a damaged file (truncated, a flipped bit, empty, missing or mistyped
metadata, arrays of strings) is a :class:`CheckpointError` naming the file and what is wrong,
never a traceback from zipfile, NumPy or json, and the model is left as it was.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import warnings

import numpy as np

from . import optim as optim_mod
from .errors import CheckpointError
from .fileio import NpzError, NpzTooLarge, atomic_write, read_npz
from .optim.flatstep import COUNTER
from .ir import IRError
from .version import __version__

FORMAT = "bngraph-checkpoint-1"


def json_default(o):
    """NumPy scalars (a seed or an lr given as np.int64/np.float32) as plain JSON numbers."""
    if isinstance(o, (np.generic, np.ndarray)) and np.ndim(o) == 0:
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def meta(model) -> dict:
    opt = model.optimizer
    return {
        "format": FORMAT, "version": __version__, "graph": str(model.source_graph),
        "dtype": model.dtype.name, "target": model.target, "seed": model.seed, "passes": model.passes,
        "step": model.step, "epoch": model.epoch, "fit": model.fit_state,
        "optimizer": None if opt is None else {"type": type(opt).__name__},
        **({"cli": model.cli_run} if getattr(model, "cli_run", None) is not None else {}),
        **({"history": {"epochs": list(model.history), "stop_reason": model.history.stop_reason}}
           if getattr(model, "history", None) else {}),  # every epoch of fit: bg.report's training curves
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
    kept = getattr(model, "kept_best", None)  # bngraph train --keep-best: the best epoch's (params, state)
    if kept is not None:
        arrays.update({f"best/param/{k}": np.asarray(v) for k, v in kept[0].items()})
        arrays.update({f"best/state/{k}": np.asarray(v) for k, v in kept[1].items()})
    m = meta(model)
    if model.optimizer is not None and hasattr(model.optimizer, "state_dict"):
        with rt.queue():  # any copy it makes on the model's stream
            sd = model.optimizer.state_dict()
        m["optimizer"] = {k: v for k, v in sd.items() if k != "slots"}
        for p, slots in sd.get("slots", {}).items():
            for s, a in slots.items():
                arrays[f"optim/{p}/{s}"] = rt.to_numpy(a)
    arrays["meta"] = np.array(json.dumps(m, default=json_default))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


# ---- reading: everything checked, one clear line per problem ---------------------------------


def read(path):
    """``(meta, arrays)`` of a checkpoint file, or a CheckpointError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        arrays = read_npz(path)
    except NpzTooLarge as e:  # a zip bomb, or a checkpoint larger than the memory available
        raise CheckpointError(f"{path}: {e}") from None
    except NpzError as e:
        raise CheckpointError(f"{path}: not a bngraph checkpoint: {e}") from None
    raw = arrays.pop("meta", None)
    if raw is None:
        raise CheckpointError(f"{path}: not a bngraph checkpoint (no metadata; its arrays are "
                              f"{', '.join(sorted(arrays)) or 'none'})")
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise CheckpointError(f"{path}: damaged checkpoint: the metadata is a {raw.dtype} array of shape "
                              f"{raw.shape}, not text")
    try:
        m = json.loads(str(raw[()]))
    except ValueError as e:
        raise CheckpointError(f"{path}: damaged checkpoint: the metadata is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise CheckpointError(f"{path}: damaged checkpoint: the metadata is a {type(m).__name__}, not an object")
    if m.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bngraph checkpoint (format {m.get('format')!r})")
    _check_meta(path, m)
    _check_arrays(path, arrays)
    return m, arrays


def _is_int(v, minimum=0) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum


_META = {  # key -> (check, what it must be)
    "graph": (lambda v: isinstance(v, str), "the graph as IR text"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
    "target": (lambda v: isinstance(v, str), "a target name"),
    "seed": (_is_int, "a non-negative integer"),
    "passes": (lambda v: v is None or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
               "null or a list of pass names"),
    "step": (_is_int, "a non-negative integer"),
    "epoch": (_is_int, "a non-negative integer"),
    "optimizer": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("type"), str)
                                          and isinstance(v.get("hyper", {}), dict)), "null or an optimizer's state"),
}


def _check_meta(path, m):
    for key, (ok, what) in _META.items():
        if key not in m:
            raise CheckpointError(f"{path}: damaged checkpoint: the metadata has no {key!r}")
        if not ok(m[key]):
            raise CheckpointError(f"{path}: damaged checkpoint: metadata {key!r} is {m[key]!r}, expected {what}")
    problem = _fit_state_problem(m.get("fit"))
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint: metadata 'fit' {problem}")
    problem = _cli_run_problem(m.get("cli"))
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint: metadata 'cli' {problem}")
    h = m.get("history")
    if h is not None and not (isinstance(h, dict) and isinstance(h.get("epochs"), list)
                              and all(isinstance(r, dict) for r in h["epochs"])
                              and (h.get("stop_reason") is None or isinstance(h["stop_reason"], str))):
        raise CheckpointError(f"{path}: damaged checkpoint: metadata 'history' is {h!r:.80}, expected "
                              f"{{'epochs': [one dict per epoch], 'stop_reason': null or a sentence}}")


# ---- the command line's record of a run (bngraph train; restored by --resume) -----------------

_CLI_RUN = {  # key -> check; every key optional
    "dataset": lambda v: isinstance(v, str),
    "dataset_sha256": lambda v: isinstance(v, str) and len(v) == 64,
    "val_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
    "optimizer": lambda v: v in optim_mod.NAMES,
    "epochs": lambda v: _is_int(v, 1),
    "schedule": lambda v: isinstance(v, str),
    "early_stop": lambda v: _is_int(v, 0),
    "keep_best": lambda v: isinstance(v, bool),
    "early_stop_state": lambda v: isinstance(v, dict) and _is_int(v.get("wait", 0)) and (
        v.get("best_epoch") is None or _is_int(v["best_epoch"], 1) and isinstance(v.get("best"), (int, float))),
}


def _cli_run_problem(r) -> str | None:
    """What is wrong with a recorded ``cli`` entry (None: nothing, or no entry)."""
    if r is None:
        return None
    if not isinstance(r, dict):
        return f"is {r!r}, expected an object"
    for key, ok in _CLI_RUN.items():
        if key in r and not ok(r[key]):
            return f"has {key} {r[key]!r}"
    return None


def _fit_state_problem(f) -> str | None:
    """What is wrong with a recorded ``fit_state`` (None: nothing)."""
    if f is None:
        return None
    if not isinstance(f, dict):
        return f"is {f!r}, expected an object"
    for key, ok in (("seed", _is_int), ("batch_size", lambda v: _is_int(v, 1)), ("n", lambda v: _is_int(v, 1)),
                    ("shuffle", lambda v: isinstance(v, bool))):
        if not ok(f.get(key)):
            return f"has {key} {f.get(key)!r}"
    p = f.get("position")
    if p is not None:
        if not (isinstance(p, dict) and _is_int(p.get("epoch"), 1) and _is_int(p.get("done"))
                and isinstance(p.get("losses"), list) and len(p["losses"]) == p["done"]
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p["losses"])):
            return f"has position {p!r}"
    return None


def _check_arrays(path, arrays):
    for k, a in arrays.items():
        kind = k.split("/", 1)[0]
        if kind not in ("param", "state", "optim", "best") or "/" not in k:  # best: bngraph train --keep-best
            raise CheckpointError(f"{path}: damaged checkpoint: unexpected array {k!r}")
        allowed = "fiu" if kind != "optim" else "fiub"
        if a.dtype.kind not in allowed:
            raise CheckpointError(f"{path}: damaged checkpoint: {k} holds {a.dtype} values, expected numbers")


# ---- restoring -------------------------------------------------------------------------------


def load_into(model, path, optimizer=None):
    """``Model.load_checkpoint``: restore a checkpoint of *this* graph into ``model``."""
    m, arrays = read(path)
    if m["graph"] != str(model.source_graph):
        raise CheckpointError(f"{path}: the checkpoint is of a different graph:\n"
                              f"{first_difference(m['graph'], str(model.source_graph))}")
    restore(model, m, arrays, optimizer, path)
    return model


def rebuild(path, build, optimizer=None, device=None):
    """``bg.load``: a model rebuilt from a checkpoint by ``build`` (the Model class, or anything
    called like it: ``build(graph, target=, dtype=, seed=, passes=, device=)``; passed in, so that
    this module never imports the model), with params, state, step, epoch, fit's place and
    optimizer state restored (see :func:`restore`)."""
    from .parser import parse

    m, arrays = read(path)
    try:
        graph = parse(m["graph"])
    except IRError as e:
        raise CheckpointError(f"{path}: damaged checkpoint: its graph does not parse ({e})") from None
    try:
        model = build(graph, target=m["target"], dtype=m["dtype"], seed=m["seed"], passes=m["passes"], device=device)
    except (IRError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model: {e}") from None
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
    try:
        write = model.stage(params, state)  # checked like set_params and set_state, nothing written yet
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise CheckpointError(f"{path}: {re.sub('set_(params|state): ', '', msg, count=1)}") from None
    _check_fit_position(path, m.get("fit"), model)
    _check_optimizer_state(path, m, arrays, model, optimizer)
    with model.runtime.queue():  # the optimizer's slots are copied in on the model's stream
        optimizer = _restore_optimizer(m, arrays, optimizer, path)
        write()
    model.step, model.epoch = int(m["step"]), int(m["epoch"])
    model.fit_state = m.get("fit")
    model.cli_run = m.get("cli")  # the command line's settings of the run, if it made it
    model.history = _history(m.get("history"))
    model.optimizer = optimizer


def _history(h):
    """The epochs a checkpoint recorded, as a ``History`` (empty when it recorded none)."""
    from .training import History

    out = History((h or {}).get("epochs", []))
    out.stop_reason = (h or {}).get("stop_reason")
    return out


def _check_fit_position(path, f, model):
    """fit's recorded place must lie inside its epoch: ``done`` beyond the epoch's steps would end
    the epoch at once (an epoch skipped)."""
    p = (f or {}).get("position")
    if not p:
        return
    from .training import batch_bounds

    steps = len(batch_bounds(f["n"], f["batch_size"], merge_single=model.inputs.batch_statistics))
    if p["done"] > steps:
        raise CheckpointError(f"{path}: damaged checkpoint: metadata 'fit' position has done {p['done']}, but an "
                              f"epoch of {f['n']} examples in batches of {f['batch_size']} has {steps} steps; "
                              f"expected 0 <= done <= {steps}")


def _check_optimizer_state(path, m, arrays, model, optimizer):
    """The optimizer's state, checked like params and state before anything is written: every
    ``optim/<param>/<slot>`` of a param of this model, each slot the optimizer keeps there present
    (a missing one fails the first step halfway), of the param's shape (a step counter: a 0-d
    non-negative integer), floating point and finite in the model's dtype; the step count a
    non-negative integer; the groups each owning some param. An optimizer that is not an
    :class:`~bngraph.optim.Optimizer` (only the protocol) gets its arrays checked for NaN/inf."""
    om = m.get("optimizer")
    entries: dict = {}
    for k in sorted(arrays):
        if k.startswith("optim/"):
            p, _, s = k[6:].rpartition("/")
            entries.setdefault(p, {})[s] = k
    if om is None or "hyper" not in om:  # (no "hyper": a protocol-only optimizer's own state dict, not loaded)
        if om is None and entries:
            k = next(iter(next(iter(entries.values())).values()))
            raise CheckpointError(f"{path}: damaged checkpoint: {k} is optimizer state, but the metadata records "
                                  f"no optimizer state")
        return
    if optimizer is None:
        cls = optim_mod.TYPES.get(om.get("type"))
        probe = None if cls is None else cls()
        if probe is None:
            return  # an unknown type: rebuilding it says so
    elif isinstance(optimizer, optim_mod.Optimizer):
        if type(optimizer).__name__ != om.get("type"):
            return  # another optimizer's state: loading it says so
        probe = optimizer  # only its pure methods are used: nothing of it changes
    else:
        probe = None
    dtype = np.dtype(model.dtype)
    shapes = {k: tuple(v.shape) for k, v in model.params.items()}
    if probe is None:  # a protocol-only optimizer: its slots are its own business, but finite
        for slots in entries.values():
            for k in slots.values():
                _check_finite(path, k, arrays[k], dtype)
        return
    if not _is_int(om.get("step")):
        raise CheckpointError(f"{path}: damaged checkpoint: metadata 'optimizer' step is {om.get('step')!r}, "
                              f"expected a non-negative integer")
    try:
        hyper = om["hyper"]
        plan = probe.slot_plan(list(shapes), hyper if isinstance(hyper, dict) else {}, om.get("groups") or [])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot restore the optimizer: {e}") from None
    keeps, lazy, reserved = plan.keeps, plan.lazy, plan.reserved  # lazy: made by the next step when missing
    kind, fused = om.get("type"), probe.fused
    for p, slots in entries.items():
        first = next(iter(slots.values()))
        if p not in shapes:
            raise CheckpointError(f"{path}: damaged checkpoint: {first} is the state of {p!r}, which is not a "
                                  f"parameter of this model (its parameters are {', '.join(shapes)})")
        missing = [s for s in keeps[p] if s not in slots and s not in lazy[p]]
        if missing:  # (a lazy slot, e.g. after amsgrad was turned on, appears at the next step)
            raise CheckpointError(f"{path}: damaged checkpoint: optim/{p}/{missing[0]} is missing: {kind} keeps "
                                  f"{', '.join(keeps[p])} for each parameter it has updated, and {p} has "
                                  f"{', '.join(slots)}")
        for s, k in slots.items():
            a = arrays[k]
            if s == COUNTER and s in reserved:
                if a.shape != ():
                    raise CheckpointError(f"{path}: damaged checkpoint: {k} expected shape (), got {a.shape} "
                                          f"(a step counter)")
                v = a.item()
                if a.dtype.kind not in "iu" or not 0 <= v < 2**63:
                    got = f"{v!r} ({a.dtype})" if a.dtype.kind not in "iu" else f"{v!r}"
                    raise CheckpointError(f"{path}: damaged checkpoint: {k} is {got}, expected a non-negative "
                                          f"integer (a step counter)")
                continue
            if s in reserved:
                if a.shape != shapes[p]:
                    raise CheckpointError(f"{path}: damaged checkpoint: {k} expected shape {shapes[p]} (that of "
                                          f"{p}), got {a.shape}")
                if a.dtype.kind != "f":
                    raise CheckpointError(f"{path}: damaged checkpoint: {k} holds {a.dtype} values, expected "
                                          f"floating-point numbers")
            elif fused and a.shape not in ((), shapes[p]):  # the flat buffers hold it (else: its own business)
                raise CheckpointError(f"{path}: damaged checkpoint: {k} expected shape () or {shapes[p]} (that of "
                                      f"{p}), got {a.shape}")
            _check_finite(path, k, a, dtype)
    for g in range(len(plan.hyper)):  # a model's step updates every param: each slot in all of a group, or none
        names = [n for n in shapes if plan.owner[n] == g and keeps[n]]
        for key in keeps[names[0]] if names else ():
            have = [n for n in names if key in entries.get(n, {})]
            if have and len(have) < len(names):
                n = next(n for n in names if key not in entries.get(n, {}))
                raise CheckpointError(f"{path}: damaged checkpoint: optim/{n}/{key} is missing: {kind} keeps "
                                      f"{key} for each parameter of a group alike, and {have[0]} has it")


def _check_finite(path, k, a, dtype):
    if a.dtype.kind != "f":
        return
    with np.errstate(over="ignore", invalid="ignore"):
        c = a.astype(dtype) if a.dtype.itemsize > dtype.itemsize else a
    ok = np.isfinite(c)
    if not ok.all():
        if np.isfinite(a).all():
            big = a.reshape(-1)[np.argmax(~ok.reshape(-1))].item()
            raise CheckpointError(f"{path}: damaged checkpoint: {k} holds {big!r}, which overflows {dtype.name} "
                                  f"(the model's dtype)")
        raise CheckpointError(f"{path}: damaged checkpoint: {k} contains NaN or inf")


def _restore_optimizer(m, arrays, optimizer, path):
    om = m.get("optimizer")
    if om is None or "hyper" not in om:
        return optimizer
    sd = dict(om)
    slots: dict = {}
    for k, v in arrays.items():
        if k.startswith("optim/"):
            p, _, s = k[6:].rpartition("/")
            slots.setdefault(p, {})[s] = v
    sd["slots"] = slots
    before = _hyper(optimizer)
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
    after = _hyper(optimizer)
    changed = [f"{k} {before[k]!r} -> {after[k]!r}" for k in before if k in after and before[k] != after[k]]
    if changed:
        warnings.warn(f"{path}: the given {type(optimizer).__name__}'s hyperparameters were replaced by the "
                      f"checkpoint's ({', '.join(changed)}), so that training resumes exactly; set them after "
                      f"loading to change them (e.g. model.optimizer.lr = ...)", stacklevel=4)
    return optimizer


def _hyper(optimizer) -> dict:
    """An optimizer's hyperparameters (``hyper``), or its ``lr`` for a protocol object."""
    if optimizer is None:
        return {}
    hyper = getattr(optimizer, "hyper", None)
    if isinstance(hyper, dict):
        return dict(hyper)
    return {"lr": optimizer.lr} if hasattr(optimizer, "lr") else {}


def first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), start=1):
        if x != y:
            return f"  line {i} in the checkpoint: {x.strip()}\n  line {i} in this model:     {y.strip()}"
    return "  (one graph is longer than the other)"
