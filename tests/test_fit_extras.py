"""What PyTorch and Keras users expect around fit (issue 18): model(X), model.summary(),
History.history, the metrics that fit the loss (evaluate, the history, the JSON), and the progress
output (the epoch's running mean loss and an ETA, times never printed as 0.00s, a Ctrl-C message on
a line of its own)."""
from __future__ import annotations

import io
import json
import os
import re
import signal

import numpy as np
import pytest

import bngraph as bg
import bngraph.training as training_mod
from bngraph.summary import summary_text
from bngraph.training import StepBoundaryInterrupt, duration


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def test_calling_the_model_is_the_eval_mode_forward():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, verbose=False)
    np.testing.assert_array_equal(model(X), model.forward(X))
    np.testing.assert_array_equal(model(X, batch_size=7), model.forward(X))
    assert not np.array_equal(model(X), model.forward(X, training=True))  # eval mode: the running statistics
    with pytest.raises(bg.DataError, match="X expected shape"):
        model(X[:, :3])


def test_summary_shows_layers_shapes_parameters_and_what_the_passes_did(capsys):
    model = bg.compile(bg.mlp([64, 32, 10]))
    got = []
    assert model.summary(print_fn=got.append) is None and capsys.readouterr().out == ""
    (text,) = got
    assert text == summary_text(model)
    lines = text.splitlines()
    assert lines[0] == "Model mlp: target numpy, float32, loss softmax_cross_entropy"
    rows = {ln.split()[0]: ln for ln in lines[2:8]}
    assert list(rows) == ["x", "fc1", "bn1", "act1", "out", "loss"]
    assert re.search(r"matmul, bias_add +\(batch, 32\) +2,048 \(fc1.b removed by fold_bias\)$", rows["fc1"])
    assert re.search(r"batchnorm, running_update +\(batch, 32\) +64 \+ 64 state$", rows["bn1"])
    assert re.search(r"\(batch, 10\) +330$", rows["out"]) and re.search(r"\(\) +0$", rows["loss"])
    total = sum(v.size for v in model.params.values())
    assert f"parameters: {total:,} (as written: {total + 32:,}; the passes removed 32)" in text
    assert "  fuse_bn: fused bn1 and act1 into one pass" in text
    assert "  fold_bias: removed fc1.b (32 parameters)" in text
    model.summary()  # Keras's: printed
    assert capsys.readouterr().out == text + "\n"
    plain = summary_text(bg.compile(bg.mlp([64, 32, 10]), passes=[]))
    assert "removed" not in plain and "passes: none (no change)" in plain and "2,112 (" not in plain
    lines = []
    bg.compile(bg.mlp([4, 3], loss="mse")).summary(print_fn=lines.append)
    assert "loss mse" in lines[0]


def test_history_is_a_dict_of_lists_as_keras_has_it():
    X, y = data()
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=8, validation_data=(X, y),
                     verbose=False)
    h = hist.history
    assert list(h) == ["loss", "steps", "lr", "seconds", "val_loss", "val_accuracy"]
    assert h["loss"] == hist.column("loss") and len(h["val_accuracy"]) == 3 and hist.epoch == [1, 2, 3]
    assert bg.History().history == {}


def test_metrics_fit_the_loss_in_evaluate_and_in_the_history():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    T = np.stack([X[:, 0] - X[:, 1], X[:, 2] ** 2], axis=1)
    reg = bg.compile(bg.mlp([3, 8, 2], loss="mse"), dtype="float64")
    hist = reg.fit(X, T, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=10, validation_data=(X, T),
                   verbose=False)
    ev = reg.evaluate(X, T, batch_size=7)
    err = reg(X) - T
    assert list(ev) == ["loss", "rmse", "mae"]
    assert ev["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-12)
    assert ev["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-12)
    assert ev["rmse"] ** 2 == pytest.approx(ev["loss"], rel=1e-9)  # mse's loss is the mean squared error
    assert hist[-1]["val_rmse"] == ev["rmse"] and "val_accuracy" not in hist[-1]
    one = bg.compile(bg.mlp([3, 4, 1], loss="mse"), dtype="float64")
    assert one.evaluate(X, T[:, 0])["mae"] == pytest.approx(np.mean(np.abs(one(X)[:, 0] - T[:, 0])))  # (m,) targets
    Y = (rng.random((30, 2)) < 0.5).astype(float)
    bce = bg.compile(bg.mlp([3, 4, 2], loss="sigmoid_bce"), dtype="float64")
    ev = bce.evaluate(X, Y)
    p = 1 / (1 + np.exp(-bce(X)))
    assert list(ev) == ["loss", "accuracy"] and ev["accuracy"] == np.mean((p > 0.5) == (Y > 0.5))
    Xc, yc = data()
    cls = bg.compile(bg.mlp([4, 5, 3]))
    ev = cls.evaluate(Xc, yc)
    assert list(ev) == ["loss", "accuracy"] and ev["accuracy"] == np.mean(cls(Xc).argmax(1) == yc)
    json.dumps(list(hist))  # the records are plain numbers: the JSON report takes them as they are


def test_the_progress_bar_shows_the_epochs_running_mean_loss_and_an_eta(monkeypatch):
    X, y = data(24)
    stream = io.StringIO()
    monkeypatch.setattr(training_mod.sys, "stderr", stream)
    monkeypatch.setattr(training_mod, "_isatty", lambda s: True)
    ticks = iter(range(10**6))
    monkeypatch.setattr(training_mod.time, "perf_counter", lambda: next(ticks) * 0.5)  # every redraw is due
    model = bg.compile(bg.mlp([4, 5, 3]))
    losses = []
    log = bg.callbacks.LambdaCallback(on_step_end=lambda model, step, logs: losses.append(logs["loss"]))
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=5e-2), epochs=2, batch_size=8, callbacks=[log])
    text = stream.getvalue()
    for epoch, rec in enumerate(hist, start=1):
        mine = losses[3 * (epoch - 1):3 * epoch]
        assert f"epoch {epoch}/2 [" in text and f"3/3 loss {np.mean(mine):.4f}" in text
        assert f"1/3 loss {mine[0]:.4f}  ETA " in text and f"2/3 loss {np.mean(mine[:2]):.4f}  ETA " in text
        assert rec["loss"] == pytest.approx(np.mean(mine))
    assert mine[-1] != pytest.approx(np.mean(mine))  # the mean, not the last step's loss
    assert re.search(r"1/3 loss \d\.\d{4}  ETA \d+(\.\d+)?(ms|s)", text)


def test_epoch_times_are_never_printed_as_zero(capsys):
    assert [duration(s) for s in (0.0, 0.0004, 0.0123, 0.5, 3.214, 125.0, 7300.0)] == [
        "0.00ms", "0.40ms", "12ms", "500ms", "3.21s", "2m05s", "2h01m"]
    X, y = data(8)
    bg.compile(bg.mlp([4, 5, 3])).fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1)
    line = capsys.readouterr().err.strip()
    assert not line.endswith("0.00s") and re.search(r"  \d+(\.\d+)?(ms|s)$", line), line


def test_a_ctrl_c_message_starts_on_a_new_line_after_the_progress_bar(monkeypatch, sigint_default):
    X, y = data(40)
    stream = io.StringIO()
    monkeypatch.setattr(training_mod.sys, "stderr", stream)
    monkeypatch.setattr(training_mod, "_isatty", lambda s: True)
    ctrl_c = bg.callbacks.LambdaCallback(
        on_step_end=lambda model, step, logs: os.kill(os.getpid(), signal.SIGINT) if logs["global_step"] == 2 else None)
    model = bg.compile(bg.mlp([4, 5, 3]))
    with pytest.raises(StepBoundaryInterrupt, match="interrupted at epoch 1, after step 2 of 5"):
        model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=3, batch_size=8, callbacks=[ctrl_c])
    text = stream.getvalue()
    assert text.endswith("\n") and "epoch 1/3 [" in text.splitlines()[-1]  # the bar's line, then a new one
