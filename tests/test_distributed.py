"""Data-parallel training (bngraph.distributed): N ranks under mpiexec equal one process on the
global batch. The MPI scenarios run in few launches (tests/distributed_scenarios.py): every
optimizer, uneven shards, checkpoints across N, faults."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.distributed import Distributed, Local
from bngraph.passes.sync_batchnorm import global_mean_loss, sync_batchnorm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_scenarios as sc  # noqa: E402

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")


def launch(n, out, which="main", timeout=240):
    t0 = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(HERE / "distributed_scenarios.py"), str(out),
                           which], capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def single():
    """One process on the same global batches: params, state and epoch losses per optimizer."""
    ref = {}
    for name in sc.OPTIMIZERS:
        m, losses = sc.fit_run(name)
        ref[name] = ({**m.params, **m.state}, losses)
    m, _ = sc.fit_run("adam", epochs=1)
    return ref, m


@pytest.fixture(scope="module", params=[1, 2, 3])
def ranks(request, single, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ranks{request.param}")
    single[1].save(out / "single.npz")
    if MPIEXEC is None:
        pytest.skip("mpiexec not installed")
    proc, _ = launch(request.param, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [(dict(np.load(out / f"rank{r}.npz")), json.loads((out / f"rank{r}.json").read_text()))
           for r in range(request.param)]
    return request.param, out, got


@needs_mpi
@pytest.mark.parametrize("opt", list(sc.OPTIMIZERS))
def test_n_ranks_equal_one_process_on_the_global_batch(ranks, single, opt):
    n, _, got = ranks
    values, losses = single[0][opt]
    for arrays, info in got:
        assert info["size"] == n
        np.testing.assert_allclose(info[f"{opt}.losses"], losses, rtol=1e-12, atol=1e-13)
        for k, v in values.items():
            np.testing.assert_allclose(arrays[f"{opt}.{k}"], v, rtol=1e-11, atol=5e-12, err_msg=f"{opt} {k}")
    for arrays, _ in got[1:]:  # and bit-identical across the replicas
        assert all(np.array_equal(arrays[f"{opt}.{k}"], got[0][0][f"{opt}.{k}"]) for k in values)


@needs_mpi
def test_spatial_batch_norm_is_synchronized_over_ranks_and_positions(ranks):
    n, _, got = ranks
    m, losses = sc.cnn_run()
    values = {**m.params, **m.state}
    for arrays, info in got:
        np.testing.assert_allclose(info["cnn.losses"], losses, rtol=1e-12, atol=1e-13)
        for k, v in values.items():
            np.testing.assert_allclose(arrays[f"cnn.{k}"], v, rtol=1e-11, atol=5e-12, err_msg=f"cnn {k} on {n} ranks")


@needs_mpi
def test_without_sync_bn_the_model_changes_with_the_replicas(ranks, single):
    if ranks[0] == 1:
        pytest.skip("one replica: its own statistics are the global batch's")
    _, _, got = ranks
    values, losses = single[0]["adam"]
    arrays, info = got[0]
    diff = max(np.abs(arrays[f"nosync.{k}"] - v).max() for k, v in values.items())
    assert diff > 1e-4, diff  # per-shard statistics: another model
    assert abs(info["nosync.losses"][0] - losses[0]) > 1e-4


@needs_mpi
def test_checkpoints_move_between_n_ranks_and_one_process(ranks, single):
    _, out, got = ranks
    X, y = sc.data()
    values, losses = single[0]["adam"]
    m = bg.load(out / "ranks.npz")  # written by rank 0 after one epoch on N ranks, resumed here
    hist = m.fit(X, y, epochs=1, verbose=False)
    np.testing.assert_allclose(hist[-1]["loss"], losses[1], rtol=1e-12)
    for k, v in values.items():
        np.testing.assert_allclose({**m.params, **m.state}[k], v, rtol=1e-11, atol=5e-12)
    for arrays, info in got:  # a one-process checkpoint resumed on N ranks
        np.testing.assert_allclose(info["resumed.losses"], losses[1:], rtol=1e-12)
        for k, v in values.items():
            np.testing.assert_allclose(arrays[f"resumed.{k}"], v, rtol=1e-11, atol=5e-12)


@needs_mpi
def test_a_failure_on_one_rank_stops_every_rank_naming_it(ranks):
    n, _, got = ranks
    for _, info in got:
        assert info["bad_data"] == f"rank {n - 1}: train_step: X row 1 contains NaN or inf (1 bad rows)"
        assert info["bad_data_unchanged"] and info["diverged_unchanged"]
        assert info["diverged"].startswith(f"rank {min(1, n - 1)}: ") and "nothing was updated" in info["diverged"]
        assert info["ctrl_c"].startswith(f"fit: interrupted (Ctrl-C on rank {n - 1}) at epoch 1, after step 2 of 4")
        assert info["ctrl_c"].endswith("| step 2")


@needs_mpi
def test_a_dead_rank_ends_the_job_in_bounded_time(tmp_path):
    proc, seconds = launch(2, tmp_path, "dead", timeout=120)
    assert proc.returncode != 0
    assert seconds < 60, seconds
    assert not (tmp_path / "rank0.json").exists()


# ---- one process: the ops, the pass, the option ------------------------------------------------------


def _programs(g, dtype="float64"):
    from bngraph.compiler import build_programs

    return build_programs(g, dtype).programs["train_step"]


def test_the_pass_rewrites_forward_and_backward_and_prints_and_parses():
    t = _programs(bg.mlp([6, 8, 3]))
    res = sync_batchnorm.run(t)
    ops = [n.op for n in res.graph.nodes]
    assert "batchnorm_act" not in ops and "batchnorm_act_grad" not in ops and "running_update" not in ops
    assert ops.count("allreduce") == 3  # (count, sum), M2, (sum dy, sum dy*z_hat)
    assert ops.index("bn_partial_sum") < ops.index("bn_partial_m2") < ops.index("batchnorm_sync")
    assert ops.index("batchnorm_sync_reduce") < ops.index("batchnorm_sync_grad")
    assert "synchronized bn1 (batchnorm_act, 8 units)" in res.changes[0]
    g = global_mean_loss.run(res.graph).graph
    assert bg.parse(str(g)) == g
    assert dict(g.outputs)["loss"] == "loss.global"
    again = sync_batchnorm.run(global_mean_loss.run(t).graph)
    assert [n.op for n in again.graph.nodes].count("allreduce") == 4


def test_one_replica_interprets_like_the_original_program():
    from bngraph.interpreter import interpret

    rng = np.random.default_rng(0)
    g = bg.Graph("cnn")
    x = g.input("x", (2, 5, 5))
    h = g.conv(x, 3, 3, name="c1")
    h = g.relu(g.batchnorm(h, name="bn1"))
    logits = g.matmul(g.flatten(h), 4, name="out")
    g.softmax_cross_entropy(logits, g.labels("y", 4))
    t = _programs(g)
    s = global_mean_loss.run(sync_batchnorm.run(t).graph).graph
    assert "(per channel over the batch and the positions)" in sync_batchnorm.run(t).changes[0]
    from bngraph.init import init_values

    values = init_values(t, 0)
    feeds = {"x": rng.standard_normal((2, 7, 5, 5)), "y": rng.integers(0, 4, 7)}
    a, b = interpret(t, feeds, values), interpret(s, feeds, values)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_local_replica_trains_like_the_plain_model_and_shards_split_evenly():
    X, y = sc.data()
    a = sc.model()
    b = sc.model(Distributed(Local()))
    for _ in range(2):
        la, lb = a.train_step(X[:14], y[:14], bg.optim.Adam(lr=1e-2)), b.train_step(X[:14], y[:14], bg.optim.Adam(lr=1e-2))
        assert abs(la - lb) < 1e-13
    assert b.distributed_changes and a.distributed is None
    r = Local()
    r.size = 3
    parts = []
    for k in range(3):
        r.rank = k
        parts.append(list(r.shard(list(range(14)))))
    assert parts == [list(range(5)), list(range(5, 10)), list(range(10, 14))]
    with pytest.raises(ValueError, match="distributed engine must be one of"):
        bg.distributed.init("gloo")


def test_a_sum_loss_is_refused_clearly():
    g = bg.Graph("s")
    logits = g.matmul(g.input("x", 3), 2)
    g.softmax_cross_entropy(logits, g.labels("y", 2), reduction="sum")
    with pytest.raises(bg.passes.PassError, match="reduction='sum'; data-parallel training supports the mean"):
        global_mean_loss.run(_programs(g))


def test_nccl_host_logic_without_a_gpu():
    from bngraph.distributed.nccl import buckets, nccl_dtype, share_unique_id

    assert [nccl_dtype(np.float32), nccl_dtype("float64"), nccl_dtype(np.int64)] == [7, 8, 4]  # nccl.h
    with pytest.raises(TypeError, match="the NCCL engine sums float32, float64 and int64 arrays, got float16"):
        nccl_dtype(np.float16)
    assert buckets(10, 4, bucket_bytes=16) == [(0, 4), (4, 8), (8, 10)]

    class Comm:  # rank 1's view: rank 0's id arrives over MPI's bcast
        def Get_rank(self):
            return 1

        def bcast(self, obj, root):
            assert obj is None and root == 0
            return b"id-of-rank-0"

    assert share_unique_id(Comm(), lambda: pytest.fail("only rank 0 makes the id")) == b"id-of-rank-0"


def test_the_cuda_emulator_trains_a_replicated_model_like_the_plain_one():
    X, y = sc.data()
    a = bg.compile(bg.mlp([64, 12, 10]), target="cuda", device="emulator", dtype="float64", seed=0)
    b = bg.compile(bg.mlp([64, 12, 10]), target="cuda", device="emulator", dtype="float64", seed=0,
                   distributed=Distributed(Local()))
    assert "_dist.allreduce(" in b.source
    for _ in range(2):
        la, lb = a.train_step(X[:14], y[:14], bg.optim.SGD(lr=0.1)), b.train_step(X[:14], y[:14], bg.optim.SGD(lr=0.1))
        assert abs(la - lb) < 1e-12
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12, atol=1e-13)


@pytest.mark.gpu
def test_nccl_on_one_gpu_sums_like_the_identity_and_trains():
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no GPU")
    from bngraph.distributed.nccl import NCCLReplicas

    rep = NCCLReplicas(timeout=30)
    x = cupy.arange(10, dtype=cupy.float32)
    (s,) = rep.allreduce([x])
    assert cupy.array_equal(s, x)
    X, y = sc.data()
    m = bg.compile(bg.mlp([64, 12, 10]), target="cuda", dtype="float64", seed=0, distributed=Distributed(rep))
    ref = bg.compile(bg.mlp([64, 12, 10]), target="cuda", dtype="float64", seed=0)
    assert abs(m.train_step(X[:14], y[:14], bg.optim.SGD(lr=0.1)) - ref.train_step(X[:14], y[:14],
                                                                                   bg.optim.SGD(lr=0.1))) < 1e-10


@needs_mpi
def test_the_command_line_trains_on_two_ranks_like_one_process_and_checkpoints_move(tmp_path):
    """mpiexec -n 2 bngraph train --distributed (float64: the same run as one process, to round-off),
    rank 0 alone printing and writing; its checkpoint resumes in one process."""
    flags = ["train", "--epochs", "3", "--dtype", "float64", "--quiet"]
    cli = [sys.executable, "-m", "bngraph.cli"]
    two = subprocess.run([MPIEXEC, "-n", "2", *cli, *flags, "--distributed", "--save", str(tmp_path / "two.npz"),
                          "--json", str(tmp_path / "two.json")], capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([*cli, *flags, "--json", str(tmp_path / "one.json"), "--no-save"], capture_output=True,
                         text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("two", "one"))
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    np.testing.assert_allclose([h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]], rtol=1e-10)
    assert two.stdout.count("test accuracy") == 1  # rank 0 alone prints
    resumed = subprocess.run([*cli, "train", "--resume", str(tmp_path / "two.npz"), "--epochs", "4", "--quiet",
                              "--no-save"], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "test accuracy" in resumed.stdout


class _DeviceArray(np.lib.mixins.NDArrayOperatorsMixin):
    """An array like CuPy's on the host: NumPy's functions dispatch to it (NEP 18), but converting it
    to a NumPy array implicitly (np.asarray) is refused, as CuPy refuses it."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    @staticmethod
    def _unwrap(x):
        return x.a if isinstance(x, _DeviceArray) else x

    def _wrap(self, r):
        return _DeviceArray(r) if isinstance(r, np.ndarray) or np.isscalar(r) else r

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return self._wrap(getattr(ufunc, method)(*map(self._unwrap, inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        return self._wrap(func(*map(self._unwrap, args), **{k: self._unwrap(v) for k, v in kwargs.items()}))

    def __getitem__(self, index):
        return self._wrap(self.a[self._unwrap(index)])

    def astype(self, dtype):
        return _DeviceArray(self.a.astype(dtype))

    def sum(self):
        return _DeviceArray(self.a.sum())

    @property
    def shape(self):
        return self.a.shape

    @property
    def dtype(self):
        return self.a.dtype


@pytest.mark.parametrize("options, weight, want", [({}, None, 4.0), ({"ignore_index": 1}, None, 3.0),
                                                    ({"ignore_index": 1}, [1.0, 2.0, 3.0], 7.0)])
def test_loss_count_takes_device_arrays_it_may_not_copy_to_the_host(options, weight, want):
    """The CUDA target hands the collective ops' reference code CuPy arrays: loss_count must stay on
    their array module (np.asarray of the labels or of the sum raised on a GPU)."""
    from bngraph.ops_collective import loss_count

    dev = _DeviceArray
    ins = [dev(np.zeros((3, 4))), dev([0, 2, 1, 2])] + ([dev(weight)] if weight else [])
    (count,) = loss_count(ins, {"loss": "softmax_cross_entropy", **options})
    assert isinstance(count, dev) and float(count.a) == want
