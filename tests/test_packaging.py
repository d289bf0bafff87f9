"""The wheel holds every package and every template: pyproject.toml lists packages explicitly, so
a new subpackage that is not listed would install a bngraph that cannot import itself."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bngraph").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_every_template_folder_is_shipped():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bngraph.templates"]
    for path in (REPO / "templates").rglob("*.j2"):
        rel = path.relative_to(REPO / "templates")
        assert any(rel.match(p) for p in patterns), f"templates/{rel} is not matched by the package-data patterns"
