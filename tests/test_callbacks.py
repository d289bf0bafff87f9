"""Callbacks in fit (bngraph/callbacks.py): the protocol (which hooks, when, with what, how one
stops training), EarlyStopping restoring exactly the best epoch's weights (bit for bit against a
run that stops there), ModelCheckpoint writing the best model, and the stop reason in History and
in the progress output."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from bngraph.callbacks import Callback, EarlyStopping, LambdaCallback, ModelCheckpoint


def overfitting_data():
    """Noisy training labels: the validation loss falls for a few epochs, then rises."""
    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((60, 6)), rng.standard_normal((30, 6))
    y, yv = (X[:, 0] > 0).astype(int), (Xv[:, 0] > 0).astype(int)
    y[:15] = rng.integers(0, 2, 15)
    return X, y, Xv, yv


def train(epochs, callbacks=(), **kw):
    X, y, Xv, yv = overfitting_data()
    model = bg.compile(bg.mlp([6, 32, 2]), dtype="float64")
    hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=0.05), epochs=epochs, batch_size=16, verbose=False,
                     validation_data=(Xv, yv), callbacks=list(callbacks), **kw)
    return model, hist


def assert_same_weights(a, b):
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=k)


def test_early_stopping_restores_exactly_the_best_epochs_weights():
    es = EarlyStopping(monitor="val_loss", patience=3)
    model, hist = train(60, [es])
    losses = hist.column("val_loss")
    best = int(np.argmin(losses)) + 1
    assert es.best_epoch == best and es.stopped_epoch == best + 3 == len(hist) < 60
    assert es.restored_epoch == best and es.best == losses[best - 1]
    assert hist.stop_reason == (f"early stopping at epoch {best + 3}: val_loss has not improved on "
                                f"{losses[best - 1]:.6g} (epoch {best}) for 3 epochs (patience 3); restored the "
                                f"weights of epoch {best}")
    assert not hist.diverged and model.epoch == best + 3  # the counters are not rewound
    reference, _ = train(best)  # a run that stops at the best epoch
    assert_same_weights(model, reference)
    assert any(not np.array_equal(model.params[k], train(best + 3)[0].params[k]) for k in model.params)


def test_early_stopping_without_restore_keeps_the_last_weights_and_a_full_run_gets_the_best():
    es = EarlyStopping(patience=3, restore_best=False)
    model, hist = train(60, [es])
    assert es.restored_epoch is None
    assert_same_weights(model, train(len(hist))[0])
    # all epochs ran (no stop), the best was earlier: the best weights are restored at the end
    es = EarlyStopping(patience=50, restore_best_weights=True)
    model, hist = train(8, [es])
    assert hist.stop_reason is None and es.best_epoch < 8 and es.restored_epoch == es.best_epoch
    assert_same_weights(model, train(es.best_epoch)[0])


class Fake:
    """Just enough of a model for a callback's hooks."""


@pytest.mark.parametrize("values, kwargs, stops_at, best", [
    ([1.0, 0.9, 0.95, 0.91, 0.92], {"patience": 2}, 4, 2),       # Keras: 2 epochs without improvement
    ([1.0, 0.9, 0.95], {"patience": 0}, 3, 2),
    ([1.0, 0.99, 0.985, 0.98], {"patience": 1, "min_delta": 0.02}, 2, 1),  # improvements within min_delta
    ([0.5, 0.6, 0.6, 0.59], {"monitor": "val_accuracy", "patience": 2}, 4, 2),  # auto: max for an accuracy
    ([0.5, 0.4, 0.45], {"monitor": "val_rmse", "mode": "max", "patience": 1}, 2, 1),
    ([float("nan"), 1.0, 1.0], {"patience": 1}, 3, 2),            # NaN is never an improvement
])
def test_early_stopping_counts_patience_as_keras_does(values, kwargs, stops_at, best):
    es = EarlyStopping(restore_best=False, **kwargs)
    monitor = kwargs.get("monitor", "val_loss")
    es.on_train_begin(Fake(), {"metrics": ["loss", monitor]})
    stopped = None
    for epoch, v in enumerate(values, start=1):
        if es.on_epoch_end(Fake(), epoch, {monitor: v}):
            stopped = epoch
            break
    assert (stopped, es.best_epoch) == (stops_at, best)


def test_model_checkpoint_writes_the_best_model_atomically(tmp_path):
    ck = ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss")
    every = ModelCheckpoint(str(tmp_path / "e{epoch:02d}-{val_loss:.2f}.npz"), save_best_only=False)
    es = EarlyStopping(patience=3)
    model, hist = train(60, [ck, every, es])
    assert ck.best_epoch == es.best_epoch and ck.saved[-1] == (es.best_epoch, str(tmp_path / "best.npz"))
    assert [e for e, _ in ck.saved] == [i + 1 for i, v in enumerate(hist.column("val_loss"))
                                        if v == min(hist.column("val_loss")[:i + 1])]
    best = bg.load(tmp_path / "best.npz")
    assert_same_weights(best, model)  # the restored weights are the saved best
    assert best.epoch == es.best_epoch and best.fit_state["position"] is None  # a checkpoint that resumes
    assert len(every.saved) == len(hist) and every.saved[0][1].endswith(f"e01-{hist[0]['val_loss']:.2f}.npz")
    assert not list(tmp_path.glob("*bngraph-tmp*"))


def test_model_checkpoint_refuses_a_missing_folder_before_the_first_step(tmp_path):
    X, y, Xv, yv = overfitting_data()
    model = bg.compile(bg.mlp([6, 32, 2]))
    with pytest.raises(FileNotFoundError, match="ModelCheckpoint .*no-such-folder"):
        model.fit(X, y, optimizer=bg.optim.Adam(), epochs=2, validation_data=(Xv, yv), verbose=False,
                  callbacks=[ModelCheckpoint(tmp_path / "no-such-folder" / "m.npz")])
    assert model.step == 0 and not (tmp_path / "no-such-folder").exists()
    for cb in (EarlyStopping(), ModelCheckpoint(tmp_path / "m.npz")):  # val_loss without validation data
        with pytest.raises(ValueError, match="monitors 'val_loss', which this fit does not report \\(it reports "
                                             "loss\\); it needs validation_data=, or monitor='loss'"):
            model.fit(X, y, optimizer=bg.optim.Adam(), epochs=2, verbose=False, callbacks=[cb])
    with pytest.raises(ValueError, match="monitors 'val_rmse'.*reports loss, val_loss, val_accuracy"):
        model.fit(X, y, epochs=1, validation_data=(Xv, yv), verbose=False, callbacks=EarlyStopping("val_rmse"))
    assert model.step == 0


class Recorder(Callback):
    def __init__(self, stop_at_step=None):
        self.calls, self.stop_at_step = [], stop_at_step

    def on_train_begin(self, model, logs):
        self.calls.append(("train_begin", dict(logs)))

    def on_epoch_begin(self, model, epoch, logs):
        self.calls.append(("epoch_begin", epoch))

    def on_step_end(self, model, step, logs):
        self.calls.append(("step_end", step, logs["epoch"], logs["global_step"], logs["steps"]))
        assert logs["loss"] > 0 and logs["lr"] == model.optimizer.lr
        return self.stop_at_step is not None and logs["global_step"] == self.stop_at_step

    def on_epoch_end(self, model, epoch, logs):
        self.calls.append(("epoch_end", epoch, sorted(logs)))
        logs["mine"] = epoch * 10  # kept in the history

    def on_train_end(self, model, logs):
        self.calls.append(("train_end", logs["stop_reason"], len(logs["history"])))


def test_the_hooks_are_called_in_order_with_their_logs():
    rec = Recorder()
    X, y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=2, batch_size=8, verbose=False, callbacks=[rec])
    keys = ["epoch", "loss", "lr", "seconds", "steps"]
    assert rec.calls == [
        ("train_begin", {"epochs": 2, "steps": 3, "metrics": ["loss"], "validation": False}),
        ("epoch_begin", 1), ("step_end", 1, 1, 1, 3), ("step_end", 2, 1, 2, 3), ("step_end", 3, 1, 3, 3),
        ("epoch_end", 1, keys),
        ("epoch_begin", 2), ("step_end", 1, 2, 4, 3), ("step_end", 2, 2, 5, 3), ("step_end", 3, 2, 6, 3),
        ("epoch_end", 2, keys), ("train_end", None, 2)]
    assert hist.column("mine") == [10, 20] and hist.history["mine"] == [10, 20]


def test_a_step_callback_stops_mid_epoch_and_the_reason_is_printed(capsys):
    X, y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3
    model = bg.compile(bg.mlp([4, 5, 3]))
    hist = model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=3, batch_size=8, callbacks=[Recorder(5)])
    assert hist.stop_reason == "stopped by Recorder" and len(hist) == 1 and not hist.diverged
    assert model.step == 5 and model.fit_state["position"] == {"epoch": 2, "done": 2,
                                                                "losses": model.fit_state["position"]["losses"]}
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("epoch 1  loss ") and err[-1] == "stopped by Recorder"
    stop = LambdaCallback(on_epoch_end=lambda model, epoch, logs: f"enough at epoch {epoch}" if epoch == 2 else None)
    hist = model.fit(X, y, epochs=5, callbacks=stop)  # the rest of epoch 2, then it stops
    assert hist.stop_reason == "enough at epoch 2" and hist.column("epoch") == [2] and model.epoch == 2
    assert capsys.readouterr().err.splitlines()[-1] == "enough at epoch 2"
    hist = model.fit(X, y, epochs=1, verbose=False, callbacks=[stop])  # epoch 3: no stop, and quiet
    assert hist.stop_reason is None and capsys.readouterr().err == ""
    stop4 = LambdaCallback(on_epoch_end=lambda model, epoch, logs: True)
    hist = bg.training.fit(model, X, y, epochs=2, callbacks=[stop4], announce_stop=False)  # the caller says it
    assert hist.stop_reason == "stopped by LambdaCallback" and hist.column("epoch") == [4]
    assert capsys.readouterr().err.splitlines()[-1].startswith("epoch 4  loss ")


def test_what_is_not_a_callback_is_refused():
    X, y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3
    model = bg.compile(bg.mlp([4, 5, 3]))
    for bad in (lambda model, epoch, logs: None, "early", [object()]):
        with pytest.raises(TypeError, match="a callback is an object with any of on_train_begin.*LambdaCallback"):
            model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, verbose=False, callbacks=bad)
    with pytest.raises(TypeError, match="LambdaCallback: on_epoch_end must be a function"):
        LambdaCallback(on_epoch_end=3)
    with pytest.raises(ValueError, match="EarlyStopping: patience must be an integer >= 0"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        EarlyStopping(mode="up")
    assert model.step == 0
