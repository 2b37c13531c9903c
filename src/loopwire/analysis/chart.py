"""An inline SVG line chart of shares over days, drawn by hand: axes, gridlines, one polyline per
series, a legend and labels. No script, no external reference; every label is escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import msgspec

WIDTH, HEIGHT = 720, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 44, 56
CHAR_WIDTH = 7  # about the width of a 12 px system-ui character, to space the legend's items


class Series(msgspec.Struct, frozen=True):
    name: str  # the CSS class of its polyline, e.g. "treatment"
    label: str  # the legend's text
    colour: str
    values: Sequence[float]  # [d] for day d = 0, 1, ...
    dashed: bool = False


def nice_ceiling(value: float) -> tuple[float, float]:
    """(top, step): a round top at or above `value`, with about five round steps under it."""
    if value <= 0:
        return 0.01, 0.002
    raw = value / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.ceil(value / step - 1e-9) * step, step


def share_by_day(series: Sequence[Series], days: int, *, title: str, description: str) -> str:
    top, step = nice_ceiling(max((v for s in series for v in s.values), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(day: float) -> float:
        return LEFT + plot_w * day / max(days, 1)

    def y(share: float) -> float:
        return TOP + plot_h * (1 - share / top)

    parts: list[str] = []
    for k in range(round(top / step) + 1):
        value = k * step
        parts.append(
            f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}" stroke="#e3e8ee"/>'
            f'<text x="{LEFT - 8}" y="{y(value) + 4:.1f}" text-anchor="end">{value * 100:g}%</text>'
        )
    day_step = 1 if days <= 14 else 2 if days <= 28 else 7 if days <= 98 else 30
    for day in range(0, days + 1, day_step):
        parts.append(
            f'<line x1="{x(day):.1f}" y1="{TOP}" x2="{x(day):.1f}" y2="{TOP + plot_h}" stroke="#eef1f4"/>'
            f'<text x="{x(day):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{day}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#59636e"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#59636e"/>'
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">Days since assignment</text>'
        f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        "Cumulative conversion</text>"
    )
    for s in series:
        coordinates = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in enumerate(s.values))
        parts.append(
            f'<polyline class="{html.escape(s.name)}" points="{coordinates}" fill="none" stroke="{s.colour}" '
            f'stroke-width="2.5"{_dash(s)}><title>{html.escape(s.label)}</title></polyline>'
        )
    # The legend sits above the plot, in a row, so no curve can run through it.
    lx = LEFT
    for s in reversed(series):
        parts.append(
            f'<line x1="{lx}" y1="18" x2="{lx + 28}" y2="18" stroke="{s.colour}" stroke-width="2.5"{_dash(s)}/>'
            f'<text x="{lx + 36}" y="22">{html.escape(s.label)}</text>'
        )
        lx += 36 + CHAR_WIDTH * len(s.label) + 28
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-size="12" '
        f'font-family="system-ui, sans-serif" fill="#1f2328"><title>{html.escape(title)}</title>'
        f"<desc>{html.escape(description)}</desc>" + "".join(parts) + "</svg>"
    )


def _dash(series: Series) -> str:
    return ' stroke-dasharray="6 4"' if series.dashed else ""
