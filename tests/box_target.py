"""A second, minimal target for tests: the NumPy renderer's code run on *boxed* arrays.

``Box`` wraps an ndarray and refuses to be turned back into one (``np.asarray(box)`` raises), so
any code in the model, the training loop, checkpoints or the optimizers that reaches around the
runtime interface (``to_numpy``, ``asarray``, ``xp``) fails loudly. ``BOX_XP`` is its array module:
every NumPy function, unwrapping Box arguments and wrapping array results.
"""
from __future__ import annotations

import types

import numpy as np

from bngraph.backends import Executable, Runtime, Target
from bngraph.backends.numpy_target import NumpyRenderer
from bngraph.backends.numpy_target.runtime import load_module


class ReachedAround(RuntimeError):
    pass


def unwrap(x):
    if isinstance(x, Box):
        return x.a
    if isinstance(x, (list, tuple)):
        return type(x)(unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: unwrap(v) for k, v in x.items()}
    return x


def wrap(x):
    if isinstance(x, (np.ndarray, np.generic)):
        return Box(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(wrap(v) for v in x)
    return x


def _forward(fn):
    def call(*args, **kwargs):
        return wrap(fn(*unwrap(args), **unwrap(kwargs)))

    return call


class Box:
    """An array that only its own array module (``BOX_XP``) and its operators can compute on."""

    __slots__ = ("a",)
    __array_ufunc__ = None  # NumPy defers binary operators to ours instead of converting

    def __init__(self, a):
        self.a = a

    def __array__(self, *args, **kwargs):
        raise ReachedAround("a Box array was handed to NumPy directly: something went around the runtime")

    def __float__(self):
        raise ReachedAround("float() of a device array: read it through the runtime (to_float/to_numpy)")

    __int__ = __bool__ = __index__ = __float__

    def __array_namespace__(self, api_version=None):
        return BOX_XP

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co: NumPy must not see the data
            raise AttributeError(name)
        value = getattr(self.a, name)
        return _forward(value) if callable(value) else wrap(value)

    def __getitem__(self, key):
        return wrap(self.a[unwrap(key)])

    def __setitem__(self, key, value):
        self.a[unwrap(key)] = unwrap(value)

    def __len__(self):
        return len(self.a)

    def __repr__(self):
        return f"Box({self.a!r})"


def _operator(name):
    def op(self, *args):
        return wrap(getattr(self.a, name)(*unwrap(args)))

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "pow", "matmul", "gt", "lt", "ge", "le", "eq", "ne", "neg", "abs",
              "radd", "rsub", "rmul", "rtruediv", "rpow", "rmatmul", "iadd", "isub", "imul", "itruediv", "and", "or"):
    setattr(Box, f"__{_name}__", _operator(f"__{_name}__"))


class _BoxNumpy(types.ModuleType):
    """The array module of Box arrays: numpy's functions, unwrapping and wrapping."""

    def __getattr__(self, name):
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes (np.float32), constants
        return _forward(value)


BOX_XP = _BoxNumpy("box_numpy")


class BoxRenderer(NumpyRenderer):
    target = "box"


class BoxRuntime(Runtime):
    """Implements only the Runtime interface; the code it runs sees ``np`` = BOX_XP."""

    target = "box"
    xp = BOX_XP

    def load(self, rendered):
        module = load_module(rendered.sources, rendered.graph_name)
        module.np = BOX_XP  # the generated functions look np up at call time
        exe = Executable(self, rendered, {name: getattr(module, name) for name in rendered.plans})
        exe.module = module
        return exe

    def asarray(self, a, dtype):
        if isinstance(a, Box):
            raise ReachedAround("asarray() got a device array: it takes host data")
        return Box(np.array(a, dtype=dtype))

    def to_numpy(self, a):
        if not isinstance(a, Box):
            raise ReachedAround(f"to_numpy() got a {type(a).__name__}, not an array of this runtime")
        return np.array(a.a)

    def empty(self, shape, dtype):
        return Box(np.empty(shape, dtype))


BOX = Target("box", BoxRenderer(), BoxRuntime)
