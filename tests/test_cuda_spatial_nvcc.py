"""Every spatial kernel (im2col, col2im, the pools and their gathers, global average pooling,
flatten/unflatten, batch norm on rows of m*d1*d2) compiled by nvcc for sm_90 without a warning, and
ptxas's registers, shared memory and spills against the blocks the generated driver launches each
with at batch sizes 1 to 2^20 (tests/test_cuda_ptxas.py's checks, on a CNN that holds every op;
that suite's matrix stays MLP-sized). Skipped where nvcc is missing."""
from __future__ import annotations

import shutil

import pytest

import bngraph as bg

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def every_spatial_op(dtype: str) -> bg.Graph:
    g = bg.Graph("zoo2d", dtype)
    x, y = g.input("x", (2, 9, 9)), g.labels("y", 3)
    h = g.relu(g.batchnorm(g.conv(x, 4, 3, stride=2, padding=(0, 1, 1, 0), name="c1"), name="bn1"))  # 4x4
    h = g.maxpool(h, 2, stride=1, dilation=2)  # 2x2
    h = g.relu(g.conv(h, 4, 3, padding=1, groups=2, name="c2"))  # bias_add_act and sum_batch on spatial values
    h = g.avgpool(h, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    h = g.avgpool(h, 2, stride=1, padding=1, count_include_pad=True)
    g.softmax_cross_entropy(g.matmul(g.flatten(g.global_avgpool(h)), 3, name="out"), y)
    return g


def test_every_spatial_kernel_compiles_and_fits_its_launches_on_sm90(tmp_path):
    from test_cuda_ptxas import check_all, compiled

    matrix = {}
    for dtype in ("f32", "f64"):
        src = bg.emit(every_spatial_op(dtype), target="cuda", dtype=dtype)
        matrix[f"zoo2d_{dtype}"] = (src["zoo2d_cuda.cu"], src["zoo2d_cuda.py"])
    reports = compiled({k: cu for k, (cu, _) in matrix.items()}, tmp_path)  # asserts: no error, no warning
    problems, rows, unlaunched = check_all(matrix, reports)
    assert problems == []
    names = {r.name for _, r, _ in rows}
    for op_kernel in ("train_step__c1_conv", "train_step__c1_W_grad", "train_step__pool1_grad", "train_step__pool1",
                      "train_step__flatten1", "train_step__pool2_grad", "forward__pool3"):
        assert op_kernel in names, sorted(names)
    assert not [u for u in unlaunched if "train_step__" in u and not u.endswith(("_partial", "_combine"))], unlaunched
