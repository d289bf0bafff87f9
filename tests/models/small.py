"""Model files for tests/test_cli.py: `bngraph train tests/models/small.py[:name]`."""
import bngraph as bg

# the default name: 64 features and 10 classes, like the built-in digits
model = bg.mlp([64, 16, 10], name="small")


def make():
    """A function returning a Graph also works as MODEL."""
    return bg.mlp([64, 12, 10], activation="tanh", name="made")


tiny = bg.mlp([4, 5, 3], name="tiny")  # 4 features, 3 classes (for the .npz data sets)
nobn = bg.mlp([64, 16, 10], batchnorm=False, name="nobn")
notgraph = 42


def broken():
    raise RuntimeError("cannot build this one")
