"""``bngraph train``: training from the command line, resumable.

Everything that can be refused is refused before the first step, with one line and exit code 2:
the destinations (``--save``, ``--json``), the checkpoint to resume, the data (as the model's dtype
will see it), the model's feature count and classes against the data (before compiling, so no
model is allocated for nothing) and the model's size against this machine's memory. Then:

* each epoch's validation figures come from ``--val-fraction`` of the training data (stratified,
  seeded); the test split is evaluated once, at the end;
* ``--save PATH`` writes a checkpoint after every epoch (atomically) and, on Ctrl-C, at the step
  where training stopped, then exits 130;
* ``--resume PATH`` continues that run, mid-epoch too, with every setting that shapes it from the
  checkpoint (model, data set, validation share, optimizer, lr, seed, batch size, dtype, target,
  epochs: ``model.cli_run`` records those no other part of a checkpoint holds); a flag that
  contradicts the run is refused, and ``--epochs`` counts all epochs, those done included;
* no output may be an input or another output (``--save`` at the ``--resume`` file excepted);
* a divergence is one line and exit code 2; the last epoch's checkpoint is kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from . import checkpoint, optim, training
from .cliutil import (DEFAULT_LR, OPTIMIZERS, CLIError, default_model, load_model_spec, model_path,
                      refuse_same_files, write_text)
from .datasets import load_dataset, stratified_split
from .fileio import check_writable

EXIT_INTERRUPTED = 130


def train(args) -> int:
    for flag, path in (("--save", args.save), ("--json", args.json)):
        if path:
            check_writable(path, flag)  # before hours of training, not after
    resumed = checkpoint.read(args.resume) if args.resume else None  # (meta, arrays)
    cfg = _settings(args, resumed[0] if resumed else None)
    dataset_path = None if cfg["dataset"] == "digits" else cfg["dataset"]
    refuse_same_files([("MODEL", model_path(args.model)), ("--resume", args.resume), ("--dataset", dataset_path),
                       ("--save", args.save), ("--json", args.json)], allowed=[("--save", "--resume")])
    ds = load_dataset(cfg["dataset"], seed=cfg["seed"], dtype=cfg["dtype"])
    fingerprint = data_fingerprint(ds)
    recorded = _recorded_run(resumed[0]) if resumed else {}
    if recorded.get("dataset_sha256") not in (None, fingerprint):
        if args.dataset is None:
            raise CLIError(f"the data set {cfg['dataset']} of the run saved in {args.resume} has changed since (its "
                           f"arrays are not those it was trained on); give the run's data with --dataset")
        raise CLIError(f"--dataset {args.dataset} is not the data of the run saved in {args.resume} (that was "
                       f"{recorded.get('dataset')}, whose arrays differ from these); give its data, or leave "
                       f"--dataset out to resume")
    X_train, y_train, val = _validation_split(ds, cfg["val_fraction"], cfg["seed"])
    graph = _graph(args, resumed[0] if resumed else None, ds, cfg["dtype"])
    _check_against_data(graph, ds)
    device = _device(args.device)
    if resumed:
        from .model import load as bg_load

        model = bg_load(args.resume, device=device)
    else:
        from .model import compile as bg_compile

        model = bg_compile(graph, target=cfg["target"], dtype=cfg["dtype"], seed=cfg["seed"], device=device,
                           cuda_graph=args.cuda_graph)
    opt = model.optimizer
    if opt is None:
        opt = optim.make(cfg["optimizer"], lr=args.lr if args.lr is not None else DEFAULT_LR[cfg["optimizer"]])
    elif args.lr is not None:
        opt.lr = args.lr  # an explicit --lr wins over the checkpoint's
    # what shapes the run and no other record holds (the optimizer, seed, batch size, dtype and
    # target are in the checkpoint already): saved with every checkpoint, restored by --resume
    model.cli_run = {"dataset": dataset_path and os.path.abspath(dataset_path) or "digits",
                     "dataset_sha256": fingerprint, "val_fraction": cfg["val_fraction"],
                     "optimizer": cfg["optimizer"], "epochs": cfg["epochs"]}
    for split, X, y in (("training", X_train, y_train), ("validation", *(val or (None, None))),
                        ("test", ds.X_test, ds.y_test)):
        if X is not None and len(X):  # every split, before the first step: not a failure after training
            where = f"dataset {ds.name}, {split} split"
            model.inputs.check_y(y, len(model.inputs.check_x(X, where)), where)
    todo = max(0, cfg["epochs"] - model.epoch)
    report = {"model": graph.name, "dataset": ds.name, "optimizer": cfg["optimizer"], "lr": opt.lr,
              "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "seed": cfg["seed"], "target": cfg["target"],
              "dtype": cfg["dtype"], "val_fraction": cfg["val_fraction"], "resumed_from": args.resume,
              "examples": {"train": len(X_train), "validation": 0 if val is None else len(val[0]),
                           "test": len(ds.X_test)}}
    if not args.quiet:
        print(_header(args, model, graph, ds, report, todo), file=sys.stderr)
    try:
        hist = training.fit(model, X_train, y_train, optimizer=opt, epochs=todo, batch_size=cfg["batch_size"],
                            seed=cfg["seed"], validation_data=val, verbose=not args.quiet, checkpoint=args.save,
                            announce_stop=False)
    except training.StepBoundaryInterrupt as e:
        return _interrupted(args, model, report, getattr(e, "history", []))
    except OSError as e:  # a checkpoint that could not be written: the report still says how far it got
        report.update(history=list(getattr(e, "history", [])), stop_reason=f"stopped: {e}", test={})
        _write_report(args, report)
        raise
    report.update(history=list(hist), stop_reason=hist.stop_reason, test={})
    if hist.stop_reason:
        _write_report(args, report)
        kept = f"; {args.save} keeps the last good epoch" if args.save and os.path.exists(args.save) else ""
        raise CLIError(f"training diverged: {hist.stop_reason}{kept}")
    final = model.evaluate(ds.X_test, ds.y_test)
    report["test"] = final
    _write_report(args, report)
    acc = final.get("accuracy")
    print(f"test loss {final['loss']:.4f}" + (f"  test accuracy {acc:.4f}" if acc is not None else ""))
    return 0


DEFAULTS = {"seed": 0, "batch_size": 64, "dtype": "float32", "target": "numpy", "dataset": "digits",
            "val_fraction": 0.1, "epochs": 15, "optimizer": "adam"}
# resuming, these may differ from the run's (said in the header and the report): the rest is refused
MAY_CHANGE = ("batch_size", "epochs")
WHY = {"seed": "the data split and the shuffling depend on it", "dtype": "it is the model",
       "target": "it is the model", "optimizer": "its state is the run's",
       "val_fraction": "the validation rows would leak into training, or training rows be lost"}


def data_fingerprint(ds) -> str:
    """SHA-256 of a data set's splits (shapes, dtypes and bytes): the data a run was trained on."""
    h = hashlib.sha256()
    for a in (ds.X_train, ds.y_train, ds.X_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _recorded_run(meta) -> dict:
    return meta.get("cli") or {}


def optimizer_name(om, path) -> str | None:
    """The command line's name of a checkpoint's optimizer (its metadata ``om``); None: none saved.
    One the command line cannot rebuild (a protocol object, a class of one's own) is a CLIError."""
    if om is None:
        return None
    kind = om.get("type")
    if "hyper" not in om or kind not in optim.TYPES:
        raise CLIError(f"{path} was trained with the optimizer {kind}, which the command line cannot rebuild "
                       f"(it knows {', '.join(OPTIMIZERS)}); resume it from Python: "
                       f"bg.load({path!r}, optimizer=<a {kind}>), then model.fit(...)")
    if kind == "SGD":
        return "momentum" if (om.get("hyper") or {}).get("momentum") else "sgd"
    return kind.lower()


def _settings(args, meta) -> dict:
    """Every setting that shapes the run: given, else the checkpoint's, else the default. Resuming,
    a given value that differs from the checkpoint's is refused (one line), but for the batch size,
    the lr and the number of epochs, which may change."""
    recorded = {}
    if meta is not None:
        fit = meta.get("fit") or {}
        run = _recorded_run(meta)
        recorded = {"seed": fit.get("seed", meta["seed"]), "batch_size": fit.get("batch_size"),
                    "dtype": meta["dtype"], "target": meta["target"], "dataset": run.get("dataset"),
                    "val_fraction": run.get("val_fraction"), "epochs": run.get("epochs"),
                    "optimizer": optimizer_name(meta.get("optimizer"), args.resume)}
        if run.get("optimizer") and recorded["optimizer"] is None:
            recorded["optimizer"] = run["optimizer"]
    cfg = {}
    for key, default in DEFAULTS.items():
        given, have = getattr(args, key), recorded.get(key)
        if key == "dataset":  # another path to the same data is fine: checked against the data's fingerprint
            cfg[key] = given if given is not None else have if have is not None else default
            continue
        if given is not None and have is not None and given != have and key not in MAY_CHANGE:
            raise CLIError(f"--{key.replace('_', '-')} {given} differs from the checkpoint {args.resume}'s {have}: "
                           f"{WHY[key]}; leave --{key.replace('_', '-')} out to resume")
        cfg[key] = given if given is not None else have if have is not None else default
    return cfg


def _validation_split(ds, fraction, seed):
    """(X_train, y_train, (X_val, y_val) or None): a stratified, seeded share of the training data."""
    if fraction == 0:
        return ds.X_train, ds.y_train, None
    train_idx, val_idx = stratified_split(ds.y_train, fraction, seed)
    if len(train_idx) < 2:  # batch norm, and any training, needs two examples
        n = len(train_idx)
        raise CLIError(f"--val-fraction {fraction:g} leaves {n} training example{'' if n == 1 else 's'} of the "
                       f"{len(ds.y_train)} in the training split ({len(val_idx)} held out for validation); training "
                       f"needs at least 2: use a smaller --val-fraction")
    if len(val_idx) == 0:
        largest = int(max(ds.y_train.tolist().count(c) for c in set(ds.y_train.tolist())))
        raise CLIError(f"--val-fraction {fraction:g} leaves no validation examples: the largest class of the training "
                       f"split has {largest} examples; use --val-fraction 0 (no validation) or more data")
    return ds.X_train[train_idx], ds.y_train[train_idx], (ds.X_train[val_idx], ds.y_train[val_idx])


def _graph(args, meta, ds, dtype):
    if meta is None:
        return load_model_spec(args.model) if args.model else default_model(ds.num_features, ds.num_classes)
    from .compiler import cast_graph
    from .parser import parse

    try:
        graph = parse(meta["graph"])
    except ValueError as e:
        raise CLIError(f"{args.resume}: damaged checkpoint: its graph does not parse ({e})") from None
    if args.model:
        given = str(cast_graph(load_model_spec(args.model), dtype))
        if given != meta["graph"]:
            diff = checkpoint.first_difference(meta["graph"], given).strip().splitlines()[0].strip()
            raise CLIError(f"{args.model} is not the model saved in {args.resume} ({diff}); leave MODEL out to resume")
    return graph


def _check_against_data(graph, ds):
    """The model's feature count and classes against the data, before anything is compiled."""
    if not graph.has_output("loss") or graph.loss_node is None:
        return  # compiling says what is missing
    labels = graph.loss_node.inputs[1]
    features = [v for v in graph.inputs if v.name != labels]
    if len(features) == 1 and features[0].type.shape[0] != ds.num_features:
        raise CLIError(f"the model's input takes {features[0].type.shape[0]} features but dataset {ds.name} has "
                       f"{ds.num_features}")
    target = next((v for v in graph.inputs if v.name == labels), None)
    if target is not None and target.classes is not None and target.classes < ds.num_classes:
        raise CLIError(f"the model has {target.classes} classes but dataset {ds.name} has labels up to "
                       f"{ds.num_classes - 1}")


def _header(args, model, graph, ds, report, todo) -> str:
    ex = report["examples"]
    counts = f"{ex['train']} train / {ex['validation']} validation / {ex['test']} test examples"
    opt = f"{report['optimizer']} lr={report['lr']:g}"
    tail = f"batch {report['batch_size']}, target {report['target']}"
    if not args.resume:
        return f"bngraph: training {graph.name} on {ds.name} ({counts}), {opt}, {report['epochs']} epochs, {tail}"
    pos = (model.fit_state or {}).get("position")
    at = (f"in epoch {pos['epoch']} after step {pos['done']}" if pos else f"after epoch {model.epoch}")
    total = report["epochs"]
    todo_text = f"epochs {model.epoch + 1} to {total}" if todo else f"nothing left of {total} epochs"
    return (f"bngraph: resuming {graph.name} from {args.resume} {at} (global step {model.step}) on {ds.name} "
            f"({counts}), {opt}, {todo_text}, {tail}")


def _interrupted(args, model, report, history) -> int:
    """Ctrl-C: fit stopped between two steps; save there (the checkpoint resumes mid-epoch)."""
    pos = (model.fit_state or {}).get("position")
    where = f"in epoch {pos['epoch']} after step {pos['done']}" if pos else f"after epoch {model.epoch}"
    if args.save:
        model.save(args.save)
        saved = f"; saved {args.save}: continue with --resume {args.save}"
    else:
        saved = "; nothing saved (no --save)"
    reason = f"interrupted {where} (global step {model.step}){saved}"
    report.update(history=list(history), stop_reason=reason, test={})
    _write_report(args, report)
    print(f"bngraph: {reason}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _write_report(args, report):
    if args.json:
        write_text(args.json, json.dumps(report, indent=2, default=checkpoint.json_default) + "\n")


def _device(text):
    """--device: a GPU index, a name ('emulator'), or None."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text
