"""The docs stay true to the code, beyond their code blocks (tests/test_doc_snippets.py runs those):
the API reference is what ``python -m bngraph.apidoc`` writes, the command line's documented
defaults are the parser's, the signatures the docs show are tested against ``inspect.signature``
(and this checker fails on a wrong one), every parameter of training.md's signatures is described,
and the guides exist and are linked."""
from __future__ import annotations

import contextlib
import io
import re
import runpy

import pytest

from bngraph import apidoc
from bngraph.cli import DEFAULT_LR, build_parser
from docblocks import DOC_FILES, REPO, DocBlockError, parse_blocks, run_file, signature_mismatch

DOCS = REPO / "docs"


def test_api_reference_is_up_to_date():
    fresh = apidoc.render()
    assert (DOCS / "api.md").read_text() == fresh, \
        "docs/api.md is stale: run `python -m bngraph.apidoc docs/api.md` and review the diff"


def test_api_reference_lists_what_it_promises():
    text = (DOCS / "api.md").read_text()
    for heading in ("### `bg.compile(graph, target='numpy'", "#### `bg.Model.fit(X, y, optimizer=None",
                    "### `bg.load_dataset(name_or_path, test_fraction=0.2, seed=0, dtype=None, loss=None, "
                    "ignore_index=None)`",
                    "### `bngraph.passes.graph_pass(name, valid_when, *, registry=PASSES)`",
                    "#### `bngraph.export.InferenceModel.save(folder)`"):
        assert heading in text, heading


# ---- the command line ------------------------------------------------------------------------------


def _cli_defaults_table():
    text = (DOCS / "cli.md").read_text()
    section = text[text.index("## Defaults"):text.index("## Exit codes")]
    rows = re.findall(r"^\| (train|emit|show) \| `([-\w]+)` \| (.+?) \|$", section, flags=re.M)
    assert len(rows) >= 10
    return rows


def test_cli_defaults_in_the_docs_are_the_parsers():
    from bngraph.cli_train import _settings

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    effective = _settings(parser.parse_args(["train"]), None)  # the defaults of options left as None
    for command, option, doc in _cli_defaults_table():
        action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
        if option == "--lr":
            documented = dict((name, float(v)) for v, names in re.findall(r"`([\d.e-]+)` for ([\w ,]+?)(?:,|$)", doc)
                              for name in re.split(r", | and ", names))
            assert documented == DEFAULT_LR, (documented, DEFAULT_LR)
            continue
        (value,) = re.fullmatch(r"`([^`]+)`", doc).groups()
        default = action.default if action.default is not None else effective[action.dest]
        assert str(default) == value, f"cli.md: {command} {option} default {value}, the parser's {default}"


def test_cli_doc_names_every_exit_code_and_variable():
    import bngraph.cli as cli
    import bngraph.cli_train as cli_train

    text = (DOCS / "cli.md").read_text()
    for code in (0, cli.EXIT_USAGE, cli_train.EXIT_INTERRUPTED, 1):
        assert re.search(rf"^\| {code} \|", text, flags=re.M), code
    sources = "\n".join(p.read_text() for p in (REPO / "bngraph").rglob("*.py"))
    for var in sorted(set(re.findall(r"environ(?:\.get)?\(\s*\"([A-Z_]+)\"", sources))):
        assert f"`{var}`" in text, f"docs/cli.md does not document the environment variable {var}"


# ---- signatures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong, says", [
    # what the README used to say: nesterov is keyword-only, and groups was missing
    ("bg.optim.SGD(lr, momentum=0, dampening=0, nesterov=False, weight_decay=0)", "the code says: bg.optim.SGD"),
    ("bg.optim.RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, momentum=0)", "the code says"),
    ("bg.optim.Adam(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0, *, amsgrad=False, groups=None)",
     "the code says"),  # a wrong default
    ("bg.load_dataset(name_or_path, seed=0, test_fraction=0.2, dtype=None)", "the code says"),  # the order
    ("bg.no_such_function(x)", "bg has no no_such_function"),
])
def test_a_wrong_signature_is_caught(wrong, says):
    try:
        problem = signature_mismatch(wrong)
    except DocBlockError as e:
        problem = str(e)
    assert problem and says in problem


def test_the_right_signatures_pass():
    for line in ("bg.optim.SGD(lr=1e-3, momentum=0, dampening=0, *, nesterov=False, weight_decay=0, groups=None)",
                 "bg.Model.forward(X, training=False, batch_size=None)",
                 "bngraph.passes.graph_pass(name, valid_when, *, registry=PASSES)"):
        assert signature_mismatch(line) is None, line


def test_training_md_describes_every_parameter_it_lists():
    text = (DOCS / "training.md").read_text()
    (block,) = [b for b in parse_blocks(DOCS / "training.md") if b.role == "signatures" and b.lang == "python"]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # the text around the code blocks
    spans = " ".join(re.findall(r"`([^`]+)`", prose))
    missing = []
    for line in block.text.splitlines():
        name, params = re.match(r"([\w.]+)\((.*)\)$", line.strip()).groups()
        for p in re.findall(r"(?:^|,\s*)\*{0,2}(\w+)", params):
            if not re.search(rf"\b{p}\b", spans):
                missing.append(f"{name}: {p}")
    assert not missing, f"docs/training.md lists these parameters without describing them: {missing}"


# ---- the block checker itself can fail ------------------------------------------------------------------


def _run_doc(tmp_path, text):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    return run_file(doc, work)


@pytest.fixture
def docs_here(monkeypatch, tmp_path):
    """Lets a markdown file under tmp_path be checked (block ids are relative to the repository)."""
    import docblocks

    monkeypatch.setattr(docblocks, "REPO", tmp_path)
    return tmp_path


def test_an_unmarked_or_unknown_block_is_refused(docs_here):
    for fence, says in (("```\nx\n```", "without a language"), ("```python maybe\nx\n```", "unknown or missing role"),
                        ("```sh not-run\nx\n```", "says why"), ("```text\nx\n```", "unknown or missing role"),
                        ("```python\nx", "never closed")):
        (docs_here / "doc.md").write_text(fence + "\n")
        with pytest.raises(DocBlockError, match=says):
            parse_blocks(docs_here / "doc.md")


def test_a_block_that_drifted_fails(docs_here):
    blocks = _run_doc(docs_here, "\n".join([
        "```python", "x = 2", "print(x * 21)", "```",
        "```text output", "43", "```",                      # wrong output
        "```text output", "4...", "```",                    # ellipsis: right
        "```python continue", "print(x + undefined)", "```",  # raises
        "```python continue", "print(x)", "```",             # skipped: the block before failed
        "```sh", "echo one; echo two; echo three", "```",
        "```text excerpt", "two", "three", "```",           # contiguous lines: right
        "```text excerpt", "one", "three", "```",           # not contiguous: wrong
        "```python signatures", "bg.load(path, optimizer=None, device=None)", "bg.load(path)", "```",
        "### `bg.emit(g, target='cuda')`",
        "```sh", "exit 3", "```",
    ]) + "\n")
    got = [(b.role, b.outcome if isinstance(b.outcome, (str, type(None))) else type(b.outcome).__name__)
           for b in blocks]
    assert got == [("run", None), ("output", "DocBlockError"), ("output", None), ("continue", "NameError"),
                   ("continue", "the block it continues (doc.md:11) failed"), ("run", None), ("excerpt", None),
                   ("excerpt", "DocBlockError"), ("signatures", "DocBlockError"), ("signatures", "DocBlockError"),
                   ("run", "DocBlockError")], got
    assert "bg.load(path)\n  the code says: bg.load(path, optimizer=None, device=None)" in str(blocks[8].outcome)


# ---- the guides --------------------------------------------------------------------------------------


def test_the_guides_exist_and_are_linked():
    readme = (REPO / "README.md").read_text()
    for page in ("training.md", "passes.md", "deploy.md", "targets.md", "cli.md", "api.md", "optimizers.md",
                 "interop.md", "codegen.md", "architecture.md", "ir.md", "cuda.md", "benchmarks.md"):
        assert (DOCS / page).exists(), page
        linked = f"(docs/{page}" in readme or any(f"({page}" in p.read_text() for p in DOC_FILES if p.name != page)
        assert linked, f"nothing links docs/{page}"


def test_quickstart_example_prints_what_the_readme_block_prints():
    """The README says examples/quickstart.py is its first program: both print the same."""
    block = next(b for b in parse_blocks(REPO / "README.md") if b.lang == "python" and "bg.Graph(\"mlp\")" in b.text)
    readme_out, example_out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(readme_out):
        exec(compile(block.text, "README.md", "exec"), {})
    with contextlib.redirect_stdout(example_out):
        runpy.run_path(str(REPO / "examples" / "quickstart.py"), run_name="__main__")
    assert readme_out.getvalue() == example_out.getvalue()
    assert "// IR after fuse_bn" in readme_out.getvalue()
