"""Small things the command line says (issue 18, item 8): an emulator run is not labelled as a GPU
run, and the graph picture shows each value's name and type once and only the attributes that
differ from the op's defaults."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.cli_report import target_label
from bngraph.interop.dot import to_dot
from cli_support import run

TINY = f"{Path(__file__).parent / 'models' / 'small.py'}:tiny"


def test_the_target_label_names_the_device_where_one_was_chosen():
    assert target_label("numpy", None) == "numpy"
    assert target_label("cuda", "emulator") == "cuda (device emulator)"
    assert target_label("cuda", 1) == "cuda (device 1)"


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator compiles with g++")
def test_an_emulator_run_says_so_in_its_header_and_report(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    np.savez(tmp_path / "d.npz", X=X, y=np.digitize(X[:, 0], [-0.5, 0.5]))
    code, out, err = run(["train", TINY, "--dataset", tmp_path / "d.npz", "--target", "cuda", "--device", "emulator",
                          "--epochs", "1", "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert err.splitlines()[0].endswith("batch 64, target cuda (device emulator)")
    assert '"device": "emulator"' in (tmp_path / "r.json").read_text()


def _node_label(dot: str, output: str) -> str:
    m = re.search(r'\[label="(%' + re.escape(output) + r': [^"]*)"', dot)
    assert m, output
    return m.group(1)


def test_the_picture_shows_only_attributes_that_differ_from_the_defaults():
    g = bg.Graph("t")
    x = g.input("x", 4)
    h = g.add_node("matmul", [g.param("w", (4, 3)), x], {"ta": True}, ["h"]).out  # stored transposed
    g.add_node("matmul", [g.param("v", (2, 3)), h], {}, ["o"])
    dot = to_dot(g)
    assert _node_label(dot, "h") == r"%h: f32[3,m]\nmatmul\nta=True"  # only what differs
    assert _node_label(dot, "o") == r"%o: f32[2,m]\nmatmul"  # ta=False, tb=False: the defaults, not shown
    assert "label=\"%h\"" not in dot and "label=\"h:" not in dot  # a one-value node's edges are not labelled
    bn = to_dot(bg.mlp([4, 5, 3], eps=1e-3))
    assert "eps=0.001" in bn and "momentum=" not in bn  # eps differs from its default; momentum does not
