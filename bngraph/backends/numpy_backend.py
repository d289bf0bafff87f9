"""The NumPy backend: renders each program into a Python function from templates/numpy/<op>.j2.

One IR node becomes one statement (or a few lines for fused ops), preceded by the node as a
comment. Batch-sized values are written into preallocated buffers (``out=``); the generated module
is a plain string, loaded with ``exec`` (no temporary files; ``linecache`` knows the source, so
tracebacks show the generated lines).
"""
from __future__ import annotations

import keyword
import linecache
import types

import numpy as np

from .. import __version__
from ..ir import BATCH, DTYPES
from ..printer import format_node
from .base import Backend, template_env

RESERVED = {"np", "P", "S", "B", "m", "DTYPE"}
# op -> names of the temporaries its template uses (named after the node's first output)
TEMPS = {
    "batchnorm_act": ("s", "t"),
    "softmax_cross_entropy": ("tmp",),
    "batchnorm_grad": ("inv_std", "zhat"),
    "batchnorm_act_grad": ("dy", "inv_std", "zhat"),
}
# op -> its batch-sized temporaries, which get buffers shaped like the node's first output
TEMP_BUFFERS = {"batchnorm_act_grad": ("dy",)}
NO_BUFFER = {"identity"}  # returns its input


class Namer:
    """IR value names -> Python identifiers (``fc1.W`` -> ``fc1_W``), unique within a function."""

    def __init__(self):
        self.taken = set(RESERVED)
        self.names: dict = {}

    def __call__(self, ir_name: str) -> str:
        if ir_name not in self.names:
            base = "".join(c if c.isalnum() or c == "_" else "_" for c in ir_name)
            if not base or base[0].isdigit() or keyword.iskeyword(base):
                base = "v_" + base
            name, k = base, 1
            while name in self.taken:
                k += 1
                name = f"{base}_{k}"
            self.taken.add(name)
            self.names[ir_name] = name
        return self.names[ir_name]


def _shape_expr(t) -> str:
    dims = ", ".join("m" if d == BATCH else str(d) for d in t.shape)
    return f"({dims},)" if len(t.shape) == 1 else f"({dims})"


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self):
        self.env = template_env("numpy")

    def render_function(self, fname: str, g, doc: str) -> str:
        namer = Namer()
        expr = {}
        for v in g.inputs:
            expr[v.name] = namer(v.name)
        for v in g.params:
            expr[v.name] = f'P["{v.name}"]'
        for v in g.state:
            expr[v.name] = f'S["{v.name}"]'
        body, buffers = [], []
        for n in g.nodes:
            outs = [namer(o.name) for o in n.outputs]
            for o, var in zip(n.outputs, outs):
                expr[o.name] = var
            bufs = []
            for o in n.outputs:
                if n.op not in NO_BUFFER and o.type.rank == 2 and BATCH in o.type.shape:
                    bufs.append(f'B["{o.name}"]')
                    buffers.append((o.name, _shape_expr(o.type)))
                else:
                    bufs.append(None)
            temps = {t: namer(f"{n.outputs[0].name}.{t}") for t in TEMPS.get(n.op, ())}
            tbuf = {}
            for t in TEMP_BUFFERS.get(n.op, ()):
                key = f"{n.outputs[0].name}.{t}"
                tbuf[t] = f'B["{key}"]'
                buffers.append((key, _shape_expr(n.outputs[0].type)))
            code = self.env.get_template(f"{n.op}.j2").render(
                out=outs, ins=[expr[i] for i in n.inputs], buf=bufs, attrs=n.attr, tbuf=tbuf, **temps
            )
            body.append("    # " + format_node(n))
            body.extend("    " + ln for ln in code.strip("\n").splitlines())
        batch_input = next(v for v in g.inputs if BATCH in v.type.shape)
        batch_expr = f"{expr[batch_input.name]}.shape[{list(batch_input.type.shape).index(BATCH)}]"
        args = ", ".join([*(expr[v.name] for v in g.inputs), "P", "S", "B"])
        return self.env.get_template("function.py.j2").render(
            name=fname, args=args, doc=doc, batch_expr=batch_expr, body=body,
            returns=[(k, expr[v]) for k, v in g.outputs], buffers=buffers,
        ).rstrip("\n")

    def emit(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> dict:
        docs = docs or {}
        functions = [
            self.render_function(name, g, docs.get(name, f"Program {name} of graph {graph_name}."))
            for name, g in programs.items()
        ]
        src = self.env.get_template("module.py.j2").render(
            graph_name=graph_name, version=__version__, dtype=DTYPES[dtype], functions=functions
        )
        return {f"{graph_name}_numpy.py": src.rstrip("\n") + "\n"}

    def load(self, sources: dict, graph_name: str):
        ((fname, src),) = sources.items()
        filename = f"<bngraph:{fname}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        module = types.ModuleType(f"bngraph_generated_{graph_name}")
        module.__file__ = filename
        exec(compile(src, filename, "exec"), module.__dict__)
        return module

    def asarray(self, a, dtype):
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)
