"""The interop parts of the ``bngraph`` command: ``emit --standalone`` and ``show --format dot``.
(bngraph/cli.py parses the arguments and calls these; they share bngraph/cliutil.py with it.)"""
from __future__ import annotations

import sys

from .deps import MissingDependency


def emit_standalone(args) -> int:
    """``bngraph emit MODEL --inference --standalone --out DIR``."""
    from ..cliutil import CLIError, model_path, refuse_same_files
    from ..fileio import check_writable
    from .standalone import check_overwrite, load_for_deploy, standalone_paths, write_standalone

    if not args.out:
        raise CLIError("--standalone writes files: give --out DIR")
    if not args.inference:
        raise CLIError("--standalone writes the inference module: add --inference")
    if args.target != "numpy":
        raise CLIError(f"--standalone code is NumPy code; --target {args.target} is not available with it")
    try:
        graph, values, head = load_for_deploy(args.model)
    except MissingDependency as e:
        raise CLIError(str(e)) from None
    py, npz, why = standalone_paths(graph, args.out)
    refuse_same_files([("MODEL", model_path(args.model)), ("--out", py), ("--out", npz)])
    for path in (py, npz):
        check_writable(path, "--out", make_folder=True)
    check_overwrite(py, npz, "--out")  # before anything is written
    if why:
        print(f"bngraph: note: {why}", file=sys.stderr)
    for path in write_standalone(graph, values, args.out, args.dtype, head=head, what="--out"):
        print(path)
    return 0


def show_dot(args, graph, passes) -> int:
    """``bngraph show MODEL --format dot [--out FILE.svg|png|dot]``: the graph after the passes."""
    from ..compiler import cast_graph, inference_graph
    from ..passes import TRAINING_PIPELINE, run_pipeline
    from .dot import render, to_dot

    if args.inference:
        g = inference_graph(graph, args.dtype, passes).graph
    else:
        g = run_pipeline(cast_graph(graph, args.dtype), TRAINING_PIPELINE if passes is None else passes).graph
    text = to_dot(g)
    if args.out:
        from ..cliutil import model_path, refuse_same_files

        refuse_same_files([("MODEL", model_path(args.model)), ("--out", args.out)])
        print(render(text, args.out))
    else:
        sys.stdout.write(text)
    return 0
