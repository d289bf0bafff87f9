"""What the CUDA execution model (:mod:`.threads`) reads from a ``.cu`` text before compiling it.

* each kernel (``extern "C" __global__ void name(params) {body}``): its parameters' names, and its
  launch rules: a kernel that declares a ``__shared__`` array of ``BLOCK`` elements takes at most
  ``BLOCK`` threads per block, and one that calls a helper of :data:`POWER_OF_TWO` (``block_sum``
  halves ``blockDim.x``: templates/cuda/module.cu.j2) takes a power of two;
* the ``__shared__`` declarations, rewritten into the model's per-block arrays
  (``BNGRAPH_SHARED``, threads_prelude.h); a declaration of another form is one clear error;
* the entry points the launcher calls: ``bngraph_launch_<kernel>`` (the kernel over a grid, its
  arguments from a vector) and ``bngraph_signature_<kernel>`` (its parameter types, checked
  against the arguments of every launch).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...ir import IRError

KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
SHARED = re.compile(r"__shared__\s+((?:const\s+)?[A-Za-z_]\w*(?:\s*\*)?)\s+(\w+)\s*\[([^\];]+)\]\s*;")
DEFINE = re.compile(r"^\s*#define\s+(\w+)\s+(\d+)\b", re.M)
POWER_OF_TWO = ("block_sum",)  # device helpers that need blockDim.x a power of two


@dataclass(frozen=True)
class KernelInfo:
    """One kernel: its parameter names, and the block sizes it supports (``max_threads``: None for
    CUDA's 1024; ``power_of_two``: blockDim.x must be one)."""

    name: str
    params: tuple
    max_threads: int | None
    power_of_two: bool

    def refusal(self, threads: int, block: tuple) -> str | None:
        """Why a block of ``block`` (``threads`` in all) cannot run this kernel, or None."""
        if self.max_threads is not None and threads > self.max_threads:
            return (f"a block of {threads} threads: it declares __shared__ arrays of BLOCK = {self.max_threads} "
                    f"elements, one per thread")
        x = block[0]
        if self.power_of_two and x & (x - 1):
            return (f"a block of {x} threads: its {'/'.join(POWER_OF_TWO)} needs blockDim.x a power of two "
                    f"(it halves it)")
        return None


def strip_comments(src: str) -> str:
    """The text without // and /* */ comments (kept the same length per line: line numbers hold)."""
    src = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def _closing(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """The index just past the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    raise IRError(f"the CUDA execution model could not read the kernel text near {text[start:start + 60]!r}")


def kernels(src: str) -> dict:
    """Kernel name -> :class:`KernelInfo`, for every kernel of the ``.cu`` text ``src``."""
    code = strip_comments(src)
    defines = {k: int(v) for k, v in DEFINE.findall(code)}
    found = {}
    for m in KERNEL.finditer(code):
        params_end = _closing(code, m.end() - 1, "(", ")")
        params = code[m.end():params_end - 1]
        body_start = code.index("{", params_end)
        body = code[body_start:_closing(code, body_start, "{", "}")]
        names = tuple(re.findall(r"(\w+)\s*$", p.strip())[0] for p in params.split(",") if p.strip())
        sizes = [size.strip() for _, _, size in SHARED.findall(body)]
        limits = [defines[s] for s in sizes if s in defines]
        found[m.group(1)] = KernelInfo(m.group(1), names, min(limits) if limits else None,
                                       any(re.search(rf"\b{h}\s*\(", body) for h in POWER_OF_TWO))
    return found


def rewrite_shared(src: str) -> str:
    """Every ``__shared__ T name[n];`` as ``BNGRAPH_SHARED(T, name, n);``: one array per block."""
    out = SHARED.sub(lambda m: f"BNGRAPH_SHARED({m.group(1)}, {m.group(2)}, ({m.group(3)}));", src)
    left = [ln.strip() for ln in strip_comments(out).splitlines() if "__shared__" in ln]
    if left:
        raise IRError(f"the CUDA execution model places `__shared__ T name[n];` declarations only, not {left[0]!r}")
    return out


def entries(names) -> str:
    """The launcher's entry points for the kernels ``names`` (C++ appended to the module)."""
    out = ["", "// ---- the CUDA execution model's entry points (bngraph.backends.cuda_target.kernel_source) ----"]
    for n in names:
        out += [f"static void bngraph_body_{n}(void** a) {{ bngraph_model::call({n}, a); }}",
                f'extern "C" int bngraph_launch_{n}(const bngraph_launch_config* c, void** a) '
                f'{{ return bngraph_launch(c, "{n}", bngraph_body_{n}, a); }}',
                f'extern "C" const char* bngraph_signature_{n}(void) {{ return bngraph_model::signature({n}); }}']
    return "\n".join(out) + "\n"
