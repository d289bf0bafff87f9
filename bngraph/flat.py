"""Flat parameter buffers: one 1-D buffer per dtype, with a named view per parameter.

Params, their gradients and every optimizer slot share one :class:`FlatLayout` (the order is the
graph's param order), so a whole-buffer operation (an optimizer pass, a finite check) is one call
however many parameters there are, and user code still sees ``name -> array`` through the views::

    layout = FlatLayout([("fc1.W", (128, 64), "float32"), ("bn1.gamma", (128,), "float32")])
    P = layout.allocate(xp)          # xp: the runtime's array module (numpy, cupy, ...)
    P.views["fc1.W"]                 # a (128, 64) view into P.buffers["float32"]
    G = layout.allocate(xp)          # same layout: grads line up with params element for element

Nothing here is NumPy-specific: arrays come from ``xp.zeros`` and views from slicing and
``reshape``, which every array module provides.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod


def array_namespace(a):
    """The array module of ``a``: ``a.__array_namespace__()`` (NumPy 2, CuPy, array-API libraries),
    else NumPy (NumPy 1.x arrays, lists, Python scalars). Imported lazily: nothing else here needs it."""
    get = getattr(type(a), "__array_namespace__", None)
    if get is not None:
        return get(a)
    import numpy
    return numpy


@dataclass(frozen=True)
class Segment:
    """Where one named array lives: ``buffers[dtype][offset:offset + size]``, reshaped to ``shape``."""

    name: str
    shape: tuple
    dtype: str  # a NumPy dtype name: 'float32', 'float64'
    offset: int
    size: int


class FlatLayout:
    """The placement of named arrays in one flat buffer per dtype (in the order given)."""

    def __init__(self, specs):
        self.segments: dict[str, Segment] = {}
        self.totals: dict[str, int] = {}  # dtype -> buffer length
        for name, shape, dtype in specs:
            if name in self.segments:
                raise ValueError(f"FlatLayout: {name!r} given twice")
            shape = tuple(int(d) for d in shape)
            size = prod(shape)
            offset = self.totals.get(dtype, 0)
            self.segments[name] = Segment(name, shape, dtype, offset, size)
            self.totals[dtype] = offset + size

    @property
    def names(self) -> list:
        return list(self.segments)

    @property
    def dtypes(self) -> list:
        return list(self.totals)

    def allocate(self, xp) -> "FlatArrays":
        """Zero-filled buffers from the array module ``xp`` and their named views."""
        buffers = {dt: xp.zeros(n, dtype=dt) for dt, n in self.totals.items()}
        return FlatArrays(self, buffers)

    def runs(self, names, block: int | None = None) -> list:
        """``[(dtype, start, stop)]``: the maximal contiguous stretches covered by ``names``
        (a parameter group's params), so a whole-group update is a few slices, not one per param.
        With ``block``, longer stretches are cut into pieces of at most ``block`` elements."""
        segs = sorted((self.segments[n] for n in names), key=lambda s: (s.dtype, s.offset))
        out: list = []
        for s in segs:
            if s.size == 0:
                continue
            if out and out[-1][0] == s.dtype and out[-1][2] == s.offset:
                out[-1] = (s.dtype, out[-1][1], s.offset + s.size)
            else:
                out.append((s.dtype, s.offset, s.offset + s.size))
        if block is not None:
            if block < 1:
                raise ValueError(f"block must be a positive number of elements, got {block}")
            out = [(dt, i, min(i + block, stop)) for dt, start, stop in out
                   for i in range(start, stop, block)]
        return out

    def name_at(self, offset: int, dtype: str | None = None) -> str:
        """The name whose segment holds element ``offset`` of the ``dtype`` buffer (the only one
        when None), or '?' outside every segment."""
        for s in self.segments.values():
            if (dtype is None or s.dtype == dtype) and s.offset <= offset < s.offset + s.size:
                return s.name
        return "?"

    def __eq__(self, other):
        return isinstance(other, FlatLayout) and self.segments == other.segments

    __hash__ = None

    def __repr__(self):
        sizes = ", ".join(f"{dt}: {n}" for dt, n in self.totals.items())
        return f"<FlatLayout {len(self.segments)} arrays ({sizes})>"


class FlatArrays:
    """Buffers for a :class:`FlatLayout` and a view per name (writing a view writes the buffer)."""

    def __init__(self, layout: FlatLayout, buffers: dict):
        self.layout = layout
        self.buffers = buffers  # dtype -> 1-D array
        self.views = {s.name: buffers[s.dtype][s.offset:s.offset + s.size].reshape(s.shape)
                      for s in layout.segments.values()}

    def __getitem__(self, name):
        return self.views[name]

    def __iter__(self):
        return iter(self.views)

    def __len__(self):
        return len(self.views)
