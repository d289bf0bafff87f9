"""Parse the IR text back into a graph: ``parse(str(g)) == g``. Grammar: docs/ir.md (section Grammar).

The text is read one line at a time (a line is one item: the header, a param, a state, a node,
``return`` or ``}``). Each line is cut into tokens (:func:`_lex`), then read by a small
recursive-descent reader (:class:`_Line`). Every error is a :class:`ParseError` that starts with
``line L:`` (and ``col C:`` where a token is to blame) and names what was expected and what was
found. The parser knows no op by name: attribute names, types and defaults come from the op table
(``OpDef.attrs``), and :func:`_attr_value` is the one place that matches an attribute's spelling
(``true``, INT, FLOAT, WORD) against its type.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .graph import FrozenGraph
from .ir import BATCH, DTYPES, NAME_PATTERN, Ints, IRError, Node, TensorType, Value
from .ops import OpDef, get_op

# The terminals of docs/ir.md, as regular expressions (ASCII only).
NAME = re.compile(NAME_PATTERN)  # value names, graph names and output keys: [A-Za-z_][A-Za-z0-9_.]*
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # OP, KEY (attribute names), WORD (attribute values)
NAT = re.compile(r"0|[1-9][0-9]*")  # dimensions and classes: no sign, no leading zero
INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
INTS = re.compile(r"(?:0|[1-9][0-9]*)(?:x(?:0|[1-9][0-9]*))*")  # an Ints attribute: 3x3, 1x1x0x0, 2
FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)")  # JSON's numbers

# A token is a value reference (% and the characters after it), one punctuation character, or an
# "atom": a run of name/number characters, classified where it is read (a NAME, an INT, ...).
_ATOM_CHARS = re.compile(r"[A-Za-z0-9_.+\-]+")
_PUNCT = "(){}[],:="
_BLANK = " \t"


class ParseError(IRError):
    pass


@dataclass(frozen=True)
class _Token:
    kind: str  # 'ref' (%NAME), 'bad_ref' (% not followed by a NAME), 'punct', 'atom', 'other', 'end'
    text: str
    col: int  # 1-based column in the line

    def __str__(self) -> str:
        return "end of line" if self.kind == "end" else repr(self.text)


def _lex(line: str) -> list:
    """The tokens of one line, ending with an 'end' token; a '#' comment ends the line."""
    tokens, i = [], 0
    while i < len(line):
        c = line[i]
        if c in _BLANK:
            i += 1
        elif c == "#":
            break
        elif c in _PUNCT:
            tokens.append(_Token("punct", c, i + 1))
            i += 1
        elif c == "%":
            m = _ATOM_CHARS.match(line, i + 1)
            text = "%" + (m.group() if m else "")
            tokens.append(_Token("ref" if NAME.fullmatch(text[1:]) else "bad_ref", text, i + 1))
            i += len(text)
        elif m := _ATOM_CHARS.match(line, i):
            tokens.append(_Token("atom", m.group(), i + 1))
            i = m.end()
        else:  # a character the grammar has no use for: reported where the reader meets it
            tokens.append(_Token("other", c, i + 1))
            i += 1
    tokens.append(_Token("end", "", i + 1))
    return tokens


def _what(tok: _Token) -> str:
    """What a token is, in the grammar's words, for 'got ...' messages."""
    if tok.kind == "bad_ref":
        return f"{tok.text!r} ('%' must be followed directly by a NAME, [A-Za-z_][A-Za-z0-9_.]*)"
    if tok.kind == "other":
        return f"{tok.text!r} (a character the IR does not use)"
    return str(tok)


# --------------------------------------------------------------------------------------------
# Attribute values: the one place where a spelling meets the type from the op table
# --------------------------------------------------------------------------------------------

_SPELLING = {bool: "true or false", int: "an INT (such as 3 or -1)", float: "a FLOAT or an INT (such as 1e-05, 0.1 or 1)",
             str: "a WORD ([A-Za-z_][A-Za-z0-9_]*)", Ints: "INTS: naturals joined by 'x' (such as 3x3, 1x1x0x0 or 2)"}


def _spelled_as(text: str) -> str:
    if text in ("true", "false"):
        return "a boolean"
    if INT.fullmatch(text):
        return "an INT"
    if INTS.fullmatch(text):
        return "INTS, a tuple of naturals"
    if FLOAT.fullmatch(text):
        return "a FLOAT"
    if IDENT.fullmatch(text):
        return "a WORD"
    if text[:1] in "0123456789.-+":
        return "not a number in the IR's syntax, which is JSON's: no '_', no '.5' or '5.'"
    return "not an INT, FLOAT or WORD"


def _attr_value(op: OpDef, key: str, text: str, where: str):
    """The Python value of ``key=text`` for ``op``, by the attribute's type in ``op.attrs``.

    bool: ``true``/``false``; int: INT; float: FLOAT or INT (``momentum=1`` is ``1.0``); str: WORD.
    A key the op does not have is left as text: ``OpDef.normalize_attrs`` names it.
    """
    spec = op.attrs.get(key) or op.optional_attrs.get(key)
    if spec is None:
        return text
    typ = spec[0]
    if typ not in _SPELLING:
        raise ParseError(f"{where}: attribute {key} of {op.name} has type {typ.__name__}, which the IR text "
                         f"cannot spell (bool, int, float or str; docs/ir.md)")
    kind = _spelled_as(text)
    ok = {bool: kind == "a boolean", int: kind == "an INT", float: kind in ("an INT", "a FLOAT"),
          str: kind == "a WORD", Ints: kind.startswith("INTS") or (kind == "an INT" and not text.startswith("-"))}[typ]
    if not ok:
        raise ParseError(f"{where}: attribute {key} of {op.name} must be {typ.__name__}, got {text!r} ({kind}); "
                         f"expected {_SPELLING[typ]}")
    if typ is bool:
        return text == "true"
    if typ is Ints:
        return Ints(int(d) for d in text.split("x"))
    if typ is float:
        value = float(text)
        if not math.isfinite(value):  # 1e999: the grammar has no inf
            raise ParseError(f"{where}: attribute {key} of {op.name}: {text} is out of the range of a float")
        return value
    return typ(text)


# --------------------------------------------------------------------------------------------
# Reading one line
# --------------------------------------------------------------------------------------------


class _Line:
    """A cursor over the tokens of one line, with errors that name the line and column."""

    def __init__(self, lineno: int, text: str):
        self.lineno, self.text, self.tokens, self.i = lineno, text, _lex(text), 0

    @property
    def blank(self) -> bool:
        return self.tokens[0].kind == "end"

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind in ("punct", "atom") and tok.text == text

    def error(self, tok: _Token | None, msg: str) -> ParseError:
        return ParseError(f"line {self.lineno}: " + (f"col {tok.col}: " if tok is not None else "") + msg)

    def span(self, start: int, stops: str) -> str:
        """The source text from token ``start`` up to (not including) the first of ``stops`` outside
        brackets, or the end of the line: what 'got ...' quotes for a binder, attribute or output."""
        depth, j = 0, start
        while self.tokens[j].kind != "end":
            t = self.tokens[j]
            if t.kind == "punct" and depth == 0 and t.text in stops:
                break
            if t.kind == "punct" and t.text in "[(":
                depth += 1
            elif t.kind == "punct" and t.text in "])":
                depth -= 1
            j += 1
        first, stop = self.tokens[start], self.tokens[j]
        return self.text[first.col - 1:stop.col - 1].rstrip() if stop.col > first.col else ""

    def expect_end(self, after: str):
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(tok, f"expected end of line after {after} (one item per line), got {_what(tok)}")

    # ---- binders: %name: dtype[dims] -----------------------------------------------------------

    def binder(self, kind: str, stops: str, *, classes_ok: bool = False) -> Value:
        start = self.i

        def fail(tok, detail):
            got = self.span(start, stops)
            return self.error(tok, f"expected '%name: dtype[dims]', got {repr(got) if got else str(tok)}: {detail}")

        ref = self.next()
        if ref.kind != "ref":
            if ref.kind == "atom" and NAME.fullmatch(ref.text):
                raise fail(ref, f"a value name starts with '%' (%{ref.text})")
            raise fail(ref, f"a binder starts with %NAME, found {_what(ref)}")
        name = ref.text[1:]
        colon = self.next()
        if not (colon.kind == "punct" and colon.text == ":"):
            raise fail(colon, f"no ':' after %{name} (found {_what(colon)})")
        dtype = self.next()
        if not (dtype.kind == "atom" and dtype.text in DTYPES):
            raise fail(dtype, f"{_what(dtype)} is not a dtype ({', '.join(DTYPES)})")
        bracket = self.next()
        if not (bracket.kind == "punct" and bracket.text == "["):
            raise fail(bracket, f"no '[' after {dtype.text} (found {_what(bracket)}); a scalar is {dtype.text}[]")
        dims = []
        if not self.at("]"):
            while True:
                d = self.next()
                if d.kind == "atom" and d.text == BATCH:
                    dims.append(BATCH)
                elif d.kind == "atom" and NAT.fullmatch(d.text):
                    dims.append(int(d.text))
                elif d.kind == "atom":
                    raise fail(d, f"bad dimension {d.text!r} (an integer without sign or leading zero, or '{BATCH}')")
                else:
                    raise fail(d, f"expected a dimension (an integer or '{BATCH}'), found {_what(d)}")
                sep = self.next()
                if sep.kind == "punct" and sep.text == "]":
                    break
                if not (sep.kind == "punct" and sep.text == ","):
                    raise fail(sep, f"expected ',' or ']' after dimension {d.text!r}, found {_what(sep)}")
        else:
            self.next()
        classes = None
        if self.at("classes"):
            tok = self.next()
            if not classes_ok:
                raise self.error(tok, f"classes= belongs on graph inputs (integer labels), not on {kind} %{name}")
            eq, n = self.next(), self.next()
            if not (eq.kind == "punct" and eq.text == "="):
                raise self.error(eq, f"expected '=' after 'classes', got {_what(eq)}")
            if not (n.kind == "atom" and NAT.fullmatch(n.text) and int(n.text) >= 1):
                raise self.error(n, f"classes of %{name} must be an integer >= 1 (labels lie in [0, classes)), "
                                    f"got {_what(n)}")
            classes = int(n.text)
        return Value(name, TensorType(dtype.text, tuple(dims)), kind, classes)

    def ref(self) -> str:
        tok = self.next()
        if tok.kind != "ref":
            raise self.error(tok, f"expected a value reference '%name', got {_what(tok)}")
        return tok.text[1:]

    # ---- the header: graph NAME(inputs) { ----------------------------------------------------

    def header(self) -> tuple:
        expected = "expected 'graph NAME(%input: type, ...) {'"
        kw, name = self.next(), self.next()
        if not (kw.kind == "atom" and kw.text == "graph"):
            raise self.error(kw, f"{expected}, got {_what(kw)}")
        if not (name.kind == "atom" and NAME.fullmatch(name.text)):
            raise self.error(name, f"{expected}: the graph's NAME ([A-Za-z_][A-Za-z0-9_.]*), got {_what(name)}")
        paren = self.next()
        if not (paren.kind == "punct" and paren.text == "("):
            raise self.error(paren, f"{expected}: '(' after graph {name.text}, got {_what(paren)}")
        inputs = []
        if self.at(")"):
            self.next()
        else:
            while True:
                inputs.append(self.binder("input", ",)", classes_ok=True))
                sep = self.next()
                if sep.kind == "punct" and sep.text == ")":
                    break
                if not (sep.kind == "punct" and sep.text == ","):
                    raise self.error(sep, f"expected ',' or ')' after input %{inputs[-1].name}, got {_what(sep)}")
                if self.at(")"):
                    raise self.error(self.peek(), f"expected an input '%name: dtype[dims]' after ',', got ')'")
        brace = self.next()
        if not (brace.kind == "punct" and brace.text == "{"):
            raise self.error(brace, f"{expected}: '{{' at the end of the header, got {_what(brace)}")
        self.expect_end("'{'")
        return name.text, inputs

    # ---- param / state lines ----------------------------------------------------------------

    def declaration(self, kind: str) -> Value:
        self.next()  # 'param' or 'state'
        v = self.binder(kind, "")
        self.expect_end(f"{kind} %{v.name}: {v.type}")
        if BATCH in v.type.shape:  # a param or state value holds numbers, not data: no batch size
            raise self.error(None, f"{kind} %{v.name}: {v.type} has the batch dimension {BATCH}; a {kind}'s "
                                  f"shape is fixed numbers, e.g. {v.type.dtype}[{', '.join('5' if d == BATCH else str(d) for d in v.type.shape)}]")
        return v

    # ---- node lines: outs = op[attrs] refs ----------------------------------------------------

    def node(self) -> Node:
        outs = [self.binder("node", ",=")]
        while True:
            sep = self.next()
            if sep.kind == "punct" and sep.text == "=":
                break
            if not (sep.kind == "punct" and sep.text == ","):
                raise self.error(sep, f"cannot read node %{outs[0].name}: expected ',' or '=' after its output "
                                      f"%{outs[-1].name}: {outs[-1].type}, got {_what(sep)}")
            outs.append(self.binder("node", ",="))
        where = outs[0].name
        op_tok = self.next()
        if not (op_tok.kind == "atom" and IDENT.fullmatch(op_tok.text)):
            raise self.error(op_tok, f"{where}: expected an op name after '=', got {_what(op_tok)}")
        try:
            op = get_op(op_tok.text, f"line {self.lineno}: col {op_tok.col}: {where}")
        except IRError as e:
            raise ParseError(str(e)) from None
        attrs_tok = self.peek() if self.at("[") else op_tok
        attrs = self.attrs(op, where) if self.at("[") else {}
        try:  # defaults, ranges and enums: the op table's own checks, shared with the DSL
            attrs = op.normalize_attrs(f"line {self.lineno}: col {attrs_tok.col}: {where}", attrs)
        except IRError as e:
            raise ParseError(str(e)) from None
        args = []
        if self.peek().kind != "end":
            while True:
                args.append(self.ref())
                sep = self.peek()
                if sep.kind == "end":
                    break
                if not (sep.kind == "punct" and sep.text == ","):
                    raise self.error(sep, f"expected ',' or end of line after input %{args[-1]}, got {_what(sep)}")
                self.next()
                if self.peek().kind == "end":
                    raise self.error(self.peek(), "expected a value reference '%name', got end of line "
                                                  "(a ',' must be followed by another input)")
        return Node.make(op.name, args, outs, attrs)

    def attrs(self, op: OpDef, where: str) -> dict:
        self.next()  # '['
        attrs, cols = {}, {}
        while True:
            start, key = self.i, self.next()
            if key.kind == "punct" and key.text == "]":
                why = "after ','" if attrs else "an empty '[]' is not allowed: leave the brackets out"
                raise self.error(key, f"expected 'key=value' attribute, got ']' ({why})")
            eq, val = self.next(), self.next()
            got = self.span(start, ",]")
            if not (key.kind == "atom" and IDENT.fullmatch(key.text)):
                raise self.error(key, f"expected 'key=value' attribute, got {got or str(key)!r}: "
                                      f"{_what(key)} is not a KEY ([A-Za-z_][A-Za-z0-9_]*)")
            if not (eq.kind == "punct" and eq.text == "="):
                raise self.error(eq, f"expected 'key=value' attribute, got {got!r}: no '=' after {key.text}")
            if val.kind != "atom":
                raise self.error(val, f"expected 'key=value' attribute, got {got!r}: no value after '{key.text}='")
            if key.text in attrs:
                raise self.error(key, f"{where}: attribute {key.text} of {op.name} is given twice (first at col {cols[key.text]})")
            attrs[key.text] = _attr_value(op, key.text, val.text, f"line {self.lineno}: col {val.col}: {where}")
            cols[key.text] = key.col
            sep = self.next()
            if sep.kind == "punct" and sep.text == "]":
                return attrs
            if not (sep.kind == "punct" and sep.text == ","):
                raise self.error(sep, f"expected ',' or ']' after attribute {key.text}={val.text}, got {_what(sep)}")

    # ---- return key=%value, ... ----------------------------------------------------------------

    def outputs(self) -> list:
        self.next()  # 'return'
        outputs = []
        if self.peek().kind == "end":
            return outputs
        while True:
            start, key, eq = self.i, self.next(), self.next()
            got = self.span(start, ",")
            if key.kind == "end":
                raise self.error(key, "expected 'key=%value' in return, got end of line (after ',')")
            if not (key.kind == "atom" and NAME.fullmatch(key.text)):
                raise self.error(key, f"expected 'key=%value' in return, got {got or str(key)!r}: "
                                      f"{_what(key)} is not a key (a NAME: [A-Za-z_][A-Za-z0-9_.]*)")
            if not (eq.kind == "punct" and eq.text == "="):
                raise self.error(eq, f"expected 'key=%value' in return, got {got!r}: no '=' after {key.text}")
            outputs.append((key.text, self.ref()))
            sep = self.next()
            if sep.kind == "end":
                return outputs
            if not (sep.kind == "punct" and sep.text == ","):
                raise self.error(sep, f"expected ',' or end of line after {key.text}=%{outputs[-1][1]}, "
                                      f"got {_what(sep)}")


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

_LINE_KINDS = "expected 'param', 'state', a node '%name: type = op ...', 'return' or '}'"


def parse(text: str) -> FrozenGraph:
    """Parse IR text into a :class:`~bngraph.graph.FrozenGraph`. Errors name the line (and column)."""
    # lines end with \n or \r\n; str.splitlines would also split on \f, \v, \x1c... and shift line numbers
    lines = [_Line(i + 1, ln.removesuffix("\r")) for i, ln in enumerate(text.split("\n"))]
    lines = [ln for ln in lines if not ln.blank]
    if not lines:
        raise ParseError("line 1: empty IR text (only blank lines and comments): "
                         "expected 'graph NAME(%input: type, ...) {'")
    head = lines[0]
    name, inputs = head.header()
    params, state, nodes, outputs = [], [], [], None
    return_line = close_line = None
    for ln in lines[1:]:
        first = ln.peek()
        if close_line is not None:
            raise ln.error(None, f"text after the closing '}}' of graph {name} (line {close_line}), "
                                  f"got {_what(first)}")
        if ln.at("}"):
            ln.next()
            ln.expect_end("'}'")
            if outputs is None:
                raise ln.error(first, f"missing 'return' line before '}}' of graph {name}: "
                                      f"expected 'return key=%value, ...', got '}}'")
            close_line = ln.lineno
        elif return_line is not None and ln.at("return"):
            raise ln.error(first, f"a second 'return' line: graph {name} returns once (line {return_line})")
        elif return_line is not None:
            raise ln.error(first, f"expected '}}' after the 'return' line (line {return_line}), got {_what(first)}: "
                                  f"'return' is the last line of a graph")
        elif ln.at("param") or ln.at("state"):
            (params if first.text == "param" else state).append(ln.declaration(first.text))
        elif ln.at("return"):
            outputs, return_line = ln.outputs(), ln.lineno
        elif first.kind == "ref":
            nodes.append(ln.node())
        else:
            raise ln.error(first, f"cannot read the line: {_LINE_KINDS}, got {_what(first)}")
    if close_line is None:
        last = lines[-1]
        raise ParseError(f"line {last.lineno}: missing closing '}}' of graph {name} (line {head.lineno}): "
                         f"expected '}}' on a line of its own, got end of text")
    floats = [v.type.dtype for v in (*inputs, *params) if v.type.is_float]
    return FrozenGraph(name, floats[0] if floats else "f32", inputs=inputs, params=params, state=state,
                       nodes=nodes, outputs=outputs)
