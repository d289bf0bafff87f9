"""Running the ``bngraph`` command in-process, for the command-line tests."""
from __future__ import annotations

import numpy as np

from bngraph.checkpoint import read as read_checkpoint
from bngraph.cli import main


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
