"""Numbers and times for people: 1,234; 1.2 M; 3 min ago; 240 ms. Everything user-given is escaped."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape


def count(value: float) -> str:
    """1,234 under a million; 1.2 M, 3.4 B above."""
    n = round(value)
    for limit, unit in ((1_000_000_000, "B"), (1_000_000, "M")):
        if abs(n) >= limit:
            return f"{n / limit:.1f} {unit}".replace(".0 ", " ")
    return f"{n:,}"


def share(value: float) -> str:
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.2%}"


def seconds(value: float) -> str:
    """240 ms; 1.2 s; 4 min; 3.5 h; 2 days."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s".replace(".0 ", " ")
    if value < 3600:
        return f"{value / 60:.0f} min"
    if value < 86400 * 2:
        return f"{value / 3600:.1f} h".replace(".0 ", " ")
    return f"{value / 86400:.0f} days"


def ago(ms: int | None, now_ms: int) -> str:
    """Relative time: "just now", "42 s ago", "5 min ago", "in 3 min"."""
    if ms is None:
        return "never"
    delta = (now_ms - ms) / 1000
    if abs(delta) < 2:
        return "just now"
    text = seconds(abs(delta)).replace(" ms", " ms")
    return f"{text} ago" if delta > 0 else f"in {text}"


def when(ms: int) -> str:
    """The absolute UTC time, e.g. for a title attribute."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def moment(ms: int | None, now_ms: int) -> str:
    """A relative time with the absolute one on hover."""
    if ms is None:
        return "never"
    return f'<time datetime="{escape(datetime.fromtimestamp(ms / 1000, UTC).isoformat())}" title="{when(ms)}">{ago(ms, now_ms)}</time>'


def text(value: object) -> str:
    return escape("" if value is None else str(value))
