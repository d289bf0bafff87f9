"""The optimizer records (:mod:`bngraph.optim.records`) as the c target's kernels: the CUDA
target's rendering of each record's statements (:class:`~bngraph.backends.cuda_target.optimizers._Kernel`),
in a host kernel (``templates/c/optim.cpp.j2``) that computes each chunk of its share of the
elements in a loop the compiler vectorizes (``#pragma omp simd``) and reports bad values in a
second loop only where the chunk has one. The module around it (the guarded step's status protocol,
``check_update``) is the CUDA one's. Same arithmetic, same order per element: the same bits as the
NumPy update (tests/test_c_target.py)."""
from __future__ import annotations

import numpy as np

from ...optim.records import OptimizerRecord
from ..base import template_env
from ..cuda_target.optimizers import CTYPES, _Kernel, targets


class _HostKernel(_Kernel):
    """The CUDA rendering of a record's statements, each condition on h (uniform over the
    elements) a bit of the template parameter FLAGS instead: the kernel is instantiated once per
    combination, and each instance's loop has no branch left to stop the vectorizer."""

    def __init__(self, record):
        super().__init__(record)
        self.conds: list = []  # C text of each condition, in the order of its bit

    def cond(self, c) -> str:
        text = super().cond(c)
        if text not in self.conds:
            self.conds.append(text)
        return f"((FLAGS >> {self.conds.index(text)}) & 1)"


def render_kernel(record: OptimizerRecord) -> str:
    """The host source of ``optim_<name>`` (CUDA dialect: the host dialect compiles it)."""
    r = _HostKernel(record)
    body = r.block(record.body, 2)
    return template_env("c").get_template("optim.cpp.j2").module.kernel(
        name=record.name, slots=[s.name for s in record.slots], hyper=list(record.hyper),
        scalars=list(r.scalars.items()), locals=[f"l_{n}" for n in sorted(r.locals)],
        targets=[(t, "p" if t == "p" else f"s_{t}") for t in targets(record)], body=body, conds=r.conds)


def module_source(record: OptimizerRecord, dtype) -> str:
    """The module the c runtime compiles for ``record`` in ``dtype``."""
    return template_env("cuda").get_template("optim.cu.j2").render(
        ctype=CTYPES[np.dtype(dtype).name], optimizer_kernels=[render_kernel(record)])
