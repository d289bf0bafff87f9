"""``bngraph report MODEL [--out FILE]``: the HTML report of a model file, a checkpoint (with its
training curves) or an ONNX file; prints where it wrote it."""
from __future__ import annotations

import os

DEFAULT_OUT = "report.html"


def add_parser(sub, model_forms: str):
    """The ``report`` subcommand, on the command line's subparsers."""
    r = sub.add_parser("report", help="a self-contained HTML report: the graph, each pass, the code linked to the "
                                      "IR, training curves")
    r.add_argument("model", help=model_forms)
    r.add_argument("--out", default=DEFAULT_OUT, metavar="FILE", help=f"the HTML file (default {DEFAULT_OUT})")
    r.add_argument("--target", default="numpy", help="whose generated code to show: numpy or cuda (any registered "
                                                    "target)")
    r.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="default float32 (a checkpoint: its own)")
    r.add_argument("--passes", help="comma-separated pass names (default: the training pipeline; a checkpoint: the "
                                    "passes it was compiled with)")
    r.add_argument("--layout", default="auto", choices=("auto", "graphviz", "builtin"),
                   help="how the graph is drawn: Graphviz's dot when installed (auto), or the built-in layout")
    r.set_defaults(func=run)
    return r


def run(args) -> int:
    from ..backends import TARGETS
    from ..cliutil import CLIError, load_model, model_path, parse_passes, refuse_same_files
    from ..fileio import check_writable
    from .page import report

    if args.target not in TARGETS:
        raise CLIError(f"--target {args.target}: no such target; registered: {', '.join(TARGETS)}")
    refuse_same_files([("MODEL", model_path(args.model)), ("--out", args.out)])
    check_writable(args.out, "--out")
    src = load_model(args.model)
    passes = parse_passes(args.passes)
    history = stop = None
    dtype = args.dtype
    if src.kind == "checkpoint":
        meta = src.checkpoint[0]
        if passes is not None and passes != src.passes:
            raise CLIError(f"{src.path} was compiled with the passes {src.passes}: --passes cannot change them "
                           f"(its params are those of the graph after its passes)")
        passes, dtype = src.passes, dtype or meta["dtype"]
        record = meta.get("history") or {}
        history, stop = record.get("epochs"), record.get("stop_reason")
    what = {"python": "model file", "checkpoint": "checkpoint", "onnx": "ONNX file"}[src.kind]
    path = report(src.graph, args.out, target=args.target, dtype=dtype, passes=passes, history=history,
                  stop_reason=stop, layout=args.layout, source=f"{what} {os.path.basename(src.path)}")
    print(f"wrote report {path}")
    return 0
