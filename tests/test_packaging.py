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


def test_the_package_says_it_is_typed():
    """PEP 561: bngraph/py.typed is in the package and in its package data, so type checkers read
    the hints of an installed bngraph (issue 18, item 8)."""
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["bngraph"] and (REPO / "bngraph" / "py.typed").is_file()


def test_bg_optim_names_only_what_it_offers():
    import bngraph as bg
    leaked = {"Any", "Callable", "annotations"} & set(dir(bg.optim))
    assert not leaked, f"bg.optim exposes typing helpers: {sorted(leaked)}"
