"""Model files for tests/test_cli.py's refusals: absurd sizes, and a function that exits."""
import sys

import bngraph as bg

huge_input = bg.mlp([10**9, 16, 10], name="huge_input")  # 10**9 features: checked against the data first
too_wide = bg.mlp([64, 10**12, 10], name="too_wide")  # 64 features, but 6.4e13 parameters: refused, not allocated
bce = bg.mlp([64, 16, 1], loss="sigmoid_bce", name="bce")  # on the digits labels 0..9: targets outside [0, 1]


def exits():
    sys.exit("no graph today")
