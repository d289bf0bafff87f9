"""Untrusted names and sizes from model files.

ONNX value, node, graph and initializer names are arbitrary strings (quotes, newlines, code), and
IR names end up in generated code as identifiers and comments. :class:`NameMap` turns each one into
a safe IR name (``[A-Za-z_][A-Za-z0-9_.]*``, at most ``MAX_NAME`` characters, unique) and keeps
the original for export. Sizes are checked from the declared dims before anything is allocated.
"""
from __future__ import annotations

import hashlib
import math
import re

from ..ir import NAME_PATTERN, IRError

MAX_NAME = 64  # long names keep their head and a hash of the whole
MAX_ELEMENTS = 1 << 27  # one tensor: 128 Mi elements (512 MiB of float32)
MAX_TOTAL_ELEMENTS = 1 << 28  # all the weights of one model together
MAX_RANK = 8

_NAME_RE = re.compile(NAME_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")
# the DSL adds these to a layer's name; an imported name ending so could collide with them
_RESERVED_TAILS = (".W", ".b", ".matmul", ".gamma", ".beta", ".running_mean", ".running_var", ".mean", ".var",
                   ".next", "_folded")


class UnsafeModel(IRError):
    """A model file that cannot be imported safely (absurd sizes, external data, bad attributes)."""


def show(name, limit: int = 60) -> str:
    """An untrusted string for an error message: repr (no raw newlines or escapes), shortened."""
    r = repr(name)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def sanitize(name, fallback: str = "v") -> str:
    """A valid IR identifier made from any string: unsafe runs become '_', dots are not doubled,
    a leading digit or dot gets a '_' in front; long names keep their head plus a short hash."""
    text = str(name) if name is not None else ""
    s = _UNSAFE.sub("_", text).strip("_.")
    s = re.sub(r"\.{2,}", ".", s)
    if not s:
        s = fallback
    if not (s[0].isalpha() or s[0] == "_"):
        s = "_" + s
    if len(s) > MAX_NAME:
        digest = hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:8]
        s = s[: MAX_NAME - 9].rstrip(".") + "_" + digest
    if s.endswith(_RESERVED_TAILS):
        s += "_"
    assert _NAME_RE.fullmatch(s), s
    return s


class NameMap:
    """Safe, unique IR names for untrusted originals; ``original[ir] -> the string it came from``."""

    def __init__(self, taken=()):
        self.taken = set(taken)
        self.original: dict = {}

    def claim(self, name, fallback: str = "v", original=None) -> str:
        """A fresh IR name for ``name`` (also reserving the names the DSL derives from it)."""
        base = sanitize(name, fallback)
        cand, k = base, 1
        while any(t == cand or t.startswith(cand + ".") or cand.startswith(t + ".") for t in self.taken):
            k += 1
            cand = f"{base}_{k}"
        self.taken.add(cand)
        self.original[cand] = str(name) if original is None else str(original)
        return cand


def check_dims(where: str, dims, what: str = "tensor") -> tuple:
    """Declared dims as ints, refused when negative, too many or too large (before any allocation)."""
    dims = tuple(dims)
    if len(dims) > MAX_RANK:
        raise UnsafeModel(f"{where}: {what} has rank {len(dims)}; at most {MAX_RANK} is supported")
    out = []
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise UnsafeModel(f"{where}: {what} has a bad dimension {show(d)} in {show(dims)}")
        out.append(d)
    n = math.prod(out)
    if n > MAX_ELEMENTS:
        raise UnsafeModel(f"{where}: {what} declares shape {tuple(out)} = {n} elements, more than the limit of "
                          f"{MAX_ELEMENTS} (refused before allocating)")
    return tuple(out)
