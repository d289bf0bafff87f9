"""Every operation of a GPU model goes on that model's own stream (issue 17, finding 1).

No GPU needed: a stand-in for CuPy (a ``cupy`` module put in ``sys.modules``) logs each operation
with the stream it went on: the stream a kernel launch or a copy names, else the calling thread's
*current* stream (what CuPy uses when none is named: the legacy stream, or the last one a thread
``.use()``-d or entered with ``with stream:``). cuBLAS is a stand-in bound to the stream it is
given. Two models built in one process (the second's stream made after the first's) train, run
forward (one from another thread), and the log of each holds its own stream only; a step captured
on a model's stream holds every kernel and matrix product of the step. The stand-in takes only
what CuPy takes (tests/test_cuda_cupy_api.py compares their signatures).
"""
from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target import runtime as cuda_runtime


class Graph:
    def __init__(self, fake, ops):
        self.fake, self.ops = fake, ops

    def launch(self, stream=None):
        self.fake.record(stream, "replay")


class Stream:
    def __init__(self, fake, name):
        self.fake, self.name, self.ptr, self.graph = fake, name, id(self), None

    def __repr__(self):
        return f"<stream {self.name}>"

    def use(self):  # CuPy: this thread's current stream from now on
        self.fake.local.current = self
        return self

    def __enter__(self):  # CuPy: current for the block, the previous one restored after
        self.fake.stack().append(self.fake.current())
        self.fake.local.current = self
        return self

    def __exit__(self, *exc):
        self.fake.local.current = self.fake.stack().pop()

    def synchronize(self):
        self.fake.record(self, "synchronize")

    def begin_capture(self):
        self.graph = []

    def end_capture(self):
        graph, self.graph = Graph(self.fake, self.graph), None
        return graph


class FakeArray(np.ndarray):
    """A NumPy array standing in for a CuPy one: writes, copies and ufuncs log their stream."""

    fake = None

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def set(self, arr, stream=None):
        self.fake.record(stream, "set")
        np.copyto(self.view(np.ndarray), arr)

    def get(self, stream=None):
        self.fake.record(stream, "get")
        return np.array(self.view(np.ndarray))

    def __setitem__(self, key, value):
        self.fake.record(None, "setitem")
        self.view(np.ndarray)[key] = np.asarray(value)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        self.fake.record(None, f"ufunc {ufunc.__name__}")
        plain = lambda a: a.view(np.ndarray) if isinstance(a, FakeArray) else a  # noqa: E731
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(plain(a) for a in out)
        result = getattr(ufunc, method)(*(plain(a) for a in inputs), **kwargs)
        return out[0] if out is not None and len(out) == 1 else self.fake.wrap(result)


class FakeCupy:
    """The stand-in's state: the log of (stream, operation), the per-thread current stream."""

    def __init__(self):
        self.log, self.local, self.streams = [], threading.local(), 0
        self.legacy = Stream(self, "legacy")
        FakeArray.fake = self

    def current(self):
        return getattr(self.local, "current", self.legacy)

    def stack(self):
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def record(self, stream, op):
        stream = self.current() if stream is None else stream
        self.log.append((stream, op))
        if stream.graph is not None:
            stream.graph.append(op)

    def wrap(self, a):
        return np.asarray(a).view(FakeArray)

    def new_stream(self, null=False, non_blocking=False):
        self.streams += 1
        return Stream(self, f"s{self.streams}")

    def module(self):
        fake = self
        mod = types.ModuleType("cupy")

        class Kernel:
            def __init__(self, name):
                self.name = name

            def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
                fake.record(stream, f"kernel {self.name}")

        class RawModule:
            def __init__(self, code=None, *, options=()):
                pass

            def get_function(self, name):
                return Kernel(name)

        def asarray(a, dtype=None):  # an allocation or copy from the host: on the current stream
            fake.record(None, "array")
            return fake.wrap(np.array(a, dtype=dtype))

        def made(name):
            def fn(shape, dtype=float):
                fake.record(None, name)
                return fake.wrap(np.zeros(shape, dtype=dtype))
            return fn

        class Device:
            def __init__(self, device=None):
                pass

            def use(self):
                pass

        def numpy_function(name):
            attr = getattr(np, name)
            if isinstance(attr, type) or not callable(attr):
                return attr

            def fn(*args, **kwargs):
                fake.record(None, name)
                return fake.wrap(attr(*args, **kwargs))
            return fn

        mod.RawModule = RawModule
        mod.asarray, mod.empty, mod.zeros = asarray, made("empty"), made("zeros")
        mod.__getattr__ = numpy_function
        mod.cuda = types.SimpleNamespace(
            Stream=self.new_stream, Device=Device,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        return mod


class FakeBlas:
    """cuBLAS bound to the stream it is given (as ``cublasSetStream``)."""

    def __init__(self, cp, stream):
        self.stream = stream

    def gemm(self, ta, tb, M, N, K, A, B, C):
        FakeArray.fake.record(self.stream, f"gemm {M}x{N}x{K}")
        return C


@pytest.fixture
def fake(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake.module())
    monkeypatch.setattr(cuda_runtime, "Cublas", FakeBlas)
    monkeypatch.setattr(cuda_runtime, "_MODULES", {})
    return fake


def data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def streams_of(fake, since: int) -> dict:
    """Stream -> the operations logged since ``since`` that went on it."""
    out: dict = {}
    for stream, op in fake.log[since:]:
        out.setdefault(stream, []).append(op)
    return out


def launches(ops) -> list:
    return [op for op in ops if op.startswith(("kernel", "gemm"))]


class HostChecked:
    """An optimizer that is no record (its step is checked on the host): a plain array update."""

    def step(self, params, grads):
        for k, p in params.items():
            p -= 0.01 * grads[k]


def test_every_operation_of_two_models_goes_on_its_own_stream(fake, tmp_path):
    X, y = data()
    a = bg.compile(bg.mlp([4, 5, 3]), target="cuda", cuda_graph=True)
    stream_a = a.runtime.memory.stream
    b = bg.compile(bg.mlp([4, 5, 3]), target="cuda", cuda_graph=True)  # made last: CuPy's current before the fix
    stream_b = b.runtime.memory.stream
    assert stream_a is not stream_b and a.runtime.launcher.stream is stream_a
    for model, stream in ((a, stream_a), (b, stream_b), (a, stream_a)):
        start = len(fake.log)
        model.train_step(X, y, bg.optim.Adam(lr=1e-3))  # guarded: eager, then captured, then replayed
        model.train_step(X, y)
        model.train_step(X, y)
        model.train_step(X, y, HostChecked())           # checked on the host: array-module update
        model.forward(X)
        model.evaluate(X, y)
        got = streams_of(fake, start)
        assert set(got) == {stream}, {s: ops[:8] for s, ops in got.items() if s is not stream}
        assert "replay" in got[stream] and any(op.startswith("kernel") for op in got[stream])
    start = len(fake.log)
    a.train_step(X, y, bg.optim.Adam(lr=1e-3))
    a.save(tmp_path / "a.npz")
    a.load_checkpoint(tmp_path / "a.npz", bg.optim.Adam())
    a.train_step(X, y)
    assert set(streams_of(fake, start)) == {stream_a}


def test_forward_from_another_thread_goes_on_the_models_stream(fake):
    X, y = data()
    a = bg.compile(bg.mlp([4, 5, 3]), target="cuda")
    b = bg.compile(bg.mlp([4, 5, 3]), target="cuda")
    start, errors = len(fake.log), []

    def work():
        try:
            a.forward(X)
            a.train_step(X, y, bg.optim.SGD(lr=0.1))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == []
    got = streams_of(fake, start)
    assert set(got) == {a.runtime.memory.stream}, {s: ops[:8] for s, ops in got.items()}
    assert b.runtime.memory.stream is not a.runtime.memory.stream


def test_a_captured_step_holds_every_launch_of_the_step(fake):
    X, y = data()
    a = bg.compile(bg.mlp([4, 5, 3]), target="cuda", cuda_graph=True)
    bg.compile(bg.mlp([4, 5, 3]), target="cuda", cuda_graph=True)  # a second model, its stream made last
    stream = a.runtime.memory.stream
    start = len(fake.log)
    a.train_step(X, y, bg.optim.Adam(lr=1e-3))  # the first step of this size: eager
    eager = launches(op for _, op in fake.log[start:])
    a.train_step(X, y)  # the second: captured, then replayed
    graph = a.trainer.guarded.entries[X.shape[0]].graph
    assert graph is not None and a.trainer.guarded.replays == 1
    names = [op.split()[1] for op in eager if op.startswith("kernel")]
    assert "step_guard" in names and "step_commit" in names and any(n.startswith("optim_") for n in names)
    assert any(op.startswith("gemm") for op in eager)
    assert launches(graph.ops) == eager  # every kernel and every matrix product, in order
    assert set(streams_of(fake, start)) == {stream}
