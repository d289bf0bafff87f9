"""The fenced code blocks of README.md and docs/*.md, and how each one is checked.

The fence's info string says what a block is: ``LANG [ROLE] [reason]`` (GitHub colours the block
by LANG and ignores the rest). docs/architecture.md ("Docs that cannot drift") shows the table.

=======================  =====================================================================
```python                runs as a program of its own (fresh namespace, a temporary folder with
                         ``examples/`` linked in); what it prints is kept for the blocks below
```python continue       runs in the namespace of the file's previous python block
```sh  /  ```console     each line a shell command, run with this environment's ``bngraph``
                         and ``python`` on PATH, in the same folder as the python blocks
```text output           the whole stdout of the block that ran last (``...`` matches anything)
```LANG excerpt          lines that appear, contiguous, in that stdout (``...`` as above)
```python signatures     one ``name(params)`` per line, checked against ``inspect.signature``
```python gpu            runs where CuPy sees a GPU, skipped elsewhere
```LANG not-run REASON   shown, not run (installs, minutes of benchmarks): REASON is required
```LANG illustration REASON  pseudo-code, formulas, a diagram: not code; REASON is required
```ebnf, ```ir, ```ir-accepted   docs/ir.md's grammar and its examples: tests/test_ir_grammar.py
=======================  =====================================================================

Anything else (a fence without a language, an unknown role, a missing reason) is an error, so a
block nobody checks cannot be added by accident.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

RUN_LANGS = {"python", "sh", "console"}
ROLES = {
    "run": RUN_LANGS,
    "continue": {"python"},
    "output": {"text"},
    "excerpt": {"text", "python", "ir", "cuda"},
    "signatures": {"python"},
    "gpu": {"python"},
    "not-run": None,  # any language
    "illustration": None,
    "grammar": {"ebnf", "ir", "ir-accepted"},  # docs/ir.md only
}
NEEDS_REASON = {"not-run", "illustration"}
FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>```+|~~~+)(?P<info>.*)$")
HEADING_SIGNATURE = re.compile(r"^#+ [^`]*`(?P<sig>[A-Za-z_][\w.]*\(.*\))`")

# optional extras a block may need (CI installs them with the test extra): skipped where missing
EXTRAS = {
    "torch": re.compile(r"^\s*(import|from)\s+torch\b|bg\.from_torch", re.M),
    "onnx": re.compile(r"^\s*(import|from)\s+onnx\b|bg\.(from_onnx|to_onnx)|onnx_backend", re.M),
    "onnxruntime": re.compile(r"^\s*(import|from)\s+onnxruntime\b|bg\.to_onnx", re.M),
}


class DocBlockError(AssertionError):
    pass


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    role: str
    reason: str
    text: str
    outcome: object = field(default=None, repr=False)  # None: passed; str: skipped; Exception: failed

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def parse_blocks(path: Path) -> list:
    """The fenced blocks of one markdown file, with their roles; an unmarked block is an error."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            heading = HEADING_SIGNATURE.match(lines[i])
            if heading:  # "### `SGD(lr=1e-3, ...)`": a signature, checked like a signatures block
                blocks.append(Block(path, i + 1, "heading", "signatures", "", heading["sig"]))
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[:3]) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise DocBlockError(f"{path.relative_to(REPO)}:{i + 1}: the code block is never closed")
        blocks.append(_block(path, i + 1, info, "\n".join(body)))
        i = j + 1
    return blocks


def _block(path, line, info, text) -> Block:
    where = f"{path.relative_to(REPO)}:{line}"
    words = info.split(None, 2)
    if not words:
        raise DocBlockError(f"{where}: a code block without a language; mark it (see tests/docblocks.py): "
                            f"```python, ```sh, ```text output, ```text illustration REASON, ...")
    lang = words[0]
    grammar = lang in ROLES["grammar"] and path.name == "ir.md"  # the IR grammar section's own examples
    role = words[1] if len(words) > 1 else ("run" if lang in RUN_LANGS else "grammar" if grammar else "")
    reason = words[2] if len(words) > 2 else ""
    if role not in ROLES:
        raise DocBlockError(f"{where}: ```{info}: unknown or missing role {role!r}; one of {', '.join(ROLES)} "
                            f"(see tests/docblocks.py)")
    langs = ROLES[role]
    if langs is not None and lang not in langs:
        raise DocBlockError(f"{where}: ```{info}: role {role} is for {', '.join(sorted(langs))} blocks")
    if role in NEEDS_REASON and not reason.strip():
        raise DocBlockError(f"{where}: ```{info}: a block that is {role} says why (```{lang} {role} REASON)")
    return Block(path, line, lang, role, reason, text)


# ------------------------------------------------------------------------------------------------
# Running one file's blocks, in order
# ------------------------------------------------------------------------------------------------


def missing_extras(text: str) -> list:
    return [mod for mod, pattern in EXTRAS.items() if pattern.search(text) and importlib.util.find_spec(mod) is None]


def has_gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def ellipsis_match(want: str, got: str) -> bool:
    """doctest's ELLIPSIS: ``...`` in ``want`` matches any text (newlines included)."""
    pattern = ".*?".join(re.escape(piece) for piece in want.split("..."))
    return re.fullmatch(pattern, got, flags=re.S) is not None


def normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def run_file(path: Path, workdir: Path) -> list:
    """Run every block of ``path`` in order in ``workdir``; each block gets its ``outcome``."""
    blocks = parse_blocks(path)
    (workdir / "examples").symlink_to(REPO / "examples")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    namespace, last = None, None  # the python namespace; (block, stdout) of the block that ran last
    old = os.getcwd()
    registries = _registries()
    saved = [dict(r) for r in registries]  # a doc may register a pass or a target: undone afterwards
    os.chdir(workdir)
    try:
        for b in blocks:
            try:
                if b.role in ("run", "continue", "gpu"):
                    if b.role == "continue" and namespace is None:
                        raise DocBlockError(f"{b.id}: ```python continue, but no python block ran before it")
                    if b.role == "continue" and isinstance(last[0].outcome, BaseException):
                        b.outcome = f"the block it continues ({last[0].id}) failed"
                        continue
                    missing = missing_extras(b.text)
                    if missing:
                        b.outcome = f"needs {', '.join(missing)} (pip install -e '.[test]')"
                        last = (b, None)
                        continue
                    if b.role == "gpu" and not has_gpu():
                        b.outcome = "needs CuPy and a CUDA GPU"
                        continue
                    if b.lang == "python":
                        if b.role != "continue":
                            namespace = {"__name__": "__doc__"}
                        out = run_python(b, namespace)
                    else:
                        out = run_shell(b, env)
                    last = (b, out)
                elif b.role in ("output", "excerpt"):
                    compare(b, last)
                elif b.role == "signatures":
                    check_signatures(b)
            except Exception as e:  # a doc block may raise anything: its test reports it
                b.outcome = e
                if b.role in ("run", "continue", "gpu"):
                    last = (b, None)
    finally:
        os.chdir(old)
        for r, before in zip(registries, saved):
            r.clear()
            r.update(before)
    return blocks


def _registries() -> list:
    from bngraph.backends import TARGETS
    from bngraph.passes import PASSES

    return [PASSES, TARGETS]


def run_python(b: Block, namespace: dict) -> str:
    """Exec the block with tracebacks naming the doc and its lines; returns what it printed."""
    code = compile("\n" * b.line + b.text, str(b.path.relative_to(REPO)), "exec")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, namespace)
    return buf.getvalue()


def run_shell(b: Block, env: dict) -> str:
    proc = subprocess.run(["bash", "-e", "-c", b.text], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise DocBlockError(f"{b.id}: the commands exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def compare(b: Block, last):
    if last is None:
        raise DocBlockError(f"{b.id}: ```{b.lang} {b.role}: no block ran before it")
    source, out = last
    if out is None:
        b.outcome = f"the block it shows the output of ({source.id}) did not run"
        return
    want, got = normalized(b.text), normalized(out)
    ok = ellipsis_match(want, got) if b.role == "output" else ellipsis_match(f"...{want}...", got)
    if not ok:
        raise DocBlockError(f"{b.id}: this {b.role} is not what {source.id} prints.\n--- the doc shows:\n{want}\n"
                            f"--- it prints:\n{got[:6000]}")


# ------------------------------------------------------------------------------------------------
# Signatures
# ------------------------------------------------------------------------------------------------

SIGNATURE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\((?P<params>.*)\)$")


def resolve(name: str):
    """``bg.optim.SGD``, ``bngraph.passes.run_pipeline``, ``Model.fit``, ``optim.Adam`` -> the object."""
    import bngraph

    parts = name.split(".")
    roots = {"bg": bngraph, "bngraph": bngraph, "optim": bngraph.optim}
    obj = roots.get(parts[0])
    if obj is None:
        obj = getattr(bngraph, parts[0], None)
        if obj is None:
            obj = getattr(bngraph.optim, parts[0], None)
    if obj is None:
        raise DocBlockError(f"{name}: {parts[0]} is not bg, bngraph, optim or a name in bngraph/bngraph.optim")
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:  # a module not imported by its package's __init__
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except (AttributeError, ImportError):
                raise DocBlockError(f"{name}: {'.'.join(parts[:i])} has no {part}") from None
    return obj


def documented_parameters(params: str) -> list:
    """``lr, momentum=0, *, nesterov=False`` -> [(name, kind, default)] as a def would have them."""
    tree = ast.parse(f"def f({params}): pass").body[0].args
    out = [(a.arg, inspect.Parameter.POSITIONAL_ONLY) for a in tree.posonlyargs]
    out += [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in tree.args]
    defaults = [inspect.Parameter.empty] * (len(out) - len(tree.defaults)) + [_value(d) for d in tree.defaults]
    rows = [(n, k, d) for (n, k), d in zip(out, defaults)]
    if tree.vararg:
        rows.append((tree.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    for a, d in zip(tree.kwonlyargs, tree.kw_defaults):
        rows.append((a.arg, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty if d is None else _value(d)))
    if tree.kwarg:
        rows.append((tree.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return rows


class _Expr(str):
    """A default written as an expression (``registry=PASSES``): evaluated where the function lives."""


def _value(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _Expr(ast.unparse(node))


def real_parameters(obj) -> list:
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    factories = {}  # a dataclass field's default_factory: documented as the value it makes
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        factories = {f.name: f.default_factory for f in dataclasses.fields(obj)
                     if f.default_factory is not dataclasses.MISSING}
    return [(p.name, p.kind, factories[p.name]() if p.name in factories else p.default) for p in params]


def signature_mismatch(line: str) -> str | None:
    """None when ``name(params)`` is the signature of ``name`` in bngraph, else what differs."""
    m = SIGNATURE.match(line)
    if not m:
        return f"{line!r} is not name(params)"
    obj = resolve(m["name"])
    try:
        documented = documented_parameters(m["params"])
    except SyntaxError as e:
        return f"{line!r}: the parameters do not parse ({e.msg})"
    real = real_parameters(obj)
    names = vars(sys.modules[getattr(obj, "__module__", "bngraph")])
    if [(n, k) for n, k, _ in documented] != [(n, k) for n, k, _ in real] or any(
            not _same_default(d, r, names) for (_, _, d), (_, _, r) in zip(documented, real)):
        return f"{line}\n  the code says: {m['name']}{_format(real)}"
    return None


def _same_default(doc, real, names) -> bool:
    if doc is inspect.Parameter.empty or real is inspect.Parameter.empty:
        return doc is real
    if isinstance(doc, _Expr):
        try:
            value = eval(doc, dict(names))  # a name of the module that defines the function
        except Exception:
            return False
        return value is real or value == real
    if isinstance(doc, bool) or isinstance(real, bool):
        return type(doc) is type(real) and doc == real
    return doc == real and (type(doc) is type(real) or isinstance(doc, (int, float)) and isinstance(real, (int, float)))


def _format(rows) -> str:
    params = [inspect.Parameter(n, k, default=d) for n, k, d in rows]
    return str(inspect.Signature(params))


def check_signatures(b: Block):
    problems = []
    for line in b.text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            problem = signature_mismatch(line)
            if problem:
                problems.append(problem)
    if problems:
        raise DocBlockError(f"{b.id}: signatures that are not the code's:\n" + "\n".join(problems))
