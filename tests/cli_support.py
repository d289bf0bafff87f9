"""Running the ``bngraph`` command in-process, for the command-line tests."""
from __future__ import annotations

from bngraph.cli import main


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``bngraph argv``; argparse's SystemExit is an exit code too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
