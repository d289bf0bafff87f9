"""``bngraph train``: training from the command line, resumable.

Everything that can be refused is refused before the first step, with one line and exit code 2:
the destinations (``--save``, ``--json``, the ``--resume`` file written back), the checkpoint to
resume, MODEL (a model file, a checkpoint or an ONNX file: cliutil.load_model), the data (read as
the model's loss takes its targets, in the model's dtype), the model's feature count and outputs
against the data (before compiling, so no model is allocated for nothing) and the model's size
against this machine's memory. Then:

* each epoch's validation figures come from ``--val-fraction`` of the training data (stratified
  by class, seeded); the test split is evaluated once, at the end, with the metrics that fit the
  loss (bngraph/cli_report.py);
* ``--save PATH`` writes a checkpoint after every epoch (atomically) and, on Ctrl-C, at the step
  where training stopped, then exits 130; resuming, PATH defaults to the ``--resume`` file (the
  run is written back where it came from) unless ``--save OTHER`` or ``--no-save``;
* ``--resume PATH`` continues that run, mid-epoch too, with every setting that shapes it from the
  checkpoint (model, data set, validation share, optimizer, lr, seed, batch size, dtype, target,
  passes, epochs: ``model.cli_run`` records those no other part of a checkpoint holds); a flag that
  contradicts the run is refused, and ``--epochs`` counts all epochs, those done included; the
  recorded data set must be where it was, with the same arrays (its SHA-256);
* no output may be an input or another output (``--save`` at the ``--resume`` file excepted);
* a divergence is one line and exit code 2; the last epoch's checkpoint is kept;
* the last lines say what was written where (the checkpoint, the report); a run whose model is
  saved nowhere says so.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys

import numpy as np

from . import checkpoint, optim, training
from .cli_callbacks import ResumableEarlyStopping, kept_weights, monitor_of, schedule_of
from .cli_report import header, metrics_line, note, nothing_saved_note, print_written, write_report
from .cliutil import (DEFAULT_LR, OPTIMIZERS, CLIError, default_model, load_model, model_example_shape,
                      model_path, parse_passes, refuse_same_files, shaped_for)
from .datasets import load_dataset, shape_words, split_rows
from .fileio import check_writable

EXIT_INTERRUPTED = 130


def train(args) -> int:
    if getattr(args, "distributed", False):  # mpiexec -n N bngraph train --distributed (docs/distributed.md)
        from .distributed import init

        if not init().is_root:  # rank 0 alone prints, writes the report and the checkpoints
            args.quiet, args.json, args.save, args.no_save, args.other_rank = True, None, None, True, True
            args.html = None
    save = save_path(args)
    for flag, path in (("--save", args.save), ("--json", args.json), ("--html", args.html)):
        if path:
            check_writable(path, flag)  # before hours of training, not after
    if save and not args.save:
        try:
            check_writable(save, "--resume")
        except OSError as e:
            raise CLIError(f"{e}; resuming writes the run back to its checkpoint: give --save OTHER.npz, or "
                           f"--no-save") from None
    resumed = checkpoint.read(args.resume) if args.resume else None  # (meta, arrays)
    meta = resumed[0] if resumed else None
    src = load_model(args.model) if args.model else None
    cfg = _settings(args, meta, src)
    dataset_path = None if cfg["dataset"] == "digits" else cfg["dataset"]
    refuse_same_files([("MODEL", model_path(args.model)), ("--resume", args.resume), ("--dataset", dataset_path),
                       ("--save", save), ("--json", args.json), ("--html", args.html)],
                      allowed=[("--save", "--resume")])
    graph = _graph(args, meta, src, cfg["dtype"])  # None: the default model, sized by the data
    ds = _dataset(args, cfg, meta, graph)
    fingerprint = data_fingerprint(ds)
    recorded = _recorded_run(meta) if meta else {}
    if recorded.get("dataset_sha256") not in (None, fingerprint):
        if args.dataset is None:
            raise CLIError(f"the data set {cfg['dataset']} of the run saved in {args.resume} has changed since (its "
                           f"arrays are not those it was trained on); give the run's data with --dataset")
        raise CLIError(f"--dataset {args.dataset} is not the data of the run saved in {args.resume} (that was "
                       f"{recorded.get('dataset')}, whose arrays differ from these); give its data, or leave "
                       f"--dataset out to resume")
    if graph is None:
        graph = default_model(ds.num_features, ds.num_classes)
        ds = shaped_for(ds, graph)  # images as the flat rows the MLP takes
    _check_against_data(graph, ds, _mismatch_hint(args, meta, src, graph))
    X_train, y_train, val = _validation_split(ds, cfg["val_fraction"], cfg["seed"])
    monitor = monitor_of(val)
    schedule = schedule_of(cfg["schedule"], monitor)
    early = _early_stopping(cfg, monitor, recorded, resumed)
    device = _device(args.device)
    model = _model(args, src, graph, cfg, device)
    if early is not None and early.kept is not None:
        _check_kept(model, early.kept, args.resume)
        model.kept_best = early.kept
    opt = model.optimizer
    if opt is None:
        opt = optim.make(cfg["optimizer"], lr=args.lr if args.lr is not None else DEFAULT_LR[cfg["optimizer"]])
    elif args.lr is not None:
        opt.lr = args.lr  # an explicit --lr wins over the checkpoint's
    # what shapes the run and no other record holds (the optimizer, seed, batch size, dtype,
    # target and passes are in the checkpoint already): saved with every checkpoint, restored by --resume
    model.cli_run = {"dataset": dataset_path and os.path.abspath(dataset_path) or "digits",
                     "dataset_sha256": fingerprint, "val_fraction": cfg["val_fraction"],
                     "optimizer": cfg["optimizer"], "epochs": cfg["epochs"],
                     **{k: cfg[k] for k in ("schedule", "early_stop", "keep_best") if cfg[k] is not None},
                     **({"early_stop_state": recorded["early_stop_state"]} if "early_stop_state" in recorded else {})}
    for split, X, y in (("training", X_train, y_train), ("validation", *(val or (None, None))),
                        ("test", ds.X_test, ds.y_test)):
        if X is not None and len(X):  # every split, before the first step: not a failure after training
            where = f"dataset {ds.name}, {split} split"
            model.inputs.check_y(y, len(model.inputs.check_x(X, where)), where)
    todo = max(0, cfg["epochs"] - model.epoch)
    stopped = early is not None and early.stopped_before(cfg["early_stop"])
    if stopped:
        todo = 0  # the recorded run stopped early: a larger --early-stop goes on
    report = {"model": graph.name, "dataset": ds.name, "optimizer": cfg["optimizer"], "lr": opt.lr,
              "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "seed": cfg["seed"], "target": cfg["target"],
              "device": args.device, "dtype": cfg["dtype"], "passes": cfg["passes"], "loss": model.inputs.loss,
              "val_fraction": cfg["val_fraction"], "resumed_from": args.resume, "saved_to": save,
              "model_file": src.path if src is not None and src.kind != "python" and not args.resume else None,
              "schedule": cfg["schedule"], "early_stop": cfg["early_stop"], "keep_best": bool(cfg["keep_best"]),
              "examples": {"train": len(X_train), "validation": 0 if val is None else len(val[0]),
                           "test": len(ds.X_test)}}
    if not args.quiet:
        print(header(args, model, graph, ds, report, todo, save), file=sys.stderr)
    written = []
    try:
        hist = training.fit(model, X_train, y_train, optimizer=opt, epochs=todo, batch_size=cfg["batch_size"],
                            seed=cfg["seed"], validation_data=val, verbose=not args.quiet, checkpoint=save,
                            announce_stop=False, lr_schedule=schedule, callbacks=[early] if early and todo else None)
    except training.StepBoundaryInterrupt as e:
        return _interrupted(args, model, report, getattr(e, "history", []), save)
    except OSError as e:  # a checkpoint that could not be written: the report still says how far it got
        report.update(history=list(getattr(e, "history", [])), stop_reason=f"stopped: {e}", test={})
        write_report(args.json, report)
        if not args.json:
            raise
        raise CLIError(f"{e}; wrote report {args.json}") from e  # one line that says what was written
    report.update(history=list(hist), stop_reason=hist.stop_reason, test={})
    if hist.diverged:
        write_report(args.json, report)
        kept = f"; {save} keeps the last good epoch" if save and os.path.exists(save) else ""
        kept += f"; wrote report {args.json}" if args.json else ""
        raise CLIError(f"training diverged: {hist.stop_reason}{kept}")
    restored = early.restored_epoch if early is not None else None
    if early is not None:
        report.update(best_epoch=early.best_epoch, best=early.best, restored_epoch=restored)
    if restored is not None and save:
        model.save(save)  # the best epoch's weights, with the run's counters (Keras's restore_best_weights)
    final = model.evaluate(ds.X_test, ds.y_test)
    report["test"] = final
    if save and (len(hist) or restored is not None):  # fit saved it after the last epoch
        best = f"; the weights of epoch {restored}, the best {monitor}" if restored is not None else ""
        written.append(("saved checkpoint", save, f"epoch {model.epoch}, global step {model.step}{best}"))
    if args.json:
        written.append(("wrote report", args.json, None))
    write_report(args.json, report)
    if args.html:  # the HTML report of the trained model, its curves from this run's history
        from .htmlreport import report as html_report

        html_report(model, args.html, target=model.target)
        written.append(("wrote HTML report", args.html, None))
    if not getattr(args, "other_rank", False):  # data parallel: rank 0 alone prints
        print(metrics_line("test", final))
    print_written(written)
    if hist.stop_reason:
        note(f"bngraph: {hist.stop_reason}", args.quiet)  # early stopping
    if stopped:
        note(f"bngraph: nothing left to train: the run stopped early after {early.recorded['wait']} epochs without "
             f"a better {monitor} (best: epoch {early.recorded['best_epoch']}); a larger --early-stop trains on"
             f"{f'; {save} not rewritten' if save else ''}", args.quiet)
    elif not todo:
        note(f"bngraph: nothing left to train: {model.epoch} of {cfg['epochs']} epochs done (--epochs N trains on)"
             f"{f'; {save} not rewritten' if save else ''}", args.quiet)
    note(nothing_saved_note(args, save, bool(len(hist))), args.quiet)
    return 0


def save_path(args) -> str | None:
    """Where the run is saved: ``--save``, else (resuming) the ``--resume`` file, unless ``--no-save``."""
    if args.save:
        return args.save
    if args.resume and not args.no_save:
        return args.resume
    return None


DEFAULTS = {"seed": 0, "batch_size": 64, "dtype": "float32", "target": "numpy", "dataset": "digits",
            "val_fraction": 0.1, "epochs": 15, "optimizer": "adam", "passes": None, "schedule": None,
            "early_stop": None, "keep_best": None}
# resuming, these may differ from the run's (said in the header and the report): the rest is refused
MAY_CHANGE = ("batch_size", "epochs", "early_stop", "keep_best")
WHY = {"seed": "the data split and the shuffling depend on it", "dtype": "it is the model",
       "target": "it is the model", "optimizer": "its state is the run's", "passes": "they made the model",
       "schedule": "the run's learning rates follow it (a schedule may be added to a run that has none)",
       "val_fraction": "the validation rows would leak into training, or training rows be lost"}


def data_fingerprint(ds) -> str:
    """SHA-256 of a data set's splits (shapes, dtypes and bytes): the data a run was trained on.
    Examples count as flat rows, so that images and the flat rows they are read from (shaped_for)
    are the same data."""
    h = hashlib.sha256()
    for a in (ds.X_train, ds.y_train, ds.X_test, ds.y_test):
        a = np.ascontiguousarray(a.reshape(len(a), -1) if a.ndim > 2 else a)
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


def _settings(args, meta, src=None) -> dict:
    """Every setting that shapes the run: given, else the checkpoint's, else the default. Resuming,
    a given value that differs from the checkpoint's is refused (one line), but for the batch size,
    the lr and the number of epochs, which may change. A checkpoint as MODEL (a new run from its
    weights) fixes the passes (its params are those of the graph after them) and the dtype default."""
    recorded, where = {}, args.resume
    if meta is not None:
        fit = meta.get("fit") or {}
        run = _recorded_run(meta)
        recorded = {"seed": fit.get("seed", meta["seed"]), "batch_size": fit.get("batch_size"),
                    "dtype": meta["dtype"], "target": meta["target"], "dataset": run.get("dataset"),
                    "val_fraction": run.get("val_fraction"), "epochs": run.get("epochs"),
                    "optimizer": optimizer_name(meta.get("optimizer"), args.resume), "passes": meta["passes"],
                    **{k: run.get(k) for k in ("schedule", "early_stop", "keep_best")}}
        if run.get("optimizer") and recorded["optimizer"] is None:
            recorded["optimizer"] = run["optimizer"]
    elif src is not None and src.kind == "checkpoint":
        recorded, where = {"passes": src.passes}, src.path
    given_passes = parse_passes(getattr(args, "passes", None))
    cfg = {}
    for key, default in DEFAULTS.items():
        given, have = (given_passes if key == "passes" else getattr(args, key)), recorded.get(key)
        if key == "dataset":  # another path to the same data is fine: checked against the data's fingerprint
            cfg[key] = given if given is not None else have if have is not None else default
            continue
        if key == "passes" and (meta is not None or src is not None and src.kind == "checkpoint"):
            given, have = _pipeline(given), _pipeline(have)  # None there is the default pipeline
        if given is not None and have is not None and given != have and key not in MAY_CHANGE:
            flag = f"--{key.replace('_', '-')}"
            show = (lambda v: ",".join(v)) if key == "passes" else str
            raise CLIError(f"{flag} {show(given)} differs from the checkpoint {where}'s {show(have)}: {WHY[key]}; "
                           f"leave {flag} out to {'resume' if meta is not None else 'start from its weights'}")
        cfg[key] = given if given is not None else have if have is not None else default
    return cfg


def _early_stopping(cfg, monitor, recorded, resumed):
    """--early-stop PATIENCE [--keep-best], its count and best weights put back from a resumed run."""
    if cfg["early_stop"] is None:
        if cfg["keep_best"]:
            raise CLIError("--keep-best keeps the best epoch of a run with early stopping: add --early-stop PATIENCE")
        return None
    return ResumableEarlyStopping(monitor, cfg["early_stop"], bool(cfg["keep_best"]), recorded.get("early_stop_state"),
                                  kept_weights(resumed[1]) if resumed else None)


def _check_kept(model, kept, path):
    """A checkpoint's kept best weights fit the model (checked now, not when training ends)."""
    try:
        model.stage(*kept)
    except (KeyError, ValueError) as e:
        raise CLIError(f"{path}: damaged checkpoint: its best weights (--keep-best): "
                       f"{e.args[0] if e.args else e}") from None
    if set(kept[0]) != set(model.params) or set(kept[1]) != set(model.state):
        raise CLIError(f"{path}: damaged checkpoint: its best weights (--keep-best) are not the model's params and "
                       f"state")


def _pipeline(passes):
    """Pass names as a list; None (the default pipeline) as the default pipeline's names."""
    from .passes import TRAINING_PIPELINE

    return list(TRAINING_PIPELINE if passes is None else passes)


def _validation_split(ds, fraction, seed):
    """(X_train, y_train, (X_val, y_val) or None): a seeded share of the training data, stratified
    by class (binary targets: by their side of 0.5)."""
    if fraction == 0:
        return ds.X_train, ds.y_train, None
    train_idx, val_idx = split_rows(ds.y_train, fraction, seed, ds.targets)
    if len(train_idx) < 2:  # batch norm, and any training, needs two examples
        n = len(train_idx)
        raise CLIError(f"--val-fraction {fraction:g} leaves {n} training example{'' if n == 1 else 's'} of the "
                       f"{len(ds.y_train)} in the training split ({len(val_idx)} held out for validation); training "
                       f"needs at least 2: use a smaller --val-fraction")
    if len(val_idx) == 0:
        if ds.targets == "classes":
            largest = int(max(ds.y_train.tolist().count(c) for c in set(ds.y_train.tolist())))
            why = f"the largest class of the training split has {largest} examples"
        else:
            why = f"round({fraction:g} x {len(ds.y_train)} training examples) is 0"
        raise CLIError(f"--val-fraction {fraction:g} leaves no validation examples: {why}; use --val-fraction 0 (no "
                       f"validation) or more data")
    return ds.X_train[train_idx], ds.y_train[train_idx], (ds.X_train[val_idx], ds.y_train[val_idx])


def _graph(args, meta, src, dtype):
    """The model's graph: the resumed checkpoint's (MODEL, if given, must be that graph), MODEL's,
    or None (the default model, sized by the data)."""
    if meta is None:
        return src.graph if src is not None else None
    from .compiler import cast_graph
    from .parser import parse

    try:
        graph = parse(meta["graph"])
    except ValueError as e:
        raise CLIError(f"{args.resume}: damaged checkpoint: its graph does not parse ({e})") from None
    if src is not None:
        given = str(cast_graph(src.graph, dtype))
        if given != meta["graph"]:
            diff = checkpoint.first_difference(meta["graph"], given).strip().splitlines()[0].strip()
            raise CLIError(f"{args.model} is not the model saved in {args.resume} ({diff}); leave MODEL out to resume")
    return graph


def _dataset(args, cfg, meta, graph):
    """The data set, its targets read as the model's loss takes them (the default model: classes),
    its examples shaped as the model's input takes them where the sizes match (the digits' 64
    pixels as (1, 8, 8) images for a convolutional model: cliutil.shaped_for). Resuming without
    --dataset, the recorded file must still be there."""
    name = cfg["dataset"]
    if meta is not None and args.dataset is None and name != "digits" and not os.path.isfile(name):
        raise CLIError(f"the data set {name} of the run saved in {args.resume} is missing (moved or deleted?): give "
                       f"the same data with --dataset PATH (checked against the SHA-256 of its arrays)")
    loss, ignore = None, None
    if graph is not None and graph.has_output("loss") and graph.loss_node is not None:
        from .ops import loss_options

        loss = graph.loss_node.op
        ignore = loss_options(graph.loss_node.attr)[1]
    return shaped_for(load_dataset(name, seed=cfg["seed"], dtype=cfg["dtype"], loss=loss, ignore_index=ignore), graph)


def _model(args, src, graph, cfg, device):
    """The model to train: the resumed checkpoint's, or ``graph`` compiled, starting from MODEL's
    values where it has them (an ONNX file's weights; a checkpoint's trained params and state)."""
    if args.resume:
        from .model import load as bg_load

        return bg_load(args.resume, device=device)
    from .model import compile as bg_compile

    start = src.compilable if src is not None else graph
    model = bg_compile(start, target=cfg["target"], dtype=cfg["dtype"], seed=cfg["seed"], device=device,
                       cuda_graph=args.cuda_graph, passes=cfg["passes"])
    if src is not None and src.kind == "checkpoint":  # a new run from its weights: no optimizer, no counters
        arrays = src.checkpoint[1]
        try:
            model.set_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
            model.set_state({k[6:]: v for k, v in arrays.items() if k.startswith("state/")})
        except (KeyError, ValueError) as e:
            raise CLIError(f"{src.path}: {e.args[0] if e.args else e}") from None
    return model


def _mismatch_hint(args, meta, src, graph) -> str:
    """Why the model and the data may not fit, where bngraph chose for the user."""
    if meta is not None and not _recorded_run(meta).get("dataset") and args.dataset is None:
        return " (the checkpoint does not record its data set: give it with --dataset)"
    if src is not None and src.kind == "onnx" and src.imported.added_loss and graph.loss_node.op == "mse":
        return (f" ({src.path} has no loss and does not end in Softmax or LogSoftmax, so it trains as a regression: "
                f"mse against targets as wide as its output; a classifier exported with its Softmax, e.g. "
                f"bg.to_onnx(model, path, probabilities=True), trains on class labels)")
    return ""


def _check_against_data(graph, ds, hint=""):
    """The model's feature count and outputs against the data, before anything is compiled."""
    if not graph.has_output("loss") or graph.loss_node is None:
        return  # compiling says what is missing
    labels = graph.loss_node.inputs[1]
    want = model_example_shape(graph)
    if want is not None and want != ds.example_shape:
        if len(want) == len(ds.example_shape) == 1:
            raise CLIError(f"the model's input takes {want[0]} features but dataset {ds.name} has "
                           f"{ds.num_features}{hint}")
        raise CLIError(f"the model's input takes {shape_words(want)} ({math.prod(want)} values per example) but "
                       f"dataset {ds.name} has {shape_words(ds.example_shape)}{hint}")
    target = next((v for v in graph.inputs if v.name == labels), None)
    if target is None:
        return
    if target.classes is not None:
        if target.classes < ds.num_classes:
            raise CLIError(f"the model has {target.classes} classes but dataset {ds.name} has labels up to "
                           f"{ds.num_classes - 1}{hint}")
    elif target.type.shape[0] != ds.num_outputs:
        n = target.type.shape[0]
        raise CLIError(f"the model predicts {n} target{'s' if n != 1 else ''} per example ({graph.loss_node.op} "
                       f"against %{labels}) but dataset {ds.name} has {ds.num_outputs}{hint}")


def _interrupted(args, model, report, history, save) -> int:
    """Ctrl-C: fit stopped between two steps; save there (the checkpoint resumes mid-epoch)."""
    pos = (model.fit_state or {}).get("position")
    where = f"in epoch {pos['epoch']} after step {pos['done']}" if pos else f"after epoch {model.epoch}"
    if save:
        model.save(save)
        saved = f"; saved {save}: continue with --resume {save}"
    else:
        saved = f"; nothing saved ({'--no-save' if args.resume else 'no --save'})"
    reason = f"interrupted {where} (global step {model.step}){saved}"
    report.update(history=list(history), stop_reason=reason, test={})
    write_report(args.json, report)
    print(f"bngraph: {reason}", file=sys.stderr)
    if args.json:
        print(f"bngraph: wrote report {args.json}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _device(text):
    """--device: a GPU index, a name ('emulator'), or None."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text
