"""Which lines of the generated code each IR node became: the renderer's own plan, read back.

A target's :class:`~bngraph.backends.Rendered` holds the sources *and* the plans they were rendered
from (``Rendered.plans``: each program's steps in order, one per node). Every renderer writes a
node's code under the node itself as a comment, ``format_node(node)`` exactly (docs/codegen.md),
the steps in plan order. So the lines of step *k* are found without guessing: walk the steps of a
program in order and look, past the previous step, for the exact line ``# <node>`` (a Python file:
the NumPy module, the CUDA host driver) or ``// <node>`` (a C-like file: the CUDA kernels).

* In a Python file a step's lines run from its comment to the next step's comment; the last step
  ends before the function's ``return {`` or a gradient copy (``# grad.<param>: ...``), which is
  linked to the node that made the copied value.
* In a C-like file a step is one or more kernels, each opened by the node's comment and closed by
  a ``}`` in the first column.

Each program is looked for only inside its own part of a file (``def <program>(`` up to the next
``def``, or from ``// ======== <program> ========`` to the next such header), so two programs that
hold the same node line (``forward`` and ``evaluate``) are never mixed up. A step whose comment is
not in a file has no lines there (a cuBLAS call lives only in the driver, not in the ``.cu``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..printer import format_node


@dataclass
class CodePart:
    """One program's part of one generated file: ``lines`` (text), ``first`` (its first line's
    number in the file, from 1) and ``owner`` (per line: the step index that line belongs to, or None)."""

    file: str
    first: int
    lines: list
    owner: list


@dataclass
class ProgramCode:
    """A program as the target lowered it: its graph (``plan.graph``) and its code, part by part."""

    name: str
    graph: object
    parts: list = field(default_factory=list)  # [CodePart]

    def lines_of(self, step: int) -> list:
        """``[(file, line number)]`` of step ``step``'s code, in every file."""
        return [(p.file, p.first + i) for p in self.parts for i, o in enumerate(p.owner) if o == step]


def _is_python(file: str) -> bool:
    return file.endswith(".py")


def _program_region(lines: list, program: str, python: bool) -> tuple | None:
    """``(start, end)`` line indexes of ``program``'s part of a file, or None when it has none."""
    if python:
        head = f"def {program}("
        s = next((i for i, ln in enumerate(lines) if ln.startswith(head)), None)
        if s is None:
            return None
        return s, next((i for i in range(s + 1, len(lines)) if lines[i].startswith("def ")), len(lines))
    s = next((i for i, ln in enumerate(lines) if ln.strip() == f"// ======== {program} ========"), None)
    if s is None:
        return None
    return s, next((i for i in range(s + 1, len(lines)) if _is_c_header(lines[i])), len(lines))


def _is_c_header(line: str) -> bool:
    t = line.strip()
    return t.startswith("// ======== ") and t.endswith(" ========")


def _python_owners(lines: list, marks: dict, plan) -> list:
    """Per line of a Python function: its step. ``marks``: step index -> the line of its comment."""
    owner = [None] * len(lines)
    order = sorted(marks.items(), key=lambda kv: kv[1])
    end_of_body = next((i for i, ln in enumerate(lines) if ln.strip() == "return {"), len(lines))
    copies = [f"# grad.{param}:" for param, _ in plan.copies]
    for j, (step, at) in enumerate(order):
        stop = order[j + 1][1] if j + 1 < len(order) else end_of_body
        if j + 1 == len(order):  # the gradient copies come after the last step's lines
            stop = next((i for i in range(at + 1, stop) if any(c in lines[i] for c in copies)), stop)
        while stop > at + 1 and not lines[stop - 1].strip():  # a blank line between steps belongs to none
            stop -= 1
        for i in range(at, stop):
            owner[i] = step
    producers = {o.name: k for k, st in enumerate(plan.steps) for o in st.node.outputs}
    for (param, value), tag in zip(plan.copies, copies):
        for i in range(end_of_body):
            if tag in lines[i] and owner[i] is None:
                owner[i] = producers.get(plan.aliases.get(value, value), producers.get(value))
    return owner


def _c_owners(lines: list, marks_all: dict) -> list:
    """Per line of a C-like part: its step. ``marks_all``: step index -> the lines of its comments;
    each comment opens a kernel that ends at a ``}`` in the first column."""
    owner = [None] * len(lines)
    for step, ats in marks_all.items():
        for at in ats:
            i = at
            while i < len(lines):
                owner[i] = step
                if lines[i] == "}":
                    break
                i += 1
    return owner


def map_program(name: str, plan, sources: dict) -> ProgramCode:
    """Program ``name``'s code in every file of ``sources``, each line owned by its step of ``plan``."""
    code = ProgramCode(name, plan.graph)
    for file, text in sources.items():
        lines = text.splitlines()
        python = _is_python(file)
        region = _program_region(lines, name, python)
        if region is None:
            continue
        s, e = region
        part = lines[s:e]
        prefix = "# " if python else "// "
        stripped = [ln.strip() for ln in part]
        wanted = [prefix + format_node(step.node) for step in plan.steps]
        marks, marks_all, cursor = {}, {}, 0
        for k, want in enumerate(wanted):
            at = next((i for i in range(cursor, len(part)) if stripped[i] == want), None)
            if at is None:
                continue  # no code for this step in this file (a cuBLAS call is not in the .cu)
            later = set(wanted[k + 1:])
            nxt = next((i for i in range(at + 1, len(part)) if stripped[i] in later), len(part))
            marks[k] = at
            marks_all[k] = [i for i in range(at, nxt) if stripped[i] == want]  # a node of several kernels
            cursor = marks_all[k][-1] + 1
        if marks:
            owner = _python_owners(part, marks, plan) if python else _c_owners(part, marks_all)
            code.parts.append(CodePart(file, s + 1, part, owner))
    return code


def map_code(rendered) -> list:
    """``[ProgramCode]`` of every program of a :class:`~bngraph.backends.Rendered`, in plan order."""
    return [map_program(name, plan, rendered.sources) for name, plan in rendered.plans.items()]
