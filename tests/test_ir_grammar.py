"""The IR grammar in docs/ir.md and the parser are one truth.

The grammar section's examples (```ir: canonical, ```ir-accepted: the same graph spelled loosely)
and its table of counter-examples are read from the page and checked here, as is every complete
graph shown anywhere on the page. Then properties no table can list: a space between two tokens
never changes the graph, every error on a mangled text is a ParseError that names its line, and
every attribute type of the op table can be spelled and read back.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import bngraph as bg
from bngraph import parser
from bngraph.ir import Ints
from bngraph.ops import OPS, OpDef
from bngraph.parser import ParseError
from bngraph.printer import format_attr_value

from conftest import build_dsl_example

DOC = Path(__file__).resolve().parents[1] / "docs" / "ir.md"
LINE_NO = re.compile(r"^line (\d+): ")


def _fenced_blocks(text: str) -> list:
    """(info string, body) of every fenced block of a Markdown page."""
    blocks, info, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body)))
                info = None
        elif info is not None:
            body.append(line)
    assert info is None, f"{DOC.name}: a fenced block is not closed"
    return blocks


def _grammar_section() -> str:
    text = DOC.read_text()
    start = text.index("## Grammar\n")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(info: str, text: str | None = None) -> list:
    return [body for i, body in _fenced_blocks(text if text is not None else _grammar_section()) if i == info]


def _is_complete_graph(body: str) -> bool:
    code = [ln.split("#", 1)[0].strip() for ln in body.splitlines()]
    code = [ln for ln in code if ln]
    return bool(code) and code[0].startswith("graph ") and code[-1] == "}"


def _counterexamples() -> list:
    """(line number, replacement text, expected error) from the table between the markers."""
    text = _grammar_section()
    table = text[text.index("<!-- ir-counterexamples:begin"):text.index("<!-- ir-counterexamples:end -->")]
    rows = []
    for line in table.splitlines():
        m = re.fullmatch(r"\| (\d+) \| (?:`(.*)`|\(empty\)) \| `(.*)` \|", line)
        if m:
            rows.append((int(m[1]), m[2] or "", m[3]))
        else:
            assert not re.match(r"\| \d", line), f"a counter-example row the test cannot read: {line}"
    return rows


CANONICAL = _blocks("ir")
COUNTEREXAMPLES = _counterexamples()


def test_the_doc_has_the_examples_this_file_checks():
    assert len(CANONICAL) >= 1 and len(_blocks("ir-accepted")) >= 1
    assert len(COUNTEREXAMPLES) >= 25
    assert "```ebnf" in _grammar_section()


# --------------------------------------------------------------------------------------------
# The examples of the grammar section
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CANONICAL, ids=lambda t: t.splitlines()[0])
def test_canonical_examples_parse_verify_and_print_back_the_same_text(text):
    g = bg.parse(text)
    bg.verify(g)
    assert str(g) == text
    assert bg.parse(str(g)) == g


def test_accepted_examples_read_as_the_canonical_example_before_them():
    fenced = [(i, b) for i, b in _fenced_blocks(_grammar_section()) if i in ("ir", "ir-accepted")]
    pairs = [(pi, prev, body) for (pi, prev), (i, body) in zip(fenced, fenced[1:]) if i == "ir-accepted"]
    assert pairs
    for info, canonical, loose in pairs:
        assert info == "ir", "an ```ir-accepted block follows the ```ir block it spells differently"
        g = bg.parse(loose)
        assert g == bg.parse(canonical)
        assert str(g) == canonical  # the printer gives the canonical spelling back


@pytest.mark.parametrize("lineno, new, error", COUNTEREXAMPLES, ids=[f"{n}:{t or '(empty)'}" for n, t, _ in COUNTEREXAMPLES])
def test_counterexamples_are_refused_with_the_documented_error(lineno, new, error):
    lines = CANONICAL[0].split("\n")
    old = lines[lineno - 1]
    indent = old[:len(old) - len(old.lstrip())]
    lines[lineno - 1] = indent + new if new else ""
    with pytest.raises(ParseError) as info:
        bg.parse("\n".join(lines))
    assert str(info.value) == error
    assert LINE_NO.match(error), "every parse error starts with its line"


def test_every_complete_graph_on_the_page_parses():
    found = [(i, b) for i, b in _fenced_blocks(DOC.read_text()) if i != "ebnf" and _is_complete_graph(b)]
    assert len(found) >= 3, "the full example, the canonical and the accepted example"
    for info, body in found:
        g = bg.parse(body)
        assert bg.parse(str(g)) == g
        if info != "ir-accepted":  # printed examples are the printer's own text
            assert str(g) == body, f"a graph in {DOC.name} is not in the canonical form:\n{body}"


def test_the_full_example_on_the_page_is_what_the_dsl_prints():
    printed = str(build_dsl_example())
    assert any(body == printed for _, body in _fenced_blocks(DOC.read_text()))


def test_the_parse_error_shown_in_the_errors_section():
    text = DOC.read_text()
    (shown,) = re.findall(r"\* \*\*Parse\*\* .*?e\.g\. `(line [^`]*)`", text, flags=re.S)
    with pytest.raises(ParseError) as info:
        bg.parse(str(build_dsl_example()).replace("= relu %bn1", "= swish %bn1"))
    assert str(info.value) == shown


# --------------------------------------------------------------------------------------------
# Properties of the grammar over whole texts
# --------------------------------------------------------------------------------------------

SMALL = CANONICAL[0]
EXAMPLE = str(build_dsl_example())


def _parse_or_error(text: str):
    """The graph, or the ParseError's message; any other exception fails the test."""
    try:
        return bg.parse(text)
    except ParseError as e:
        assert LINE_NO.match(str(e)), f"a parse error without its line: {e}"
        line = int(LINE_NO.match(str(e))[1])
        assert 1 <= line <= max(1, len(text.split("\n"))), f"line {line} is not in the text: {e}"
        return str(e)


@pytest.mark.parametrize("text", [SMALL, EXAMPLE], ids=["small", "dsl_example"])
def test_a_space_between_tokens_never_changes_the_graph(text):
    """Insert one space at every position: the text either means the same graph (the space stood
    between two tokens) or is refused with its line (it split a token)."""
    g, refused = bg.parse(text), set()
    for i in range(len(text) + 1):
        got = _parse_or_error(text[:i] + " " + text[i:])
        if isinstance(got, str):
            refused.add(i)
        else:
            assert got == g, f"a space at {i} changed the graph: {text[max(0, i - 20):i]!r} + ' ' + {text[i:i + 20]!r}"
    # on both sides of every punctuation mark a space is welcome ('%x : f32 [4, m]', 'matmul [ta = true]')
    around_punctuation = {j for i, c in enumerate(text) if c in "(){}[],:=" for j in (i, i + 1)}
    assert not refused & around_punctuation, [text[max(0, i - 10):i + 10] for i in sorted(refused & around_punctuation)]
    assert refused, "a space inside a token is an error"


@pytest.mark.parametrize("text", [SMALL, EXAMPLE], ids=["small", "dsl_example"])
def test_every_mangled_text_is_a_parse_error_with_its_line_or_a_graph_that_round_trips(text):
    """Delete one character, or put in one of the grammar's punctuation, at every position."""
    mangled = [text[:i] + text[i + 1:] for i in range(len(text))]
    mangled += [text[:i] + c + text[i:] for i in range(0, len(text), 3) for c in "%,[=:\n"]
    for t in mangled:
        got = _parse_or_error(t)
        if not isinstance(got, str):
            assert bg.parse(str(got)) == got


def test_line_endings_and_stray_characters():
    crlf = SMALL.replace("\n", "\r\n")
    assert bg.parse(crlf) == bg.parse(SMALL)
    # \f or \v are no line breaks of the IR: they are stray characters, reported on their own line
    with pytest.raises(ParseError, match=r"^line 3: col 1: .*'\\x0c' \(a character the IR does not use\)"):
        bg.parse(SMALL.replace("\n  %h", "\n\f%h"))
    with pytest.raises(ParseError, match=r"^line 1: empty IR text"):
        bg.parse("  \n# only a comment\n")


def test_comments_and_blank_lines_before_the_header_and_after_the_brace():
    assert bg.parse("# a graph\n\n" + SMALL + "\n# the end\n\n") == bg.parse(SMALL)


def test_a_graph_without_outputs_prints_a_bare_return_and_parses_back():
    g = bg.Graph("t")
    g.relu(g.input("x", 3))
    text = str(g)
    assert "  return\n}" in text and " \n" not in text
    assert bg.parse(text) == g and str(bg.parse(text)) == text
    with pytest.raises(bg.VerifyError, match="the graph has no outputs"):
        bg.verify(bg.parse(text))


def test_names_may_be_keywords_behind_the_percent_sign():
    text = "graph graph(%param: f32[2,m], %m: f32[2,m]) {\n  %return: f32[2,m] = add %param, %m\n  return out=%return\n}"
    g = bg.parse(text)
    assert [v.name for v in g.inputs] == ["param", "m"] and g.outputs == (("out", "return"),)
    assert str(g) == text


# --------------------------------------------------------------------------------------------
# Attribute values against the op table
# --------------------------------------------------------------------------------------------

SAMPLES = {bool: [True, False], int: [0, 3, -1, 10**12], str: ["train", "relu", "f32", "_x1"],
           float: [0.1, 1e-05, 1.0, 0.0, -2.5, 1e16, 1.5e-300, 5e-324, 123456789.125],
           Ints: [Ints((3, 3)), Ints((2,)), Ints((1, 0, 0, 12)), Ints((0,))]}


def test_every_attribute_type_in_the_op_table_can_be_spelled():
    """An op that brings an attribute of another type (a list, a dict) fails here: the grammar
    (docs/ir.md) and the parser have to learn it first."""
    for op in OPS.values():
        for key, (typ, _default) in op.attrs.items():
            assert typ in SAMPLES, f"op {op.name}: attribute {key} has type {typ.__name__}, which the IR cannot spell"
            for v in SAMPLES[typ]:
                assert parser._attr_value(op, key, format_attr_value(v), "w") == v


def _op_with(typ) -> OpDef:
    """An op that is not registered, with one attribute ``k`` of type ``typ``: the parser reads
    attribute types from whatever OpDef it is given, not from a list of op names."""
    return OpDef("t", "test", lambda *a: (), lambda *a: (), attrs={"k": (typ, None)})


@pytest.mark.parametrize("typ, text, value", [
    (int, "3", 3), (int, "-100", -100), (int, "0", 0),
    (float, "3", 3.0), (float, "-1e-05", -1e-05), (float, "1E+2", 100.0), (float, "0.5e1", 5.0),
    (bool, "true", True), (bool, "false", False),
    (str, "mean", "mean"), (str, "none", "none"), (str, "_a1", "_a1"),
    (Ints, "3x3", (3, 3)), (Ints, "2", (2,)), (Ints, "1x0x0x12", (1, 0, 0, 12)),
])
def test_attribute_values_that_fit_their_type(typ, text, value):
    got = parser._attr_value(_op_with(typ), "k", text, "w")
    assert got == value and type(got) is typ


@pytest.mark.parametrize("typ, text, why", [
    (int, "3.0", "a FLOAT"), (int, "1e3", "a FLOAT"), (int, "true", "a boolean"), (int, "07", "not a number"),
    (int, "+3", "not a number"), (int, "1_000", "not a number"),
    (float, "inf", "a WORD"), (float, "nan", "a WORD"), (float, ".5", "not a number"), (float, "5.", "not a number"),
    (float, "1_000", "not a number"), (float, "0x10", "INTS, a tuple of naturals"), (Ints, "3X3", "not a number"), (Ints, "-1", "an INT"), (Ints, "3x", "not a number"),
    (Ints, "1.5", "a FLOAT"), (Ints, "03x3", "not a number"), (Ints, "x3", "a WORD"), (float, "true", "a boolean"),
    (bool, "1", "an INT"), (bool, "True", "a WORD"), (bool, "yes", "a WORD"),
    (str, "3", "an INT"), (str, "true", "a boolean"), (str, "a.b", "not an INT, FLOAT or WORD"),
    (str, "a-b", "not an INT, FLOAT or WORD"),
])
def test_attribute_values_that_do_not_fit_their_type(typ, text, why):
    with pytest.raises(ParseError, match=rf"^w: attribute k of t must be {typ.__name__}, got '{re.escape(text)}' "
                                         rf"\({why}"):
        parser._attr_value(_op_with(typ), "k", text, "w")


def test_a_float_out_of_range_and_an_unspellable_type():
    with pytest.raises(ParseError, match="1e999 is out of the range of a float"):
        parser._attr_value(_op_with(float), "k", "1e999", "w")
    with pytest.raises(ParseError, match="attribute k of t has type tuple, which the IR text cannot spell"):
        parser._attr_value(_op_with(tuple), "k", "x", "w")


# ---- the DSL builds only what the text can spell ------------------------------------------------

@pytest.mark.parametrize("eps", [float("inf"), float("-inf"), float("nan")])
def test_the_dsl_refuses_a_non_finite_float_attribute(eps):
    g = bg.Graph("t", "f32")
    with pytest.raises(bg.IRError, match="attribute eps of batchnorm must be a finite number"):
        g.batchnorm(g.input("x", 3), name="bn", eps=eps)


def test_an_int_attribute_takes_integral_numbers_only():
    from bngraph.ops import OPS

    op = OPS["softmax_cross_entropy"]
    assert op.normalize_attrs("n", {"ignore_index": 2.0}) == {"ignore_index": 2}
    for bad in (1.5, True, "2"):
        with pytest.raises(bg.IRError, match="attribute ignore_index of softmax_cross_entropy must be int"):
            op.normalize_attrs("n", {"ignore_index": bad})
