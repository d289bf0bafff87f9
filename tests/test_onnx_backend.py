"""ONNX's own node tests, run against bngraph through ``onnx.backend.test.BackendTest``.

The selection is every node test of onnx (1.23) made only of the ops bngraph imports (Gemm,
MatMul, BatchNormalization, Relu, LeakyRelu, Sigmoid, Tanh, Identity, Flatten, Softmax,
LogSoftmax, Add/Mul/Sub/Div, SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss). ``EXCLUDED``
lists the cases bngraph's IR cannot express, each with its reason (docs/interop.md shows the same
list); every other case is included and must pass on the NumPy target. A test checks that each
excluded case is refused by the importer with a clear error (so the list cannot go stale), and
prints the counts.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from interop_support import need

onnx = need("onnx")
from onnx.backend.test import BackendTest  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from bngraph.interop.onnx_backend import BngraphBackend  # noqa: E402
from bngraph.interop.onnx_read import UnsupportedNode  # noqa: E402

OPS = {"Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Flatten",
       "Softmax", "LogSoftmax", "Add", "Mul", "Sub", "Div", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"}

MATMUL_ND = "a batched N-D MatMul: the IR's matmul is weights (out, in) times data (features, batch)"


def _cases(names, reason):
    return {n: reason for n in names.split()}


EXCLUDED = {
    **_cases("test_matmul_3d test_matmul_4d test_matmul_bcast test_matmul_1d_3d test_matmul_4d_1d", MATMUL_ND),
}


def _max_rank(model) -> int:
    ranks = [len(vi.type.tensor_type.shape.dim) for vi in (*model.graph.input, *model.graph.output)]
    return max(ranks, default=0)


with warnings.catch_warnings():  # onnx's own case generators overflow casts on purpose
    warnings.simplefilter("ignore", RuntimeWarning)
    SELECTED = {c.name: c for c in load_model_tests(kind="node")
                if c.model is not None and {n.op_type for n in c.model.graph.node} <= OPS}
    backend_test = BackendTest(BngraphBackend, __name__)
INCLUDED = sorted(set(SELECTED) - set(EXCLUDED))
# the issue's core set: node tests with data of at most 2 axes, and BatchNormalization on 4-D data
CORE = sorted(n for n, c in SELECTED.items() if _max_rank(c.model) <= 2
              or {x.op_type for x in c.model.graph.node} == {"BatchNormalization"})

for _name in INCLUDED:
    backend_test.include(f"^{re.escape(_name)}_cpu$")
_KEEP = {f"{n}_cpu" for n in INCLUDED}
for _cls_name, _cls in backend_test.test_cases.items():  # unittest classes: pytest runs every included case
    for _attr in [a for a in vars(_cls) if a.startswith("test_") and a not in _KEEP]:
        delattr(_cls, _attr)  # the thousands of other onnx cases are left out, not reported as skipped
    if any(a.startswith("test_") for a in vars(_cls)):
        globals()[_cls_name] = _cls


def _assert_same(g, e, case):
    if isinstance(e, list):  # a sequence (or an optional holding one): element by element
        assert isinstance(g, list) and len(g) == len(e), (case.name, type(g), e)
        for gi, ei in zip(g, e):
            _assert_same(gi, ei, case)
        return
    assert g.shape == e.shape and g.dtype == e.dtype, (case.name, g.shape, g.dtype, e.shape, e.dtype)
    np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=case.name)


def _run_case(case, device="CPU", **kwargs):
    rep = BngraphBackend.prepare(case.model, device, **kwargs)
    for inputs, expected in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            _assert_same(g, e, case)


def test_the_selection_is_what_the_issue_counts():
    assert set(EXCLUDED) <= set(SELECTED), sorted(set(EXCLUDED) - set(SELECTED))
    assert len(CORE) == 50  # 46 cases with data of at most 2 axes + 4 BatchNormalization on 4-D data
    bn = [n for n in CORE if n.startswith("test_batchnorm")]
    assert len(bn) == 4 and all(n in INCLUDED for n in bn)


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_cases_are_refused_with_a_reason(name):
    with pytest.raises(UnsupportedNode, match=r"ONNX node .+\(.+\): "):
        BngraphBackend.prepare(SELECTED[name].model)


def test_counts_are_printed_and_documented(capsys):
    passed = []
    for name in INCLUDED:
        _run_case(SELECTED[name])
        passed.append(name)
    core_in = [n for n in CORE if n in INCLUDED]
    lines = [f"ONNX backend node tests (onnx {onnx.__version__}, NumPy target): {len(passed)} passed of "
             f"{len(INCLUDED)} included; {len(EXCLUDED)} excluded of {len(SELECTED)} selected",
             f"  of the issue's {len(CORE)} (data of at most 2 axes, and BatchNormalization on 4-D): "
             f"{len(core_in)} included and passed, {len(CORE) - len(core_in)} excluded"]
    with capsys.disabled():  # shown in the test output, also under -q
        print("\n" + "\n".join(lines))
    docs = (Path(__file__).parents[1] / "docs" / "interop.md").read_text()
    for fact in (f"{len(passed)} passed", f"{len(EXCLUDED)} excluded", f"{len(core_in)} of the {len(CORE)}"):
        assert fact in docs, f"docs/interop.md should say {fact!r}"
    missing = [n for n in EXCLUDED if f"`{n}`" not in docs]
    assert not missing, f"docs/interop.md does not list the excluded cases {missing}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", INCLUDED)
def test_included_cases_on_the_cuda_target(name):
    _run_case(SELECTED[name], device="CUDA")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="the CUDA emulator needs g++")
@pytest.mark.parametrize("name", INCLUDED)
def test_included_cases_on_the_cuda_target_emulated(name):
    """The CUDA target's kernels, compiled as C++ for the CPU (device='emulator'), pass the same cases."""
    _run_case(SELECTED[name], target="cuda", target_device="emulator")
