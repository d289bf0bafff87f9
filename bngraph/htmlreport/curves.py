"""Training curves as small SVG line charts: one chart per quantity (the loss, each validation
metric, the learning rate), epochs along x, a line per series (train and validation), the values
of the first and last epoch written at the axis. Drawn here, in a few lines of SVG, so the report
needs no plotting library and prints as sharp as it shows."""
from __future__ import annotations

import html
import math

W, H, LEFT, RIGHT, TOP, BOTTOM = 360, 190, 58, 12, 26, 34


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def charts(history) -> list:
    """``[(title, [(series name, css class, [values per epoch])])]`` of a history (list of dicts)."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    out = []
    if "loss" in keys or "val_loss" in keys:
        out.append(("loss", [(k, "train" if k == "loss" else "val", [r.get(k) for r in history])
                             for k in ("loss", "val_loss") if k in keys]))
    for k in keys:
        if k.startswith("val_") and k != "val_loss":
            base = k[4:]
            series = [(k, "val", [r.get(k) for r in history])]
            if base in keys:
                series.insert(0, (base, "train", [r.get(base) for r in history]))
            out.append((base, series))
    if "lr" in keys:
        out.append(("learning rate", [("lr", "lr", [r.get("lr") for r in history])]))
    return [(t, s) for t, s in out if any(_finite(v) for _, _, vs in s for v in vs)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def chart_svg(title: str, series: list, epochs: list, css_id: str) -> str:
    """One chart: an ``<svg>`` with a line (and dots) per series."""
    vals = [v for _, _, vs in series for v in vs if _finite(v)]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - (abs(lo) or 1) * 0.05, hi + (abs(hi) or 1) * 0.05
    n = len(epochs)
    e0, e1 = (epochs[0], epochs[-1]) if n else (1, 1)
    span = (e1 - e0) or 1

    def px(e):
        return LEFT + (e - e0) / span * (W - LEFT - RIGHT) if n > 1 else (LEFT + W - RIGHT) / 2

    def py(v):
        return TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" '
           f'height="{H}" aria-labelledby="{css_id}-t">',
           f'<title id="{css_id}-t">{html.escape(title)} per epoch</title>',
           f'<text class="ctitle" x="{LEFT}" y="16">{html.escape(title)}</text>',
           f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}"/>',
           f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}"/>']
    for v in (hi, lo):
        out.append(f'<text class="tick" x="{LEFT - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    for e in sorted({e0, e1}):
        out.append(f'<text class="tick" x="{px(e):.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{e}</text>')
    out.append(f'<text class="tick" x="{(LEFT + W - RIGHT) / 2}" y="{H - 4}" text-anchor="middle">epoch</text>')
    lx = W - RIGHT
    for k, (name, cls, vs) in enumerate(series):
        pts = [(px(e), py(v)) for e, v in zip(epochs, vs) if _finite(v)]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline class="line {cls}" points="{d}"/>')
        out += [f'<circle class="dot {cls}" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>' for x, y in pts]
        out.append(f'<text class="legend {cls}" x="{lx}" y="{16 + 13 * k}" text-anchor="end">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def training_view(history, stop_reason=None) -> dict | None:
    """What the report's training section shows, or None when the model has not been trained."""
    records = [dict(r) for r in (history or [])]
    if not records:
        return None
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    drawn = [chart_svg(t, s, epochs, f"chart{i}") for i, (t, s) in enumerate(charts(records))]
    columns = [k for k in dict.fromkeys(k for r in records for k in r) if k != "epoch"]
    rows = [[r.get("epoch", i + 1)] + [_cell(r.get(k)) for k in columns] for i, r in enumerate(records)]
    return {"charts": drawn, "columns": ["epoch", *columns], "rows": rows,
            "stop_reason": stop_reason or f"ran all {len(records)} epochs (no early stop)"}


def _cell(v) -> str:
    if isinstance(v, float):
        return _fmt(v) if math.isfinite(v) else str(v)
    return "" if v is None else str(v)
