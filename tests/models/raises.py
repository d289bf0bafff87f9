"""A model file that fails while it is run (tests/test_cli.py checks the one-line error)."""
import bngraph as bg

model = bg.mlp([64, 16, 10])
raise RuntimeError("this model file is broken")
