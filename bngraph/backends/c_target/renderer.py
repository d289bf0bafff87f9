"""The c renderer: the CUDA target's lowering table and kernel templates in the host dialect.

One ``.cpp`` file (every program's kernels, then the guarded step's, in :mod:`.host`'s dialect:
each launch a team of threads) and one Python host driver that launches them and calls
NumPy's BLAS for the matrix products. The c target has no per-op code of its own: its table is the
CUDA target's :data:`~bngraph.backends.cuda_target.lowerings.LOWERINGS` (every op, spatial and
collective ones included), its templates are ``templates/cuda/`` under ``templates/c/`` (which
overrides the module's header and the driver), and the math is the C-style base's
(:mod:`bngraph.backends.cstyle`). Text only: nothing here compiles.
"""
from __future__ import annotations

import jinja2

from ..base import Rendered, templates_dir
from ..cuda_target.renderer import CudaRenderer
from .host import PRELUDE, to_host


class CRenderer(CudaRenderer):
    """The CUDA renderer's plan and kernels; the module in the host dialect, the driver the host's."""

    target = "c"
    reserved = CudaRenderer.reserved + ("THREADS", "LOSS_PART")

    def __init__(self):
        super().__init__()
        # templates/c first (module header, driver), then templates/cuda (the kernels)
        self.template_dirs = (templates_dir("c"), templates_dir("cuda"))
        self.env.loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(d)) for d in self.template_dirs])

    def render(self, programs: dict, dtype: str, graph_name: str, docs: dict | None = None) -> Rendered:
        plans, kernels, functions, common = self.render_parts(programs, dtype, graph_name, docs)
        module = self.env.get_template("module.cpp.j2").render(ctype=self.language.types[dtype], programs=kernels,
                                                               prelude=PRELUDE.rstrip("\n"), **common)
        py = self.env.get_template("driver.py.j2").render(functions=functions, **common)
        sources = {f"{graph_name}_c.cpp": to_host(module).rstrip("\n") + "\n",
                   f"{graph_name}_c.py": py.rstrip("\n") + "\n"}
        return Rendered(sources, plans, dtype, graph_name)
