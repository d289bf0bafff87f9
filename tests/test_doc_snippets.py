"""Every fenced code block of README.md and docs/*.md runs, or is marked as what it is and checked.

One test per block, named ``FILE:LINE`` (the opening fence), so a doc that drifts from the code
fails CI at the block that drifted. The convention (the fence's info string: ``python``,
``python continue``, ``text output``, ``text excerpt``, ``python signatures``, ``LANG not-run
REASON``, ...) is in tests/docblocks.py and docs/architecture.md. Each file's blocks run once, in
order, in a temporary folder; the per-block tests read the outcome.
"""
from __future__ import annotations

import pytest

from docblocks import DOC_FILES, REPO, DocBlockError, parse_blocks, run_file


def _collect():
    params, problems = [], []
    for path in DOC_FILES:
        try:
            blocks = parse_blocks(path)
        except DocBlockError as e:
            problems.append(str(e))
            continue
        params += [pytest.param(path, b.line, id=b.id) for b in blocks]
    return params, problems


PARAMS, PROBLEMS = _collect()
_RESULTS: dict = {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    def get(path):
        if path not in _RESULTS:
            workdir = tmp_path_factory.mktemp(path.stem.replace(".", "_"))
            _RESULTS[path] = {b.line: b for b in run_file(path, workdir)}
        return _RESULTS[path]

    return get


def test_every_block_is_marked():
    """A fence without a language or with an unknown role fails here (see tests/docblocks.py)."""
    assert not PROBLEMS, "\n".join(PROBLEMS)


@pytest.mark.parametrize("path, line", PARAMS)
def test_block(path, line, outcomes):
    b = outcomes(path)[line]
    if b.role in ("not-run", "illustration"):
        assert b.reason.strip()
        return
    if b.role == "grammar":
        tests = REPO / "tests" / "test_ir_grammar.py"
        if tests.exists():
            assert "docs" in tests.read_text() and "ir.md" in tests.read_text(), \
                "tests/test_ir_grammar.py should check docs/ir.md's grammar"
        return
    if isinstance(b.outcome, str):
        pytest.skip(b.outcome)
    if isinstance(b.outcome, BaseException):
        raise b.outcome
