"""A model file that calls sys.exit while it is loaded (tests/test_cli.py): bngraph must say so."""
import sys

import bngraph as bg

model = bg.mlp([64, 16, 10], name="exits")
sys.exit(3)
