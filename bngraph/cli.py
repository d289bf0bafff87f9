"""The ``bngraph`` command: train, emit, show, report.

    bngraph train                     # the default MLP with batch norm on the built-in digits
    bngraph emit model.py:net         # the generated code
    bngraph show model.py --print-after-all

MODEL is a model file ``path/to/file.py[:name]`` (``name``, default ``model``, is a ``bg.Graph`` or a
function returning one), a checkpoint ``.npz`` or an ``.onnx`` file (cliutil.load_model reads all
three, for every command). Bad arguments and bad data give a one-line error and exit code 2 (set
BNGRAPH_DEBUG=1 for the traceback instead).
"""
from __future__ import annotations

import argparse
import os
import sys

from .cliutil import (DEFAULT_HIDDEN, DEFAULT_LR, MODEL_FORMS, OPTIMIZERS, CLIError,  # noqa: F401  (re-exported)
                      default_model, load_model, load_model_spec, model_path, parse_passes, refuse_same_files,
                      same_file, write_text)
from .fileio import check_writable

EXIT_USAGE = 2
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``bngraph: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_train(args) -> int:
    from .cli_train import train

    return train(args)


def cmd_emit(args) -> int:
    from .compiler import emit
    from .export import inference_file_name

    if args.standalone:  # a module + .npz needing only NumPy (bngraph/interop/cli_commands.py)
        from .interop.cli_commands import emit_standalone

        return emit_standalone(args)
    src = load_model(args.model)
    passes = None if args.inference else src.passes  # a checkpoint: the training passes it was compiled with
    files = emit(src.graph, target=args.target, dtype=args.dtype, inference=args.inference, passes=passes)
    if args.inference:
        files = {inference_file_name(name): src for name, src in files.items()}
    if args.out:
        paths = {os.path.join(args.out, name): src for name, src in files.items()}
        refuse_same_files([("MODEL", model_path(args.model)), *(("--out", path) for path in paths)])
        for path in paths:
            check_writable(path, "--out", make_folder=True)  # --out DIR: made if missing
        for path, src in paths.items():
            write_text(path, src, make_folder=True)
            print(path)
    else:
        for name, src in files.items():
            if len(files) > 1:
                print(f"# ---- {name}")
            sys.stdout.write(src)
    return 0


def cmd_show(args) -> int:
    from .compiler import cast_graph, inference_graph
    from .passes import TRAINING_PIPELINE, run_pipeline

    src = load_model(args.model)
    graph = src.graph
    passes = parse_passes(args.passes)
    if passes is None and not args.inference:
        passes = src.passes  # a checkpoint: the passes it was compiled with (None: the default pipeline)
    if args.format == "dot" or args.out:  # Graphviz DOT, or a picture (bngraph/interop/cli_commands.py)
        from .interop.cli_commands import show_dot

        return show_dot(args, graph, passes)
    print(f"// IR before the passes\n{graph}")
    if args.inference:
        res = inference_graph(graph, args.dtype, passes, print_after=args.print_after_all)
    else:
        res = run_pipeline(cast_graph(graph, args.dtype), TRAINING_PIPELINE if passes is None else passes,
                           print_after=args.print_after_all)
    if not args.print_after_all:
        print(f"// IR after {', '.join(name for name, _ in res.report)}\n{res.graph}")
    print("// what the passes did\n" + res.format_report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bngraph", description="A small compiler for networks with batch normalization.")
    from .version import __version__

    p.add_argument("--version", action="version", version=f"bngraph {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,emit,show,report}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: an MLP with batch norm on the built-in digits)")
    t.add_argument("model", nargs="?", help=f"{MODEL_FORMS} (a new run from its weights); default: the built-in "
                                            f"MLP (resuming: the checkpoint's model)")
    t.add_argument("--dataset", default=None, help="'digits' (built in) or a .npz file with X and y; default digits "
                                                   "(resuming: the checkpoint's)")
    t.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="default adam (resuming: the checkpoint's)")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default depends on the optimizer; resuming: the checkpoint's)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs in all; default 15 (resuming: up to this many, counting those already done; "
                        "default the checkpoint's run's)")
    t.add_argument("--batch-size", type=_positive_int, default=None, help="default 64 (resuming: the checkpoint's)")
    t.add_argument("--seed", type=_nonnegative_int, default=None,
                   help="data split, initial values and shuffling; default 0 (resuming: the checkpoint's)")
    t.add_argument("--val-fraction", type=_fraction, default=None,
                   help="share of each class of the training data held out for the per-epoch validation "
                        "figures (0: none); default 0.1 (resuming: the checkpoint's); the test split is evaluated "
                        "once, at the end")
    t.add_argument("--target", default=None, help="numpy, cuda or c; default numpy (resuming: the checkpoint's)")
    t.add_argument("--device", default=None, help="the target's device: cuda takes a GPU index (default 0) or "
                                                  "'emulator' (its kernels on the CPU)")
    t.add_argument("--distributed", action="store_true", help="data parallel: run under mpiexec -n N, each rank on "
                   "its shard of every batch, batch norm synchronized (docs/distributed.md)")
    t.add_argument("--cuda-graph", action="store_true", help="cuda: capture the training step once per batch "
                                                             "size and replay it")
    t.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="default float32 (resuming: the checkpoint's)")
    saving = t.add_mutually_exclusive_group()
    saving.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) after every epoch, atomically, "
                                                       "and on Ctrl-C (default: none; resuming: the --resume file)")
    saving.add_argument("--no-save", action="store_true", help="resuming: do not write the run back to the "
                                                                "--resume file")
    t.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint, with its "
                                                    "settings (a flag that contradicts them is refused)")
    t.add_argument("--json", metavar="PATH", help="write the per-epoch history and final metrics as JSON")
    t.add_argument("--html", metavar="PATH", help="write the HTML report of the trained model (graph, passes, code, "
                                                  "training curves: bngraph report) at the end")
    t.add_argument("--passes", help="comma-separated pass names (default: the training pipeline; resuming: the "
                                    "checkpoint's)")
    t.add_argument("--schedule", metavar="SPEC", help="a learning-rate schedule (bg.schedules.parse): step:STEP_SIZE"
                   "[:GAMMA], multistep:M1,M2[:GAMMA], exp:GAMMA, cosine[:T_MAX[:ETA_MIN]], restarts:T_0[:T_MULT], "
                   "onecycle:MAX_LR, plateau[:PATIENCE[:FACTOR]], and KEY=VALUE, e.g. cosine:warmup=2 (default: none; "
                   "resuming: the run's)")
    t.add_argument("--early-stop", metavar="PATIENCE", type=_nonnegative_int, default=None,
                   help="stop after PATIENCE epochs without a better validation loss (the training loss with "
                        "--val-fraction 0); default: no early stopping (resuming: the run's)")
    t.add_argument("--keep-best", action="store_true", default=None,
                   help="with --early-stop: end with the best epoch's weights (saved with --save, tested)")
    t.add_argument("--quiet", action="store_true", help="print only the final metrics")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("emit", help="print or write the generated code")
    e.add_argument("model", help=MODEL_FORMS)
    e.add_argument("--target", default="numpy")
    e.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    e.add_argument("--inference", action="store_true", help="the inference pipeline (batch norm folded into weights)")
    e.add_argument("--out", metavar="DIR", help="write files into DIR instead of printing")
    e.add_argument("--standalone", action="store_true",
                   help="with --inference --out DIR: a module + .npz of weights needing only NumPy (a checkpoint's "
                        "trained weights, an .onnx file's, or a model file's initial values)")
    e.set_defaults(func=cmd_emit)

    s = sub.add_parser("show", help="the IR before and after the passes")
    s.add_argument("model", help=MODEL_FORMS)
    s.add_argument("--passes", help="comma-separated pass names (default: the training pipeline; a checkpoint: "
                                    "the passes it was compiled with)")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--inference", action="store_true", help="start from the inference graph")
    s.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    s.add_argument("--format", default="text", choices=("text", "dot"), help="dot: Graphviz DOT of the graph after "
                   "the passes")
    s.add_argument("--out", metavar="FILE", help="write the picture: FILE.svg or FILE.png (needs Graphviz's dot), "
                   "or FILE.dot")
    s.set_defaults(func=cmd_show)

    from .htmlreport.cli import add_parser as add_report_parser  # bngraph report: the HTML report (bngraph/htmlreport/)

    add_report_parser(sub, MODEL_FORMS)
    return p


def _positive(kind):
    """An argparse type: a number of ``kind`` (int or float) that is > 0."""

    def convert(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    return convert


_positive_float, _positive_int = _positive(float), _positive(int)


def _nonnegative_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def main(argv=None) -> int:
    from .ir import IRError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, IRError, ValueError, KeyError, OSError, MemoryError) as e:
        if os.environ.get("BNGRAPH_DEBUG"):
            raise  # the full traceback, for debugging bngraph itself
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, MemoryError):
            msg = f"out of memory{f' ({e})' if str(e) else ''}: a smaller model, --batch-size or data set would fit"
        print(f"bngraph: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bngraph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # ``python -m bngraph.cli``: this file runs as ``__main__``, a second copy of the module beside the
    # ``bngraph.cli`` that the commands use; run that one, as ``bngraph`` does
    from bngraph.cli import main as _main

    sys.exit(_main())
