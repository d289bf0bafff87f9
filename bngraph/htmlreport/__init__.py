"""The HTML report of a model (``bg.report``, ``bngraph report``): one self-contained file with the
graph before and after the passes, each pass's change, the generated code linked to the IR and the
training curves. See docs/report.md."""
from .page import build_html, report

__all__ = ["build_html", "report"]
