"""Run under ``mpiexec -n N python tests/distributed_scenarios.py OUT_DIR [scenario]`` by
tests/test_distributed.py: every scenario of one launch, each rank writing what it saw to
OUT_DIR/rank<r>.npz (arrays) and OUT_DIR/rank<r>.json (losses, messages), for the test to compare
with one process on the same global batches."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

import bngraph as bg
from bngraph.distributed import Distributed, init

OPTIMIZERS = {
    "sgd": lambda: bg.optim.SGD(lr=0.1),
    "momentum": lambda: bg.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-2),
    "adam": lambda: bg.optim.Adam(lr=3e-3),
    "adamw": lambda: bg.optim.AdamW(lr=3e-3, weight_decay=1e-2),
}
N_EXAMPLES, BATCH, EPOCHS = 48, 14, 2  # batches of 14, 14, 14, 6: uneven shards for N = 3 (5, 5, 4)


def data():
    ds = bg.load_dataset("digits", seed=0)
    return ds.X_train[:N_EXAMPLES].astype(np.float64), ds.y_train[:N_EXAMPLES]


def model(dist=None, dtype="float64"):
    return bg.compile(bg.mlp([64, 24, 12, 10]), dtype=dtype, seed=0, distributed=dist)


def fit_run(opt_name, dist=None, X=None, y=None, epochs=EPOCHS):
    X, y = data() if X is None else (X, y)
    m = model(dist)
    hist = m.fit(X, y, optimizer=OPTIMIZERS[opt_name](), epochs=epochs, batch_size=BATCH, seed=3, verbose=False)
    return m, [r["loss"] for r in hist]


def cnn_model(dist=None):
    """A small CNN on the digits as (1, 8, 8) images: spatial batch norm, synchronized per channel
    over the batch and the positions of every rank."""
    g = bg.Graph("cnn", "f64")
    x, y = g.input("x", (1, 8, 8)), g.labels("y", 10)
    h = g.relu(g.batchnorm(g.conv(x, 4, 3, padding=1, name="c1"), name="b1"))
    h = g.maxpool(h, 2)
    h = g.relu(g.batchnorm(g.conv(h, 6, 3, stride=2, name="c2"), name="b2"))
    g.softmax_cross_entropy(g.matmul(g.flatten(h), 10, name="out"), y)
    return bg.compile(g, dtype="float64", seed=0, distributed=dist)


def cnn_run(dist=None):
    X, y = data()
    m = cnn_model(dist)
    hist = m.fit(X.reshape(-1, 1, 8, 8), y, optimizer=OPTIMIZERS["momentum"](), epochs=1, batch_size=BATCH, seed=3,
                 verbose=False)
    return m, [r["loss"] for r in hist]


def main(out: Path, which: str):
    rep = init("mpi", timeout=20, check_identical=True)
    r = rep.rank
    arrays, info = {}, {"size": rep.size}
    if which == "main":
        for name in OPTIMIZERS:  # N ranks, synchronized BN: equal to one process on the global batch
            m, losses = fit_run(name)
            info[f"{name}.losses"] = losses
            arrays.update({f"{name}.{k}": v for k, v in {**m.params, **m.state}.items()})
        m, losses = cnn_run()  # spatial batch norm synchronized
        info["cnn.losses"] = losses
        arrays.update({f"cnn.{k}": v for k, v in {**m.params, **m.state}.items()})
        m, losses = fit_run("adam", Distributed(rep, sync_bn=False))  # each rank its own statistics
        info["nosync.losses"] = losses
        arrays.update({f"nosync.{k}": v for k, v in {**m.params, **m.state}.items()})
        # checkpoints: one epoch on N ranks, saved by rank 0 (the test resumes it in one process);
        # and a one-process checkpoint (written by the test) resumed here for the second epoch
        X, y = data()
        m, _ = fit_run("adam", epochs=1)
        if rep.is_root:
            m.save(out / "ranks.npz")
        info["ranks_changes"] = list(m.distributed_changes)
        resumed = bg.load(out / "single.npz")
        hist = resumed.fit(X, y, epochs=1, verbose=False)
        info["resumed.losses"] = [h["loss"] for h in hist]
        arrays.update({f"resumed.{k}": v for k, v in {**resumed.params, **resumed.state}.items()})
        # bad data on one shard: every rank refuses, naming the rank
        m = model()
        before = {k: v.copy() for k, v in m.params.items()}
        Xs = X[:6].copy()
        if r == rep.size - 1:
            Xs[1, 3] = np.nan
        try:
            m.train_step(Xs, y[:6], bg.optim.SGD(lr=0.1))
            info["bad_data"] = "no error"
        except bg.DataError as e:
            info["bad_data"] = str(e)
        # a step refused on one rank (its shard overflows a batch variance) is refused on all
        m32 = model(Distributed(rep, sync_bn=False), dtype="float32")
        Xb = X[:6].astype(np.float32).copy()
        if r == min(1, rep.size - 1):  # rank 1 (rank 0 when it is alone)
            Xb[:, 10:20] = 3e19 * np.arange(1, 7)[:, None]
        p0 = {k: v.copy() for k, v in m32.params.items()}
        try:
            m32.train_step(Xb, y[:6], bg.optim.SGD(lr=0.1))
            info["diverged"] = "no error"
        except bg.TrainingDiverged as e:
            info["diverged"] = str(e)
        info["diverged_unchanged"] = all(np.array_equal(p0[k], v) for k, v in m32.params.items())
        info["bad_data_unchanged"] = all(np.array_equal(before[k], v) for k, v in m.params.items())
        # Ctrl-C on the last rank only, during fit: every rank stops at the same step boundary

        class CtrlC(bg.callbacks.Callback):
            def on_step_end(self, model, step, logs):
                if r == rep.size - 1 and logs["global_step"] == 2:
                    os.kill(os.getpid(), signal.SIGINT)

        m = model()
        try:
            m.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=1, batch_size=BATCH, verbose=False,
                  callbacks=[CtrlC()])
            info["ctrl_c"] = "no interrupt"
        except KeyboardInterrupt as e:
            info["ctrl_c"] = f"{str(e)} | step {m.step}"
    elif which == "dead":  # a rank dies between two steps: the others' collectives time out
        m = model()
        X, y = data()
        opt = bg.optim.SGD(lr=0.1)
        m.train_step(rep.shard(X[:12]), rep.shard(y[:12]), opt)
        if r == 1:
            os._exit(9)
        m.train_step(rep.shard(X[:12]), rep.shard(y[:12]), opt)
    np.savez(out / f"rank{r}.npz", **arrays)
    (out / f"rank{r}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "main")
