"""What the CUDA target's numbers are where (docs/cuda.md#numerics).

* The GPU build's NVRTC options are one stated constant (``runtime.NVRTC_OPTIONS``: FMA
  contraction, float32 flush-to-zero, IEEE division and square root), the ones the compiler gets,
  and nvcc reads them as FMA with FTZ (``fma.rn.ftz.f32`` in the PTX).
* ``device="emulator"`` is IEEE: no contraction, denormals kept (tests/test_cuda_target.py and
  tests/test_arch_step.py compare it bit for bit / to 1e-12 with the NumPy target).
* ``device="emulator-gpu-math"`` compiles like the GPU: ``a*b+c`` is one rounding, float32
  denormals flush to zero (results and operands) inside the kernels only, and the NumPy-target
  comparison holds within an error bound instead of bit for bit (float32 against the NumPy
  target: this bound on top of the rounding bound of tests/roundoff.py):

      |gpu_math - ieee| <= ULPS_PER_OP * depth * u * scale

  with u the unit roundoff (2^-24 float32, 2^-53 float64), ``depth`` a bound on the rounding steps
  on any output's path through the kernels (stated per model below), ``scale`` the output's largest
  magnitude (at least 1), and ULPS_PER_OP = 4: a contraction removes one rounding (at most 1 ulp of
  the operands' scale), with room for the amplification through batch norm's 1/std and the softmax.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target import emulator
from bngraph.backends.cuda_target.emulator import _c_arg, compile_kernels
from test_arch_step import record_kernel_against_numpy
from test_cuda_target import PROGRAMS, _compare_float32, _compare_programs, _feeds, layered_graph

GPU_MATH = "emulator-gpu-math"
ULPS_PER_OP = 4
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}

KERNELS = r"""
typedef REAL real;
extern "C" __global__ void fused(const float* a, const float* b, const float* c, float* o,
                                 const double* ad, const double* bd, const double* cd, double* od) {
    o[0] = a[0] * b[0] + c[0];
    od[0] = ad[0] * bd[0] + cd[0];
}
extern "C" __global__ void scale(const float* a, const float* s, float* o, const double* ad, double* od) {
    o[0] = a[0] * s[0];   // a tiny product: a denormal result
    o[1] = a[1] * s[1];   // a denormal operand
    od[0] = ad[0] * ad[0];  // a double denormal result
}
"""


def bound(dtype, depth, scale=1.0):
    return ULPS_PER_OP * depth * UNIT_ROUNDOFF[dtype] * scale


# ---- the GPU build's options ---------------------------------------------------------------------


def test_the_gpu_build_states_its_numerics_and_passes_them_to_nvrtc():
    from bngraph.backends.cuda_target import runtime

    assert runtime.NVRTC_OPTIONS == ("--std=c++14", "--fmad=true", "--ftz=true", "--prec-div=true",
                                     "--prec-sqrt=true")
    seen = []

    class FakeCupy:
        @staticmethod
        def RawModule(code, options):
            seen.append(options)
            return object()

    runtime.NvrtcCompiler(FakeCupy).compile("// test_cuda_numerics: a source of its own\n")
    assert seen == [runtime.NVRTC_OPTIONS]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_reads_the_gpu_options_as_fma_with_flush_to_zero(tmp_path):
    from bngraph.backends.cuda_target.runtime import NVRTC_OPTIONS

    cu = tmp_path / "k.cu"
    cu.write_text('extern "C" __global__ void k(const float* a, const float* b, const float* c, float* o)'
                  " { o[0] = a[0] * b[0] + c[0]; o[1] = a[0] / b[0]; }\n")
    ptx = tmp_path / "k.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=sm_90", *NVRTC_OPTIONS, str(cu), "-o", str(ptx)], check=True)
    text = ptx.read_text()
    assert "fma.rn.ftz.f32" in text and "div.rn.ftz.f32" in text  # fused, flushed, IEEE-rounded division


# ---- the two emulator modes on kernels written for the purpose -----------------------------------


def _fused(lib):
    a, b = np.float32(1 + 2.0 ** -13), np.float64(1 + 2.0 ** -30)
    # a*a = 1 + 2^-12 + 2^-26 in float32 (resp. 1 + 2^-29 + 2^-60 in float64): the last term is
    # rounded away unless the multiply and the add are one operation
    args = [np.array([v], dt) for v, dt in ((a, np.float32), (a, np.float32), (-(1 + 2.0 ** -12), np.float32))]
    out = np.zeros(1, np.float32)
    argsd = [np.array([v]) for v in (b, b, -(1 + 2.0 ** -29))]
    outd = np.zeros(1)
    lib.fused(*map(_c_arg, (*args, out, *argsd, outd)))
    return out[0], outd[0]


def test_gpu_math_fuses_multiply_add_and_ieee_rounds_each():
    src = KERNELS.replace("REAL", "float")
    assert _fused(compile_kernels(src)) == (0.0, 0.0)
    assert _fused(compile_kernels(src, GPU_MATH)) == (np.float32(2.0 ** -26), 2.0 ** -60)


def _scaled(lib):
    a = np.array([1e-20, 1e-40], np.float32)  # 1e-40 is a float32 denormal
    s = np.array([1e-20, 1.0], np.float32)
    o, od = np.full(2, np.nan, np.float32), np.full(1, np.nan)
    lib.scale(*map(_c_arg, (a, s, o, np.array([1e-160]), od)))
    return o, od[0]


def test_gpu_math_flushes_float32_denormals_inside_the_kernels_only():
    ieee_o, ieee_d = _scaled(compile_kernels(KERNELS.replace("REAL", "float")))
    assert 0 < ieee_o[0] < np.finfo(np.float32).tiny and ieee_o[1] == np.float32(1e-40) and ieee_d == 1e-320
    o, _ = _scaled(compile_kernels(KERNELS.replace("REAL", "float"), GPU_MATH))
    assert list(o) == [0.0, 0.0]  # a denormal result, and a denormal operand, flushed
    # a float64 module keeps denormals (the GPU flushes float32 only)
    assert _scaled(compile_kernels(KERNELS.replace("REAL", "double"), GPU_MATH))[1] == 1e-320
    # the calling thread got its MXCSR back: NumPy's float32 denormals are untouched
    assert np.float32(1e-20) * np.float32(1e-20) > 0 and np.float32(1e-40) * np.float32(1) > 0


def test_unknown_emulator_modes_are_one_error():
    with pytest.raises(bg.IRError, match="unknown emulator mode"):
        emulator.compile_kernels("", "emulator-fast")


# ---- the NumPy-target comparisons in the GPU numerics, within the bound --------------------------


def _compare_modes(g, dtype, depth, passes=None):
    """gpu-math against the IEEE emulator within the bound; returns the gpu-math model and how many
    elements differ from the IEEE mode's."""
    kw = dict(target="cuda", dtype=dtype, passes=passes, seed=1)
    ieee, gpu = bg.compile(g, device="emulator", **kw), bg.compile(g, device=GPU_MATH, **kw)
    rng, differs = np.random.default_rng(0), 0
    for m in (7, 9):
        X, y = _feeds(ieee, rng, m)
        for program in PROGRAMS:
            with_y = program in ("train_step", "evaluate")
            a = ieee._run(program, ieee._feeds(X, y if with_y else None), m)
            b = gpu._run(program, gpu._feeds(X, y if with_y else None), m)
            for k in a:
                want, got = np.asarray(a[k]), np.asarray(b[k])
                scale = max(1.0, float(np.abs(want).max()))
                np.testing.assert_allclose(got, want, rtol=0, atol=bound(dtype, depth, scale), err_msg=f"{program} {k}")
                differs += int(np.sum(got != want))
    return gpu, differs


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
def test_gpu_math_programs_agree_with_the_numpy_target_float64(loss):
    """12 layers, each forward and backward with batch norm: at most 512 rounding steps deep."""
    depth = 512
    g = layered_graph(loss, "f64", widths=(3, 7, 1, 6))
    gpu, differs = _compare_modes(g, "float64", depth)
    assert differs, "the GPU numerics changed no number: is FMA contraction on?"
    _compare_programs(bg.compile(g, dtype="float64", seed=1), gpu, rtol=1e-12, atol=1e-12 + bound("float64", depth))


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "sigmoid_bce"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_gpu_math_programs_agree_with_the_numpy_target_float32(loss, act):
    """3 layers with batch norm, forward and backward: at most 128 rounding steps deep. (The float32
    kernels accumulate in double, so a contraction there is often rounded away: some models give
    the IEEE mode's bits.)"""
    depth = 128
    g = bg.mlp([5, 7, 6, 3], activation=act, loss=loss)
    gpu, _ = _compare_modes(g, "float32", depth)
    _compare_float32(bg.compile(g, dtype="float32", seed=1), gpu, extra=lambda scale: bound("float32", depth, scale))


def test_the_float32_bound_catches_a_kernel_off_by_1e_4(monkeypatch):
    """Where the program is well conditioned the bound is a few u per node (tighter than 1e-5):
    one gradient off by a relative 1e-4 fails."""
    g = bg.mlp([5, 7, 6, 3], loss="mse")
    ref = bg.compile(g, dtype="float32", seed=1)
    emu = bg.compile(g, target="cuda", device="emulator", dtype="float32", seed=1)
    assert _compare_float32(ref, emu, sizes=(7, 9)) < 1
    run = emu._run
    off = lambda *a: {k: v * np.float32(1 + 1e-4) if k == "grad.fc1.W" else v for k, v in run(*a).items()}  # noqa: E731
    monkeypatch.setattr(emu, "_run", off)
    with pytest.raises(AssertionError, match=r"train_step grad\.fc1\.W m=7: kernels and NumPy differ by"):
        _compare_float32(ref, emu, sizes=(7, 9))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_records_kernel_in_gpu_math_agrees_with_its_numpy_update(dtype):
    """tests/test_arch_step.py's bit-for-bit check of a record's kernel, in the GPU numerics: each
    step is at most 16 rounding steps per element (decay, the peak, the update), five steps."""
    def within_bound(a, b, step):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=bound(dtype, 16 * (step + 1), scale), err_msg=f"step {step}")

    record_kernel_against_numpy(dtype, GPU_MATH, within_bound)
