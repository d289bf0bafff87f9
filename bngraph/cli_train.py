"""``bngraph train``: training from the command line, resumable.

Everything that can be refused is refused before the first step, with one line and exit code 2:
the destinations (``--save``, ``--json``), the checkpoint to resume, the data (as the model's dtype
will see it), the model's feature count and classes against the data (before compiling, so no
model is allocated for nothing) and the model's size against this machine's memory. Then:

* each epoch's validation figures come from ``--val-fraction`` of the training data (stratified,
  seeded); the test split is evaluated once, at the end;
* ``--save PATH`` writes a checkpoint after every epoch (atomically) and, on Ctrl-C, at the step
  where training stopped, then exits 130;
* ``--resume PATH`` continues that run, mid-epoch too: model, optimizer, seed, batch size, dtype
  and target come from the checkpoint, and ``--epochs`` counts all epochs, those done included;
* a divergence is one line and exit code 2; the last epoch's checkpoint is kept.
"""
from __future__ import annotations

import json
import os
import sys

from . import checkpoint, optim, training
from .cli import DEFAULT_LR, CLIError, _write_text, default_model, load_model_spec
from .datasets import load_dataset, stratified_split
from .fileio import check_writable

EXIT_INTERRUPTED = 130


def train(args) -> int:
    for flag, path in (("--save", args.save), ("--json", args.json)):
        if path:
            check_writable(path, flag)  # before hours of training, not after
    resumed = checkpoint.read(args.resume) if args.resume else None  # (meta, arrays)
    cfg = _settings(args, resumed[0] if resumed else None)
    ds = load_dataset(args.dataset, seed=cfg["seed"], dtype=cfg["dtype"])
    X_train, y_train, val = _validation_split(ds, args.val_fraction, cfg["seed"])
    graph = _graph(args, resumed[0] if resumed else None, ds, cfg["dtype"])
    _check_against_data(graph, ds)
    device = _device(args.device)
    if resumed:
        model = checkpoint.load(args.resume, device=device)
    else:
        from .model import compile as bg_compile

        model = bg_compile(graph, target=cfg["target"], dtype=cfg["dtype"], seed=cfg["seed"], device=device,
                           cuda_graph=args.cuda_graph)
    opt = model.optimizer
    if opt is None:
        opt = optim.make(cfg["optimizer"], lr=args.lr if args.lr is not None else DEFAULT_LR[cfg["optimizer"]])
    elif args.lr is not None:
        opt.lr = args.lr  # an explicit --lr wins over the checkpoint's
    for split, X, y in (("training", X_train, y_train), ("validation", *(val or (None, None))),
                        ("test", ds.X_test, ds.y_test)):
        if X is not None and len(X):  # every split, before the first step: not a failure after training
            where = f"dataset {ds.name}, {split} split"
            model._check_y(y, len(model._check_x(X, where)), where)
    todo = max(0, args.epochs - model.epoch)
    report = {"model": graph.name, "dataset": ds.name, "optimizer": cfg["optimizer"], "lr": opt.lr,
              "epochs": args.epochs, "batch_size": cfg["batch_size"], "seed": cfg["seed"], "target": cfg["target"],
              "val_fraction": args.val_fraction, "resumed_from": args.resume,
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


def _settings(args, meta) -> dict:
    """seed, batch size, dtype, target and optimizer: given, else the checkpoint's, else defaults.
    Resuming, a seed, dtype, target or optimizer that differs from the checkpoint's is refused
    (the data split, the model or its state would not be the run's); another batch size is fine."""
    recorded = {}
    if meta is not None:
        fit = meta.get("fit") or {}
        recorded = {"seed": fit.get("seed", meta["seed"]), "batch_size": fit.get("batch_size"),
                    "dtype": meta["dtype"], "target": meta["target"],
                    "optimizer": (meta.get("optimizer") or {}).get("type")}
    cfg = {}
    for key, given, default in (("seed", args.seed, 0), ("batch_size", args.batch_size, 64),
                                ("dtype", args.dtype, "float32"), ("target", args.target, "numpy")):
        have = recorded.get(key)
        if given is not None and have is not None and given != have and key != "batch_size":
            raise CLIError(f"--{key} {given} differs from the checkpoint {args.resume}'s {have}: "
                           f"{'the data split and the shuffling depend on it' if key == 'seed' else 'it is the model'}"
                           f"; leave --{key} out to resume")
        cfg[key] = given if given is not None else have if have is not None else default
    name = args.optimizer
    have = recorded.get("optimizer")
    if name is not None and have is not None and type(optim.make(name)).__name__ != have:
        raise CLIError(f"--optimizer {name} differs from the checkpoint {args.resume}'s {have}; leave it out to resume")
    cfg["optimizer"] = name or (have.lower() if have and have.lower() in DEFAULT_LR else "adam")
    return cfg


def _validation_split(ds, fraction, seed):
    """(X_train, y_train, (X_val, y_val) or None): a stratified, seeded share of the training data."""
    if fraction == 0:
        return ds.X_train, ds.y_train, None
    train_idx, val_idx = stratified_split(ds.y_train, fraction, seed)
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
        return f"bngraph: training {graph.name} on {ds.name} ({counts}), {opt}, {args.epochs} epochs, {tail}"
    pos = (model.fit_state or {}).get("position")
    at = (f"in epoch {pos['epoch']} after step {pos['done']}" if pos else f"after epoch {model.epoch}")
    todo_text = f"epochs {model.epoch + 1} to {args.epochs}" if todo else f"nothing left of {args.epochs} epochs"
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
        _write_text(args.json, json.dumps(report, indent=2, default=checkpoint._json_default) + "\n")


def _device(text):
    """--device: a GPU index, a name ('emulator'), or None."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text
