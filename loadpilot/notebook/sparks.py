"""Small SVG charts drawn in plain Python, for the live dashboard's frames while a run goes: a
few milliseconds each, so redrawing every second costs the run nothing it can measure. (The
final frame and every other chart use Altair.) Marks are grouped like Vega's
(``g.mark-line path``, ``g.mark-rect path``) so the same selectors find them."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[float, float]

#: Vega's default category colours, so live frames and the final chart look alike.
COLOURS = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6"]


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[Point]
    colour: str
    dashed: bool = False
    bars: bool = False
    """Bars one unit wide from each point's x (stacked series give (x, bottom, top) via
    ``bottoms``)."""
    bottoms: Sequence[float] | None = None


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _symlog(v: float) -> float:
    return math.log10(1 + max(v, 0.0))


_SYMLOG_TICKS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000]


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def panel(
    title: str,
    series: Sequence[Series],
    x_range: tuple[float, float],
    *,
    y_title: str = "",
    symlog: bool = False,
    width: int = 300,
    height: int = 150,
) -> str:
    """One chart as an SVG element: axes with ticks, the series, a legend underneath."""
    left, right, top, bottom = 48, 10, 22, 30
    legend_rows = math.ceil(len(series) / 3)
    total_h = top + height + bottom + 16 * legend_rows
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1
    values = [p[1] for s in series for p in s.points if math.isfinite(p[1])]
    y_max = max(values, default=1.0) or 1.0
    f = _symlog if symlog else (lambda v: v)
    y_hi = f(y_max * 1.05)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * width

    def sy(y: float) -> float:
        return top + height - (f(y) / y_hi) * height if y_hi > 0 else top + height

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + right}" '
        f'height="{total_h}" font-family="sans-serif" font-size="10">',
        f'<text x="{left + width / 2}" y="14" text-anchor="middle" font-weight="bold" '
        f'font-size="11">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#ddd"/>',
    ]
    y_ticks = [t for t in _SYMLOG_TICKS if t <= y_max * 1.05] if symlog else nice_ticks(0, y_max)
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/>')  # fmt: skip
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x0, x1, 6):
        x = sx(t)
        out.append(f'<text x="{x:.1f}" y="{top + height + 12}" text-anchor="middle">'
                   f"{_fmt(t)}</text>")  # fmt: skip
    out.append(f'<text x="{left + width / 2}" y="{top + height + 24}" text-anchor="middle">'
               "seconds</text>")  # fmt: skip
    out.append(f'<text transform="translate(10,{top + height / 2}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(y_title)}</text>')  # fmt: skip
    for s in series:
        if not s.points:
            continue
        if s.bars:
            out.append('<g class="mark-rect">')
            bottoms = s.bottoms or [0.0] * len(s.points)
            for (x, y), b in zip(s.points, bottoms, strict=True):
                if y <= b:
                    continue
                x_a, x_b = sx(x), sx(min(x + 1, x1))
                y_a, y_b = sy(y), sy(b)
                out.append(f'<path d="M{x_a:.1f},{y_b:.1f}H{x_b:.1f}V{y_a:.1f}H{x_a:.1f}Z" '
                           f'fill="{s.colour}"/>')  # fmt: skip
            out.append("</g>")
        else:
            d = "M" + "L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
            dash = ' stroke-dasharray="4,3"' if s.dashed else ""
            out.append(f'<g class="mark-line"><path d="{d}" fill="none" stroke="{s.colour}" '
                       f'stroke-width="1.5"{dash}/></g>')  # fmt: skip
    for i, s in enumerate(series):
        lx = left + (i % 3) * (width / 3)
        ly = top + height + 40 + 16 * (i // 3)
        dash = ' stroke-dasharray="4,3"' if s.dashed else ""
        out.append(f'<line x1="{lx}" x2="{lx + 14}" y1="{ly - 3}" y2="{ly - 3}" '
                   f'stroke="{s.colour}" stroke-width="{6 if s.bars else 2}"{dash}/>')  # fmt: skip
        out.append(f'<text x="{lx + 18}" y="{ly}">{html.escape(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)
