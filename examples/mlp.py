"""A model file for the `bngraph` command: `bngraph emit examples/mlp.py`, `bngraph train examples/mlp.py`.

`model` may be a bg.Graph or a function returning one; `bngraph emit examples/mlp.py:wide` picks another.
"""
import bngraph as bg


def model():
    g = bg.Graph("mlp")
    x = g.input("x", 64)
    y = g.labels("y", 10)
    h = g.matmul(x, 128, name="fc1")
    h = g.relu(g.batchnorm(h, name="bn1"))
    h = g.matmul(h, 64, name="fc2")
    h = g.relu(g.batchnorm(h, name="bn2"))
    g.softmax_cross_entropy(g.matmul(h, 10, name="out"), y)
    return g


wide = bg.mlp([64, 256, 10], activation="tanh", name="wide")
