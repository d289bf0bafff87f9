"""Every kernel the CUDA target emits, on the CUDA execution model (``device="emulator-threads"``:
the real grids and blocks, every block's threads concurrent, real barriers, poisoned memory),
against the NumPy target: float64 to float64 rounding (1e-12 of each output's scale), float32 to
float32 rounding, the optimizer kernels bit for bit.

* every op and fused op, every activation, with and without bias and batch norm, train and eval
  (and batch norm's gradients in eval mode), every loss (and the class losses' variants: weights, ignore_index, reductions; log_softmax), the
  arithmetic ops; batch sizes 2, 3, 33 (a block's threads partly idle, several blocks);
* batch norm over rows the driver keeps whole (register-cached, m = 4096), cuts into segments
  (m = 4097: two launches), and reads again from memory (m beyond BN_CACHE*blockDim.x, with fewer
  threads per block than the driver's); features = 1;
* block sizes: the driver's own (it picks per launch), and 32, 64 and 128 for every launch; a block
  the kernels do not support (not a power of two, or more than BLOCK) is refused, naming the kernel;
* every optimizer with its options, bit for bit; the guarded step (step_guard, step_commit) in a
  fit and in a divergence, which it must name as the NumPy target does, whatever the schedule;
  a captured graph replays the eager step's bits, and so does another schedule.

tests/test_cuda_model.py checks the model's own semantics; tests/test_cuda_model_mutations.py
plants GPU-only bugs and runs the sanitizers.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import get_target
from bngraph.backends.cuda_target.threads import KernelFault
from cuda_model_support import compare_programs, model_device
from test_binary_ops import arithmetic_graph
from test_cuda_target import layered_graph
from test_loss_variants import kernel_zoo, zoo_reference, zoo_values

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the execution model compiles with g++")

LOSSES = ("softmax_cross_entropy", "mse", "sigmoid_bce")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("passes", [None, []], ids=["fused", "plain"])
def test_every_program_equals_the_numpy_target_float64(loss, passes):
    """Every activation, bias or not, batch norm or not (train and eval), widths 3, 7, 1, 6."""
    g = layered_graph(loss, "f64", widths=(3, 7, 1, 6))
    compare_programs(g, model_device(), sizes=(2, 3, 33), passes=passes)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_program_equals_the_numpy_target_float32(loss):
    g = layered_graph(loss, "f32", widths=(3, 7, 1, 6))
    compare_programs(g, model_device(), sizes=(3, 33), dtype="float32")


@pytest.mark.parametrize("block", [32, 64, 128])
def test_every_program_with_other_block_sizes(block):
    """Every launch with ``block`` threads instead of the driver's: the kernels loop grid-stride,
    so the numbers are the same; rows beyond BN_CACHE*block are read again from memory."""
    g = layered_graph("softmax_cross_entropy", "f64", widths=(3, 7, 1, 6))
    dev = compare_programs(g, model_device(block=block), sizes=(3, 33, 16 * block + 1))
    assert {b for _, _, b in dev.runtime.launcher.history} == {(block, 1, 1)}


def _bn_launches(dev):
    return [(k, g, b) for k, g, b in dev.runtime.launcher.history if "act1" in k or "bn1" in k]


def test_batchnorm_rows_kept_in_registers_cut_into_segments_and_read_again():
    """m = 4096: whole rows kept in registers by the driver's 256 threads; 4097: more than a block
    keeps, the driver cuts them into segments (two launches); features = 1 (one unit); with 32
    threads a block, m = 4096 rows are read again from memory (beyond BN_CACHE*32 = 512)."""
    g = bg.mlp([3, 1, 2])  # fc1 -> bn1 (one unit) -> relu -> out
    dev = compare_programs(g, model_device(), sizes=(4096,), programs=("train_step", "forward_train"))
    assert any(b == (256, 1, 1) and not k.endswith(("_partial", "_combine")) for k, _, b in _bn_launches(dev))
    dev = compare_programs(g, model_device(), sizes=(4097,), programs=("train_step", "forward_train"))
    names = {k for k, _, _ in _bn_launches(dev)}
    assert any(k.endswith("_partial") for k in names) and any(k.endswith("_combine") for k in names), names
    dev = compare_programs(g, model_device(block=32), sizes=(4096,), programs=("train_step", "forward_train"))
    assert {b for _, _, b in _bn_launches(dev)} == {(32, 1, 1)}


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_every_class_loss_variant(dtype):
    """Loss, gradient and fused kernels of every class loss variant, and log_softmax and its
    gradient, against the op table's reference (as tests/test_loss_variants.py on the emulator)."""
    g = kernel_zoo(dtype)
    target = get_target("cuda")
    exe = target.runtime(model_device()).load(target.renderer.render({"forward": g}, g.dtype, g.name))
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "f64" else dict(rtol=2e-5, atol=2e-6)
    for m in (3, 33, 1100):  # 1100: a class loss over several blocks
        feeds, state = zoo_values(np.random.default_rng(m), dtype, m)
        want = zoo_reference(g, feeds, state)
        got = exe.run("forward", {k: exe.runtime.asarray(v, v.dtype) for k, v in feeds.items()}, {},
                      {k: exe.runtime.asarray(v, v.dtype) for k, v in state.items()}, None, m)
        for k, v in want.items():
            node = next(n for n in g.nodes if n.out.name == k)
            np.testing.assert_allclose(np.asarray(got[k]), v, err_msg=f"{node} m={m}", **tol)


def test_batchnorm_in_eval_mode_and_its_gradient():
    """Frozen statistics (batchnorm_grad and batchnorm_act_grad in eval mode) against the interpreter."""
    from conftest import random_values
    from test_codegen import EVAL_BN_IR

    train = bg.grad_graph(bg.parse(EVAL_BN_IR))
    assert {("batchnorm_grad", "eval"), ("batchnorm_act_grad", "eval")} <= {(n.op, n.attr.get("mode")) for n in train.nodes}
    target, rng = get_target("cuda"), np.random.default_rng(0)
    exe = target.runtime(model_device()).load(target.renderer.render({"train_step": train}, "f64", "evalbn"))
    for m in (2, 33):
        feeds, values = random_values(train, rng, m=m)
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        grads = {p.name: np.full(p.type.shape, np.nan) for p in train.params}
        got = exe.run("train_step", feeds, values, values, grads, m)
        for k, want in bg.interpret(train, feeds, values).items():
            np.testing.assert_allclose(np.asarray(got[k]), want, rtol=1e-12, atol=1e-12, err_msg=f"{k} m={m}")


def test_the_arithmetic_ops():
    compare_programs(arithmetic_graph("f64"), model_device(), sizes=(2, 33))


def test_a_block_the_kernels_do_not_support_is_refused_naming_the_kernel():
    g = bg.mlp([3, 4, 2])
    for block, why in ((96, r"a block of 96 threads: its block_sum needs blockDim.x a power of two"),
                       (512, r"a block of 512 threads: it declares __shared__ arrays of BLOCK = 256 elements")):
        model = bg.compile(g, target="cuda", device=model_device(block=block), dtype="float64")
        with pytest.raises(KernelFault, match=r"kernel \w+__\w+ cannot run with " + why):
            model.forward(np.ones((5, 3)), training=True)


# ---- the optimizers, the guarded step, graphs -------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda: bg.optim.SGD(lr=0.1),
    "sgd-momentum-dampening-decay": lambda: bg.optim.SGD(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    "sgd-nesterov": lambda: bg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: bg.optim.RMSprop(lr=1e-2),
    "rmsprop-centered-momentum-decay": lambda: bg.optim.RMSprop(lr=1e-2, centered=True, momentum=0.5,
                                                                weight_decay=1e-2),
    "adam": lambda: bg.optim.Adam(lr=1e-2),
    "adam-decay-amsgrad": lambda: bg.optim.Adam(lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamw": lambda: bg.optim.AdamW(lr=1e-2, weight_decay=0.05),
    "adamw-amsgrad-groups": lambda: bg.optim.AdamW(lr=1e-2, amsgrad=True, groups=[{"params": "fc1.*", "lr": 1e-3}]),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_optimizer_kernel_equals_the_numpy_update_bit_for_bit(dtype):
    """Each optimizer's kernel over the flat buffer (grids of several blocks) and bngraph.optim's
    NumPy passes, the same params, gradients and schedule: identical bits, params and slots."""
    from bngraph.flat import FlatLayout

    model = bg.compile(bg.mlp([40, 30, 3]), target="cuda", device=model_device(), dtype=dtype)  # 1.3k params
    layout = FlatLayout([(k, v.shape, dtype) for k, v in model.params.items()])
    for name, make in OPTIMIZERS.items():
        rng = np.random.default_rng(0)
        P1, P2, G = layout.allocate(np), layout.allocate(np), layout.allocate(np)
        P1.buffers[dtype][...] = rng.standard_normal(P1.buffers[dtype].shape)
        P2.buffers[dtype][...] = P1.buffers[dtype]
        device, host = make(), make()
        device.bind(layout, np, kernel=model.executable.optimizer_kernel(device))
        host.bind(layout, np)
        for step in range(4):
            G.buffers[dtype][...] = rng.standard_normal(G.buffers[dtype].shape)
            device.lr = host.lr = 1e-2 / (1 + step)
            device.step_flat(P1, G)
            host.step_flat(P2, G)
            np.testing.assert_array_equal(P1.buffers[dtype], P2.buffers[dtype], err_msg=f"{name} step {step}")
        for p, slots in host.state_dict()["slots"].items():
            for key, v in slots.items():
                np.testing.assert_array_equal(device.state_dict()["slots"][p][key], v, err_msg=f"{name} {p}/{key}")


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def test_a_guarded_fit_equals_the_numpy_target_and_another_schedule_the_same_bits():
    X, y = _data(45)
    runs = []
    for device in (model_device(seed=1), model_device(seed=2, workers=1)):
        model = bg.compile(bg.mlp([4, 6, 5, 3]), target="cuda", device=device, dtype="float64")
        hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=16, verbose=False)
        assert model.trainer.guarded is not None
        runs.append((hist.column("loss"), model.params))
    ref = bg.compile(bg.mlp([4, 6, 5, 3]), dtype="float64")
    want = ref.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=2, batch_size=16, verbose=False)
    np.testing.assert_allclose(runs[0][0], want.column("loss"), rtol=1e-12)
    for k in ref.params:
        np.testing.assert_allclose(runs[0][1][k], ref.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k], err_msg=k)  # the schedule changes no bit


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_divergence_is_named_as_on_the_numpy_target_whatever_the_schedule(seed):
    """lr 1e200 at step 9 makes step 10's loss NaN and every gradient NaN: the guard's threads all
    find something, and the status must still say the loss, as the NumPy target does (issue 17,
    finding 2: the guard used to name a random gradient on real threads)."""
    X, y = _data(96)
    schedule = lambda epoch, step: 1e200 if step == 9 else 1e-2  # noqa: E731
    stops = []
    for target, device in (("numpy", None), ("cuda", model_device(seed=seed))):
        model = bg.compile(bg.mlp([4, 6, 5, 3]), target=target, device=device, dtype="float64")
        hist = model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=16, verbose=False,
                         lr_schedule=schedule)
        stops.append(hist.stop_reason)
        assert model.step == 9
    assert stops[0] == stops[1] and "loss is nan at step 10; nothing was updated" in stops[1]


def test_a_captured_graph_replays_the_eager_steps_bits():
    X, y = _data(45)
    models = [bg.compile(bg.mlp([4, 6, 5, 3]), target="cuda", device=model_device(seed=s), dtype="float32",
                         cuda_graph=graphs) for s, graphs in ((1, False), (2, True))]
    schedule = lambda epoch, step: 1e-2 / step  # noqa: E731
    for model in models:
        model.fit(X, y, optimizer=bg.optim.SGD(lr=1e-2, momentum=0.9), epochs=2, batch_size=8, lr_schedule=schedule,
                  verbose=False)
    assert models[1].trainer.guarded.replays == 2 * 6 - 2
    for k in models[0].params:
        np.testing.assert_array_equal(models[1].params[k], models[0].params[k], err_msg=k)
    for k in models[0].state:
        np.testing.assert_array_equal(models[1].state[k], models[0].state[k], err_msg=k)
