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

INTEGER = "integer data: the IR computes in float32/float64 (integers only as class labels)"
NOT_TENSOR = "a sequence or optional value, not a tensor: the IR's values are tensors"
DATA_OP = ("an elementwise Mul/Sub/Div of two data tensors: the IR multiplies data only by constants (a scale) "
           "and adds data to data (add); there is no elementwise product, difference or quotient of data")
MATMUL_ND = "a batched N-D MatMul: the IR's matmul is weights (out, in) times data (features, batch)"
SOFTMAX_ND = ("Softmax/LogSoftmax on 3-D data: imported over the features of 2-D (batch, features) data, as a "
              "classifier's output head")
LOSS = ("a loss variant the IR's softmax_cross_entropy does not have: it is the mean over the batch of "
        "-log softmax(logits)[label] on (batch, classes) scores; no reduction none/sum, class weights, "
        "ignore_index, log_prob output or N-D scores; NegativeLogLikelihoodLoss only on a LogSoftmax's output")


def _cases(names, reason):
    return {n: reason for n in names.split()}


EXCLUDED = {
    **_cases("test_add_int8 test_add_int16 test_add_uint8 test_add_uint16 test_add_uint32 test_add_uint64 "
             "test_div_int8 test_div_int16 test_div_int32_trunc test_div_uint8 test_div_uint16 test_div_uint32 "
             "test_div_uint64 test_mul_int8 test_mul_int16 test_mul_uint8 test_mul_uint16 test_mul_uint32 "
             "test_mul_uint64 test_sub_int8 test_sub_int16 test_sub_uint8 test_sub_uint16 test_sub_uint32 "
             "test_sub_uint64 test_clip_default_int8_inbounds_expanded", INTEGER),
    **_cases("test_identity_sequence test_identity_opt", NOT_TENSOR),
    **_cases("test_div_example test_div test_mul_example test_mul test_sub_example test_sub", DATA_OP),
    **_cases("test_matmul_3d test_matmul_4d test_matmul_bcast test_matmul_1d_3d test_matmul_4d_1d", MATMUL_ND),
    **_cases("test_softmax_axis_0 test_softmax_axis_1 test_softmax_axis_2 test_softmax_negative_axis "
             "test_softmax_default_axis test_logsoftmax_axis_0 test_logsoftmax_axis_1 test_logsoftmax_axis_2 "
             "test_logsoftmax_negative_axis test_logsoftmax_default_axis", SOFTMAX_ND),
    **_cases(" ".join(f"test_sce_{s}" for s in (
        "none none_log_prob none_weights none_weights_log_prob sum sum_log_prob mean_log_prob mean_3d "
        "mean_3d_log_prob mean_weight mean_weight_log_prob mean_weight_ii mean_weight_ii_log_prob "
        "mean_no_weight_ii mean_no_weight_ii_log_prob mean_weight_ii_3d mean_weight_ii_3d_log_prob "
        "mean_no_weight_ii_3d mean_no_weight_ii_3d_log_prob mean_weight_ii_4d mean_weight_ii_4d_log_prob "
        "mean_no_weight_ii_4d mean_no_weight_ii_4d_log_prob NCd1d2d3d4d5_mean_weight "
        "NCd1d2d3d4d5_mean_weight_log_prob NCd1d2d3d4d5_none_no_weight NCd1d2d3d4d5_none_no_weight_log_prob "
        "NCd1_mean_weight_negative_ii NCd1_mean_weight_negative_ii_log_prob NCd1d2d3_none_no_weight_negative_ii "
        "NCd1d2d3_none_no_weight_negative_ii_log_prob NCd1d2d3_sum_weight_high_ii "
        "NCd1d2d3_sum_weight_high_ii_log_prob").split()), LOSS),
    **_cases(" ".join(f"test_nllloss_{s}" for s in (
        "NC NCd1d2 NCd1d2_reduction_mean NCd1d2_reduction_sum NCd1d2_with_weight NCd1d2_with_weight_reduction_mean "
        "NCd1d2_with_weight_reduction_sum NCd1d2_with_weight_reduction_sum_ii NCd1d2_no_weight_reduction_mean_ii "
        "NCd1 NCd1_weight NCd1_ii NCd1_weight_ii NCd1d2d3d4d5_mean_weight NCd1d2d3d4d5_none_no_weight "
        "NCd1_mean_weight_negative_ii NCd1d2d3_none_no_weight_negative_ii NCd1d2d3_sum_weight_high_ii").split()), LOSS),
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


def _run_case(case, device="CPU", **kwargs):
    rep = BngraphBackend.prepare(case.model, device, **kwargs)
    for inputs, expected in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, (case.name, g.shape, g.dtype, e.shape, e.dtype)
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=case.name)


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
