"""The report in a real browser: headless Chromium (Debian's ``chromium``; .ci/run installs it)
opens the file from disk over the DevTools protocol (bngraph.htmlreport.browser), runs its script,
logs nothing to the console and fetches nothing but the file; a real mouse click on an IR line
highlights that node's code, a click on a line of code selects its IR line, and Tab + Enter does
what a click does. A screenshot is saved in the test's tmp folder. Skipped, with the reason, where
no browser is installed -- but not in CI, where a missing browser is a failure."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.htmlreport.browser import Browser, find_browser

BROWSER = find_browser()
if BROWSER is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser test: .ci/run installs Debian's chromium (no browser on PATH)")
    pytest.skip("no Chromium on PATH (apt-get install chromium): the report's browser test is skipped",
                allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A trained model's report (with curves), in a browser."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((160, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    model = bg.compile(bg.mlp([8, 16, 2]), seed=0)
    path = tmp / "report.html"
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=32, validation_data=(X[:40], y[:40]),
              verbose=False, report=path)
    with Browser(BROWSER) as b:
        b.open(path.as_uri())
        yield b, tmp, path


def _center(b, selector: str) -> tuple:
    """Scroll the element into view; its point to click, in viewport coordinates."""
    return tuple(b.evaluate(f"(() => {{ const el = document.querySelector({selector!r}); "
                            f"el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect(); "
                            f"return [r.left + Math.min(40, r.width / 2), r.top + Math.min(8, r.height / 2)]; }})()"))


def _selected(b) -> list:
    return b.evaluate("Array.from(document.querySelectorAll('.sel')).map(e => e.getAttribute('data-node'))")


def test_the_page_loads_from_disk_with_no_console_error_and_fetches_nothing(page):
    b, _, path = page
    assert b.evaluate("document.readyState") == "complete"
    assert b.evaluate("typeof window.bngraphReport.select") == "function"  # the script ran
    assert b.console == [], b.console
    assert b.requests and all(u == path.as_uri() for u in b.requests), b.requests
    assert b.evaluate("document.querySelectorAll('svg.graph').length") == 2
    assert b.evaluate("document.querySelectorAll('svg.chart').length") == 3  # loss, accuracy, lr
    widths = b.evaluate("Array.from(document.querySelectorAll('svg.graph')).map(s => s.getBBox().width)")
    assert all(w > 100 for w in widths)  # the SVG was laid out and drawn, not an empty box


def test_clicking_an_ir_line_highlights_its_code_and_back(page):
    b, tmp, _ = page
    node = b.evaluate("Array.from(document.querySelectorAll('#prog-train_step .ir.node'))"
                      ".find(e => e.textContent.includes('batchnorm_act')).getAttribute('data-node')")
    b.click(*_center(b, f"#ir-{node}"))
    sel = _selected(b)
    expected = b.evaluate(f"document.querySelectorAll('.cl[data-node=\"{node}\"]').length")
    assert expected > 5 and sel.count(node) == expected + 1 and set(sel) == {node}  # its IR line and all its code
    assert b.evaluate(f"document.getElementById('ir-{node}').getAttribute('aria-pressed')") == "true"
    # the code pane scrolled to the node's code: its first line is visible inside the pane
    assert b.evaluate(f"(() => {{ const c = document.getElementById('c-{node}').getBoundingClientRect(); "
                      f"const p = document.getElementById('c-{node}').closest('.code-pane').getBoundingClientRect(); "
                      f"return c.top >= p.top && c.bottom <= p.bottom; }})()")
    b.screenshot(tmp / "selected.png")
    assert (tmp / "selected.png").stat().st_size > 10_000
    # a click on another node's line of code selects that node's IR line
    other = b.evaluate("document.querySelector('#prog-forward .cl').getAttribute('data-node')")
    b.click(*_center(b, f"#c-{other}"))
    assert set(_selected(b)) == {other} and node not in _selected(b)
    assert b.console == []


def test_tab_and_enter_select_an_ir_line(page):
    b, tmp, _ = page
    b.evaluate("window.bngraphReport.selected() && window.bngraphReport.select(window.bngraphReport.selected())")
    first = b.evaluate("(() => { const el = document.querySelector('#prog-forward .ir.node'); "
                       "el.previousElementSibling.setAttribute('tabindex', '-1'); el.previousElementSibling.focus(); "
                       "return el.getAttribute('data-node'); })()")
    b.key("Tab", 9)
    assert b.evaluate("document.activeElement.getAttribute('data-node')") == first
    b.key("Enter", 13)
    assert set(_selected(b)) == {first} and len(_selected(b)) >= 2
    b.key("ArrowDown", 40)
    b.key("Enter", 13)
    second = b.evaluate("document.activeElement.getAttribute('data-node')")
    assert second != first and set(_selected(b)) == {second}
    b.screenshot(tmp / "full.png", full_page=True)
    assert (tmp / "full.png").stat().st_size > 50_000
    assert b.console == []


def test_print_layout_shows_every_line(page):
    b, _, _ = page
    b.call("Emulation.setEmulatedMedia", {"media": "print"}, session=True)
    try:
        assert b.evaluate("getComputedStyle(document.querySelector('.code-pane')).maxHeight") == "none"
        assert b.evaluate("getComputedStyle(document.querySelector('nav')).display") == "none"
    finally:
        b.call("Emulation.setEmulatedMedia", {"media": ""}, session=True)
    pdf = b.call("Page.printToPDF", {}, session=True)["data"]
    assert len(pdf) > 10_000
