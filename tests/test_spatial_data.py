"""Spatial data at the public API: X is (N, C, L) or (N, C, H, W), checked against the model's
input shape and transposed once to the compiler's (C, m, d...) layout."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.datacheck import check_x
from bngraph.errors import DataError


def test_check_x_takes_a_spatial_example_shape():
    X = np.zeros((5, 1, 8, 8))
    assert check_x(X, (1, 8, 8), "fit").shape == (5, 1, 8, 8)
    with pytest.raises(DataError, match=r"fit: X expected shape \(batch, 1, 8, 8\) for input %x, got \(5, 1, 8, 7\) "
                                        r"\(examples of shape \(1, 8, 7\)\)"):
        check_x(np.zeros((5, 1, 8, 7)), (1, 8, 8), "fit")
    with pytest.raises(DataError, match=r"fit: X expected shape \(batch, 1, 8, 8\), got \(5, 64\)"):
        check_x(np.zeros((5, 64)), (1, 8, 8), "fit")
    with pytest.raises(DataError, match=r"fit: X must be 4-D \(batch, 1, 8, 8\); got one example of shape \(1, 8, 8\) "
                                        r"\(use X\[None\] for a batch of one\)"):
        check_x(np.zeros((1, 8, 8)), (1, 8, 8), "fit")
    bad = np.zeros((3, 2, 5))
    bad[2, 1, 4] = np.nan
    with pytest.raises(DataError, match="fit: X row 2 contains NaN or inf"):
        check_x(bad, (2, 5), "fit")


def test_a_flat_model_still_says_features():
    with pytest.raises(DataError, match=r"X expected shape \(batch, 4\) for input %x, got \(5, 3\) \(3 features\)"):
        check_x(np.zeros((5, 3)), 4, "fit")


def test_the_dsl_refuses_spatial_shapes_it_cannot_take():
    g = bg.Graph("g")
    with pytest.raises(bg.IRError, match=r"x: a spatial input's shape must be \(channels, length\) or "
                                         r"\(channels, height, width\) of positive ints, got \(1, 2, 3, 4\)"):
        g.input("x", (1, 2, 3, 4))
    with pytest.raises(bg.IRError, match=r"x: a spatial input's shape must be .* got \(1, 0\)"):
        g.input("x", (1, 0))
    x = g.input("x", (3, 10))
    with pytest.raises(bg.IRError, match=r"c: groups=2 must divide both the input channels \(3\) and out_channels \(4\)"):
        g.conv(x, 4, 3, groups=2, name="c")
    with pytest.raises(bg.IRError, match=r"c: conv leaves no output: input size 10 with padding 0x0 is smaller than "
                                         r"the \(dilated\) kernel 11"):
        g.conv(x, 4, 6, dilation=2, name="c")
    with pytest.raises(bg.IRError, match=r"p: maxpool window 0 along spatial dimension 1 covers padding only \(size 10, "
                                         r"kernel 3, stride 3, pads 3/3, dilation 1\): use less padding"):
        g.maxpool(x, 3, padding=3, name="p")
    g.maxpool(x, 3, padding=2, name="p2")  # more than PyTorch takes, but every window reads the input
    with pytest.raises(bg.IRError, match=r"c: kernel must be an int >= 1 or 1 of them"):
        g.conv(x, 4, (3, 3), name="c")
    with pytest.raises(bg.IRError, match=r"c: padding must be an int, 1 or 2 ints, or one of 'valid', 'same'"):
        g.conv(x, 4, 3, padding="full", name="c")
    h = g.matmul(g.flatten(x), 5, name="fc")
    with pytest.raises(bg.IRError, match=r"p: input %fc expected a spatial value \(channels, m, length\) or "
                                         r"\(channels, m, height, width\), got f32\[5,m\]"):
        g.maxpool(h, 2, name="p")
    assert [v.name for v in g.params] == ["fc.W", "fc.b"]  # the failed calls added nothing


def test_same_padding_follows_onnx():
    g = bg.Graph("g")
    x = g.input("x", (2, 7, 6))
    up = g.conv(x, 3, (2, 3), stride=2, padding="same", bias=False, name="up")
    lo = g.conv(x, 3, (2, 3), stride=2, padding="same_lower", bias=False, name="lo")
    nodes = {n.name: n for n in g.nodes}
    assert nodes["up"].attr["pads"] == (0, 0, 1, 1) and nodes["lo"].attr["pads"] == (1, 1, 0, 0)  # the odd pixel after / before
    assert up.type.shape == lo.type.shape == (3, "m", 4, 3)  # ceil(7/2), ceil(6/2)


def test_summary_shows_spatial_outputs_in_the_apis_order(capsys):
    g = bg.Graph("cnn")
    x, y = g.input("x", (1, 8, 8)), g.labels("y", 3)
    h = g.maxpool(g.relu(g.batchnorm(g.conv(x, 4, 3, padding=1, name="c1"), name="bn1")), 2, name="p1")
    g.softmax_cross_entropy(g.matmul(g.flatten(h, name="f"), 3, name="out"), y)
    bg.compile(g).summary()
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(batch, 1, 8, 8)" in rows["x"] and "(batch, 4, 8, 8)" in rows["c1"] and "(batch, 4, 4, 4)" in rows["p1"]
    assert "(batch, 64)" in rows["f"] and "c1.b removed by fold_bias" in rows["c1"]
