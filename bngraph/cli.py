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
import os
import runpy
import sys

from .fileio import atomic_write, check_writable

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
    except SystemExit as e:  # sys.exit() in the user's file must not end bngraph silently
        raise CLIError(f"{path}{_line_in(e, path)}: the model file exited (sys.exit({e.code!r})) while bngraph "
                       f"was loading it; a model file should only define the graph") from None
    except Exception as e:  # the user's file: report where, in one line
        raise CLIError(f"{path}{_line_in(e, path)}: {type(e).__name__}: {e}") from None
    if name not in ns:
        found = sorted(k for k, v in ns.items() if isinstance(v, Graph) or (callable(v) and not k.startswith("_")))
        raise CLIError(f"{path} defines no {name!r} (found: {', '.join(found) or 'nothing usable'})")
    obj = ns[name]
    if callable(obj) and not isinstance(obj, Graph):
        try:
            obj = obj()
        except SystemExit as e:
            raise CLIError(f"{path}:{name}(): the model function exited (sys.exit({e.code!r})) instead of "
                           f"returning a graph") from None
        except Exception as e:
            raise CLIError(f"{path}:{name}(): {type(e).__name__}: {e}") from None
    if not isinstance(obj, Graph):
        raise CLIError(f"{path}:{name} is a {type(obj).__name__}, expected a bngraph.Graph or a function returning one")
    return obj.build()  # frozen once: every command below sees the same graph


def _line_in(e: BaseException, path: str) -> str:
    """``:line`` of the last frame of ``e``'s traceback that is in the file ``path`` (or '')."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line else ""


def _write_text(path: str, text: str):
    atomic_write(path, lambda f: f.write(text), binary=False)


def same_file(a, b) -> bool:
    """Are paths ``a`` and ``b`` one file? Both exist: the same device and inode (hard links and
    symbolic links included); otherwise the same resolved path."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_same_files(named, allowed=()) -> None:
    """``named``: ``[(flag, path or None), ...]``, inputs first. A CLIError if two are one file (an
    output would overwrite an input or another output), but for the pairs in ``allowed`` (sets of
    two flags, e.g. ``{"--save", "--resume"}``)."""
    seen = []
    for flag, path in named:
        if not path:
            continue
        for flag2, path2 in seen:
            if {flag, flag2} not in [set(pair) for pair in allowed] and same_file(path, path2):
                raise CLIError(f"{flag} {path} and {flag2} {path2} are the same file; give {flag} another path")
        seen.append((flag, path))


def model_path(spec: str | None) -> str | None:
    """The file of a MODEL argument (``path.py[:name]``, a checkpoint or an .onnx file)."""
    if not spec:
        return None
    return spec if os.path.isfile(spec) else spec.partition(":")[0]


def cmd_train(args) -> int:
    from .cli_train import train

    return train(args)


def cmd_emit(args) -> int:
    from .compiler import emit
    from .export import inference_file_name

    if args.standalone:  # a module + .npz needing only NumPy (bngraph/interop/cli_commands.py)
        from .interop.cli_commands import emit_standalone

        return emit_standalone(args)
    graph = load_model_spec(args.model)
    files = emit(graph, target=args.target, dtype=args.dtype, inference=args.inference)
    if args.inference:
        files = {inference_file_name(name): src for name, src in files.items()}
    if args.out:
        paths = {os.path.join(args.out, name): src for name, src in files.items()}
        refuse_same_files([("MODEL", model_path(args.model)), *(("--out", path) for path in paths)])
        for path in paths:
            check_writable(path, "--out")
        for path, src in paths.items():
            _write_text(path, src)
            print(path)
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
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,emit,show}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: an MLP with batch norm on the built-in digits)")
    t.add_argument("model", nargs="?", help="path/to/file.py[:name] (default: the built-in MLP)")
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
    t.add_argument("--target", default=None, help="numpy or cuda; default numpy (resuming: the checkpoint's)")
    t.add_argument("--device", default=None, help="the target's device: cuda takes a GPU index (default 0) or "
                                                  "'emulator' (its kernels on the CPU)")
    t.add_argument("--cuda-graph", action="store_true", help="cuda: capture the training step once per batch "
                                                             "size and replay it")
    t.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="default float32 (resuming: the checkpoint's)")
    t.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) after every epoch, atomically, "
                                                  "and on Ctrl-C (it may be the --resume file)")
    t.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint, with its "
                                                    "settings (a flag that contradicts them is refused)")
    t.add_argument("--json", metavar="PATH", help="write the per-epoch history and final metrics as JSON")
    t.add_argument("--quiet", action="store_true", help="print only the final metrics")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("emit", help="print or write the generated code")
    e.add_argument("model", help="path/to/file.py[:name]")
    e.add_argument("--target", default="numpy")
    e.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    e.add_argument("--inference", action="store_true", help="the inference pipeline (batch norm folded into weights)")
    e.add_argument("--out", metavar="DIR", help="write files into DIR instead of printing")
    e.add_argument("--standalone", action="store_true",
                   help="with --inference --out DIR: a module + .npz of weights needing only NumPy; MODEL may also "
                        "be a checkpoint .npz (trained weights) or an .onnx file")
    e.set_defaults(func=cmd_emit)

    s = sub.add_parser("show", help="the IR before and after the passes")
    s.add_argument("model", help="path/to/file.py[:name]")
    s.add_argument("--passes", help="comma-separated pass names (default: the training pipeline)")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--inference", action="store_true", help="start from the inference graph")
    s.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    s.add_argument("--format", default="text", choices=("text", "dot"), help="dot: Graphviz DOT of the graph after "
                   "the passes")
    s.add_argument("--out", metavar="FILE", help="write the picture: FILE.svg or FILE.png (needs Graphviz's dot), "
                   "or FILE.dot")
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
    # ``bngraph.cli`` that the commands import (with its own CLIError); run that one, as ``bngraph`` does
    from bngraph.cli import main as _main

    sys.exit(_main())
