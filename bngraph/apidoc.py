"""The API reference, docs/api.md, generated from the signatures and docstrings (standard library only).

    python -m bngraph.apidoc docs/api.md      # rewrite it
    python -m bngraph.apidoc                  # print it

``tests/test_docs.py`` fails when docs/api.md is not what this writes, so the reference cannot
drift from the code. What is listed is :data:`SECTIONS`: each public name of a module, and for a
class its public methods and properties (those it defines, not those of ``object``).
"""
from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import sys
import types

# (module, how the reference spells it, the names it lists)
SECTIONS = [
    ("bngraph", "bg", [
        "compile", "Model", "load", "emit", "History", "load_dataset", "Dataset",
        "Graph", "mlp", "FrozenGraph", "as_graph", "parse", "verify", "interpret", "grad_graph",
        "Node", "Value", "TensorType", "OPS", "ACTIVATIONS",
        "run_pipeline", "PipelineResult", "to_inference", "Pass", "PassResult", "PASSES", "TRAINING_PIPELINE",
        "INFERENCE_PIPELINE",
        "Target", "register_target", "get_target",
        "from_onnx", "to_onnx", "from_torch", "to_dot", "ImportedGraph", "report",
        "IRError", "ParseError", "VerifyError", "PassError", "DataError", "DatasetError", "CheckpointError",
        "TrainingDiverged", "MissingDependency", "UnsafeModel",
    ]),
    ("bngraph.optim", "bg.optim", ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "make", "from_state_dict", "NAMES"]),
    ("bngraph.schedules", "bg.schedules", ["Schedule", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR",
                                           "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
                                           "SequentialLR", "ReduceLROnPlateau", "parse", "from_config", "recorded"]),
    ("bngraph.callbacks", "bg.callbacks", ["Callback", "LambdaCallback", "EarlyStopping", "ModelCheckpoint"]),
    ("bngraph.distributed", "bg.distributed", ["init", "replicas", "Replicas", "Distributed", "DistributedError"]),
    ("bngraph.passes", "bngraph.passes", ["graph_pass", "register", "Uses", "compose"]),
    ("bngraph.passes.base", "bngraph.passes.base", ["make_node", "need"]),
    ("bngraph.init", "bngraph.init", ["init_values"]),
    ("bngraph.export", "bngraph.export", ["InferenceModel"]),
    ("bngraph.backends", "bngraph.backends", ["Renderer", "Runtime", "ArrayMemory", "Executable", "Rendered", "Lowering",
                                              "unregister_target"]),
    ("bngraph.errors", "bngraph.errors", ["ModelSizeError", "ProgramError"]),
]

HEADER = """# API reference

Generated from the code's signatures and docstrings by `python -m bngraph.apidoc docs/api.md`;
`tests/test_docs.py` fails when this file is stale. The guides explain the same calls with
examples: [training.md](training.md), [passes.md](passes.md), [deploy.md](deploy.md),
[targets.md](targets.md), [optimizers.md](optimizers.md), [interop.md](interop.md),
[cli.md](cli.md).
"""


def render() -> str:
    out = [HEADER]
    for module_name, spelled, names in SECTIONS:
        module = importlib.import_module(module_name)
        out.append(f"## `{module_name}`\n")
        for name in names:
            out.append(_entry(f"{spelled}.{name}", getattr(module, name), level=3))
    return "\n".join(out).rstrip("\n") + "\n"


def _entry(qualname: str, obj, level: int) -> str:
    hashes = "#" * level
    if isinstance(obj, type) and issubclass(obj, BaseException):
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        return f"{hashes} `{qualname}` ({bases})\n\n{_doc(obj)}"
    if isinstance(obj, type):
        parts = [f"{hashes} `{qualname}{_signature(obj)}`\n\n{_doc(obj)}"]
        members = [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
        for k, v in members:
            if isinstance(v, property):
                parts.append(f"* `{k}` (property): {_first_paragraph(v.fget)}")
        if any(isinstance(v, property) for _, v in members):
            parts[-1] += "\n"
        for k, v in members:
            fn = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
            if inspect.isfunction(fn):
                parts.append(_entry(f"{qualname}.{k}", fn, level + 1))
        return "\n".join(parts)
    if callable(obj):
        return f"{hashes} `{qualname}{_signature(obj)}`\n\n{_doc(obj)}"
    return f"{hashes} `{qualname}`\n\n{_value(obj)}\n"


def _value(obj) -> str:
    if isinstance(obj, dict):
        return f"A dict ({type(next(iter(obj.values()))).__name__} values by name)." if obj else "A dict."
    if isinstance(obj, (tuple, list, frozenset, set)):
        return f"`{obj!r}`" if isinstance(obj, (tuple, list)) else f"`{sorted(obj)!r}`"
    return f"`{obj!r}`"


def _signature(obj) -> str:
    """The signature without annotations; a default that is not a literal by its name in the module."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    names = vars(sys.modules.get(getattr(obj, "__module__", ""), types.ModuleType("none")))
    text, seen_kwonly = [], False
    for i, p in enumerate(params):
        if p.kind == p.KEYWORD_ONLY and not seen_kwonly:
            text.append("*")
            seen_kwonly = True
        if p.kind == p.VAR_POSITIONAL:
            seen_kwonly = True
            text.append(f"*{p.name}")
        elif p.kind == p.VAR_KEYWORD:
            text.append(f"**{p.name}")
        elif p.default is p.empty:
            text.append(p.name)
        else:
            default = p.default
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and repr(default) == "<factory>":
                default = {f.name: f for f in dataclasses.fields(obj)}[p.name].default_factory()
            text.append(f"{p.name}={_default(default, names)}")
        if p.kind == p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind != p.POSITIONAL_ONLY):
            text.append("/")
    return f"({', '.join(text)})"


def _default(value, names) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    text = repr(value)
    try:
        if ast.literal_eval(text) == value:
            return text
    except (ValueError, SyntaxError):
        pass
    for k, v in names.items():  # e.g. registry=PASSES
        if v is value and not k.startswith("_"):
            return k
    return "..."


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    inherited = isinstance(obj, type) and vars(obj).get("__doc__") is None
    generated = isinstance(obj, type) and doc is not None and doc.startswith(f"{obj.__name__}(")  # a dataclass's
    if not doc or inherited or generated:
        return "(no docstring)\n"
    return _markdown(doc) + "\n"


def _first_paragraph(fn) -> str:
    doc = inspect.getdoc(fn) or "(no docstring)"
    return " ".join(doc.split("\n\n")[0].split())


def _markdown(doc: str) -> str:
    """Docstrings are reStructuredText-ish: ``x`` becomes `x`; the rest is shown as written."""
    return doc.replace("``", "`")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv:
        with open(argv[0], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
