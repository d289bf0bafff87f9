"""Flat buffers (bind / step_flat) against the per-parameter reference path, bit for bit; state in
flat buffers; an array module that is not NumPy. (Groups: tests/test_optim_groups.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from bngraph import optim
from bngraph.backends.numpy_target.update import NUMPY_BLOCK, HostLanes
from bngraph.flat import FlatLayout
from bngraph.optim.executors import ArrayPasses
from test_optim import CONFIGS, NSTEPS, SHAPES, SignSGD, _id, make_grads, make_params

DTYPES = [np.float64, np.float32]
DT_IDS = ["f64", "f32"]


def assert_bitwise(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    assert a.tobytes() == b.tobytes(), (what, np.max(np.abs(a.astype(float) - b.astype(float))))


def assert_same_state(sd_a, sd_b):
    """Two state dicts equal, arrays bit for bit (the format of the flat path is the reference's)."""
    assert {k: v for k, v in sd_a.items() if k != "slots"} == \
        {k: v for k, v in sd_b.items() if k != "slots"}
    assert {n: list(s) for n, s in sd_a["slots"].items()} == \
        {n: list(s) for n, s in sd_b["slots"].items()}        # same slots, created in the same order
    for n, slots in sd_a["slots"].items():
        for k, arr in slots.items():
            assert_bitwise(arr, sd_b["slots"][n][k], f"slot {n}/{k}")


def flat_copy(params):
    """FlatArrays holding a copy of ``params`` (its layout in dict order)."""
    layout = FlatLayout([(n, p.shape, p.dtype.name) for n, p in params.items()])
    P = layout.allocate(np)
    for n, p in params.items():
        P[n][...] = p
    return P


def load(X, values):
    for n, v in values.items():
        X[n][...] = v


def step_both(ref, ref_params, opt, P, G, grads, k):
    """Step ``k``: the reference (``ref.step`` on dicts) and the fused step (``opt.step_flat`` on
    the flat ``P``/``G``) with the same ``grads``, then the same bits and the same state."""
    ref.step(ref_params, grads)
    load(G, grads)
    opt.step_flat(P, G)
    for n in ref_params:
        assert_bitwise(P[n], ref_params[n], f"{n} after step {k}")
    assert_same_state(opt.state_dict(), ref.state_dict())


def no_fallback(*args, **kw):
    raise AssertionError("step_flat fell back to the per-parameter step()")


def bound(name, kw, P, block="auto"):
    opt = getattr(optim, name)(**kw)
    opt.bind(P.layout, np, block=block)
    return opt


# ---- the fused path equals the reference path, bit for bit --------------------------------------

@pytest.mark.parametrize("block", [None, 7], ids=["runs", "block7"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_fused_equals_reference_bitwise(cfg, dtype, block):
    """Every option combination, several steps, whole runs and pieces of 7 elements (which cut
    across parameters): the same bits as the per-parameter path, params and state."""
    name, kw = cfg
    ref_params, ref = make_params(dtype), getattr(optim, name)(**kw)
    P = flat_copy(make_params(dtype))
    G = P.layout.allocate(np)
    opt = bound(name, kw, P, block)
    opt.step = no_fallback                    # every step below must take the fused path
    for k, grads in enumerate(make_grads(dtype, nsteps=8)):
        if k == 5:                            # an lr schedule: lr is data, read at every step
            ref.lr = opt.lr = ref.lr * 0.3
        step_both(ref, ref_params, opt, P, G, grads, k)
        assert opt.step_count == ref.step_count == k + 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
                                      ("RMSprop", dict(centered=True, momentum=0.5)),
                                      ("Adam", dict(amsgrad=True, weight_decay=0.1)),
                                      ("AdamW", dict(lr=1e-2))])
def test_mixed_dtypes_and_interleaved_steps(name, kw, dtype):
    """Params of two dtypes (two buffers), steps alternating between step() on the views and
    step_flat: both paths work on the same slot memory."""
    other = np.float32 if dtype == np.float64 else np.float64
    shapes = {"W": ((5, 3), dtype), "c": ((2,), other), "b": ((5,), dtype), "V": ((4, 2), other)}
    rng = np.random.default_rng(3)
    init = {n: rng.standard_normal(s).astype(t) for n, (s, t) in shapes.items()}
    ref_params = {n: v.copy() for n, v in init.items()}
    ref = getattr(optim, name)(**kw)
    P = flat_copy(init)
    assert sorted(P.buffers) == ["float32", "float64"]
    G = P.layout.allocate(np)
    opt = bound(name, kw, P)
    for k in range(7):
        grads = {n: rng.standard_normal(s).astype(t) for n, (s, t) in shapes.items()}
        ref.step(ref_params, grads)
        if k % 3 == 1:
            opt.step(P.views, grads)
        else:
            load(G, grads)
            opt.step_flat(P, G)
        for n in shapes:
            assert_bitwise(P[n], ref_params[n], f"{n} after step {k}")
        assert_same_state(opt.state_dict(), ref.state_dict())


def test_state_lives_in_flat_buffers():
    P = flat_copy(make_params(np.float32))
    G = P.layout.allocate(np)
    opt = bound("Adam", dict(amsgrad=True), P)
    assert opt.layout is P.layout and opt.state == {}
    assert opt.state_dict()["slots"] == {}     # nothing before the first step, as unbound
    load(G, make_grads(np.float32)[0])
    opt.step_flat(P, G)
    assert list(opt.state) == list(SHAPES)
    buffers = {k: opt.binding.slots[k] for k in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    for n in SHAPES:
        assert list(opt.state[n]) == list(buffers)
        for k, flat in buffers.items():
            assert opt.state[n][k] is flat.views[n]
            assert np.shares_memory(opt.state[n][k], flat.buffers["int64" if k == "step" else "float32"])
    assert buffers["step"].buffers["int64"].tolist() == [1, 1, 1]
    sd = opt.state_dict()                       # copies, not views
    assert not np.shares_memory(sd["slots"]["W"]["exp_avg"], buffers["exp_avg"].buffers["float32"])


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict()),
                                      ("RMSprop", dict(centered=True))])
def test_bind_after_steps_copies_the_state_in(name, kw):
    ref_params, ref = make_params(np.float64), getattr(optim, name)(**kw)
    params, opt = make_params(np.float64), getattr(optim, name)(**kw)
    grads = make_grads(np.float64)
    for g in grads[:2]:
        ref.step(ref_params, g)
        opt.step(params, g)
    P = flat_copy(params)
    G = P.layout.allocate(np)
    opt.bind(P.layout, np)
    opt.step = no_fallback
    for g in grads[2:]:
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
    for n in SHAPES:
        assert_bitwise(P[n], ref_params[n], n)
    assert_same_state(opt.state_dict(), ref.state_dict())


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5)),
                                      ("Adam", dict(weight_decay=0.1)),
                                      ("RMSprop", dict(momentum=0.5))])
def test_non_uniform_state_falls_back_then_fuses_again(name, kw):
    """A step with a missing gradient leaves per-param state uneven: Adam's step counters differ
    (from then on every step_flat is the per-parameter path), SGD's momentum buffer exists for
    some params only (one fallback step, then fused again). Either way: the reference's results."""
    ref_params, ref = make_params(np.float64), getattr(optim, name)(**kw)
    P = flat_copy(make_params(np.float64))
    G = P.layout.allocate(np)
    opt = bound(name, kw, P)
    calls = []
    step = opt.step
    opt.step = lambda params, grads: (calls.append(len(grads)), step(params, grads))
    grads = make_grads(np.float64, nsteps=6)
    partial = {n: g for n, g in grads[0].items() if n != "b"}
    ref.step(ref_params, partial)
    opt.step(P.views, partial)
    for g in grads[1:]:
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
    for n in SHAPES:
        assert_bitwise(P[n], ref_params[n], n)
    assert_same_state(opt.state_dict(), ref.state_dict())
    expected = {"SGD": [2, 3], "Adam": [2, 3, 3, 3, 3, 3], "RMSprop": [2, 3]}[name]
    assert calls == expected


def test_overridden_update_and_custom_optimizers_take_the_reference_path():
    class LoudAdam(optim.Adam):
        seen = 0

        def update(self, p, g, slots):
            LoudAdam.seen += 1
            super().update(p, g, slots)

    class QuietAdam(optim.Adam):               # a subclass that leaves the math alone is fused
        pass

    for cls, expect_seen in ((LoudAdam, 3 * NSTEPS), (QuietAdam, 0), (SignSGD, None)):
        ref_params, ref = make_params(np.float32), cls(lr=0.1)
        P = flat_copy(make_params(np.float32))
        G = P.layout.allocate(np)
        opt = cls(lr=0.1)
        opt.bind(P.layout, np)
        for g in make_grads(np.float32):
            ref.step(ref_params, g)
            load(G, g)
            opt.step_flat(P, G)
        for n in SHAPES:
            assert_bitwise(P[n], ref_params[n], f"{cls.__name__} {n}")
        assert_same_state(opt.state_dict(), ref.state_dict())
        if expect_seen is not None:
            assert LoudAdam.seen == 2 * expect_seen  # ref and opt both went through update()
            LoudAdam.seen = 0
    assert optim.Adam()._fusable() and QuietAdam()._fusable() and not LoudAdam()._fusable()
    assert not SignSGD()._fusable()


def test_load_state_dict_into_a_bound_optimizer():
    ref_params, ref = make_params(np.float32), optim.Adam(lr=1e-2, amsgrad=True)
    grads = make_grads(np.float32)
    for g in grads[:3]:
        ref.step(ref_params, g)
    sd64 = ref.state_dict()                      # float64 slots into float32 buffers: cast
    sd64["slots"] = {n: {k: (a.astype(np.float64) if a.ndim else a) for k, a in s.items()}
                     for n, s in sd64["slots"].items()}
    P = flat_copy(ref_params)
    G = P.layout.allocate(np)
    opt = bound("Adam", dict(), P)
    opt.load_state_dict(sd64)
    assert opt.amsgrad and opt.step_count == 3
    assert opt.state["W"]["exp_avg"].dtype == np.float32
    assert np.shares_memory(opt.state["W"]["exp_avg"], opt.binding.slots["exp_avg"].buffers["float32"])
    opt.step = no_fallback
    for g in grads[3:]:
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
    for n in SHAPES:
        assert_bitwise(P[n], ref_params[n], n)


def test_bind_and_step_flat_errors():
    P = flat_copy(make_params(np.float64))
    opt = optim.Adam()
    opt.step({"W": np.zeros((2, 2))}, {"W": np.ones((2, 2))})
    with pytest.raises(ValueError, match="state 'exp_avg' for 'W' has shape \\(2, 2\\)"):
        opt.bind(P.layout, np)
    assert opt.layout is None and opt.state["W"]["exp_avg"].shape == (2, 2)   # unchanged
    opt = optim.SGD(momentum=0.9)
    opt.step({"U": np.zeros(3)}, {"U": np.ones(3)})
    with pytest.raises(ValueError, match="state for 'U', which is not a parameter"):
        opt.bind(P.layout, np)
    # load_state_dict into a bound optimizer checks against the layout and changes nothing
    opt = bound("SGD", dict(lr=0.1, momentum=0.9), P)
    bad = optim.SGD(lr=0.5, momentum=0.5)
    bad.step({"W": np.zeros((2, 2))}, {"W": np.ones((2, 2))})
    with pytest.raises(ValueError, match="'momentum_buffer' for 'W' has shape"):
        opt.load_state_dict(bad.state_dict())
    assert (opt.lr, opt.momentum, opt.step_count, opt.state) == (0.1, 0.9, 0, {})
    other = flat_copy({"W": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="not in the layout this optimizer is bound to"):
        opt.step_flat(other, other.layout.allocate(np))


def test_step_flat_binds_on_first_use_and_rebinding_keeps_the_state():
    ref_params, ref = make_params(np.float64), optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    P = flat_copy(make_params(np.float64))
    G = P.layout.allocate(np)
    opt = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    grads = make_grads(np.float64)
    for k, g in enumerate(grads):
        if k == 3:                               # "the model changed": same params, new buffers
            P = flat_copy(P.views)
            G = P.layout.allocate(np)
            opt.bind(P.layout, np)
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
        assert opt.layout is P.layout
    for n in SHAPES:
        assert_bitwise(P[n], ref_params[n], n)
    assert_same_state(opt.state_dict(), ref.state_dict())


def test_runs_in_blocks_and_block_choice():
    layout = FlatLayout([("a", (3, 4), "float32"), ("b", (5,), "float64"), ("c", (6,), "float32")])
    assert layout.runs(["c", "a"]) == [("float32", 0, 18)]
    assert layout.runs(["a", "b", "c"], block=7) == [
        ("float32", 0, 7), ("float32", 7, 14), ("float32", 14, 18), ("float64", 0, 5)]
    assert layout.runs(["c"], block=100) == [("float32", 12, 18)]
    with pytest.raises(ValueError, match="block must be a positive"):
        layout.runs(["a"], block=0)
    opt = optim.Adam()
    opt.bind(layout, np)
    assert opt.binding.runs == [[("float32", 0, 18), ("float64", 0, 5)]]  # what to update: whole runs
    assert isinstance(opt.binding.executor, HostLanes)          # how: NumPy's, registered for its arrays
    assert opt.binding.update.block == NUMPY_BLOCK              # "auto" on NumPy: cache blocking
    assert {dt: len(b) for dt, b in opt.binding.update.scratch[0][0].items()} == {"float32": 18, "float64": 5}
    opt.bind(layout, np, block=4)
    assert {dt: len(b) for dt, b in opt.binding.update.scratch[0][0].items()} == {"float32": 4, "float64": 4}
    opt.bind(layout, WRAPPED)
    assert isinstance(opt.binding.executor, ArrayPasses)        # other modules: whole runs
    assert opt.binding.update.block is None
    with pytest.raises(ValueError, match="block must be a positive"):
        opt.bind(layout, np, block=0)
    with pytest.raises(TypeError, match="executor= given"):
        opt.bind(layout, np, executor=ArrayPasses(), block=4)


@pytest.mark.parametrize("how", ["passes", "passes-block5", "launches", "launches-block5"])
def test_an_executor_given_to_bind_runs_the_plan_the_optimizer_describes(how):
    """The optimizer says what (plan_fused), the executor how: whole-buffer passes or a kernel per
    stretch, whole or in pieces, give the reference's bits; load_state_dict keeps the executor."""
    from bngraph.optim.executors import KernelLaunches

    name, kw = "Adam", dict(amsgrad=True, weight_decay=0.1)
    ref_params, ref = make_params(np.float32), getattr(optim, name)(**kw)
    P = flat_copy(make_params(np.float32))
    G = P.layout.allocate(np)
    opt, calls = getattr(optim, name)(**kw), []
    block = 5 if how.endswith("block5") else None

    def kernel(o, p, g, slots, hp, t, fresh):  # a target's kernel: the record's update, one stretch
        calls.append(p.size)
        d, tmp = np.empty_like(p), np.empty_like(p)
        plan.array_update(np, p, g, slots, d, tmp, hp, t, fresh)

    executor = ArrayPasses(block) if how.startswith("passes") else KernelLaunches(kernel, block)
    opt.bind(P.layout, np, executor=executor)
    assert opt.binding.executor is executor and opt.binding.update is not None
    opt.step = no_fallback
    for k, grads in enumerate(make_grads(np.float32, nsteps=4)):
        if k == 2:  # rebinding for the state: the same executor, prepared again
            opt.load_state_dict(opt.state_dict())
            assert opt.binding.executor is executor
        plan = opt.plan_fused(P, G)
        assert [len(plan.stretches[gp.index]) for gp in plan.groups] == [len(P.layout.runs(P.layout.names))]
        step_both(ref, ref_params, opt, P, G, grads, k)
    if how.startswith("launches"):
        assert calls and max(calls) == (block or P.layout.totals["float32"])


def test_copies_of_a_bound_optimizer_are_unbound():
    import copy
    import pickle
    ref_params, ref = make_params(np.float64), optim.SGD(lr=0.1, momentum=0.9)
    P = flat_copy(make_params(np.float64))
    G = P.layout.allocate(np)
    opt = bound("SGD", dict(lr=0.1, momentum=0.9), P)
    grads = make_grads(np.float64)
    for g in grads[:2]:
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert other.layout is None and opt.layout is P.layout
        assert not np.shares_memory(other.state["W"]["momentum_buffer"], P.buffers["float64"])
        params = {n: np.array(v) for n, v in P.views.items()}
        for g in grads[2:]:
            other.step(params, g)
        expect = {n: v.copy() for n, v in ref_params.items()}
        again = copy.deepcopy(ref)
        for g in grads[2:]:
            again.step(expect, g)
        for n in SHAPES:
            assert_bitwise(params[n], expect[n], n)


def test_kernel_functions_take_lr_and_step_as_arguments():
    """The fused update is a function of arrays and scalars: lr and t are its arguments."""
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(6), rng.standard_normal(6)
    m, v, d, tmp = np.zeros(6), np.zeros(6), np.empty(6), np.empty(6)
    opt = optim.Adam(lr=0.5)
    ref = {"w": p.copy()}
    for t in (1, 2):
        opt.step(ref, {"w": g})
        optim.adam_update(np, p, g, m, v, None, d, tmp, 0.5, t, beta1=0.9, beta2=0.999,
                          eps=1e-8, weight_decay=0.0, decoupled=False)
    assert_bitwise(p, ref["w"])


# ---- an array module that is not NumPy ----------------------------------------------------------

class Wrapped:
    """An array of a module that is not NumPy: ``__array__`` raises and NumPy's ufuncs refuse it,
    so any ``np.`` call on it fails; its namespace unwraps, calls NumPy and wraps the result.
    ``int()`` reads it back (as CuPy does, with a sync); a Sealed array refuses that too."""

    __array_ufunc__ = None

    def __init__(self, a):
        self.a = a

    def __array__(self, *args, **kw):
        raise TypeError("a Wrapped array is not a NumPy array")

    def __array_namespace__(self, api_version=None):
        return _NAMESPACES[type(self)]

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    ndim = property(lambda self: self.a.ndim)

    def __getitem__(self, key):
        return type(self)(self.a[key])

    def __setitem__(self, key, value):
        self.a[key] = _unwrap(value)

    def reshape(self, *shape):
        return type(self)(self.a.reshape(*shape))

    def __int__(self):
        return int(self.a)


class Sealed(Wrapped):
    """Device memory that the host must never read back (like tests/box_target.py's Box)."""

    def __int__(self):
        raise AssertionError("a device array was read back")

    __float__ = __bool__ = __index__ = __int__


def _unwrap(x):
    return x.a if isinstance(x, Wrapped) else x


class _WrappedNamespace:
    def __init__(self, cls):
        self.cls = cls

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):       # dtypes: np.int64, ...
            return f

        def call(*args, **kw):
            out = f(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kw.items()})
            return self.cls(out) if isinstance(out, np.ndarray) else out
        return call


_NAMESPACES = {cls: _WrappedNamespace(cls) for cls in (Wrapped, Sealed)}
WRAPPED, SEALED = _NAMESPACES[Wrapped], _NAMESPACES[Sealed]


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                      ("RMSprop", dict(centered=True, momentum=0.5)),
                                      ("Adam", dict(amsgrad=True, weight_decay=0.1)),
                                      ("AdamW", dict())])
def test_another_array_module(name, kw):
    with pytest.raises(TypeError):
        np.sqrt(Wrapped(np.ones(2)))
    with pytest.raises(TypeError):
        np.asarray(Wrapped(np.ones(2)))
    dtype = np.float32
    ref_params, ref = make_params(dtype), getattr(optim, name)(**kw)
    grads = make_grads(dtype)
    # unbound: the array module comes from the params
    params = {n: Wrapped(p) for n, p in make_params(dtype).items()}
    unbound = getattr(optim, name)(**kw)
    # bound: flat buffers from the Wrapped namespace
    layout = FlatLayout([(n, s, "float32") for n, s in SHAPES.items()])
    P, G = layout.allocate(WRAPPED), layout.allocate(WRAPPED)
    assert all(isinstance(b, Wrapped) for b in P.buffers.values())
    load(P, make_params(dtype))
    opt = getattr(optim, name)(**kw)
    opt.bind(layout, WRAPPED)
    opt.step = no_fallback
    for k, g in enumerate(grads[:4]):
        ref.step(ref_params, g)
        unbound.step(params, {n: Wrapped(a) for n, a in g.items()})
        load(G, g)
        opt.step_flat(P, G)
    for n in SHAPES:
        assert_bitwise(params[n].a, ref_params[n], n)
        assert_bitwise(P[n].a, ref_params[n], n)
    for o in (unbound, opt):
        sd = o.state_dict()
        assert all(isinstance(a, Wrapped) for s in sd["slots"].values() for a in s.values())
        assert_same_state({**sd, "slots": {n: {k: a.a for k, a in s.items()}
                                           for n, s in sd["slots"].items()}}, ref.state_dict())
    # NumPy state (a checkpoint) into both: converted with the bound module's asarray at once,
    # unbound (the module is not known yet) at the next step, with the params' module
    saved = ref.state_dict()
    for o in (unbound, opt):
        o.load_state_dict(saved)
    assert all(isinstance(a, Wrapped) for s in opt.state.values() for a in s.values())
    del opt.step
    for g in grads[4:]:
        ref.step(ref_params, g)
        unbound.step(params, g)                  # NumPy gradients are converted too
        load(G, g)
        opt.step_flat(P, G)
    for o in (unbound, opt):
        assert all(isinstance(a, Wrapped) for s in o.state.values() for a in s.values())
    for n in SHAPES:
        assert_bitwise(params[n].a, ref_params[n], n)
        assert_bitwise(P[n].a, ref_params[n], n)


# ---- a loop that calls step(params, grads), driven through the flat path ---------------------------

class FlatDriven:
    """The optimizer protocol on top of ``bind``/``step_flat``: ``step`` copies params and grads
    into flat buffers (bound on first use), steps with ``step_flat`` and copies the params back.
    tests/test_torch_oracle.py trains models with it, so the fused update meets PyTorch whatever
    the model calls."""

    def __init__(self, opt):
        self.opt, self.P, self.G = opt, None, None

    lr = property(lambda self: self.opt.lr, lambda self, v: setattr(self.opt, "lr", v))

    def step(self, params, grads):
        assert set(grads) == set(params) and all(g is not None for g in grads.values())
        if self.P is None:
            layout = FlatLayout([(n, p.shape, p.dtype.name) for n, p in params.items()])
            self.P, self.G = layout.allocate(np), layout.allocate(np)
            self.opt.bind(layout, np)
        load(self.P, params)
        load(self.G, grads)
        self.opt.step_flat(self.P, self.G)
        for n, p in params.items():
            p[...] = self.P[n]

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, d):
        self.opt.load_state_dict(d)


def test_flat_driven_takes_the_fused_path():
    ref_params, ref = make_params(np.float64), optim.Adam(lr=1e-2, weight_decay=0.1)
    params, driven = make_params(np.float64), FlatDriven(optim.Adam(lr=1e-2, weight_decay=0.1))
    for k, g in enumerate(make_grads(np.float64)):
        ref.step(ref_params, g)
        driven.step(params, g)
        if k == 0:
            driven.opt.step = no_fallback
    for n in SHAPES:
        assert_bitwise(params[n], ref_params[n], n)


def test_step_counters_are_never_read_back():
    """Adam's counters live in device memory; the host counts along instead of reading them:
    unbound steps, fused steps, steps with a missing gradient, a checkpoint's (NumPy) state."""
    dtype = np.float32
    ref_params, ref = make_params(dtype), optim.Adam(lr=1e-2)
    grads = make_grads(dtype, nsteps=8)
    params = {n: Sealed(p) for n, p in make_params(dtype).items()}
    unbound = optim.Adam(lr=1e-2)
    layout = FlatLayout([(n, s, "float32") for n, s in SHAPES.items()])
    P, G = layout.allocate(SEALED), layout.allocate(SEALED)
    load(P, make_params(dtype))
    opt = optim.Adam(lr=1e-2)
    opt.bind(layout, SEALED)
    for k, g in enumerate(grads):
        if k == 2:
            g = {n: a for n, a in g.items() if n != "b"}
        if k == 5:                                     # resume from a checkpoint: NumPy arrays
            for o in (unbound, opt):
                o.load_state_dict(ref.state_dict())
        ref.step(ref_params, g)
        unbound.step(params, g)
        if len(g) == len(SHAPES):
            load(G, g)
            opt.step_flat(P, G)
        else:
            opt.step(P.views, g)
    for n in SHAPES:
        assert_bitwise(params[n].a, ref_params[n], n)
        assert_bitwise(P[n].a, ref_params[n], n)


def test_state_of_unknown_step_counts_takes_the_reference_path():
    """A state dict of device arrays: the host does not know the counts, so step_flat takes the
    per-parameter path from then on (which reads each counter back; correct, only slower)."""
    ref_params, ref = make_params(np.float64), optim.Adam(lr=1e-2)
    grads = make_grads(np.float64)
    for g in grads[:2]:
        ref.step(ref_params, g)
    device_sd = {**ref.state_dict(), "slots": {n: {k: Wrapped(a) for k, a in s.items()}
                                               for n, s in ref.state_dict()["slots"].items()}}
    layout = FlatLayout([(n, s, "float64") for n, s in SHAPES.items()])
    P, G = layout.allocate(WRAPPED), layout.allocate(WRAPPED)
    load(P, ref_params)
    opt = optim.Adam()
    opt.bind(layout, WRAPPED)
    opt.load_state_dict(device_sd)
    calls = []
    step = opt.step
    opt.step = lambda params, grads: (calls.append(1), step(params, grads))
    for g in grads[2:]:
        ref.step(ref_params, g)
        load(G, g)
        opt.step_flat(P, G)
    assert len(calls) == len(grads) - 2
    for n in SHAPES:
        assert_bitwise(P[n].a, ref_params[n], n)
