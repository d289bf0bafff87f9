"""The CUDA execution model itself (bngraph/backends/cuda_target/threads.py, threads_runtime.cpp):
does it have CUDA's semantics? Small hand-written kernels, each showing one property:

* every block of the grid runs, in an order that changes with the seed; every thread of a block,
  interleaved differently with the seed; the same seed gives the same schedule;
* ``__syncthreads`` is a real barrier (what one thread wrote before it, every thread reads after it),
  and one that only part of the block reaches is an error naming the kernel, the block and the line;
* ``__shared__`` memory is per block, poisoned (NaN) before each block, and a write past an array's
  end is an error; device arrays are poisoned too, and a write past one's end is an error;
* atomics are atomic across the blocks running at once on several workers;
* a launch CUDA would refuse, a block size the kernel does not support, or an argument whose type is
  not the parameter's is refused before anything runs, naming the kernel.

The generated kernels on this model are tests/test_cuda_model_kernels.py; the planted GPU-only bugs
and the sanitizers tests/test_cuda_model_mutations.py.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target.threads import ExecutionModel, KernelFault, threads_runtime

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the execution model compiles with g++")

SOURCE = r"""
typedef double real;
#define BLOCK 64
extern "C" __global__ void order(unsigned* counter, int* blocks, int* threads) {
    const unsigned k = atomicAdd(counter, 1u);
    blocks[k] = blockIdx.x;
    threads[k] = blockIdx.x * blockDim.x + threadIdx.x;
}
// every thread writes its slot, then (after the barrier) reads its neighbour's
extern "C" __global__ void neighbour(real* out) {
    __shared__ real s[BLOCK];
    s[threadIdx.x] = blockIdx.x * 1000.0 + threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
// reads a __shared__ slot nobody wrote in this block
extern "C" __global__ void unwritten(real* out) {
    __shared__ real s[BLOCK];
    if (threadIdx.x == 0 && blockIdx.x == 0) s[0] = 1.0;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void early_exit(real* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0;
}
extern "C" __global__ void two_barriers(real* out) {
    if (threadIdx.x % 2) { __syncthreads(); } else { __syncthreads(); }
    out[threadIdx.x] = 1.0;
}
extern "C" __global__ void shared_overrun(real* out) {
    __shared__ real s[4];
    s[threadIdx.x] = 1.0;
    __syncthreads();
    out[threadIdx.x] = s[0];
}
extern "C" __global__ void tail(real* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= n; i += gridDim.x * blockDim.x) out[i] = 2.0;
}
extern "C" __global__ void count(unsigned long long* total, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(total, 1ull);
}
extern "C" __global__ void votes(int* out) {
    const int c = __syncthreads_count(threadIdx.x < 5);
    const int all = __syncthreads_and(threadIdx.x < 1000), any = __syncthreads_or(threadIdx.x == 7);
    out[threadIdx.x] = c * 100 + all * 10 + any;
}
__device__ __forceinline__ real block_sum(real v, real* red) { return v; }
extern "C" __global__ void halves(real* out) {
    __shared__ real red[BLOCK];
    out[threadIdx.x] = block_sum(1.0, red);
}
"""


def kernels(**kw):
    kw.setdefault("seed", 5)
    rt = threads_runtime(ExecutionModel(**kw))
    return rt, rt.launcher.bind(rt.compiler.compile(SOURCE))


def test_every_block_and_thread_runs_in_an_order_the_seed_varies():
    orders = []
    for seed in (1, 2, 1):
        rt, launch = kernels(seed=seed, workers=1)
        counter, blocks, threads = np.zeros(1, np.uint32), np.zeros(8 * 32, np.int32), np.zeros(8 * 32, np.int32)
        launch("order", (8,), (32,), counter, blocks, threads)
        assert counter[0] == 256 and sorted(threads) == list(range(256))  # each thread once
        assert sorted(set(blocks)) == list(range(8))
        # a block runs whole before the next one starts (one worker): its threads' slots are contiguous
        assert all(len(set(blocks[k * 32:(k + 1) * 32])) == 1 for k in range(8))
        orders.append((list(dict.fromkeys(blocks)), list(threads)))
    assert orders[0] == orders[2]  # the same seed, the same schedule
    assert orders[0][0] != orders[1][0] and orders[0][0] != list(range(8))  # blocks in a varied order
    assert orders[0][1] != orders[1][1]  # threads interleaved differently


def test_a_barrier_makes_every_write_before_it_visible_after_it():
    rt, launch = kernels()
    out = np.zeros(3 * 64)
    launch("neighbour", (3,), (64,), out)
    t = np.arange(64)
    np.testing.assert_array_equal(out.reshape(3, 64), np.arange(3)[:, None] * 1000.0 + (t + 1) % 64)


def test_shared_memory_is_per_block_and_poisoned_until_written():
    rt, launch = kernels()
    out = np.zeros(2 * 64)
    launch("unwritten", (2,), (64,), out)
    assert out[0] == 1.0 and np.isnan(out[1:]).all()  # block 1 does not see block 0's write


@pytest.mark.parametrize("kernel, message", [
    ("early_exit", r"kernel early_exit, block \(0,0,0\): barrier divergence: __syncthreads\(\) at line \d+ reached by "
                   r"31 of 32 threads \(the others exited\)"),
    ("two_barriers", r"kernel two_barriers, block \(0,0,0\): barrier divergence: threads wait at different "
                     r"__syncthreads\(\) \(lines \d+ and \d+\)"),
])
def test_a_barrier_part_of_the_block_never_reaches_is_an_error(kernel, message):
    rt, launch = kernels()
    with pytest.raises(KernelFault, match=message + r" \[device emulator-threads\(seed=5\), launch seed \d+\]"):
        launch(kernel, (1,), (32,), np.zeros(32))
    launch("neighbour", (1,), (64,), np.zeros(64))  # the model runs on after a fault


def test_writes_past_the_end_of_shared_memory_or_of_an_array_are_errors():
    rt, launch = kernels()
    with pytest.raises(KernelFault, match=r"kernel shared_overrun, block \(\d,0,0\): a thread wrote past the end of "
                                          r"__shared__ s \(32 bytes\)"):
        launch("shared_overrun", (2,), (8,), rt.empty((8,), np.float64))
    out = rt.empty((100,), np.float64)
    assert np.isnan(out).all()  # device memory starts poisoned
    with pytest.raises(KernelFault, match=r"kernel tail: a thread wrote past the end of argument out \(100 elements\)"):
        launch("tail", (1,), (32,), out, np.int32(100))


def test_atomics_are_atomic_across_concurrent_blocks():
    rt, launch = kernels(workers=2, yield_per_mille=500)
    total = np.zeros(1, np.uint64)
    launch("count", (40,), (64,), total, np.int32(100_000))
    assert total[0] == 100_000


def test_barrier_votes():
    rt, launch = kernels()
    out = np.zeros(32, np.int32)
    launch("votes", (1,), (32,), out)
    assert (out == 5 * 100 + 10 + 1).all()


def test_launches_cuda_or_the_kernel_would_refuse_are_refused_before_running():
    rt, launch = kernels()
    with pytest.raises(KernelFault, match=r"kernel neighbour: a launch of grid \(1, 1, 1\) and block \(2048, 1, 1\) "
                                          r"that CUDA refuses"):
        launch("neighbour", (1,), (2048,), np.zeros(2048))
    with pytest.raises(KernelFault, match=r"kernel neighbour cannot run with a block of 128 threads: it declares "
                                          r"__shared__ arrays of BLOCK = 64 elements"):
        launch("neighbour", (1,), (128,), np.zeros(128))
    with pytest.raises(KernelFault, match=r"kernel halves cannot run with a block of 48 threads: its block_sum needs "
                                          r"blockDim.x a power of two"):
        launch("halves", (1,), (48,), np.zeros(48))
    with pytest.raises(KernelFault, match=r"kernel neighbour: argument out is a float32 array, the kernel takes double\*"):
        launch("neighbour", (1,), (64,), np.zeros(64, np.float32))
    with pytest.raises(KernelFault, match=r"kernel tail: argument n is a numpy.int64, the kernel takes int"):
        launch("tail", (1,), (32,), np.zeros(200), np.int64(100))
    with pytest.raises(KernelFault, match=r"kernel tail: argument n is a Python int, the kernel takes int"):
        launch("tail", (1,), (32,), np.zeros(200), 100)
    with pytest.raises(KernelFault, match=r"kernel tail takes 2 arguments \(out, n\), the launch passes 1"):
        launch("tail", (1,), (32,), np.zeros(200))
    with pytest.raises(KernelFault, match=r"kernel nothing: no such kernel in the module"):
        launch("nothing", (1,), (32,))


def test_a_model_on_the_execution_model_names_it_and_its_options():
    model = bg.compile(bg.mlp([3, 4, 2]), target="cuda", device=ExecutionModel(seed=3, block=64))
    assert model.runtime.device == ExecutionModel(seed=3, block=64)
    assert model.runtime.launcher.describe() == "emulator-threads(seed=3, block=64)"
    fresh = bg.compile(bg.mlp([3, 4, 2]), target="cuda", device="emulator-threads")
    assert isinstance(fresh.runtime.device.seed, int)  # a seed drawn for it, named in its errors
    with pytest.raises(bg.IRError, match="unknown sanitizer 'memory'"):
        ExecutionModel(sanitizer="memory")
    with pytest.raises(bg.IRError, match="block must be a number of threads from 1 to 1024"):
        ExecutionModel(block=2048)


def test_gpu_numerics_flush_float32_denormals_in_every_thread():
    """``math="gpu"``: FMA contraction and, in a float32 module, denormals flushed to zero in the
    threads that run the kernels (as the GPU build's -ftz=true); ``"ieee"`` keeps them."""
    src = ("typedef float real;\n"
           'extern "C" __global__ void tiny(float* out, float x) {\n'
           "    out[blockIdx.x * blockDim.x + threadIdx.x] = x * 1e-30f;  // 1e-40: a float32 denormal\n"
           "}\n")
    for math, want in (("ieee", np.float32(1e-10) * np.float32(1e-30)), ("gpu", 0.0)):  # NumPy keeps denormals
        rt = threads_runtime(ExecutionModel(seed=1, math=math))
        out = np.ones(4 * 32, np.float32)
        rt.launcher.bind(rt.compiler.compile(src))("tiny", (4,), (32,), out, np.float32(1e-10))
        np.testing.assert_array_equal(out, np.full(4 * 32, want, np.float32), err_msg=math)


def test_a_sanitized_model_outside_a_sanitized_process_is_one_clear_error():
    from bngraph.backends.cuda_target.sanitizers import SanitizerUnavailable

    with pytest.raises(SanitizerUnavailable, match=r"sanitizer 'address' needs its runtime loaded before Python starts: "
                                                   r"run `python -m bngraph.backends.cuda_target.sanitizers address "
                                                   r"python \.\.\.`"):
        bg.compile(bg.mlp([3, 4, 2]), target="cuda", device=ExecutionModel(sanitizer="address"))
