"""Reductions over a whole grid (issue 17, finding 6): losses and batch norm as a GPU wants them.

* The losses cut the batch into parts, a block each, and add the parts' sums up in a second,
  one-block launch (``_total``; a weighted mean sums the weights first, ``_weights``). Batch norm,
  its gradient and a bias gradient take a block per unit, or, for few units with long rows (or rows
  longer than a block keeps in registers), a block per segment of a row: ``_partial`` writes each
  segment's sums, ``_combine`` adds them up per unit. The driver picks from the shape at run time
  (``loss_parts``, ``segments``, ``row_block``).
* Every variant runs on the CUDA execution model (``device="emulator-threads"``: the driver's
  grids and blocks, concurrent threads, real barriers, poisoned memory) with several blocks of
  many threads, and equals the NumPy target (float64 to 1e-12); the bits do not depend on the
  order the blocks run in. The partition is also forced (the driver's ``segments`` and
  ``loss_parts`` replaced) so that small batches take the several-block paths.
* Planted bugs fail: the old one-block assumption, a combine that forgets a block's partial sum or
  the between-segment variance, threads that overlap (which one emulated thread cannot see).
* ``nvcc -Xptxas -v`` (sm_90): the batch-norm kernels' registers, without spills.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import get_target
from bngraph.backends.cuda_target.threads import ExecutionModel
from conftest import random_values
from test_codegen import EVAL_BN_IR
from test_cuda_target import _compare_programs, layered_graph
from test_loss_variants import kernel_zoo, run_rendered, zoo_reference, zoo_values

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulators need g++")

F64 = dict(rtol=1e-12, atol=1e-12)


def on(device, g, dtype="float64", segs=None, parts=None):
    """``g`` compiled for ``device``; ``segs``/``parts``: the driver's choice replaced by that count."""
    model = bg.compile(g, target="cuda", device=device, dtype=dtype, seed=1)
    module = model.executable.module
    if segs is not None:
        module.segments = lambda units, m: segs
    if parts is not None:
        module.loss_parts = lambda n: parts
    return model


def recorded(model) -> list:
    """The (kernel, grid, block) of every launch the model's driver makes from now on."""
    module, log = model.executable.module, []
    launch = module.launch

    def recording(name, grid, block, *args):
        log.append((name, tuple(grid), tuple(block)))
        return launch(name, grid, block, *args)

    module.launch = recording
    return log


def bn_graph(units=3, loss="mse", act="relu", dtype="f64"):
    """x -> matmul -> batch norm + act -> matmul (+ bias) -> loss: few units, every reduction kind."""
    g = bg.Graph(f"bn{units}", dtype)
    x = g.input("x", 4)
    y = g.labels("y", 3) if loss == "softmax_cross_entropy" else g.input("t", 3)
    h = g.activation(g.batchnorm(g.matmul(x, units, bias=False, name="fc1"), name="bn1"), act, name="a1")
    g.loss(loss, g.matmul(h, 3, name="out"), y)
    return g


# ---- the driver's choice ------------------------------------------------------------------------


def test_the_driver_picks_blocks_from_the_shape():
    d = on("emulator", bg.mlp([4, 5, 3])).executable.module
    assert d.segments(1024, 256) == 1 and d.segments(10, 1000) == 1  # enough units, or short rows: a block per unit
    few = d.segments(64, 16384)
    assert few > 1 and 64 * few >= d.WIDE  # few units, long rows: every SM busy
    assert d.segments(64, 8192) == 8192 // d.SEGMENT  # ... in segments of SEGMENT examples at least
    assert d.segments(3, 10**6) == d.SEGMENTS  # at most SEGMENTS a row
    assert d.segments(2048, 10**5) == d.PARTS // 2048 and d.segments(8192, 10**5) == 1  # at most PARTS in all
    assert d.segments(1024, 2 * d.ROW) == 2  # a row longer than the registers hold: in segments that fit
    assert [d.row_block(m) for m in (2, 100, 200, 1000, 5000)] == [32, 32, 64, 256, 256]
    assert d.loss_parts(10) == 1 and d.loss_parts(3 * 4096) == 12 and d.loss_parts(784 * 4096) == d.LOSS_PARTS
    assert d.SCRATCH == 2 * d.PARTS and d.scratch.shape == (d.SCRATCH,) and d.scratch.dtype == np.float64


def test_the_launches_follow_the_shape():
    model = on("emulator", bn_graph(units=64, loss="softmax_cross_entropy"))
    rng = np.random.default_rng(0)
    for m, segmented in ((5000, True), (300, False)):
        log = recorded(model)
        model.train_step(rng.standard_normal((m, 4)), rng.integers(0, 3, m), bg.optim.SGD(lr=0.1))
        names = {name.split("__")[1]: (grid, block) for name, grid, block in log}
        segs, parts = model.executable.module.segments(64, m), model.executable.module.loss_parts(m)
        assert names["loss"] == ((parts,), (256,)) and names["loss_total"] == ((1,), (256,))
        if segmented:
            assert segs > 1 and "a1" not in names
            assert names["a1_partial"] == names["a1_combine"] == ((64 * segs,), (256,))
            assert names["fc1_grad_combine"] == ((64 * segs,), (256,))
        else:
            assert "a1_partial" not in names and names["a1"] == ((64,), (128,))  # row_block(300): 4 examples a thread


# ---- every loss variant over several blocks ----------------------------------------------------


@pytest.mark.parametrize("seed, block", [(1, None), (2, 64)])
def test_every_class_loss_variant_on_several_blocks_equals_numpy(seed, block):
    """The kernel zoo (every class loss, reduction, ignore_index, class weights; loss, gradient and
    both), m = 2100: three parts of the batch, each a block of 256 (or 64) concurrent threads."""
    g = kernel_zoo("f64")
    feeds, state = zoo_values(np.random.default_rng(5), "f64", m=2100)
    ref = zoo_reference(g, feeds, state)
    got = run_rendered("cuda", ExecutionModel(seed=seed, block=block), g, feeds, state, 2100)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, err_msg=k, **F64)


@pytest.mark.parametrize("loss", ["mse", "sigmoid_bce", "softmax_cross_entropy"])
def test_losses_and_batch_norm_on_the_execution_model_equal_numpy(loss):
    """Every program; m = 1500 (mse, bce: 5 parts of 3*m elements), rows whole and in 3 segments."""
    g = bn_graph(units=3, loss=loss)
    ref = bg.compile(g, dtype="float64", seed=1)
    _compare_programs(ref, on(ExecutionModel(seed=4), g), sizes=(1500,), **F64)
    _compare_programs(ref, on(ExecutionModel(seed=5), g, segs=3), sizes=(700, 2), **F64)


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("segs, parts", [(2, 3), (5, 7)])
def test_every_op_with_rows_in_segments_and_losses_in_parts_equals_numpy(loss, segs, parts):
    """The emulator, every activation with and without bias and batch norm, widths 1, 3, 6, 7, and
    every row cut into segments: the partition alone changes the arithmetic, not the grid."""
    g = layered_graph(loss, "f64", widths=(3, 7, 1, 6))
    ref = bg.compile(g, dtype="float64", seed=1)
    _compare_programs(ref, on("emulator", g, segs=segs, parts=parts), sizes=(9, 13), **F64)


@pytest.mark.parametrize("m", [2, 33, 4097])
def test_rows_longer_than_the_registers_take_segments_in_float32(m):
    """float32, one unit and three: m = 4097 is past the 4096 a block keeps in registers."""
    g = bn_graph(units=1, dtype="f32")
    model = on(ExecutionModel(seed=6), g, dtype="float32")
    log = recorded(model)
    _compare_programs(bg.compile(g, dtype="float32", seed=1), model, sizes=(m,), rtol=1e-4, atol=1e-5)
    assert any(name.endswith("_partial") for name, _, _ in log) == (m > 4096)


def test_the_eval_mode_gradient_with_rows_in_segments_equals_the_interpreter():
    """Batch norm in eval mode (frozen statistics) and its gradient: whole rows (m = 700), rows the
    driver cuts for the registers (m = 2100 > 2048 in float64), forced segments, empty ones (m = 2)."""
    train = bg.grad_graph(bg.parse(EVAL_BN_IR))
    assert {(n.op, n.attr["mode"]) for n in train.nodes if "batchnorm" in n.op} >= {("batchnorm_grad", "eval")}
    target, rng = get_target("cuda"), np.random.default_rng(0)
    for device, segs in ((ExecutionModel(seed=3), None), (ExecutionModel(seed=4), 3), ("emulator", 4)):
        exe = target.runtime(device).load(target.renderer.render({"train_step": train}, "f64", "evalbn"))
        if segs is not None:
            exe.module.segments = lambda units, m: segs
        for m in (2100, 700, 2):
            feeds, values = random_values(train, rng, m=m)
            grads = {p.name: np.full(p.type.shape, np.nan) for p in train.params}
            feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
            got = exe.run("train_step", feeds, values, values, grads, m)
            for k, want in bg.interpret(train, feeds, values).items():
                np.testing.assert_allclose(np.asarray(got[k]), want, err_msg=f"{k}, m={m}, segs={segs}", **F64)


def test_the_bits_do_not_depend_on_the_order_of_the_blocks():
    """The partial sums are added in a fixed order: three schedules, the same bits."""
    g = bn_graph(units=2, loss="softmax_cross_entropy")
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((3000, 4)), rng.integers(0, 3, 3000)
    runs = []
    for seed in (1, 2, 3):
        model = on(ExecutionModel(seed=seed), g, segs=4)
        out = model._run("train_step", model._feeds(X, y), 3000)
        runs.append({k: np.array(v) for k, v in out.items()})
    for other in runs[1:]:
        for k, v in runs[0].items():
            np.testing.assert_array_equal(other[k], v, err_msg=k)


# ---- planted bugs -------------------------------------------------------------------------------

PLANTED = {
    # the batch in one block, as before: the loss of the first part only
    "one block": ("for (int part = blockIdx.x; part < parts; part += gridDim.x)",
                  "for (int part = blockIdx.x; part < 1; part += gridDim.x)"),
    # _total adds the first block's partial sum only
    "first part": ("const acc_t total = sum_parts(scratch, parts, red);",
                   "const acc_t total = sum_parts(scratch, 1, red);"),
    # the variance of a row in segments without the spread of the segments' means
    "within only": ("sq += m2s[k] + n * d * d;", "sq += m2s[k];"),
    # a unit's statistics from its own segment only
    "own segment": ("const acc_t mu = sum_parts(sums, segs, red) / m;", "const acc_t mu = sums[seg] * segs / m;"),
    # threads that overlap: every thread takes every example of its part
    "overlap": ("j < end; j += blockDim.x)", "j < end; j += 1)"),
}


def planted(monkeypatch, bug):
    """The cuda renderer's kernels from now on with ``bug`` planted."""
    old, new = PLANTED[bug]
    renderer = get_target("cuda").renderer
    render = renderer.render

    def render_planted(*args, **kwargs):
        out = render(*args, **kwargs)
        for key in out.sources:
            if key.endswith(".cu"):
                out.sources[key] = out.sources[key].replace(old, new)
        return out

    monkeypatch.setattr(renderer, "render", render_planted)


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_fails_on_several_blocks(monkeypatch, bug):
    g = bn_graph(units=2, loss="softmax_cross_entropy")
    assert PLANTED[bug][0] in bg.emit(g, target="cuda", dtype="f64")["bn2_cuda.cu"], bug
    ref = bg.compile(g, dtype="float64", seed=1)
    _compare_programs(ref, on(ExecutionModel(seed=8), g, segs=3), sizes=(1100,), **F64)  # as rendered: right
    planted(monkeypatch, bug)
    with pytest.raises(AssertionError):
        _compare_programs(ref, on(ExecutionModel(seed=8), g, segs=3), sizes=(1100,), **F64)
    if bug == "overlap":  # one emulated thread takes every example either way: only real threads show it
        _compare_programs(ref, on("emulator", g, segs=3), sizes=(1100,), **F64)


# ---- registers: nvcc -Xptxas -v for sm_90 -------------------------------------------------------

NVCC = shutil.which("nvcc")


def ptxas(src: str, tmp_path) -> dict:
    """Kernel -> (registers, spill bytes stored + loaded), as ptxas builds it for sm_90."""
    path = tmp_path / "k.cu"
    path.write_text(src)
    proc = subprocess.run([NVCC, "-arch=sm_90", "-Xptxas", "-v", "-c", str(path), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, name = {}, None
    for line in proc.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            out[name] = (None, int(m.group(1)) + int(m.group(2)))
        elif m := re.search(r"Used (\d+) registers", line):
            out[name] = (int(m.group(1)), out[name][1])
    return out


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_batch_norm_kernels_fit_their_register_budget(dtype, tmp_path):
    """The forward kernels at most 64 registers (launch bounds: 4 blocks of 256 an SM), every other
    batch-norm kernel at most 128 (2 blocks), none spilling. float64 took 102-153 with 16 doubles
    of a row a thread, 8 now (BN_CACHE)."""
    g = layered_graph("mse", dtype, widths=(7,))
    regs = ptxas(bg.emit(g, target="cuda", dtype=dtype)[f"{g.name}_cuda.cu"], tmp_path)
    bn = {k: v for k, v in regs.items() if re.search(r"train_step__(a\d+|fc\d+_matmul_grad)(_partial|_combine)?$", k)}
    assert len(bn) >= 12, sorted(regs)
    for k, (used, spilled) in bn.items():
        assert spilled == 0, (k, spilled)
        forward = re.search(r"__a\d+(_partial)?$", k)
        assert used <= (64 if forward else 128), (k, used)
