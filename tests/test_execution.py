"""The execution architecture: programs, flat buffers, gradients written in place, one finite
check per buffer, and the passes a user chooses applying to every program."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg


def data(n=24, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def test_chosen_passes_apply_to_every_program():
    """passes=[] means no fusion anywhere: forward and evaluate keep the plain batchnorm too."""
    plain = bg.compile(bg.mlp([4, 5, 3]), passes=[])
    for name, prog in plain.programs.items():
        ops = {n.op for n in prog.nodes}
        assert "batchnorm" in ops and "batchnorm_act" not in ops, name
    fused = bg.compile(bg.mlp([4, 5, 3]))
    for name, prog in fused.programs.items():
        ops = {n.op for n in prog.nodes}
        assert "batchnorm_act" in ops and "batchnorm" not in ops, name
    only_fuse = bg.compile(bg.mlp([4, 5, 3]), passes=["fuse_bn"])
    assert "bias_add" in {n.op for n in only_fuse.programs["forward"].nodes}  # fold_bias was not chosen


def test_params_and_grads_are_views_of_one_flat_buffer_per_dtype():
    model = bg.compile(bg.mlp([4, 5, 3]))
    (buf,) = model._P.buffers.values()
    (gbuf,) = model._G.buffers.values()
    assert buf.size == sum(v.size for v in model.params.values())
    for k, v in model.params.items():
        assert np.shares_memory(v, buf) and np.shares_memory(model.grads[k], gbuf), k
    # the user's dict is name -> array as before, and writing a view writes the buffer
    model.set_params({"out.b": [1.0, 2.0, 3.0]})
    np.testing.assert_array_equal(buf[-3:], [1, 2, 3])


def test_train_step_writes_gradients_into_the_flat_gradient_buffer():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    before = {k: np.array(v) for k, v in {**model.params, **model.state}.items()}
    prog = model.programs["train_step"]
    feeds = {"x": X.T, "y": y}
    ref = bg.interpret(prog, feeds, before)
    model.train_step(X, y, bg.optim.SGD(lr=0.0))  # lr 0: params unchanged, gradients still computed
    for k, g in model.grads.items():
        np.testing.assert_allclose(g, ref[f"grad.{k}"], rtol=1e-12, atol=1e-14, err_msg=k)
    src = model.source
    assert 'out=G["fc1.W"]' in src and 'G["bn1.gamma"], G["bn1.beta"]' in src and 'out=G["out.b"]' in src


def test_finite_checks_are_one_reduction_per_buffer():
    """The gradients' finite check, and the bounds of params and slots that prove the update
    (bngraph.optim.bounds), are one reduction per flat buffer: nothing after the update."""
    X, y = data()
    model = bg.compile(bg.mlp([4, 8, 8, 3]))
    calls = []
    real = model.runtime.abs_bound
    model.runtime.abs_bound = lambda a: calls.append(a.size) or real(a)
    opt = bg.optim.Adam(lr=1e-3)
    model.train_step(X, y, opt)  # the first step measures the slots exactly (value_range): nothing tracked yet
    calls.clear()
    model.train_step(X, y, opt)
    n = model._P.buffers["float32"].size
    assert calls == [n, n, n, n]  # gradients, params, exp_avg, exp_avg_sq: one call each


def test_a_nonfinite_gradient_is_named_and_changes_nothing():
    """A finite loss with a NaN gradient: TrainingDiverged names the gradient; params, state, the
    optimizer's step count and its slots are unchanged."""
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]), dtype="float64")
    opt = bg.optim.Adam(lr=1e-2)
    model.train_step(X, y, opt)
    before = {k: np.array(v) for k, v in {**model.params, **model.state}.items()}
    slots = {k: {s: np.array(a) for s, a in v.items()} for k, v in opt.state_dict()["slots"].items()}
    real = model.executable.functions["train_step"]

    def poisoned(*args):
        out = real(*args)
        args[-2]["bn1.gamma"][1] = np.nan  # G: the gradient views
        return out

    model.executable.functions["train_step"] = poisoned
    with pytest.raises(bg.TrainingDiverged, match="gradient of bn1.gamma contains NaN or inf at step 2"):
        model.train_step(X, y, opt)
    for k, v in {**model.params, **model.state}.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model.step == 1 and opt.state_dict()["step"] == 1
    for k, v in opt.state_dict()["slots"].items():
        for s, a in v.items():
            np.testing.assert_array_equal(a, slots[k][s], err_msg=f"{k}/{s}")


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
def test_evaluate_runs_the_generated_program_in_chunks(loss):
    rng = np.random.default_rng(1)
    model = bg.compile(bg.mlp([4, 6, 3], loss=loss), dtype="float64")
    X = rng.standard_normal((37, 4))
    y = rng.integers(0, 3, 37) if loss == "softmax_cross_entropy" else rng.uniform(0, 1, (37, 3))
    whole = model.evaluate(X, y, batch_size=None)
    chunked = model.evaluate(X, y, batch_size=10)  # 10, 10, 10, 7: sizes weight the chunk means
    assert whole["loss"] == pytest.approx(chunked["loss"], rel=1e-12)
    prog = model.programs["forward"]
    out = bg.interpret(prog, {"x": X.T}, {**model.params, **model.state})["out"]
    yy = y if loss == "softmax_cross_entropy" else y.T
    ref = float(bg.OPS[loss].ref([out, yy], {})[0])
    assert whole["loss"] == pytest.approx(ref, rel=1e-12)
    if loss == "mse":
        assert "accuracy" not in whole
    else:
        assert whole["accuracy"] == pytest.approx(chunked["accuracy"])
    assert "def evaluate(" in model.source


def test_the_model_knows_nothing_of_numpy_targets_only_the_runtime(monkeypatch):
    """Model code moves device arrays only through its runtime: with to_numpy/asarray spied on,
    a fit with validation, a forward and a save all go through them."""
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    seen = {"asarray": 0, "to_numpy": 0}
    rt = model.runtime
    for name in seen:
        real = getattr(rt, name)
        monkeypatch.setattr(rt, name, lambda *a, real=real, name=name: seen.__setitem__(name, seen[name] + 1) or real(*a))
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=8, validation_data=(X, y), verbose=False)
    model.forward(X)
    assert seen["asarray"] > 0 and seen["to_numpy"] > 0


def test_parameter_groups_survive_a_checkpoint_and_resume_exactly(tmp_path):
    """No weight decay for gamma/beta and another lr for fc1, through save/load: the resumed run
    equals the straight one bit for bit, and the groups are in the checkpoint."""
    X, y = data(40)

    def make():
        return bg.optim.AdamW(lr=1e-2, weight_decay=0.1,
                              groups=[{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0},
                                      {"params": "fc1.*", "lr": 1e-3}])

    straight = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    straight.fit(X, y, optimizer=make(), epochs=3, batch_size=8, verbose=False)
    half = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    half.fit(X, y, optimizer=make(), epochs=2, batch_size=8, verbose=False)
    half.save(tmp_path / "g.npz")
    resumed = bg.load(tmp_path / "g.npz")
    assert resumed.optimizer.state_dict()["groups"] == half.optimizer.state_dict()["groups"]
    resumed.fit(X, y, epochs=1, batch_size=8, verbose=False)
    for k, v in straight.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k)
    # and the groups did something: gamma/beta decay-free, fc1 slower than out
    plain = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    plain.fit(X, y, optimizer=bg.optim.AdamW(lr=1e-2, weight_decay=0.1), epochs=3, batch_size=8, verbose=False)
    assert not np.array_equal(plain.params["bn1.gamma"], straight.params["bn1.gamma"])
