"""GPU-only bugs planted in the rendered ``.cu`` text (cuda_model_support.MUTATIONS), each caught by
what the CUDA execution model sees the kernels do, not by golden text; and the sanitizers.

On the model (``device="emulator-threads"``):

* block_sum's reduction stopped one step early: wrong numbers (half the partial sums dropped);
* the element index forgetting blockDim.x (threads of different blocks overlap): elements nobody
  writes stay poisoned (NaN);
* block_sum's loop without its __syncthreads: wrong numbers (threads read partial sums others are
  still making), and a ThreadSanitizer data race;
* an off-by-one tail (``i <= n``): a write past the end of an array, an AddressSanitizer
  heap-buffer-overflow, a ThreadSanitizer report (the memory past the end is another's, or freed);
* idle threads returning before a barrier: a barrier-divergence error.

The one-thread emulator (``device="emulator"``) computes the right numbers with all of them but the
tail (which it may or may not survive): that is why the model exists. The sanitized runs (ASan + UBSan, TSan) need their runtime loaded
before Python starts, so each runs in one subprocess (tests/cuda_model_scenarios.py): the real
kernels of every kind report nothing there, and the planted bugs are reported.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bngraph as bg
from bngraph.backends.cuda_target.sanitizers import environment, probe
from bngraph.backends.cuda_target.threads import KernelFault
from cuda_model_support import MUTATIONS, compare_programs, model_device, plant, planted

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the execution model compiles with g++")

GRAPH = lambda: bg.mlp([4, 7, 3])  # noqa: E731  (batch norm, relu, softmax cross-entropy)


def test_each_mutation_finds_its_pattern_in_the_rendered_kernels():
    """A template that changes must fail here, loudly, not leave a mutation planting nothing."""
    cu = bg.emit(GRAPH(), target="cuda", dtype="float64")["mlp_cuda.cu"]
    for name in MUTATIONS:
        assert plant(cu, name) != cu, name


@pytest.mark.parametrize("name, m, caught", [
    ("short_reduction", 33, r"Not equal to tolerance"),
    ("overlapping_threads", 600, r"an element was not written \(NaN\)"),
    ("missing_barrier", 600, r"Not equal to tolerance"),
])
def test_the_model_catches_the_bug_by_wrong_numbers(name, m, caught):
    with planted(name), pytest.raises(AssertionError, match=caught):
        compare_programs(GRAPH(), model_device(), sizes=(m,), programs=("forward_train",))


@pytest.mark.parametrize("name", ["short_reduction", "overlapping_threads", "missing_barrier", "early_exit"])
def test_the_one_thread_emulator_computes_the_right_numbers_with_the_bug(name):
    m = {"overlapping_threads": 600, "missing_barrier": 600, "early_exit": 3}.get(name, 33)
    with planted(name):
        compare_programs(GRAPH(), "emulator", sizes=(m,), programs=("forward_train",))


def test_the_model_catches_an_off_by_one_tail_as_a_write_past_the_end():
    with planted("tail_off_by_one"), pytest.raises(
            KernelFault, match=r"kernel forward_train__\w+: a thread wrote past the end of argument \w+ \(\d+ elements\)"):
        compare_programs(GRAPH(), model_device(), sizes=(1000,), programs=("forward_train",))


def test_the_model_catches_threads_that_leave_before_a_barrier():
    with planted("early_exit"), pytest.raises(
            KernelFault, match=r"kernel forward_train__act1, block \(\d+,0,0\): barrier divergence: __syncthreads\(\) "
                               r"at line \d+ reached by 3 of 32 threads \(the others exited\)"):
        compare_programs(GRAPH(), model_device(), sizes=(3,), programs=("forward_train",))


# ---- the sanitizers ---------------------------------------------------------------------------------

SCENARIOS = Path(__file__).with_name("cuda_model_scenarios.py")
CLEAN = ("programs", "zoo", "step", "optimizers")
EXPECTED = {  # sanitizer -> scenario -> what its line must say (a regular expression)
    "address": {**{c: r"ok \(" for c in CLEAN},
                "ubsan_probe": r"fault: kernel overflow: address sanitizer: kernels\.cu:2:\d+: runtime error: signed "
                               r"integer overflow",
                "plant:tail_off_by_one": r"fault: kernel forward_train__\w+: address sanitizer: ERROR: AddressSanitizer: "
                                         r"heap-buffer-overflow",
                "plant:missing_barrier": r"wrong: Not equal to tolerance",
                "plant:overlapping_threads": r"wrong: .*an element was not written"},
    "thread": {**{c: r"ok \(" for c in CLEAN},
               # past the end of an array is freed memory, or another's: reported as a race either way
               "plant:tail_off_by_one": r"fault: kernel forward_train__\w+: thread sanitizer: WARNING: ThreadSanitizer: ",
               "plant:missing_barrier": r"fault: kernel forward_train__act1: thread sanitizer: WARNING: ThreadSanitizer: "
                                        r"data race",
               "plant:overlapping_threads": r"fault: kernel forward_train__out: thread sanitizer: WARNING: "
                                            r"ThreadSanitizer: data race"},
}


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """Both sanitizers' scenario runs, started together (two processes), their lines by name; for a
    sanitizer g++ cannot give here (its runtime missing, or not starting on this kernel), why not."""
    procs, results = {}, {}
    for kind, scenarios in EXPECTED.items():
        results[kind] = probe(kind)
        if results[kind] is None:
            procs[kind] = subprocess.Popen([sys.executable, str(SCENARIOS), kind, *scenarios], env=environment(kind, str(tmp_path_factory.mktemp(kind))),
                                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for kind, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{kind}:\n{err[-4000:]}"
        results[kind] = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in out.splitlines() if ": " in line}
        results[kind]["stderr"] = err
    return results


@pytest.mark.parametrize("kind, scenario", [(k, s) for k, ss in EXPECTED.items() for s in ss])
def test_under_the_sanitizers(sanitized, kind, scenario):
    if isinstance(sanitized[kind], str):
        pytest.skip(sanitized[kind])
    got = sanitized[kind].get(scenario)
    assert got is not None and re.match(EXPECTED[kind][scenario], got), \
        f"{kind} {scenario}: {got}\n{sanitized[kind]['stderr'][-3000:]}"
