"""A target written from scratch: each program becomes a Python function over plain lists.

No NumPy in the generated code and nothing borrowed from the built-in targets: this file is the
renderer, the lowering table and the runtime; ``templates/`` beside it holds the Jinja templates.
A ``(units, m)`` value is a list of ``units`` rows of ``m`` Python floats, a ``(units,)`` param a
list of floats. Python floats are doubles, so it computes in double precision whatever the dtype.

It lowers only the ops of an inference program (docs/targets.md, "An inference-only target"):
``bg.emit(g, target="lists", inference=True)`` renders one, ``model.export_inference(target="lists")``
runs a trained model's on it, and ``bg.compile(g, target="lists")`` is one error naming the first
op of ``train_step`` it cannot lower (a loss, a gradient, batch norm in training mode).
"""
from __future__ import annotations

import linecache
import types
from pathlib import Path

import jinja2
import numpy as np

from bngraph.backends import Executable, Lowering, Rendered, Renderer, Runtime, Target
from bngraph.printer import format_node

TEMPLATES = Path(__file__).resolve().parent / "templates"

# activation -> its expression of one float ``v``; every one keeps a NaN (a diverged input stays visible)
ACTIVATIONS = {
    "identity": "{v}",
    "relu": "(0.0 if {v} < 0.0 else {v})",
    "leaky_relu": "({v} * {slope!r} if {v} < 0.0 else {v})",
    "tanh": "math.tanh({v})",
    "sigmoid": "(1.0 / (1.0 + math.exp(-{v})) if {v} >= 0.0 else math.exp({v}) / (1.0 + math.exp({v})))",
}


def activation(node) -> str:
    """The expression of the activation ``node`` applies to ``v``: its ``act`` attribute
    (``bias_add_act``), else the op itself (``relu``...)."""
    name = node.attr.get("act", node.op)
    return ACTIVATIONS[name].format(v="v", slope=float(node.attr.get("negative_slope", 0.0)))


def matmul_operands(node, ins) -> dict:
    """The left operand's rows and the right operand's columns; a transposed operand
    (``matmul[ta=true]``, ``[tb=true]``) is read the other way round (its columns are the rows)."""
    a, b = ins
    return {"rows": f"zip(*{a})" if node.attr["ta"] else a, "cols": b if node.attr["tb"] else f"list(zip(*{b}))"}


# ---- the lowering table: op -> Lowering (a template under templates/, extra variables) ----------

MATMUL = Lowering("matmul.j2", temps=("cols",), context=matmul_operands)
ACTIVATION = Lowering("activation.j2", context=lambda node, ins: {"act": activation(node)})

LOWERINGS = {
    "matmul": MATMUL,
    "bias_add": Lowering("bias_add.j2"),
    "bias_add_act": Lowering("bias_add_act.j2", context=lambda node, ins: {"act": activation(node)}),
    "relu": ACTIVATION,
    "leaky_relu": ACTIVATION,
    "tanh": ACTIVATION,
    "sigmoid": ACTIVATION,
    "log_softmax": Lowering("log_softmax.j2"),
    "identity": Lowering("identity.j2", alias=True),  # the input itself: a name, no code
}


class ListsRenderer(Renderer):
    """Programs -> one Python module, a function per program and a few lines per node."""

    target = "lists"
    lowerings = LOWERINGS
    # names the module and the templates use: no value is given one of them as its identifier
    reserved = ("math", "operator", "P", "S", "B", "m", "dst", "row", "col", "b", "z", "v", "j", "top", "lse", "_")

    def __init__(self):
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)

    def render(self, programs, dtype, graph_name, docs=None):
        docs = docs or {}
        plans = {name: self.plan(name, graph) for name, graph in programs.items()}
        functions = [self.function(plan, docs.get(name, f"Program {name}.")) for name, plan in plans.items()]
        text = self.env.get_template("module.py.j2").render(graph_name=graph_name, dtype=dtype, functions=functions)
        return Rendered({f"{graph_name}_lists.py": text.rstrip("\n") + "\n"}, plans, dtype, graph_name)

    def function(self, plan, doc: str) -> str:
        body = []
        for step in plan.steps:
            node = step.node
            ins = [plan.expr(name) for name in node.inputs]  # P["fc1.W"], x, act1, ...
            # where each output goes: the plan's buffer (B["act1"]), else a new list of its shape
            dest = [plan.dest_expr(d) or new_list(o.type) for d, o in zip(step.dests, node.outputs)]
            context = dict(out=step.outs, ins=ins, dest=dest, tmp=step.temps, attrs=node.attr)
            if step.lowering.context is not None:
                context.update(step.lowering.context(node, ins))
            body.append(f"# {format_node(node)}")
            body.extend(self.env.get_template(step.template).render(**context).splitlines())
        name, axis = plan.batch  # the batch size m: a length of a batch-sized input
        batch = f"len({plan.expr(name)}{'[0]' * axis})"
        return self.env.get_template("function.py.j2").render(
            name=plan.name, args=", ".join(plan.signature()), doc=doc, batch=batch, body=body,
            returns=plan.returns())


def new_list(t) -> str:
    """A new zero list of type ``t``: ``[[0.0] * m for _ in range(5)]`` for f32[5,m]."""
    expr = "0.0"
    for d in reversed(t.shape):
        expr = f"[{expr}] * {d}" if expr == "0.0" else f"[{expr} for _ in range({d})]"
    return expr


class ListsRuntime(Runtime):
    """Runs the generated module with Python's own ``exec``; its arrays are nested lists."""

    target = "lists"

    def __init__(self, device=None):
        if device not in (None, "cpu"):
            raise ValueError(f"the lists target runs on the host CPU; got device {device!r}")
        super().__init__("cpu")

    def load(self, rendered):
        ((file_name, text),) = rendered.sources.items()
        filename = f"<lists:{file_name}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)  # tracebacks show the code
        module = types.ModuleType(f"lists_{rendered.graph_name}")
        exec(compile(text, filename, "exec"), module.__dict__)
        return Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans}, module=module)

    def asarray(self, a, dtype):  # host data -> nested lists of floats (the dtype's values)
        return np.asarray(a, dtype=dtype).tolist()

    def to_numpy(self, a):
        return np.array(a, dtype=np.float64)

    def empty(self, shape, dtype):  # the plan's buffers
        return np.zeros(shape, dtype=dtype).tolist()


TARGET = Target("lists", ListsRenderer(), ListsRuntime)
