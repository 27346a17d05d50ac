"""Tiny inline-SVG charts for the report: grouped bars, lines, stacked bars. No dependencies, no JS.

Each chart is one <svg class="plot" data-plot=NAME> with explicit width and height, so a page that
embeds it renders the same offline, in any browser, and a test can find it by name.
"""
from __future__ import annotations

import math
from html import escape

COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
W, H = 560, 300
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 64, 16, 34, 48


def nice_max(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^n at or above v (an axis top that reads well)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= v * (1 - 1e-9))


def divisions(top: float) -> int:
    """Grid lines for an axis top from nice_max: 5 for 2.5 and 5 x 10^n (ticks 0.5, 1), else 4."""
    m = top / 10 ** math.floor(math.log10(top))
    return 5 if round(m, 6) in (2.5, 5) else 4


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _frame(name: str, title: str, y_label: str, y_top: float, legend: list[str], n_legend_rows: int) -> list[str]:
    h = H + 18 * n_legend_rows
    out = [f'<svg class="plot" data-plot="{escape(name)}" '
           f'width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    x0, x1, y0, y1 = M_LEFT, W - M_RIGHT, H - M_BOTTOM, M_TOP
    n = divisions(y_top)
    for i in range(n + 1):
        v = y_top * i / n
        y = y0 - (y0 - y1) * i / n
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    out.append(f'<text transform="translate(14,{(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    out.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#333"/>'
               f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#333"/>')
    for i, name in enumerate(legend):
        ly = H + 18 * i - 4
        out.append(f'<rect x="{x0}" y="{ly - 9}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
                   f'<text x="{x0 + 14}" y="{ly}">{escape(name)}</text>')
    return out


def bars(name: str, title: str, categories: list[str], series: dict[str, list[float | None]],
         y_label: str, x_label: str = "") -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    vals = [v for vs in series.values() for v in vs if v is not None]
    top = nice_max(max(vals, default=0))
    out = _frame(name, title, y_label, top, list(series) if len(series) > 1 else [], len(series) if len(series) > 1 else 0)
    x0, x1, y0, y1 = M_LEFT, W - M_RIGHT, H - M_BOTTOM, M_TOP
    gw = (x1 - x0) / max(len(categories), 1)
    bw = gw * 0.8 / max(len(series), 1)
    for ci, cat in enumerate(categories):
        gx = x0 + gw * ci + gw * 0.1
        for si, vs in enumerate(series.values()):
            v = vs[ci]
            if v is None:
                continue
            bh = (y0 - y1) * v / top
            out.append(f'<rect class="mark" x="{gx + bw * si:.1f}" y="{y0 - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                       f'height="{max(bh, 0.5):.1f}" fill="{COLORS[si % len(COLORS)]}"><title>{escape(cat)}: {fmt(v)}</title></rect>')
        label = cat if len(cat) <= 24 else cat[:23] + "…"
        out.append(f'<text x="{x0 + gw * (ci + 0.5):.1f}" y="{y0 + 14}" text-anchor="middle">{escape(label)}</text>')
    if x_label:
        out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle">{escape(x_label)}</text>')
    return "\n".join(out + ["</svg>"])


def lines(name: str, title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
          hlines: dict[str, float] | None = None, points: dict[str, tuple[float, float]] | None = None) -> str:
    """One polyline per series (x, y); dashed horizontal lines `hlines` and single marked points
    `points`, keyed like the series so they share its colour."""
    hlines, points = hlines or {}, points or {}
    xs = [x for s in series.values() for x, _ in s] + [x for x, _ in points.values()]
    ys = [y for s in series.values() for _, y in s] + list(hlines.values()) + [y for _, y in points.values()]
    top = nice_max(max(ys, default=0))
    xmin, xmax = min(xs, default=0), max(xs, default=1)
    xmax = xmax if xmax > xmin else xmin + 1
    out = _frame(name, title, y_label, top, list(series), len(series))
    x0, x1, y0, y1 = M_LEFT, W - M_RIGHT, H - M_BOTTOM, M_TOP
    px = lambda x: x0 + (x1 - x0) * (x - xmin) / (xmax - xmin)  # noqa: E731
    py = lambda y: y0 - (y0 - y1) * y / top  # noqa: E731
    step = max(1, math.ceil((xmax - xmin) / 10))
    for x in range(math.floor(xmin), math.floor(xmax) + 1, step):
        out.append(f'<text x="{px(x):.1f}" y="{y0 + 14}" text-anchor="middle">{fmt(x)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle">{escape(x_label)}</text>')
    for i, (key, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        if key in hlines:
            y = py(hlines[key])
            out.append(f'<line class="mark" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" '
                       f'stroke-dasharray="6 4" stroke-width="1.5"><title>{escape(key)}: {fmt(hlines[key])}</title></line>')
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s)
        if len(s) > 1:
            out.append(f'<polyline class="mark" points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in s:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{c}"><title>{fmt(x)}: {fmt(y)}</title></circle>')
        if key in points:
            x, y = points[key]
            out.append(f'<circle class="mark" cx="{px(x):.1f}" cy="{py(y):.1f}" r="7" fill="none" stroke="{c}" '
                       f'stroke-width="3"><title>{escape(key)}: {fmt(y)} at {fmt(x)}</title></circle>')
    return "\n".join(out + ["</svg>"])


def stacked(name: str, title: str, categories: list[str], parts: dict[str, list[float]], y_label: str) -> str:
    """Stacked vertical bars (e.g. shares of time adding up to 1), one bar per category."""
    totals = [sum(p[i] for p in parts.values()) for i in range(len(categories))]
    top = nice_max(max(totals, default=0))
    out = _frame(name, title, y_label, top, list(parts), len(parts))
    x0, x1, y0, y1 = M_LEFT, W - M_RIGHT, H - M_BOTTOM, M_TOP
    gw = (x1 - x0) / max(len(categories), 1)
    for ci, cat in enumerate(categories):
        base = y0
        for si, (part, vs) in enumerate(parts.items()):
            bh = (y0 - y1) * max(vs[ci], 0) / top
            out.append(f'<rect class="mark" x="{x0 + gw * ci + gw * 0.2:.1f}" y="{base - bh:.1f}" width="{gw * 0.6:.1f}" '
                       f'height="{bh:.1f}" fill="{COLORS[si % len(COLORS)]}"><title>{escape(cat)} {escape(part)}: {fmt(vs[ci])}</title></rect>')
            base -= bh
        label = cat if len(cat) <= 24 else cat[:23] + "…"
        out.append(f'<text x="{x0 + gw * (ci + 0.5):.1f}" y="{y0 + 14}" text-anchor="middle">{escape(label)}</text>')
    return "\n".join(out + ["</svg>"])
