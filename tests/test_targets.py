"""Targets: the registry, the lowering tables, and a second target that proves the interface.

* Every op of the op table has a lowering in every registered target's table, and every template
  a lowering names (every variant) exists: a new op or target cannot be half done.
* A missing lowering is one clear error naming the target, the op and the node.
* The registry refuses a second target of the same name; one runtime per device.
* ``tests/box_target.py`` registers a minimal target whose arrays refuse to become NumPy arrays:
  a Model trains, evaluates, saves and resumes through it with the same numbers as the NumPy
  target, so nothing in Model, fit, checkpoints or the optimizers reaches around the interface.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import TARGETS, Lowering, LoweringError, get_target, plan_program, register_target, unregister_target
from bngraph.backends.base import templates_dir
from bngraph.ir import IRError

from box_target import BOX, Box, ReachedAround


@pytest.fixture
def box_target():
    register_target(BOX)
    try:
        yield BOX
    finally:
        unregister_target("box")


def _variant_attrs(name):
    """Attribute sets that reach every template variant a lowering can pick."""
    opdef = bg.OPS[name]
    choices = {"mode": ["train", "eval"], "act": list(bg.ACTIVATIONS), "negative_slope": [0.0, 2.0],
               "ta": [False, True], "tb": [False, True]}
    keys = [k for k in opdef.attrs if k in choices]
    base = {k: d for k, (_, d) in opdef.attrs.items() if d is not None}
    for combo in itertools.product(*(choices[k] for k in keys)):
        yield {**base, **dict(zip(keys, combo))}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("op", sorted(bg.OPS))
def test_every_op_is_lowered_by_every_target(target, op):
    t = get_target(target)
    assert op in t.renderer.lowerings, f"target {target} has no lowering for op {op}"
    low = t.renderer.lowerings[op]
    # a target may read another's templates too (the c target: templates/c, then templates/cuda)
    folders = getattr(t.renderer, "template_dirs", (templates_dir(target),))
    for attrs in _variant_attrs(op):
        name = low.template_for(attrs)
        assert any((f / name).is_file() for f in folders), f"templates/{target}/{name} (op {op}, {attrs}) is missing"


def test_every_template_file_is_used():
    """No dead templates: each file is named by some lowering, or is a module/function/partial template."""
    t = get_target("numpy")
    used = {"module.py.j2", "function.py.j2"}
    for op, low in t.renderer.lowerings.items():
        used.update(low.template_for(a) for a in _variant_attrs(op))
    files = {p.name for p in templates_dir("numpy").glob("*.j2")}
    assert files - used == set()


def test_missing_lowering_is_one_clear_error():
    g = bg.compile(bg.mlp([4, 5, 3])).programs["train_step"]
    table = dict(get_target("numpy").renderer.lowerings)
    del table["batchnorm_act"]
    with pytest.raises(LoweringError, match=r"target numpy has no lowering for op batchnorm_act \(node %act1\)"):
        plan_program("train_step", g, table, "numpy")


def test_registry_refuses_a_duplicate_name_and_makes_one_runtime_per_device(box_target):
    with pytest.raises(ValueError, match="a target named 'box' is already registered"):
        register_target(BOX)
    with pytest.raises(ValueError, match="'numpy' is already registered"):
        register_target(get_target("numpy"))
    a, b = box_target.runtime(0), box_target.runtime(1)
    assert a is not b and (a.device, b.device) == (0, 1)
    with pytest.raises(IRError, match="unknown target 'nope': available targets are box, c, cuda, numpy"):
        get_target("nope")


def test_box_arrays_refuse_numpy():
    box = Box(np.ones(3))
    with pytest.raises(ReachedAround):
        np.asarray(box)
    with pytest.raises(ReachedAround):
        float(box[0])
    assert isinstance(np.ones(3) + box, Box)  # NumPy defers to Box's operators


def _data(n=48, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


@pytest.mark.parametrize("make_opt", [lambda: bg.optim.Adam(lr=1e-2),
                                      lambda: bg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                      lambda: bg.optim.RMSprop(lr=1e-2, centered=True, momentum=0.5),
                                      lambda: bg.optim.AdamW(lr=1e-2, amsgrad=True)],
                         ids=["adam", "nesterov", "rmsprop", "adamw"])
def test_a_model_trains_through_the_minimal_target_like_numpy(box_target, make_opt, tmp_path):
    X, y = _data()
    Xv, yv = _data(20, seed=1)
    ref = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    box = bg.compile(bg.mlp([4, 6, 5, 3]), target="box", dtype="float64")
    assert all(isinstance(v, Box) for v in (*box.params.values(), *box.state.values()))
    h_ref = ref.fit(X, y, optimizer=make_opt(), epochs=2, batch_size=16, validation_data=(Xv, yv), verbose=False)
    h_box = box.fit(X, y, optimizer=make_opt(), epochs=2, batch_size=16, validation_data=(Xv, yv), verbose=False)
    for a, b in zip(h_ref, h_box):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for k, v in ref.params.items():
        np.testing.assert_array_equal(box.runtime.to_numpy(box.params[k]), v, err_msg=k)
    np.testing.assert_array_equal(box.forward(Xv), ref.forward(Xv))
    np.testing.assert_array_equal(box.predict(Xv), ref.predict(Xv))
    assert box.evaluate(Xv, yv) == ref.evaluate(Xv, yv)
    # checkpoints move everything through the runtime; a resumed run continues exactly
    box.save(tmp_path / "box.npz")
    resumed = bg.load(tmp_path / "box.npz")
    assert resumed.target == "box"
    ref.fit(X, y, epochs=1, batch_size=16, verbose=False)
    resumed.fit(X, y, epochs=1, batch_size=16, verbose=False)
    for k, v in ref.params.items():
        np.testing.assert_array_equal(resumed.runtime.to_numpy(resumed.params[k]), v, err_msg=k)


def test_a_user_optimizer_runs_on_the_minimal_target(box_target):
    """The protocol: step(params, grads) with the runtime's arrays; this one uses only operators."""

    class PlainSGD:
        lr = 0.05

        def step(self, params, grads):
            for k, g in grads.items():
                params[k] -= self.lr * g

    X, y = _data()
    ref = bg.compile(bg.mlp([4, 6, 3]), dtype="float64")
    box = bg.compile(bg.mlp([4, 6, 3]), target="box", dtype="float64")
    ref.fit(X, y, optimizer=PlainSGD(), epochs=1, batch_size=16, verbose=False)
    box.fit(X, y, optimizer=PlainSGD(), epochs=1, batch_size=16, verbose=False)
    for k, v in ref.params.items():
        np.testing.assert_array_equal(box.runtime.to_numpy(box.params[k]), v, err_msg=k)


def test_a_runtime_without_raw_pointers_says_so(box_target):
    """``Runtime.pointer`` is optional: only a target's own guarded step (CUDA) asks for it; a
    runtime without one names itself, and the model never asks it (its steps are host-checked)."""
    rt = box_target.runtime()
    with pytest.raises(NotImplementedError, match="the box runtime has no raw pointers"):
        rt.pointer(rt.zeros((3,), np.float64))
    model = bg.compile(bg.mlp([4, 5, 3]), target="box")
    rng = np.random.default_rng(0)
    model.train_step(rng.standard_normal((8, 4)), rng.integers(0, 3, 8), bg.optim.Adam(lr=1e-2))
    assert model.trainer.guarded is None
