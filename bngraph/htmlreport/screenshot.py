"""The README's pictures of a real report: ``python -m bngraph.htmlreport.screenshot [FOLDER]``.

Trains ``examples/mlp.py``'s model on the built-in digits for a few epochs with ``fit(...,
report=)``, opens the report in headless Chromium (:mod:`bngraph.htmlreport.browser`), and writes two
PNGs into FOLDER (default ``docs``): ``report.png``, the top of the page (the graph before and
after the passes), and ``report_code.png``, the generated code with the fused batch norm + ReLU of
``train_step`` selected, as a click on its IR line leaves it. Needs Chromium (apt-get install chromium).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def make(folder="docs", width: int = 1280, height: int = 820) -> list:
    """Write the two screenshots into ``folder``; returns their paths."""
    import bngraph as bg
    from .browser import Browser

    from ..cliutil import load_model_spec

    example = Path(__file__).resolve().parents[2] / "examples" / "mlp.py"
    graph = load_model_spec(str(example)) if example.is_file() else bg.mlp([64, 128, 64, 10])
    ds = bg.load_dataset("digits", seed=0)
    model = bg.compile(graph, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        page = os.path.join(tmp, "report.html")
        model.fit(ds.X_train, ds.y_train, optimizer=bg.optim.Adam(lr=3e-3), epochs=6, batch_size=64,
                  validation_data=(ds.X_test, ds.y_test), verbose=False, report=page)
        top, code = os.path.join(folder, "report.png"), os.path.join(folder, "report_code.png")
        with Browser(width=width, height=height) as b:
            b.open(Path(page).as_uri())
            b.screenshot(top)
            fused = b.evaluate("(() => { const el = Array.from(document.querySelectorAll('#prog-train_step .ir.node'))"
                               ".find(e => e.textContent.includes('batchnorm_act')); el.scrollIntoView({block: 'center'});"
                               " const r = el.getBoundingClientRect(); return [r.x + 30, r.y + 8]; })()")
            b.click(*fused)
            b.evaluate("document.querySelector('#prog-train_step').scrollIntoView()")
            b.screenshot(code)
            if b.console:
                raise RuntimeError(f"the report logged to the console: {b.console}")
    return [top, code]


if __name__ == "__main__":
    for p in make(*(sys.argv[1:2] or ["docs"])):
        print(f"wrote {p}")
