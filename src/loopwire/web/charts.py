"""Inline SVG line charts over time, drawn on the server: no script, nothing fetched, labels escaped.
The y axis rounds up with `analysis.chart.nice_ceiling`; the x axis is labelled in hours ago."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from loopwire.analysis.chart import nice_ceiling
from loopwire.web.format import count

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 50, 40
PALETTE = ("#2563eb", "#d9480f", "#1a7f37", "#8250df", "#9a6700", "#0b7285")

Points = Sequence[tuple[int, float]]  # (time ms, value), oldest first


def line_chart(
    title: str,
    series: Sequence[tuple[str, Points]],
    start_ms: int,
    end_ms: int,
    form: Callable[[float], str] = count,
    description: str = "",
) -> str:
    """One polyline per (label, points) between `start_ms` and `end_ms`."""
    span = max(end_ms - start_ms, 1)
    peak = max((v for _, points in series for _, v in points), default=0.0)
    top, step = nice_ceiling(peak) if peak > 0 else (1.0, 0.25)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(ms: int) -> float:
        return LEFT + plot_w * (ms - start_ms) / span

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts: list[str] = []
    for k in range(round(top / step) + 1):
        value = k * step
        parts.append(
            f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}" stroke="#e3e8ee"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{escape(form(value))}</text>'
        )
    hours = span / 3_600_000
    tick_h = next((t for t in (1, 2, 3, 6, 12, 24, 48, 168) if hours / t <= 8), 336)
    tick = 0.0
    while tick <= hours + 1e-9:
        at = end_ms - int(tick * 3_600_000)
        label = "now" if tick == 0 else f"−{tick:g} h" if tick < 48 else f"−{tick / 24:g} d"
        parts.append(
            f'<line x1="{x(at):.1f}" y1="{TOP}" x2="{x(at):.1f}" y2="{TOP + plot_h}" stroke="#eef1f4"/>'
            f'<text x="{x(at):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{label}</text>'
        )
        tick += tick_h
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#59636e"/>'
    )
    lx = float(LEFT)
    for index, (label, points) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        if points:
            coordinates = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
            parts.append(
                f'<polyline points="{coordinates}" fill="none" stroke="{colour}" stroke-width="2">'
                f"<title>{escape(label)}</title></polyline>"
            )
        parts.append(
            f'<line x1="{lx}" y1="32" x2="{lx + 20}" y2="32" stroke="{colour}" stroke-width="2.5"/>'
            f'<text x="{lx + 26}" y="36">{escape(label)}</text>'
        )
        lx += 26 + 7 * len(label) + 18
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-size="11" '
        f'font-family="system-ui, sans-serif" fill="#1f2328"><title>{escape(title)}</title>'
        f"<desc>{escape(description or title)}</desc>"
        f'<text x="{LEFT}" y="16" font-weight="600" font-size="13">{escape(title)}</text>'
        + "".join(parts)
        + "</svg>"
    )
