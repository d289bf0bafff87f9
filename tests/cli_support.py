"""Running the ``bngraph`` command in-process, for the command-line tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bngraph.checkpoint import read as read_checkpoint
from bngraph.cli import main

TINY = f"{Path(__file__).parent / 'models' / 'small.py'}:tiny"  # 4 features, 3 classes


def four_feature_npz(tmp_path) -> Path:
    """A .npz of 90 rows of 4 features, 3 classes by the first feature's third: TINY's data."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 4))
    path = tmp_path / "four.npz"
    np.savez(path, X=X, y=np.digitize(X[:, 0], [-0.5, 0.5]))
    return path


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``bngraph argv``; argparse's SystemExit is an exit code too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_checkpoint(a, b):
    """Two checkpoint files hold the same step, epoch and arrays, bit for bit."""
    (ma, xa), (mb, xb) = read_checkpoint(a), read_checkpoint(b)
    assert (ma["step"], ma["epoch"]) == (mb["step"], mb["epoch"])
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
