"""The host dialect: the CUDA target's kernels (templates/cuda/) as C++ for the CPU, each launch a
team of threads.

The CUDA kernels are written for any grid: every loop is grid-stride (over elements, over rows, or
over the parts of a reduction), so a grid of any size computes the same numbers. The host dialect
runs a launch as a team of threads, **each thread one block of one thread**: ``blockIdx.x``
is the thread's number in the team, ``gridDim.x`` the team's size, ``threadIdx.x`` is 0 and
``blockDim.x`` 1. A block's ``__shared__`` array is then the thread's own, ``__syncthreads()`` has
nothing to wait for and ``block_sum`` of one value is that value: the kernels' block-level
reductions are correct as written, and a loop over rows (``r = blockIdx.x; r += gridDim.x``) gives
each thread whole rows, read contiguously. Two textual rewrites make the host code fast without
changing what it computes:

* a kernel's head ``extern "C" __global__ void name(...)`` becomes ``KERNEL name(GRID, ...)``: a
  static function that takes its block's index and the team's size, plus one entry point
  ``launch__name(work, ...)`` that runs it on a team sized for ``work`` (:data:`PRELUDE`'s
  ``BNGRAPH_LAUNCH``): one thread for a small launch (no wake-up), the thread budget for a big one.
  The team's threads are the module's own small pool, not OpenMP's runtime: a process that has
  imported PyTorch holds PyTorch's libgomp, whose idle threads spin as PyTorch set them (about a
  millisecond), and a module linked to OpenMP would share it: its threads then kept a core busy
  through NumPy's next matrix product (784-1024x3-10 b64: 20.3 ms a step with torch imported,
  11.5 ms without). The pool's threads spin ``BNGRAPH_SPIN`` pauses, then sleep;
* a grid-stride loop over elements (``i = blockIdx.x*blockDim.x + threadIdx.x; i += gridDim.x*blockDim.x``,
  and the guard's ``i = first; i += stride``) becomes a loop over the thread's contiguous share of
  the elements (``bngraph_share``), which the compiler vectorizes and no two threads' cache lines
  share. Every such loop's iterations are independent (each writes its own element, or reports its
  first bad one with an atomic minimum), so which thread takes which element does not change the
  result; the guard's scan for its first bad element starts where ``bngraph_finite_until`` (a
  vectorized skip over finite elements) stops.
"""
from __future__ import annotations

import re

from ...ir import IRError
from ..cuda_target.kernel_source import _closing

#: Elements of work a thread is worth: a launch of fewer runs on the calling thread alone (a
#: team's wake-up costs microseconds; 32768 float32 elements take about as long to update).
GRAIN = 32768

PRELUDE = r"""// ---- the host dialect (bngraph/backends/c_target/host.py) ---------------------------------
// A kernel runs on a team of threads, each thread one block of one thread: blockIdx.x is its
// number in the team, gridDim.x the team's size (GRID), threadIdx.x 0 and blockDim.x 1. A block's
// __shared__ array is the thread's own and __syncthreads() has nothing to wait for; a loop over
// rows gives each thread whole rows, a loop over elements its contiguous share of them. The team
// comes from this module's own pool (below), and `#pragma omp simd` loops are vectorized
// (-fopenmp-simd: OpenMP's pragmas without its runtime).
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unistd.h>
using std::exp; using std::log; using std::log1p; using std::sqrt; using std::tanh; using std::fabs; using std::fmax;
using std::isfinite;
struct bngraph_dim3 { unsigned x, y, z; };
static const bngraph_dim3 threadIdx = {0, 0, 0}, blockDim = {1, 1, 1};
#define KERNEL static void
#define GRID const bngraph_dim3 blockIdx, const bngraph_dim3 gridDim
#define __device__
#define __forceinline__ inline
#define __shared__
#define __restrict__ __restrict
#define __launch_bounds__(...)
static inline void __syncthreads() {}
// the threads of a team share the status words: the compiler's atomics
static inline unsigned long long atomicOr(unsigned long long* a, unsigned long long v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return c; }
static inline long long atomicMin(long long* a, long long v) {
    long long o = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (v < o && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return o; }
// Thread b of a team of g takes elements [share(n, b, g), share(n, b + 1, g)) of n: contiguous,
// cut at multiples of 16 elements, so that no two threads write one cache line.
static inline long long bngraph_share(long long n, unsigned b, unsigned g) {
    if (b >= g) return n;
    const long long s = (n * b / g) & ~15LL;
    return s < n ? s : n;
}
// The first index in [i, end) where x may hold NaN or inf, or end: 64 elements at a time in a
// loop that vectorizes (x - x is 0 for a finite x, NaN otherwise); the guard's scan starts there.
template <typename T> static inline long long bngraph_finite_until(const T* x, long long i, long long end) {
    for (; i + 64 <= end; i += 64) {
        T s = 0;
#pragma omp simd reduction(+:s)
        for (int k = 0; k < 64; ++k) s += x[i + k] - x[i + k];
        if (s != 0 || s != s) break;
    }
    return i;
}
// The thread budget (the BLAS's) and the work a thread is worth, both set by the runtime, and the
// team of a launch of `work` elements: one thread per `grain` elements, at most the budget.
static int bngraph_threads = 1;
static long long bngraph_grain = 32768;
extern "C" void bngraph_set_threads(int n, long long grain) { bngraph_threads = n > 0 ? n : 1; bngraph_grain = grain > 0 ? grain : 1; }
static inline int bngraph_team(long long work) {
    const long long t = 1 + work / bngraph_grain;
    return t < bngraph_threads ? (int)t : bngraph_threads;
}
// The pool: up to budget - 1 workers that wait for a launch (a generation number), spinning
// BNGRAPH_SPIN pauses before they sleep, so that they leave the cores to the BLAS's threads between
// kernels. The calling thread is block 0 of every team; a worker whose number is in the team runs
// its block, and every worker answers (`left`) before the launch returns. One launch at a time.
#define BNGRAPH_SPIN 1000
struct bngraph_pool_t {
    void (*fn)(void*, unsigned, unsigned) = nullptr;
    void* ctx = nullptr;
    unsigned team = 1;
    std::atomic<unsigned long long> generation{0};
    std::atomic<int> left{0};
    std::mutex mu, launching;
    std::condition_variable wake;
    int workers = 0;
    pid_t pid = 0;
};
// never destroyed: at exit the workers may still be waiting on it (a static's destructor would
// destroy a condition variable with waiters, and the process would hang)
static bngraph_pool_t& bngraph_pool = *new bngraph_pool_t;
static inline void bngraph_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
}
static void bngraph_worker(unsigned id, unsigned long long seen) {
    bngraph_pool_t& p = bngraph_pool;
    for (;;) {
        for (int spin = 0; p.generation.load(std::memory_order_acquire) == seen; ++spin) {
            if (spin < BNGRAPH_SPIN) { bngraph_pause(); continue; }
            std::unique_lock<std::mutex> lock(p.mu);
            p.wake.wait(lock, [&] { return p.generation.load(std::memory_order_acquire) != seen; });
        }
        seen = p.generation.load(std::memory_order_acquire);
        if (id < p.team) p.fn(p.ctx, id, p.team);
        p.left.fetch_sub(1, std::memory_order_acq_rel);  // every worker answers every launch: none
                                                           // reads the next launch's job as this one's
    }
}
template <class F> static void bngraph_trampoline(void* f, unsigned b, unsigned g) { (*(F*)f)(b, g); }
template <class F> static void bngraph_run(int team, F& body) {
    if (team <= 1) { body(0u, 1u); return; }
    bngraph_pool_t& p = bngraph_pool;
    std::lock_guard<std::mutex> one_at_a_time(p.launching);
    if (p.pid != getpid()) { p.pid = getpid(); p.workers = 0; }  // a forked child has no workers
    for (; p.workers < team - 1; ++p.workers)
        std::thread(bngraph_worker, (unsigned)p.workers + 1, p.generation.load()).detach();
    p.fn = bngraph_trampoline<F>; p.ctx = &body; p.team = (unsigned)team;
    p.left.store(p.workers, std::memory_order_release);
    { std::lock_guard<std::mutex> lock(p.mu); p.generation.fetch_add(1, std::memory_order_acq_rel); }
    p.wake.notify_all();
    body(0u, (unsigned)team);
    while (p.left.load(std::memory_order_acquire) != 0) bngraph_pause();
}
#define BNGRAPH_LAUNCH(work, kernel, ...) do { \
    auto body_ = [&](unsigned block_, unsigned team_) { kernel(bngraph_dim3{block_, 0, 0}, bngraph_dim3{team_, 1, 1}, __VA_ARGS__); }; \
    bngraph_run(bngraph_team(work), body_); \
} while (0)
"""

MARK = "// ---- the host dialect"

_HEAD = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
# a grid-stride loop over elements, and the guarded step's form of one (templates/cuda/step.cu.j2)
_STRIDE = re.compile(r"for \((int|long long) (\w+) = (?:\(long long\))?blockIdx\.x \* blockDim\.x \+ threadIdx\.x; "
                     r"\2 < ([^;]+); \2 \+= (?:\(long long\))?gridDim\.x \* blockDim\.x\)")
_FIRST = re.compile(r"for \((long long) (\w+) = first; \2 < ([^;]+); \2 \+= stride\)")
# the guard's scan for its first bad element (step.cu.j2), once it is a loop over the thread's share
_SCAN = re.compile(r"for \(long long i = (bngraph_share\([^;]*\)), i_end = (bngraph_share\([^;]*\)); i < i_end; \+\+i\) \{"
                   r"(\n\s*if \(!finite_real\(x\[i\]\)\) \{)")


def _share(m: re.Match) -> str:
    t, i, n = m.groups()
    return (f"for ({t} {i} = bngraph_share({n}, blockIdx.x, gridDim.x), {i}_end = bngraph_share({n}, blockIdx.x + 1, "
            f"gridDim.x); {i} < {i}_end; ++{i})")


def to_host(source: str) -> str:
    """CUDA kernel text -> host text: kernel heads and element loops rewritten (module docstring),
    a ``launch__<kernel>`` entry per kernel appended; the prelude first where it is missing.
    Text already in the host dialect passes unchanged."""
    names = _HEAD.findall(source)
    out = _HEAD.sub(lambda m: f"KERNEL {m.group(1)}(GRID, ", source)
    out = _FIRST.sub(_share, _STRIDE.sub(_share, out))
    # skip ahead over the finite elements, vectorized: the scan starts at the first bad one's block
    out = _SCAN.sub(lambda m: f"for (long long i_end = {m.group(2)}, i = bngraph_finite_until(x, {m.group(1)}, i_end); "
                              f"i < i_end; ++i) {{{m.group(3)}", out)
    if "__global__" in out:
        raise IRError("the c target's host dialect found a __global__ kernel of an unknown form")
    if names:
        out += entries(out, names)
    return out if MARK in out else PRELUDE + out


def entries(source: str, names) -> str:
    """``extern "C" void launch__<kernel>(long long work, <params>)`` for each kernel of ``names``:
    the kernel on a team of threads sized for ``work`` (what the launcher calls through ctypes)."""
    lines = ["", "// ---- entry points: each kernel on a team of threads (BNGRAPH_LAUNCH) ----"]
    for name in names:
        start = source.index(f"KERNEL {name}(GRID, ") + len(f"KERNEL {name}(") - 1
        params = source[start + 1:_closing(source, start, "(", ")") - 1].split(",")[1:]  # after GRID
        params = [" ".join(p.split()) for p in params]
        args = [re.findall(r"(\w+)$", p)[0] for p in params]
        lines.append(f'extern "C" void launch__{name}(long long work, {", ".join(params)}) '
                     f"{{ BNGRAPH_LAUNCH(work, {name}, {', '.join(args)}); }}")
    return "\n".join(lines) + "\n"
