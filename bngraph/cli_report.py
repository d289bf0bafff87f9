"""What ``bngraph train`` says: the header line, the metrics that fit the model's loss, the
``--json`` report and the last lines, which say what was written where. (bngraph/cli_train.py
runs the training; this module imports no part of the command line.)

The metrics are ``model.evaluate``'s, those that fit the loss (:mod:`bngraph.metrics`): accuracy
for a class loss, accuracy at 0.5 for ``sigmoid_bce``, RMSE and MAE for ``mse``.
"""
from __future__ import annotations

import json
import sys

from .checkpoint import json_default
from .fileio import atomic_write


def metrics_line(prefix: str, figures: dict) -> str:
    """``test loss 0.1234  test rmse 0.3513  test mae 0.2801``: every figure, the loss first."""
    keys = ["loss", *(k for k in figures if k != "loss")]
    return "  ".join(f"{prefix} {k} {figures[k]:.4f}" for k in keys if isinstance(figures.get(k), (int, float)))


def target_label(target: str, device) -> str:
    """``cuda``, ``cuda (device emulator)``, ``cuda (device 1)``: where the run ran, not only the
    target's name (an emulator run is not a GPU run)."""
    return target if device is None else f"{target} (device {device})"


def header(args, model, graph, ds, report, todo, save) -> str:
    ex = report["examples"]
    counts = f"{ex['train']} train / {ex['validation']} validation / {ex['test']} test examples"
    opt = f"{report['optimizer']} lr={report['lr']:g}"
    tail = f"batch {report['batch_size']}, target {target_label(report['target'], report.get('device'))}"
    if save:
        tail += f", saving to {save}"
    if report.get("schedule"):
        tail += f", schedule {report['schedule']}"
    if report.get("early_stop") is not None:
        tail += f", early stop after {report['early_stop']} epochs without progress"
    start = f" from the weights of {report['model_file']}" if report.get("model_file") else ""
    if not args.resume:
        return (f"bngraph: training {graph.name}{start} on {ds.name} ({counts}), {opt}, {report['epochs']} epochs, "
                f"{tail}")
    pos = (model.fit_state or {}).get("position")
    at = (f"in epoch {pos['epoch']} after step {pos['done']}" if pos else f"after epoch {model.epoch}")
    total = report["epochs"]
    todo_text = f"epochs {model.epoch + 1} to {total}" if todo else f"nothing left of {total} epochs"
    return (f"bngraph: resuming {graph.name} from {args.resume} {at} (global step {model.step}) on {ds.name} "
            f"({counts}), {opt}, {todo_text}, {tail}")


def write_report(path, report) -> None:
    if path:
        text = json.dumps(report, indent=2, default=json_default) + "\n"
        atomic_write(path, lambda f: f.write(text), binary=False)


def written_lines(written: list) -> list:
    """The last lines: ``saved checkpoint PATH (...)``, ``wrote report PATH``, one per file written."""
    return [f"{what} {path}{f' ({note})' if note else ''}" for what, path, note in written]


def print_written(written: list) -> None:
    for line in written_lines(written):
        print(line)


def nothing_saved_note(args, save, trained: bool) -> str | None:
    """A line for stderr when the trained model was written nowhere (None: it was, or nothing trained)."""
    if save or not trained:
        return None
    if args.no_save:
        return f"bngraph: not saved (--no-save){f': {args.resume} is as it was before this run' if args.resume else ''}"
    return "bngraph: the trained model was not saved: add --save PATH to keep it"


def note(text: str | None, quiet: bool) -> None:
    if text and not quiet:
        print(text, file=sys.stderr)
