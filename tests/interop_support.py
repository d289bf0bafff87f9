"""Optional libraries for the interop tests: skipped where they are not installed, but required in
CI (``CI`` set: .ci/run installs the test extra, which includes them), so a broken install cannot
turn these tests into skips unnoticed."""
from __future__ import annotations

import importlib
import os

import pytest


def need(module: str):
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")
