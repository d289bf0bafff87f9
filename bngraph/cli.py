"""The ``bngraph`` command: train, emit, show.

    bngraph train                     # the default MLP with batch norm on the built-in digits
    bngraph emit model.py:net         # the generated code
    bngraph show model.py --print-after-all

MODEL is ``path/to/file.py[:name]``; ``name`` (default ``model``) is a ``bg.Graph`` or a function
returning one. Bad arguments and bad data give a one-line error and exit code 2 (set BNGRAPH_DEBUG=1 for the
traceback instead).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

from .fileio import atomic_write

EXIT_USAGE = 2

DEFAULT_HIDDEN = (128, 64)
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop", "adamw")
DEFAULT_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.1, "momentum": 0.05, "rmsprop": 1e-3}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``bngraph: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def default_model(n_features: int = 64, classes: int = 10):
    """The default model: an MLP with batch norm and ReLU, hidden widths 128 and 64."""
    from .dsl import mlp

    return mlp([n_features, *DEFAULT_HIDDEN, classes], activation="relu", batchnorm=True, name="mlp")


def load_model_spec(spec: str):
    """``path.py[:name]`` -> the frozen graph (the file may define a builder or a frozen graph)."""
    from .graph import GraphBase as Graph  # a DSL builder or a frozen graph

    path, _, name = spec.partition(":")
    name = name or "model"
    if not path.endswith(".py"):
        raise CLIError(f"MODEL must be path/to/file.py[:name], got {spec!r}")
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    try:
        ns = runpy.run_path(path)
    except Exception as e:  # the user's file: report where, in one line
        tb = e.__traceback__
        line = None
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        raise CLIError(f"{path}{f':{line}' if line else ''}: {type(e).__name__}: {e}") from None
    if name not in ns:
        found = sorted(k for k, v in ns.items() if isinstance(v, Graph) or (callable(v) and not k.startswith("_")))
        raise CLIError(f"{path} defines no {name!r} (found: {', '.join(found) or 'nothing usable'})")
    obj = ns[name]
    if callable(obj) and not isinstance(obj, Graph):
        try:
            obj = obj()
        except Exception as e:
            raise CLIError(f"{path}:{name}(): {type(e).__name__}: {e}") from None
    if not isinstance(obj, Graph):
        raise CLIError(f"{path}:{name} is a {type(obj).__name__}, expected a bngraph.Graph or a function returning one")
    return obj.build()  # frozen once: every command below sees the same graph


def _write_text(path: str, text: str):
    atomic_write(path, lambda f: f.write(text), binary=False)


def cmd_train(args) -> int:
    from . import optim
    from .datasets import load_dataset
    from .model import compile as bg_compile

    ds = load_dataset(args.dataset, seed=args.seed)
    n_features = ds.X_train.shape[1]
    graph = load_model_spec(args.model) if args.model else default_model(n_features, ds.num_classes)
    model = bg_compile(graph, target=args.target, dtype=args.dtype, seed=args.seed)
    if model.n_features != n_features:
        raise CLIError(f"the model's input takes {model.n_features} features but dataset {ds.name} has {n_features}")
    if model.classes is not None and model.classes < ds.num_classes:
        raise CLIError(f"the model has {model.classes} classes but dataset {ds.name} has labels up to "
                       f"{ds.num_classes - 1}")
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    opt = optim.make(args.optimizer, lr=lr)
    if not args.quiet:
        print(f"bngraph: training {graph.name} on {ds.name} ({len(ds.X_train)} train / {len(ds.X_test)} test "
              f"examples), {args.optimizer} lr={lr}, {args.epochs} epochs, batch {args.batch_size}, "
              f"target {args.target}", file=sys.stderr)
    hist = model.fit(ds.X_train, ds.y_train, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size,
                     seed=args.seed, validation_data=(ds.X_test, ds.y_test), verbose=not args.quiet)
    if hist.stop_reason:
        final = {}
        if args.save:
            print(f"bngraph: not saving {args.save}: training diverged", file=sys.stderr)
    else:
        final = model.evaluate(ds.X_test, ds.y_test)
        if args.save:
            model.save(args.save)
    if args.json:
        _write_text(args.json, json.dumps({
            "model": graph.name, "dataset": ds.name, "optimizer": args.optimizer, "lr": lr, "epochs": args.epochs,
            "batch_size": args.batch_size, "seed": args.seed, "target": args.target,
            "history": list(hist), "stop_reason": hist.stop_reason,
            "test": final,
        }, indent=2) + "\n")
    if hist.stop_reason:
        print(f"bngraph: {hist.stop_reason}", file=sys.stderr)
        return 1
    acc = final.get("accuracy")
    print(f"test loss {final['loss']:.4f}" + (f"  test accuracy {acc:.4f}" if acc is not None else ""))
    return 0


def cmd_emit(args) -> int:
    from .compiler import emit

    graph = load_model_spec(args.model)
    files = emit(graph, target=args.target, dtype=args.dtype, inference=args.inference)
    if args.out:
        for name, src in files.items():
            _write_text(os.path.join(args.out, name), src)
            print(os.path.join(args.out, name))
    else:
        for name, src in files.items():
            if len(files) > 1:
                print(f"# ---- {name}")
            sys.stdout.write(src)
    return 0


def cmd_show(args) -> int:
    from .compiler import cast_graph, inference_graph
    from .passes import PASSES, TRAINING_PIPELINE, run_pipeline

    graph = load_model_spec(args.model)
    passes = None
    if args.passes:
        passes = [p.strip() for p in args.passes.split(",") if p.strip()]
        unknown = [p for p in passes if p not in PASSES]
        if unknown:
            raise CLIError(f"unknown pass(es) {', '.join(unknown)}; available: {', '.join(PASSES)}")
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
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,emit,show}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: an MLP with batch norm on the built-in digits)")
    t.add_argument("model", nargs="?", help="path/to/file.py[:name] (default: the built-in MLP)")
    t.add_argument("--dataset", default="digits", help="'digits' (built in) or a .npz file with X and y")
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default depends on the optimizer)")
    t.add_argument("--epochs", type=_positive_int, default=15)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target", default="numpy")
    t.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    t.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) at the end")
    t.add_argument("--json", metavar="PATH", help="write the per-epoch history and final metrics as JSON")
    t.add_argument("--quiet", action="store_true", help="print only the final metrics")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("emit", help="print or write the generated code")
    e.add_argument("model", help="path/to/file.py[:name]")
    e.add_argument("--target", default="numpy")
    e.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    e.add_argument("--inference", action="store_true", help="the inference pipeline (batch norm folded into weights)")
    e.add_argument("--out", metavar="DIR", help="write files into DIR instead of printing")
    e.set_defaults(func=cmd_emit)

    s = sub.add_parser("show", help="the IR before and after the passes")
    s.add_argument("model", help="path/to/file.py[:name]")
    s.add_argument("--passes", help="comma-separated pass names (default: the training pipeline)")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--inference", action="store_true", help="start from the inference graph")
    s.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    s.set_defaults(func=cmd_show)
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


def main(argv=None) -> int:
    from .ir import IRError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, IRError, ValueError, KeyError, OSError) as e:
        if os.environ.get("BNGRAPH_DEBUG"):
            raise  # the full traceback, for debugging bngraph itself
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"bngraph: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bngraph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
