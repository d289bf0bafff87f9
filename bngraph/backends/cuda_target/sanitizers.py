"""The sanitizers of the CUDA execution model (:mod:`.threads`): the kernels, and the model's
runtime, compiled with AddressSanitizer + UndefinedBehaviorSanitizer (``"address"``: reads and
writes out of bounds of an array or of a block's ``__shared__`` memory, signed overflow in index
arithmetic, out-of-bounds local arrays) or with ThreadSanitizer (``"thread"``: two threads of a
block, or two blocks, touching the same memory in one barrier interval with at least one write and
no atomic).

A sanitizer's runtime must be the first library of the process, so a sanitized model runs in a
Python started with :func:`environment` (``LD_PRELOAD`` of g++'s own runtime, and options that
keep the process alive after a report and put reports in a folder). The launcher reads the
process's report files after every launch (:class:`Reports`): a new report is one
:class:`~.threads.KernelFault` naming the kernel, the report's first line and the file. In a
process started otherwise a sanitized model is refused with the environment that would work.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Sanitizer:
    """``flags``: g++'s; ``library``: the runtime (g++ -print-file-name); ``marker``: a symbol the
    loaded runtime defines; ``options``: the option variables it reads, with the values the model
    needs; ``also``: the other runtimes it loads (UBSan's, beside ASan's)."""

    flags: tuple
    library: str
    marker: str
    options: dict  # the option variables it reads -> their value
    also: tuple = ()  # other runtime libraries it brings, each with its own report path


SANITIZERS = {
    # recover: a report does not end the process, so the launch that made it raises in Python
    "address": Sanitizer(("-fsanitize=address,undefined", "-fsanitize-recover=address,undefined",
                          "-fno-omit-frame-pointer", "-g"), "libasan.so", "__asan_init",
                         {"ASAN_OPTIONS": "halt_on_error=0:detect_leaks=0:detect_stack_use_after_return=0",
                          "UBSAN_OPTIONS": "halt_on_error=0:print_stacktrace=1"}, also=("libubsan.so",)),
    "thread": Sanitizer(("-fsanitize=thread", "-g"), "libtsan.so", "__tsan_init",
                        {"TSAN_OPTIONS": "halt_on_error=0:exitcode=0:report_signal_unsafe=0:history_size=4"}),
}


class SanitizerUnavailable(RuntimeError):
    """A sanitizer this machine's g++ cannot provide, or a process not started under it."""


def _sanitizer(kind: str) -> Sanitizer:
    if kind not in SANITIZERS:
        raise ValueError(f"unknown sanitizer {kind!r}: one of {', '.join(SANITIZERS)}")
    return SANITIZERS[kind]


def runtime_library(kind: str, library: str | None = None) -> str:
    """The path of g++'s runtime ``library``, by default sanitizer ``kind``'s own (SanitizerUnavailable
    if there is none)."""
    from .emulator import compiler

    s = _sanitizer(kind)
    library = library or s.library
    try:
        out = subprocess.run([compiler(), f"-print-file-name={library}"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise SanitizerUnavailable(f"the {kind} sanitizer: g++ does not answer ({e})") from None
    path = os.path.realpath(out) if os.path.isabs(out) else ""
    if not os.path.exists(path):
        raise SanitizerUnavailable(f"the {kind} sanitizer: g++ has no {library} (install its sanitizer runtimes, "
                                   f"e.g. the libgcc-<version>-dev package)")
    return path


def probe(kind: str) -> str | None:
    """None when sanitizer ``kind`` builds and runs a small threaded program here, else why not
    (its runtime missing, or one that cannot start on this kernel)."""
    from .emulator import compiler

    s = _sanitizer(kind)
    program = "#include <thread>\nint x;\nint main() { std::thread t([] { x = 1; }); t.join(); return x - 1; }\n"
    with tempfile.TemporaryDirectory(prefix="bngraph-probe-") as folder:
        exe = os.path.join(folder, "probe")
        try:
            runtime_library(kind)
            built = subprocess.run([compiler(), *s.flags, "-pthread", "-x", "c++", "-", "-o", exe], input=program,
                                   capture_output=True, text=True, timeout=120)
            if built.returncode != 0:
                return f"g++ cannot build with the {kind} sanitizer: {built.stderr.strip()[-300:]}"
            ran = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError, SanitizerUnavailable) as e:
            return f"the {kind} sanitizer does not work here: {e}"
        if ran.returncode != 0:
            return f"a program built with the {kind} sanitizer does not run here: {ran.stderr.strip()[-300:]}"
    return None


def environment(kind: str, report_dir: str | None = None, base: dict | None = None) -> dict:
    """The environment of a Python process in which a model sanitized by ``kind`` runs: the
    sanitizer's runtime preloaded, reports not fatal (the launch that made one raises) and written
    under ``report_dir`` (a new temporary folder by default), one BLAS thread (the model's threads
    are the ones to check)."""
    s = _sanitizer(kind)
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = runtime_library(kind)
    folder = os.path.abspath(report_dir or tempfile.mkdtemp(prefix=f"bngraph-{kind}-"))
    env.update(s.options)
    first = next(iter(s.options))
    env[first] += f":log_path={os.path.join(folder, kind)}"
    for var, extra in zip(list(s.options)[1:], s.also):  # the same path Reports sets: whichever comes last
        env[var] += f":log_path={os.path.join(folder, _stem(extra))}"
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


def _stem(library: str) -> str:
    return library.split(".")[0]  # libubsan.so -> libubsan


def loaded(kind: str) -> bool:
    """Is sanitizer ``kind``'s runtime part of this process?"""
    return hasattr(ctypes.CDLL(None), _sanitizer(kind).marker)


# lines a sanitizer writes that are not reports: ASan's note on the model's fibers, which announce
# every switch (__sanitizer_start_switch_fiber), as that note asks
NOT_REPORTS = ("doesn't fully support makecontext/swapcontext",)

_REPORTS: dict = {}  # kind -> Reports (one per process: the report files are the process's)


def reports(kind: str) -> "Reports":
    """The process's :class:`Reports` of sanitizer ``kind`` (made once)."""
    if kind not in _REPORTS:
        _REPORTS[kind] = Reports(kind)
    return _REPORTS[kind]


class Reports:
    """The reports sanitizer ``kind`` writes in this process: the runtime's own into the folder its
    options name (``log_path``, from :func:`environment`), and each other runtime it brings (UBSan's)
    told to write there too; AddressSanitizer's also reach the model's runtime through its report
    callback (threads_runtime.cpp), which is what counts for them (its own output may stay on
    stderr). :meth:`new` returns what was reported since the last call, or None."""

    def __init__(self, kind: str):
        s = _sanitizer(kind)
        first = next(iter(s.options))
        if not loaded(kind):
            raise SanitizerUnavailable(
                f"sanitizer {kind!r} needs its runtime loaded before Python starts: run "
                f"`python -m bngraph.backends.cuda_target.sanitizers {kind} python ...` (or start Python with the "
                f"environment of sanitizers.environment({kind!r}): LD_PRELOAD={s.library}, {first} with halt_on_error=0)")
        options = os.environ.get(first, "")
        path = re.search(r"(?:^|:)log_path=([^:]+)", options)
        if path is None or "halt_on_error=0" not in options:
            raise SanitizerUnavailable(f"sanitizer {kind!r}: {first} must hold halt_on_error=0 and a log_path "
                                       f"(environment({kind!r}) sets them), so a report reaches the launch that made it")
        self.kind, self.folder = kind, os.path.dirname(path.group(1))
        for extra in s.also:  # (its report path is its own: ASan's option does not reach it)
            lib = ctypes.CDLL(runtime_library(kind, library=extra))
            getattr(lib, "__sanitizer_set_report_path")(os.path.join(self.folder, _stem(extra)).encode())
        self.offsets: dict = {}

    def new(self, collected: str = "") -> str | None:
        """The reports written since the last call, with ``collected`` (those the model's runtime
        took from AddressSanitizer's callback), or None."""
        text = [("AddressSanitizer", collected)] if collected.strip() else []
        for path in sorted(glob.glob(os.path.join(glob.escape(self.folder), f"*.{os.getpid()}"))):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                chunk = f.read()
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            body = "".join(ln for ln in chunk.decode(errors="replace").splitlines(True)
                           if not any(n in ln for n in NOT_REPORTS))
            if body.strip():
                text.append((path, body))
        if not text:
            return None
        return "\n".join(f"{path}:\n{body}" for path, body in text)


def headline(report: str) -> str:
    """The line of a sanitizer report that says what happened."""
    for line in report.splitlines():
        if "ERROR:" in line or "WARNING: ThreadSanitizer" in line or "runtime error:" in line:
            return line.strip().lstrip("=0123456789").strip()
    return report.strip().splitlines()[0] if report.strip() else "(empty report)"


def main(argv=None) -> int:
    """``python -m bngraph.backends.cuda_target.sanitizers {address,thread} COMMAND...``: run
    COMMAND (a Python script, pytest) in :func:`environment`, where ``ExecutionModel(sanitizer=...)``
    models can run."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in SANITIZERS:
        print(f"usage: python -m bngraph.backends.cuda_target.sanitizers {{{','.join(SANITIZERS)}}} COMMAND...",
              file=sys.stderr)
        return 2
    try:
        env = environment(args[0])
    except SanitizerUnavailable as e:
        print(f"bngraph: error: {e}", file=sys.stderr)
        return 2
    os.execvpe(args[1], args[1:], env)


if __name__ == "__main__":
    raise SystemExit(main())
