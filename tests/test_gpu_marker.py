"""The ``gpu`` marker's hook (tests/conftest.py): gpu tests run only where CuPy imports and sees a
CUDA device, are skipped with the reason elsewhere, and CuPy is looked at once, lazily.

One run of pytest in a subprocess, on a scratch folder holding a copy of tests/conftest.py, a small
test file and a stand-in ``cupy`` package that fails to import and counts how often it was
imported, shows the skip reason in pytest's report. The other cases call the hook directly with a
stand-in ``cupy`` module. The real machine's CuPy plays no part.
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import cuda_unavailable, pytest_runtest_setup

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = '''
import os
import pytest

def test_plain_runs_first_and_cupy_is_not_imported_yet():
    assert not os.path.exists("cupy_imports.txt")

@pytest.mark.gpu
def test_gpu_one():
    import cupy
    assert cupy.cuda.runtime.getDeviceCount() > 0

@pytest.mark.gpu
def test_gpu_two():
    pass
'''

def _run(tmp_path: Path) -> tuple:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU and CuPy\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_it.py").write_text(TESTS)
    pkg = tmp_path / "cupy"  # found first: the scratch folder leads sys.path
    pkg.mkdir()
    (pkg / "__init__.py").write_text("open('cupy_imports.txt', 'a').write('x')\n"  # cwd is tmp_path
                                     "raise ImportError('libcudart.so.13: cannot open shared object file')\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "-q", "test_it.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    imports = (tmp_path / "cupy_imports.txt").read_text() if (tmp_path / "cupy_imports.txt").exists() else ""
    return proc, len(imports)


def test_gpu_tests_are_skipped_with_the_reason_and_cupy_is_checked_once_lazily(tmp_path):
    proc, imports = _run(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "1 passed, 2 skipped" in out, out
    assert "SKIPPED [2] " in out, out
    assert "needs CuPy and a CUDA GPU: CuPy does not import (ImportError: libcudart.so.13: cannot open" in out, out
    assert imports == 1, "CuPy is checked once, when the first gpu test runs"


class _Item:
    def __init__(self, gpu: bool):
        self.gpu = gpu

    def get_closest_marker(self, name):
        return object() if (name == "gpu" and self.gpu) else None


@pytest.fixture
def fresh_check():
    cuda_unavailable.cache_clear()
    yield
    cuda_unavailable.cache_clear()  # the real machine's answer is computed again when needed


def _fake_cupy(count):
    def get_device_count():
        if isinstance(count, Exception):
            raise count
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize("cupy, reason", [
    (None, r"needs CuPy and a CUDA GPU: CuPy does not import \(ModuleNotFoundError: "),
    (_fake_cupy(0), "needs a CUDA GPU: CuPy finds 0 devices"),
    (_fake_cupy(RuntimeError("cudaErrorNoDevice")),
     r"needs a CUDA GPU: CuPy finds none \(RuntimeError: cudaErrorNoDevice\)"),
])
def test_the_skip_reason_says_what_is_missing(monkeypatch, fresh_check, cupy, reason):
    monkeypatch.setitem(sys.modules, "cupy", cupy)  # None: "import cupy" raises ImportError
    with pytest.raises(pytest.skip.Exception, match=reason):
        pytest_runtest_setup(_Item(gpu=True))
    pytest_runtest_setup(_Item(gpu=False))  # other tests are not touched


def test_gpu_tests_run_where_a_device_is_present(monkeypatch, fresh_check):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    assert cuda_unavailable() is None
    pytest_runtest_setup(_Item(gpu=True))  # no skip
