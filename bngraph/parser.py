"""Parse the IR text back into a graph: ``parse(str(g)) == g``. Grammar: docs/ir.md."""
from __future__ import annotations

import re

from .graph import FrozenGraph
from .ir import BATCH, NAME_PATTERN, IRError, Node, TensorType, Value
from .ops import get_op

_NAME = NAME_PATTERN
_TYPE = r"(?P<dtype>f32|f64|i64)\[(?P<dims>[^\]]*)\]"
_BINDER = re.compile(rf"^%(?P<name>{_NAME}):\s*{_TYPE}(?:\s+classes=(?P<classes>\d+))?$")
_HEADER = re.compile(rf"^graph\s+(?P<name>{_NAME})\s*\((?P<args>.*)\)\s*\{{$")
_NODE = re.compile(rf"^(?P<outs>.+?)\s*=\s*(?P<op>[a-z_][a-z0-9_]*)(?:\[(?P<attrs>[^\]]*)\])?(?:\s+(?P<args>%.*))?$")


class ParseError(IRError):
    pass


def _split_top(s: str) -> list:
    """Split on commas that are not inside [...]."""
    parts, depth, cur = [], 0, ""
    for c in s:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _parse_binder(text: str, kind: str, lineno: int) -> Value:
    m = _BINDER.match(text.strip())
    if not m:
        raise ParseError(f"line {lineno}: expected '%name: dtype[dims]', got {text.strip()!r}")
    dims = []
    for d in (x.strip() for x in m["dims"].split(",") if x.strip()):
        if d == BATCH:
            dims.append(BATCH)
        elif d.isdigit():
            dims.append(int(d))
        else:
            raise ParseError(f"line {lineno}: bad dimension {d!r} (an integer or '{BATCH}')")
    classes = int(m["classes"]) if m["classes"] else None
    return Value(m["name"], TensorType(m["dtype"], tuple(dims)), kind, classes)


def _parse_attr_value(s: str):
    if s == "true":
        return True
    if s == "false":
        return False
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def _parse_ref(s: str, lineno: int) -> str:
    s = s.strip()
    if not re.fullmatch(rf"%{_NAME}", s):
        raise ParseError(f"line {lineno}: expected a value reference '%name', got {s!r}")
    return s[1:]


def parse(text: str) -> FrozenGraph:
    """Parse IR text into a :class:`~bngraph.graph.FrozenGraph`. Errors name the line."""
    lines = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, ln) for i, ln in lines if ln]
    if not lines:
        raise ParseError("empty IR text")
    lineno, head = lines[0]
    m = _HEADER.match(head)
    if not m:
        raise ParseError(f"line {lineno}: expected 'graph NAME(%input: type, ...) {{', got {head!r}")
    inputs = [_parse_binder(a, "input", lineno) for a in _split_top(m["args"])]
    params, state, nodes, outputs = [], [], [], None
    closed = False
    for lineno, ln in lines[1:]:
        if closed:
            raise ParseError(f"line {lineno}: text after the closing '}}'")
        if ln == "}":
            closed = True
        elif ln.startswith("param "):
            params.append(_parse_binder(ln[6:], "param", lineno))
        elif ln.startswith("state "):
            state.append(_parse_binder(ln[6:], "state", lineno))
        elif ln.startswith("return"):
            outputs = []
            for item in _split_top(ln[6:]):
                if "=" not in item:
                    raise ParseError(f"line {lineno}: expected 'key=%value' in return, got {item!r}")
                k, v = item.split("=", 1)
                outputs.append((k.strip(), _parse_ref(v, lineno)))
        else:
            nm = _NODE.match(ln)
            if not nm:
                raise ParseError(f"line {lineno}: cannot read {ln!r}")
            outs = [_parse_binder(o, "node", lineno) for o in _split_top(nm["outs"])]
            where = outs[0].name
            attrs = {}
            for item in _split_top(nm["attrs"] or ""):
                if "=" not in item:
                    raise ParseError(f"line {lineno}: expected 'key=value' attribute, got {item!r}")
                k, v = item.split("=", 1)
                attrs[k.strip()] = _parse_attr_value(v.strip())
            try:  # the op table's errors already name the line; raise them as ParseError
                op = get_op(nm["op"], f"line {lineno}: {where}")
                attrs = op.normalize_attrs(f"line {lineno}: {where}", attrs)
            except ParseError:
                raise
            except IRError as e:
                raise ParseError(str(e)) from None
            args = [_parse_ref(a, lineno) for a in _split_top(nm["args"] or "")]
            nodes.append(Node.make(op.name, args, outs, attrs))
    if not closed:
        raise ParseError("missing closing '}'")
    if outputs is None:
        raise ParseError("missing 'return' line")
    floats = [v.type.dtype for v in (*inputs, *params) if v.type.is_float]
    return FrozenGraph(m["name"], floats[0] if floats else "f32", inputs=inputs, params=params, state=state,
                 nodes=nodes, outputs=outputs)
