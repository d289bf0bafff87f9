"""Every kernel the CUDA target emits, as ptxas builds it for sm_90 (``nvcc -Xptxas -v``), against
the launch configuration the host code gives it: a kernel that could not launch with its block
size on an H100 fails here, without a GPU (issue 17, item 5).

ptxas reports each kernel's registers per thread, static shared memory, stack frame and spill
stores/loads. The block shapes come from the host code that launches the kernels: the generated
driver run on the host alone with a recording ``launch`` (every program, batch sizes 1 to 2^20:
a block may depend on m), and the ``launch(name, grid, block, ...)`` calls of
``cuda_target/step.py`` and ``cuda_target/optimizers.py`` (the guard, the commit, and the optimizer
kernels, whose names are computed at run time), their blocks evaluated in the module. A kernel
no launch reaches at any of those batch sizes is checked at its module's ``BLOCK``. The limits
(:data:`SM90`, CUDA's compute capability 9.0 table) per kernel and block shape:

* at most 1024 threads per block and 255 registers per thread;
* registers: allocated per warp in units of 256 (8 per thread), at most 64K per block and per SM,
  so ``ceil(regs/8)*8 * 32 * warps <= 65536``: 255 registers allow 256 threads, not 512;
* static shared memory at most 48 KiB per block (more needs dynamic shared memory and an opt-in,
  up to 227 KiB; the kernels take no dynamic shared memory);
* no spills (allowance 0 bytes: a spill is local memory traffic on every use).

The kernels: the matrix of tests/test_cuda_target.py (every activation and loss, float32 and
float64, fused and plain, training and inference), every class-loss variant, the elementwise
arithmetic, and the optimizer modules of every built-in record. A planted launch of 1024 threads
and a planted 64 KiB shared array fail. Skipped where nvcc is missing (it is on these machines
and in CI).
"""
from __future__ import annotations

import ast
import inspect
import itertools
import math
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends import get_target
from bngraph.backends.base import exec_source
from bngraph.backends.cuda_target import optimizers, step

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


@dataclass(frozen=True)
class Limits:
    threads_per_block: int = 1024
    regs_per_thread: int = 255
    regs_per_block: int = 65536     # = the register file of one SM
    reg_unit: int = 8               # registers are given to a warp 256 at a time: 8 per thread
    static_smem: int = 48 * 1024
    spill_bytes: int = 0


SM90 = Limits()


@dataclass
class Resources:
    """One kernel as ptxas reports it."""
    name: str
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def ptxas_report(text: str) -> dict:
    """name -> Resources, from ``nvcc -Xptxas -v`` output."""
    out, cur = {}, None
    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            cur = out[m.group(1)] = Resources(m.group(1))
        elif cur and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                                     line)):
            cur.stack, cur.spill_stores, cur.spill_loads = map(int, m.groups())
        elif cur and (m := re.search(r"Used (\d+) registers", line)):
            cur.registers = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            cur.smem = int(smem.group(1)) if smem else 0
    return out


def launch_problems(r: Resources, block: tuple, limits: Limits = SM90) -> list:
    """Why kernel ``r`` cannot launch with ``block`` threads (empty: it can)."""
    threads = math.prod(block)
    regs = math.ceil(r.registers / limits.reg_unit) * limits.reg_unit * 32 * math.ceil(threads / 32)
    checks = [(threads <= limits.threads_per_block, f"{threads} threads > {limits.threads_per_block}"),
              (r.registers <= limits.regs_per_thread, f"{r.registers} registers per thread"),
              (regs <= limits.regs_per_block, f"{r.registers} registers x {threads} threads = {regs} > "
                                              f"{limits.regs_per_block}"),
              (r.smem <= limits.static_smem, f"{r.smem} bytes of static shared memory > {limits.static_smem}"),
              (r.spill_stores + r.spill_loads <= limits.spill_bytes,
               f"spills {r.spill_stores} bytes stored, {r.spill_loads} loaded")]
    return [f"{r.name} with block {block}: {why}" for ok, why in checks if not ok]


def launches(source: str, namespace: dict) -> dict:
    """Kernel name (None where the host computes it) -> the block shapes ``source``'s
    ``launch(name, grid, block, ...)`` calls give it, each block a constant of ``namespace``."""
    out: dict = {}
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and "launch" in (getattr(func, "id", None), getattr(func, "attr", None)) \
                and len(node.args) >= 3:
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            block = eval(compile(ast.Expression(node.args[2]), "<block>", "eval"), dict(namespace))  # noqa: S307
            out.setdefault(name, set()).add(tuple(block))
    return out


def host_launches() -> dict:
    """The launches of the guarded step and the optimizer kernels (module code, not generated)."""
    out: dict = {}
    for mod in (step, optimizers):
        for name, blocks in launches(Path(mod.__file__).read_text(), vars(mod)).items():
            out.setdefault(name, set()).update(blocks)
    return out


class Anything:
    """A device array or dict of them to the driver: every item, attribute or call is one too."""

    def __getitem__(self, key):
        return self

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __setitem__(self, key, value):
        pass


BATCH_SIZES = (1, 2, 3, 31, 32, 33, 127, 128, 129, 1000, 1024, 4097, 16384, 65537, 1 << 20)


def driver_launches(key: str, driver: str) -> dict:
    """Kernel name -> the block shapes the generated driver launches it with, over every program
    and the batch sizes of :data:`BATCH_SIZES` (the driver's launch and gemm replaced: it runs
    on the host alone, the blocks it computes recorded)."""
    module = exec_source(f"{key}.py", driver, f"bngraph_ptxas_{key}")
    out: dict = {}
    module.launch = lambda name, grid, block, *args: out.setdefault(name, set()).add(tuple(block))
    module.gemm = lambda *args: args[-1]
    module.scratch = Anything()
    programs = [f for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == module.__name__
                and {"P", "B"} <= set(inspect.signature(f).parameters)]
    assert programs, key
    for m, fn in itertools.product(BATCH_SIZES, programs):
        fn(**{p: Anything() if p in "PSGB" else np.zeros((1, m), np.float32) for p in inspect.signature(fn).parameters})
    return out


def kernel_matrix() -> dict:
    """key -> (.cu source, driver source or None): every template, both dtypes."""
    from test_binary_ops import arithmetic_graph
    from test_cuda_target import layered_graph
    from test_loss_variants import kernel_zoo

    out = {}
    for loss, dtype in itertools.product(("softmax_cross_entropy", "mse", "sigmoid_bce"), ("f32", "f64")):
        g = layered_graph(loss, dtype)
        for key, kw in (("fused", {}), ("plain", {"passes": []}), ("inference", {"inference": True})):
            src = bg.emit(g, target="cuda", dtype=dtype, **kw)
            out[f"{loss}_{dtype}_{key}"] = (src[f"{g.name}_cuda.cu"], src[f"{g.name}_cuda.py"])
    for dtype in ("f32", "f64"):
        zoo = kernel_zoo(dtype)
        src = get_target("cuda").renderer.render({"forward": zoo}, dtype, zoo.name).sources
        out[f"class_losses_{dtype}"] = (src[f"{zoo.name}_cuda.cu"], src[f"{zoo.name}_cuda.py"])
        src = bg.emit(arithmetic_graph(dtype), target="cuda", dtype=dtype)
        out[f"arithmetic_{dtype}"] = (src["arith_cuda.cu"], src["arith_cuda.py"])
    from bngraph.optim.records import ADAM_RECORD, RMSPROP_RECORD, SGD_RECORD

    for record, dtype in itertools.product((SGD_RECORD, RMSPROP_RECORD, ADAM_RECORD), ("float32", "float64")):
        out[f"optim_{record.name}_{dtype}"] = (optimizers.module_source(record, dtype), None)
    return out


def _ptxas(path: Path) -> tuple:
    proc = subprocess.run([NVCC, "-arch=sm_90", "-Xptxas", "-v", "-c", str(path), "-o", str(path.with_suffix(".o"))],
                          capture_output=True, text=True)
    return proc.returncode, proc.stderr + proc.stdout


def compiled(sources: dict, folder: Path) -> dict:
    """key -> {kernel: Resources}, nvcc run on each source in parallel."""
    paths = []
    for key, text in sources.items():
        paths.append(folder / f"{key}.cu")
        paths[-1].write_text(text)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_ptxas, paths))
    for p, (rc, out) in zip(paths, results):
        assert rc == 0 and "warning" not in out.lower(), f"{p.name}:\n{out[-3000:]}"
    return {key: ptxas_report(out) for key, (_, out) in zip(sources, results)}


def check_all(matrix: dict, reports: dict) -> tuple:
    """(problems, rows, unlaunched): every kernel of every source against each block shape it is
    launched with; one that no launch reaches (at any batch size) against its module's BLOCK, the
    block its template is written for, and listed in ``unlaunched``."""
    host = host_launches()
    problems, rows, unlaunched = [], [], []
    for key, (cu, driver) in matrix.items():
        given = dict(host)
        if driver is not None:
            for name, blocks in driver_launches(key, driver).items():
                given[name] = given.get(name, set()) | blocks
        own = re.search(r"#define BLOCK (\d+)", cu)
        for name, r in reports[key].items():
            blocks = given.get(name) or (given.get(None) if name.startswith("optim_") else None)
            if not blocks:
                unlaunched.append(f"{key}: {name}")
                blocks = {(int(own.group(1)) if own else optimizers.BLOCK,)}
            for block in sorted(blocks):
                problems += [f"{key}: {p}" for p in launch_problems(r, block)]
                rows.append((key, r, block))
    return problems, rows, unlaunched


def test_every_kernel_can_launch_on_sm90_with_the_block_its_host_code_gives_it(tmp_path):
    matrix = kernel_matrix()
    reports = compiled({k: cu for k, (cu, _) in matrix.items()}, tmp_path)
    problems, rows, _ = check_all(matrix, reports)
    assert problems == []
    names = {r.name for _, r, _ in rows}
    assert {"step_guard", "step_commit", "optim_adam", "optim_sgd", "optim_rmsprop"} <= names
    assert len(rows) >= sum(len(r) for r in reports.values())  # every kernel checked at least once
    most = max(rows, key=lambda row: row[1].registers)
    assert most[1].registers > 64, most  # the report was read (the float64 BN kernels take the most)


def test_a_planted_launch_too_large_for_the_registers_fails():
    r = Resources("bn", registers=153)
    assert launch_problems(r, (256,)) == []
    assert launch_problems(r, (1024,)) == ["bn with block (1024,): 153 registers x 1024 threads = 163840 > 65536"]
    assert launch_problems(Resources("k", registers=255), (512,))  # 256 allocated: 131072
    assert launch_problems(Resources("k", registers=32), (2048,))[0].endswith("2048 threads > 1024")


def test_a_planted_kernel_and_launch_fail_through_nvcc_and_the_driver(tmp_path):
    """The whole path on planted code: a driver launching 1024 threads at a register-heavy kernel
    (and a kernel it never launches, listed), and a kernel with 64 KiB of static shared memory
    (ptxas itself refuses above 48 KiB)."""
    cu = ('extern "C" __global__ void heavy(double* x) {  // 64 doubles live at once: > 128 registers\n'
          "    double v[64], s = 0;\n"
          "    #pragma unroll\n"
          "    for (int k = 0; k < 64; ++k) v[k] = x[threadIdx.x + k * 1024];\n"
          "    #pragma unroll\n"
          "    for (int i = 0; i < 64; ++i)\n"
          "        #pragma unroll\n"
          "        for (int j = i + 1; j < 64; ++j) s += v[i] * v[j];\n"
          "    x[threadIdx.x] = s;\n"
          "}\n"
          'extern "C" __global__ void orphan(float* x) { x[threadIdx.x] = 0; }\n')
    driver = "BLOCK = 1024\n\ndef run(x, P, B):\n    launch(\"heavy\", (1,), (BLOCK,), x)\n"
    reports = compiled({"planted": cu}, tmp_path)
    assert reports["planted"]["heavy"].registers > 64
    problems, _, unlaunched = check_all({"planted": (cu, driver)}, reports)
    assert any("heavy with block (1024,)" in p and "> 65536" in p for p in problems), problems
    assert unlaunched == ["planted: orphan"]
    big = 'extern "C" __global__ void big(float* x) { __shared__ float s[16384]; s[threadIdx.x] = x[0]; ' \
          "__syncthreads(); x[threadIdx.x] = s[threadIdx.x ^ 1]; }\n"
    (tmp_path / "big.cu").write_text(big)
    rc, out = _ptxas(tmp_path / "big.cu")
    assert rc != 0 or launch_problems(ptxas_report(out)["big"], (256,)), out
