"""The guarded step's kernels (templates/cuda/step.cu.j2: step_guard, step_commit, and the
optimizer kernel of templates/cuda/optim.cu.j2) on REAL threads, without a GPU.

The emulator runs every launch as one block of one thread, so it cannot see a race between the
threads of a launch. Here the generated kernels are compiled by g++ (-pthread) with a small shim:
a launch is a grid of several blocks of many std::threads, blockIdx/threadIdx are thread-locals,
the atomics are __atomic builtins and __syncthreads a per-block barrier. Every thread waits at a
start barrier, then spins a random while (threads are created in a shuffled order), so the
interleaving differs from run to run. Each scenario runs many times with varied grids; the status
must always be the same: a NaN loss with NaN gradients and a bad statistic in one step says the
loss; bad gradients alone name the lowest bad element; a step after a flagged one, or any kernel
of a flagged step, changes nothing (issue 17, finding 2: the old guard let a gradient flag set by
another thread of the same launch hide the NaN loss). With ``-fsanitize=thread`` (where it works
here) ThreadSanitizer must report nothing.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from bngraph.backends.cuda_target.optimizers import STATUS_CLEAR, module_source, record_of
import bngraph as bg

CXX = os.environ.get("CXX") or shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++")

# The shim: CUDA's keywords for a launch of real threads; the thread-locals are defined in the driver.
SHIM = r"""
#include <cmath>
#include <pthread.h>
using std::isfinite;
struct bngraph_dim3 { unsigned x, y, z; };
extern thread_local bngraph_dim3 blockIdx, threadIdx;
extern bngraph_dim3 blockDim, gridDim;
extern thread_local pthread_barrier_t* bngraph_block_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
static inline void __syncthreads() { pthread_barrier_wait(bngraph_block_barrier); }
static inline unsigned long long atomicOr(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);
}
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return c;
}
static inline long long atomicMin(long long* a, long long v) {
    long long o = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (v < o && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return o;
}
"""

# The driver: launches on real threads, and the scenarios. Prints one line per run:
# scenario run grid block | status words | expected words | what changed.
DRIVER = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include <pthread.h>
struct bngraph_dim3 { unsigned x, y, z; };
thread_local bngraph_dim3 blockIdx, threadIdx;
bngraph_dim3 blockDim, gridDim;
thread_local pthread_barrier_t* bngraph_block_barrier;
typedef unsigned long long u64;
extern "C" void step_guard(u64*, const double*, const double*, double*, const long long*, int);
extern "C" void step_commit(const u64*, const long long*, int, const long long*, int);
extern "C" void optim_sgd(u64*, const double*, long long, double*, const double*, double*, const double*, long long,
                          int);

static std::mt19937_64 rng;

// One launch: grid x block real threads, created in a shuffled order, released together, each
// after a random spin.
static void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    const unsigned n = grid * block;
    std::vector<pthread_barrier_t> blocks(grid);
    for (auto& b : blocks) pthread_barrier_init(&b, nullptr, block);
    pthread_barrier_t start;
    pthread_barrier_init(&start, nullptr, n);
    std::vector<unsigned> order(n);
    for (unsigned i = 0; i < n; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<unsigned long> spins(n);
    for (auto& s : spins) s = (rng() % 4 == 0) ? rng() % 200000 : rng() % 2000;
    std::vector<std::thread> threads;
    for (unsigned k : order)
        threads.emplace_back([&, k] {
            blockIdx = {k / block, 0, 0};
            threadIdx = {k % block, 0, 0};
            bngraph_block_barrier = &blocks[k / block];
            pthread_barrier_wait(&start);
            for (volatile unsigned long i = 0; i < spins[k]; ++i) {}
            kernel();
        });
    for (auto& t : threads) t.join();
    for (auto& b : blocks) pthread_barrier_destroy(&b);
    pthread_barrier_destroy(&start);
}

static const u64 CLEAR[5] = {0, 0, (u64)INT64_MAX, (u64)INT64_MAX, (u64)INT64_MAX};
static const double NaN = std::numeric_limits<double>::quiet_NaN(), Inf = std::numeric_limits<double>::infinity();
enum { NG = 1000, NS1 = 40, NS2 = 7, NP1 = 600, NP2 = NG - NP1 };

struct World {
    u64 status[5];
    double header[2] = {0, 0}, loss = 0, losses[4] = {0, 0, 0, 0};
    std::vector<double> grads = std::vector<double>(NG, 0.5), s1 = std::vector<double>(NS1, 1.0),
                        s2 = std::vector<double>(NS2, 2.0), live1 = std::vector<double>(NS1, -1.0),
                        live2 = std::vector<double>(NS2, -2.0), params = std::vector<double>(NG, 1.0),
                        mom = std::vector<double>(NG, 0.0);
    std::vector<long long> counter = std::vector<long long>(3, 7);
    double h[6] = {0.1, 0, 0, 0, 0, 0};
    World() { std::memcpy(status, CLEAR, sizeof status); }

    // One guarded step: guard, the optimizer's two stretches (checked, then stored), commit.
    void step(double number, unsigned grid, unsigned block) {
        header[0] = number;
        header[1] = number - 10;
        long long checks[6] = {(long long)grads.data(), NG, (long long)s1.data(), NS1, (long long)s2.data(), NS2};
        long long copies[6] = {(long long)s1.data(), (long long)live1.data(), NS1,
                               (long long)s2.data(), (long long)live2.data(), NS2};
        long long counts[2] = {(long long)counter.data(), 3};
        launch(grid, block, [&] { step_guard(status, header, &loss, losses, checks, 3); });
        for (int mode = 0; mode < 2; ++mode) {  // every stretch checked, then stored (step.py's order)
            launch(grid, block, [&] { optim_sgd(status, header, 0, params.data(), grads.data(), mom.data(), h, NP1,
                                                mode); });
            launch(grid, block, [&] {
                optim_sgd(status, header, NP1, params.data() + NP1, grads.data() + NP1, mom.data() + NP1, h, NP2, mode);
            });
        }
        launch(grid, block, [&] { step_commit(status, copies, 2, counts, 1); });
    }
};

// A few random indices of [0, n), their lowest returned.
static long long poison(std::vector<double>& x, int k, double v) {
    long long lo = INT64_MAX;
    for (int j = 0; j < k; ++j) {
        long long i = (long long)(rng() % x.size());
        x[i] = v;
        lo = std::min(lo, i);
    }
    return lo;
}

int main(int argc, char** argv) {
    const std::string scenario = argv[1];
    const int runs = std::atoi(argv[2]);
    rng.seed(std::strtoull(argv[3], nullptr, 10));
    const unsigned grids[] = {1, 2, 3, 4}, blocks[] = {8, 16, 32, 64};
    for (int r = 0; r < runs; ++r) {
        const unsigned grid = grids[rng() % 4], block = blocks[rng() % 4];
        World w;
        u64 want[5];
        std::memcpy(want, CLEAR, sizeof want);
        bool updates = false, commits = false;  // does step 10 update the params, commit the state?
        if (scenario == "diverge") {  // NaN loss, NaN gradients everywhere or at some, a bad statistic
            w.loss = NaN;
            long long lo = (rng() % 2) ? (std::fill(w.grads.begin(), w.grads.end(), NaN), 0LL)
                                       : poison(w.grads, 1 + (int)(rng() % 50), NaN);
            poison(w.s1, 1 + (int)(rng() % 5), Inf);
            poison(w.s2, 1, NaN);
            want[0] = 7; want[1] = 10; want[2] = (u64)lo; want[3] = 1;
        } else if (scenario == "loss") {  // a NaN loss only
            w.loss = NaN;
            want[0] = 1; want[1] = 10;
        } else if (scenario == "grads") {  // bad gradients only: the lowest bad element
            long long lo = poison(w.grads, 1 + (int)(rng() % 50), (rng() % 2) ? NaN : -Inf);
            want[0] = 2; want[1] = 10; want[2] = (u64)lo;
        } else if (scenario == "state") {  // bad statistics only: the first bad entry
            const bool both = rng() % 2;
            if (both) poison(w.s1, 3, NaN);
            poison(w.s2, 2, Inf);
            want[0] = 4; want[1] = 10; want[3] = both ? 1 : 2;
        } else if (scenario == "update") {  // finite checks, the update would overflow at some params (both
            w.h[0] = 1e300;                     // stretches): checked before anything is stored, it changes nothing
            long long lo = poison(w.grads, 1 + (int)(rng() % 30), 1e300);
            want[0] = 8; want[1] = 10; want[4] = (u64)lo;  // which = 0 (the param) in the top bits
        } else if (scenario == "earlier") {  // step 9 flagged (unread): step 10, all bad, changes nothing
            u64 before[5] = {2, 9, 5, (u64)INT64_MAX, (u64)INT64_MAX};
            std::memcpy(w.status, before, sizeof before);
            std::memcpy(want, before, sizeof want);
            w.loss = NaN;
            poison(w.grads, 20, NaN);
            poison(w.s1, 2, NaN);
        } else if (scenario == "clean") {
            want[0] = 0;
            updates = commits = true;
        } else {
            return 2;
        }
        std::vector<double> p0 = w.params, l1 = w.live1;
        w.step(10, grid, block);
        bool params_changed = w.params != p0, state_changed = w.live1 != l1;
        bool ok = params_changed == updates && state_changed == commits && w.counter[0] == (commits ? 8 : 7);
        if (updates) {  // every param updated, as the NumPy target's whole-buffer update (the clean step)
            for (int i = 0; i < NG; ++i) ok = ok && w.params[i] == p0[i] - w.h[0] * w.grads[i];
        }
        // one more step, everything bad again: after a flag it changes nothing, the status included
        const bool flagged = want[0] != 0;
        if (flagged) {
            std::vector<double> p1 = w.params;
            u64 s[5];
            std::memcpy(s, w.status, sizeof s);
            w.loss = NaN;
            poison(w.grads, 5, NaN);
            poison(w.s2, 1, NaN);
            w.step(11, grid, block);
            ok = ok && w.params == p1 && w.live1 == l1 && std::memcmp(s, w.status, sizeof s) == 0 &&
                 w.counter[0] == 7;
        }
        std::printf("%s %d %u %u |", scenario.c_str(), r, grid, block);
        for (u64 v : w.status) std::printf(" %llu", v);
        std::printf(" |");
        for (u64 v : want) std::printf(" %llu", v);
        std::printf(" | %s\n", ok ? "ok" : "CHANGED");
    }
    return 0;
}
"""

SCENARIOS = ("diverge", "loss", "grads", "state", "update", "earlier", "clean")


def sources() -> dict:
    """The translation units: SGD's optimizer module in float64 as the runtime compiles it (step.cu.j2
    whole, step_guard and step_commit included, as module.cu.j2 includes it too, then optim_sgd),
    and the driver."""
    module = module_source(record_of(bg.optim.SGD(lr=0.1)), "float64")
    assert "void step_guard(" in module and "void step_commit(" in module
    return {"module.cu": SHIM + module, "driver.cpp": DRIVER}


def build(folder, flags=()) -> str:
    objs = []
    for name, text in sources().items():
        src = os.path.join(folder, name + ".cpp")
        with open(src, "w") as f:
            f.write(text)
        objs.append(src[:-4] + ".o")
        subprocess.run([CXX, "-O1", "-g", "-std=c++17", "-pthread", *flags, "-c", src, "-o", objs[-1]],
                       check=True, capture_output=True, text=True)
    exe = os.path.join(folder, "guard_threads")
    subprocess.run([CXX, "-pthread", *flags, *objs, "-o", exe], check=True, capture_output=True, text=True)
    return exe


def check(exe, scenario, runs, seed, env=None):
    proc = subprocess.run([exe, scenario, str(runs), str(seed)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == runs
    bad = []
    for line in lines:
        head, got, want, changed = line.split("|")
        if got.split() != want.split() or changed.strip() != "ok":
            bad.append(line)
    assert not bad, f"{len(bad)} of {runs} runs differ (run grid block | status | expected | changes):\n" + \
        "\n".join(bad[:10])
    return proc


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("guard_threads")))


def test_the_driver_is_the_protocol():
    assert STATUS_CLEAR == (0, 0, 2**63 - 1, 2**63 - 1, 2**63 - 1)  # the driver's CLEAR


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_status_does_not_depend_on_the_interleaving(exe, scenario):
    check(exe, scenario, 50, 17 + SCENARIOS.index(scenario))


def _tsan_works(folder) -> bool:
    src = os.path.join(folder, "probe.cpp")
    with open(src, "w") as f:
        f.write("#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n")
    exe = os.path.join(folder, "probe")
    try:
        subprocess.run([CXX, "-fsanitize=thread", "-pthread", src, "-o", exe], check=True, capture_output=True)
        return subprocess.run([exe], capture_output=True, timeout=60).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


def test_thread_sanitizer_finds_no_race(tmp_path):
    if not _tsan_works(str(tmp_path)):
        pytest.skip("-fsanitize=thread does not build or run on this machine")
    exe = build(str(tmp_path), ("-fsanitize=thread",))
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    for scenario in ("diverge", "grads", "update"):
        proc = check(exe, scenario, 6, 5, env)
        assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
