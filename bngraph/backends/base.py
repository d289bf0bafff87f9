"""The backend interface and registry.

A backend renders a set of *programs* (named graphs: ``train_step``, ``forward``, ...) into source
files and loads them into callables. Every program function has the signature
``fn(*inputs, P, S, B) -> dict`` (inputs in the graph's order, in the compiler's (features, m)
layout; P params, S state, B the buffers from ``alloc_<fn>(m)``) and returns the graph's outputs by
key. Arrays live where the backend keeps them: ``asarray``/``to_numpy`` move them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import jinja2

from ..ir import IRError


class Backend(ABC):
    name = "?"

    @abstractmethod
    def emit(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> dict:
        """{program name: graph} -> {file name: source}; ``docs`` gives each function's docstring."""

    @abstractmethod
    def load(self, sources: dict, graph_name: str):
        """{file name: source} -> an object with one callable per program (and alloc_<program>)."""

    @abstractmethod
    def asarray(self, a, dtype):
        """A host array -> an array this backend computes on."""

    @abstractmethod
    def to_numpy(self, a):
        """An array of this backend -> a NumPy array on the host."""


BACKENDS: dict = {}


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise IRError(f"unknown target {name!r}: available targets are {', '.join(sorted(BACKENDS))}") from None


def templates_dir(target: str) -> Path:
    """templates/<target>: inside the installed package (the wheel) or the source checkout."""
    try:
        from importlib.resources import files

        p = Path(str(files("bngraph.templates") / target))
        if p.is_dir():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    p = Path(__file__).resolve().parents[2] / "templates" / target
    if not p.is_dir():
        raise FileNotFoundError(f"templates for target {target!r} not found (looked in {p})")
    return p


def template_env(target: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir(target))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
