"""The training step as one object (bngraph/step.py) and optimizers as data (bngraph/optim/records.py).

* A new optimizer is one record, written here and nowhere else: it trains on the NumPy target and
  on the CUDA emulator (its kernel rendered from the record, run inside the guarded step and in
  a captured graph), matching a float64 reference written by hand.
* The step has one owner of the count, and no target or loop reaches into the model's or the
  optimizer's private attributes.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph import optim
from bngraph.optim.records import (ADAM_RECORD, RMSPROP_RECORD, SGD_RECORD, G, H, If, Let, OptimizerRecord, P,
                                   Set, Slot, local, maximum, slot, sqrt)
from test_arch_tables import square_op  # noqa: F401  (the fixture registering the new op)
from test_cuda_target import optimizer_kernel_against_numpy

ROOT = Path(__file__).parent.parent

# ---- a new optimizer: one record -----------------------------------------------------------------

# Adagrad with a running max of the squared gradient and optional L2 (a flag and a number in h):
#   d = g + weight_decay*p;  acc = acc + d*d;  peak = max(peak, d*d) when track_peak
#   p -= lr * d / (sqrt(acc) + eps)
ACC, PEAK = slot("acc"), slot("peak")
ADAGRAD = OptimizerRecord(
    "adagrad_max", ("lr", "eps", "weight_decay", "track_peak"),
    (Slot("acc"), Slot("peak", H.flag("track_peak"))),
    (Let("d", G),
     If(H.weight_decay != 0, (Let("d", P * H.weight_decay + local("d")),)),
     Set("acc", ACC + local("d") * local("d")),
     If(H.flag("track_peak"), (Set("peak", maximum(PEAK, local("d") * local("d"))),)),
     Set("p", P - local("d") * H.lr / (sqrt(ACC) + H.eps))))


class AdagradMax(optim.RecordOptimizer):
    record = ADAGRAD

    def __init__(self, lr=0.05, eps=1e-10, weight_decay=0.0, track_peak=False, groups=None):
        super().__init__(lr=lr, eps=eps, weight_decay=weight_decay, track_peak=track_peak, groups=groups)


def reference(model, X, y, steps, batch, lr, eps, wd):
    """The same training in float64 NumPy, by hand: each step's gradients from the model's own
    train_step program, the update written out here (the protocol: an ``update`` method)."""
    class ByHand(optim.Optimizer):
        def __init__(self):
            super().__init__(lr=lr)

        def update(self, p, g, slots):
            acc = slots.setdefault("acc", np.zeros_like(p))
            d = g + wd * p
            acc += d * d
            p -= lr * d / (np.sqrt(acc) + eps)

    opt = ByHand()
    for s in range(steps):
        a = (s * batch) % len(X)
        model.train_step(X[a:a + batch], y[a:a + batch], opt)
    return model.params


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


@pytest.mark.parametrize("target", ["numpy", "emulator", "emulator-graph"])
def test_a_new_optimizer_record_trains_on_every_target_like_the_float64_reference(target):
    X, y = data()
    kw = {} if target == "numpy" else {"target": "cuda", "device": "emulator",
                                       "cuda_graph": target == "emulator-graph"}
    model = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64", **kw)
    ref = reference(bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64"), X, y, 12, 8, 0.05, 1e-10, 1e-2)
    opt = AdagradMax(lr=0.05, weight_decay=1e-2, track_peak=True)
    for s in range(12):
        a = (s * 8) % len(X)
        model.train_step(X[a:a + 8], y[a:a + 8], opt)
    for k, v in ref.items():
        np.testing.assert_allclose(model.params[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
    assert opt.fused and model.step == 12 and opt.state_dict()["step"] == 12
    peak = opt.state[next(iter(model.params))]["peak"]
    assert np.all(np.asarray(peak) > 0)
    if target != "numpy":  # the record's kernel ran inside the guarded step (and its graph)
        assert model.trainer.guarded is not None and model.trainer.guarded.record is ADAGRAD
        assert model.trainer.guarded.replays == (11 if target == "emulator-graph" else 0)


def record_kernel_against_numpy(dtype, device, compare):
    """Five steps of the same params, gradients and schedule through the record's CUDA kernel on
    ``device`` (an emulator) and through its rendered NumPy passes, with a parameter group;
    ``compare(kernel's buffer, NumPy's buffer, step)`` after each. Returns (kernel's, NumPy's) optimizer."""
    model = bg.compile(bg.mlp([4, 5, 3]), target="cuda", device=device, dtype=dtype)
    make = lambda: AdagradMax(lr=0.05, track_peak=True, groups=[{"params": "out.*", "weight_decay": 0.1}])  # noqa: E731
    return optimizer_kernel_against_numpy(model, make, dtype, steps=5, lr0=0.05, compare=compare)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_new_records_kernel_equals_its_numpy_update_bit_for_bit(dtype):
    """The record's CUDA kernel (emulated, IEEE) and its rendered NumPy passes: identical bits,
    params and every slot."""
    device, host = record_kernel_against_numpy(
        dtype, "emulator", lambda a, b, step: np.testing.assert_array_equal(a, b, err_msg=f"step {step}"))
    for name, slots in host.state_dict()["slots"].items():
        for key, v in slots.items():
            np.testing.assert_array_equal(device.state[name][key], v, err_msg=f"{name}.{key}")


def test_a_divergence_in_the_new_record_is_named_on_the_device_as_on_the_host():
    X, y = data()
    msgs = []
    for kw in ({}, {"target": "cuda", "device": "emulator"}):
        model = bg.compile(bg.mlp([4, 6, 3], batchnorm=False), **kw)
        before = {k: np.array(v) for k, v in model.params.items()}
        with pytest.raises(bg.TrainingDiverged) as e:
            model.train_step(X[:8], y[:8], AdagradMax(lr=3e38, eps=0.0, weight_decay=100.0))
        msgs.append(str(e.value))
        assert model.step == 0
        for k, v in before.items():  # a record's update is all or nothing too: checked before it is stored
            np.testing.assert_array_equal(np.array(model.params[k]), v, err_msg=k)
    assert msgs[0] == msgs[1] and msgs[0].endswith("nothing was updated")


def test_the_vector_is_the_records_order_and_the_slots_its_conditions():
    hp = {"lr": 0.1, "eps": 1e-8, "weight_decay": 0.0, "track_peak": True}
    assert ADAGRAD.vector(hp, None, ()).tolist() == [0.1, 1e-8, 0.0, 1.0]
    assert ADAGRAD.slot_keys(hp) == ("acc", "peak") and ADAGRAD.slot_keys({**hp, "track_peak": False}) == ("acc",)
    adam = optim.AdamW(lr=1e-3, amsgrad=True)
    h = ADAM_RECORD.vector(adam.param_groups[-1], 7, ())
    assert h.tolist() == [1e-3, 7, 0.9, 0.999, 1e-8, 1e-2, 0.0, 1.0]  # the record's fixed entry: Adam's
    assert optim.AdamW.record.vector(adam.param_groups[-1], 7, ())[6] == 1.0  # AdamW: decoupled


@pytest.mark.parametrize("record", [SGD_RECORD, RMSPROP_RECORD, ADAM_RECORD, ADAGRAD], ids=lambda r: r.name)
def test_rendered_updates_are_plain_text(record):
    from bngraph.backends.cuda_target.optimizers import module_source
    from bngraph.optim.render_numpy import render

    py = render(record)
    assert py.startswith("def update(xp, p, g, s, D, T, v):") and "out=p" in py
    cu = module_source(record, "float32")
    assert f'extern "C" __global__ void optim_{record.name}(' in cu and "typedef float real;" in cu
    for name in record.hyper:  # every entry of h is named in the kernel's comment, in order
        assert name in cu.split(f"void optim_{record.name}")[0].rsplit("h = {", 1)[1].split("}")[0]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_record_kernel_compiles_with_nvcc(tmp_path):
    from bngraph.backends.cuda_target.optimizers import module_source

    for record in (SGD_RECORD, RMSPROP_RECORD, ADAM_RECORD, ADAGRAD):
        for dtype in ("float32", "float64"):
            path = tmp_path / f"{record.name}_{dtype}.cu"
            path.write_text(module_source(record, dtype))
            proc = subprocess.run(["nvcc", "-arch=sm_90", "-c", str(path), "-o", str(path.with_suffix(".o"))],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_record_that_needs_a_third_scratch_array_is_refused():
    from bngraph.optim.render_numpy import RecordError, render

    a, b = local("a"), local("b")
    bad = OptimizerRecord("three", ("lr",), (), (
        Let("a", G * H.lr), Let("b", G * G), Let("c", G + G), Set("p", P - a * b * local("c"))))
    with pytest.raises(RecordError, match="third scratch"):
        render(bad)


# ---- the step: one owner, public interfaces ------------------------------------------------------

def test_the_step_count_has_one_owner():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), target="cuda", device="emulator")
    opt = optim.Adam(lr=1e-2)
    for s in range(3):
        model.trainer.submit(X[8 * s:8 * s + 8], y[8 * s:8 * s + 8], opt)
    assert model.step == model.trainer.step == 3 and model.trainer.pending == 3  # unread steps count
    assert len(model.trainer.collect()) == 3 and model.trainer.pending == 0 and model.step == 3
    model.step = 10  # a checkpoint's count goes to the owner
    assert model.trainer.step == 10


def _private_accesses(path: Path) -> list:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
                continue
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return out


def test_the_step_the_loop_and_the_optimizers_touch_no_other_objects_private_attributes():
    files = [ROOT / "bngraph" / f for f in ("step.py", "training.py", "snapshot.py", "model.py")]
    files += sorted((ROOT / "bngraph" / "optim").glob("*.py"))
    files += [ROOT / "bngraph" / "backends" / "cuda_target" / f for f in ("step.py", "optimizers.py")]
    found = [a for f in files for a in _private_accesses(f)]
    assert found == [], found


# ---- the new op and the new optimizer together --------------------------------------------------

@pytest.mark.parametrize("target", ["numpy", "emulator", "emulator-graph"])
def test_a_new_op_and_a_new_optimizer_defined_in_tests_train_together(square_op, target):
    """The op of tests/test_arch_tables.py (op-table entry + one row per target) and the record
    above, in one model: the float64 reference is the interpreter's gradients and the update
    written out by hand."""
    from test_arch_tables import square_graph

    X, y = data(40)
    kw = {} if target == "numpy" else {"target": "cuda", "device": "emulator",
                                       "cuda_graph": target == "emulator-graph"}
    model = bg.compile(square_graph(), dtype="float64", seed=3, **kw)
    prog = bg.compile(square_graph(), dtype="float64", seed=3).programs["train_step"]
    assert "square" in {n.op for n in prog.nodes}
    params = {k: np.array(model.runtime.to_numpy(v)) for k, v in model.params.items()}
    state = {k: np.array(model.runtime.to_numpy(v)) for k, v in model.state.items()}
    acc = {k: np.zeros_like(v) for k, v in params.items()}
    lr, eps, wd = 0.05, 1e-10, 1e-2
    opt = AdagradMax(lr=lr, eps=eps, weight_decay=wd)
    for start in range(0, 40, 8):
        xb, yb = X[start:start + 8], y[start:start + 8]
        out = bg.interpret(prog, {"x": xb.T, "y": yb}, {**params, **state})
        for k in params:
            d = out[f"grad.{k}"] + wd * params[k]
            acc[k] += d * d
            params[k] = params[k] - lr * d / (np.sqrt(acc[k]) + eps)
        state = {k: out[f"state.{k}"] for k in state}
        loss = model.train_step(xb, yb, opt)
        np.testing.assert_allclose(loss, out["loss"], rtol=1e-12)
    for k, v in params.items():
        np.testing.assert_allclose(model.runtime.to_numpy(model.params[k]), v, rtol=1e-11, atol=1e-13, err_msg=k)
    for k, v in state.items():
        np.testing.assert_allclose(model.runtime.to_numpy(model.state[k]), v, rtol=1e-11, atol=1e-13, err_msg=k)
