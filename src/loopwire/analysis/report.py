"""A LiftReport three ways: a Rich renderable for the terminal, JSON, and one self-contained HTML page.

The HTML page needs no network: its CSS is inline, its chart is an inline SVG drawn here, and a
Content-Security-Policy forbids it to load anything. Every string that came from a user (experiment
name, conversion event, channel names) is escaped; the terminal table puts them in `Text` objects,
which Rich never parses as markup.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import msgspec
from rich.console import Group
from rich.table import Table
from rich.text import Text

from loopwire.analysis.chart import Series, share_by_day
from loopwire.analysis.lift import GroupStats, Interval, LiftReport

HOLDOUT_COLOUR = "#7c8591"
TREATMENT_COLOUR = "#2563eb"


# ---- words and numbers ----------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{value:.2%}" if abs(value) < 0.01 else f"{value:.1%}"


def points(value: float) -> str:
    """A difference of proportions in percentage points, signed: "+2.0 pts"."""
    text = f"{value * 100:+.1f} pts" if abs(value) >= 0.001 else f"{value * 100:+.2f} pts"
    return text.replace("-", "−")


def signed_pct(value: float) -> str:
    return f"{value:+.1%}".replace("-", "−")


def count(value: float) -> str:
    return f"{round(value):,}".replace("-", "−")


def money(value: float) -> str:
    return f"{round(value, 2) + 0.0:,.2f}".replace("-", "−")  # + 0.0: no "−0.00"


def p_text(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.3f}" if p_value < 0.01 else f"p = {p_value:.2f}"


def span(interval: Interval, form: Callable[[float], str] | None = None) -> str:
    """ "120–340"; "−12 to 340" or "+1.1 to +2.7 pts" when a bound carries a sign (a dash would read
    as a minus)."""
    form = form or count
    low, high = form(interval.low), form(interval.high)
    if low.startswith(("+", "−")) or high.startswith(("+", "−")):
        unit = high.rpartition(" ")[2] if " " in high else ""
        if unit and low.endswith(" " + unit):
            low = low.removesuffix(" " + unit)
        return f"{low} to {high}"
    return f"{low}–{high}"


def noun(report: LiftReport) -> str:
    return (
        "orders" if "order" in report.conversion_event.lower() else f"“{report.conversion_event}” conversions"
    )


def headline(report: LiftReport) -> str:
    """One plain sentence that says what the experiment shows, and how sure it is."""
    level = f"{report.confidence:.0%}"
    lift, t, h = report.lift, report.treatment, report.holdout
    prefix = "Sample ratio mismatch, so treat these figures as suspect. " if report.srm.mismatch else ""
    if lift is None:
        return (
            f"{prefix}Not enough data yet: {h.n:,} users in the holdout and {t.n:,} in treatment; "
            "a lift needs users in both groups."
        )
    rates = f"{pct(t.rate)} of treated users converted vs {pct(h.rate)} in the holdout"
    if lift.significant and lift.absolute > 0:
        return (
            f"{prefix}The journey caused an estimated {count(lift.incremental_conversions)} more {noun(report)} "
            f"({level} CI {span(lift.incremental_conversions_interval)}) among {t.n:,} treated users: "
            f"{rates} ({points(lift.absolute)}), {p_text(lift.p_value)}."
        )
    if lift.significant:
        return (
            f"{prefix}The journey cost an estimated {count(-lift.incremental_conversions)} {noun(report)} "
            f"({level} CI {span(Interval(-lift.incremental_conversions_interval.high, -lift.incremental_conversions_interval.low))}) "
            f"among {t.n:,} treated users: {rates} ({points(lift.absolute)}), {p_text(lift.p_value)}."
        )
    return (
        f"{prefix}No detectable lift: {rates} ({points(lift.absolute)}, {level} CI "
        f"{span(lift.absolute_interval, points)}), {p_text(lift.p_value)}. The data is consistent with no "
        "effect, and cannot rule out an effect anywhere in that interval."
    )


def _group_name(group: GroupStats) -> str:
    return "Treatment" if group.group == "treatment" else "Holdout"


def _srm_sentence(report: LiftReport) -> str:
    s = report.srm
    verdict = (
        "MISMATCH: the split is not what was configured"
        if s.mismatch
        else "the split matches the configuration"
    )
    return (
        f"Sample ratio check: {s.observed_holdout:,} users in the holdout, {s.expected_holdout:,.0f} "
        f"expected at {report.holdout_percent:g} % (χ² = {s.chi2:.2f}, p = {s.p_value:.3g}; flagged below "
        f"{s.threshold:g}): {verdict}."
    )


# ---- terminal ------------------------------------------------------------------------------------


def render_table(report: LiftReport) -> Group:
    level = f"{report.confidence:.0%}"
    groups = Table(title=Text(f"Lift: {report.name}"), title_justify="left")
    for column in ("group", "users", "converted", f"rate ({level} CI)", "revenue", "revenue / user"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for g in (report.holdout, report.treatment):
        groups.add_row(
            _group_name(g),
            f"{g.n:,}",
            f"{g.conversions:,}",
            f"{pct(g.rate)} ({pct(g.rate_interval.low)}–{pct(g.rate_interval.high)})",
            money(g.revenue),
            money(g.revenue_per_user),
        )
    parts: list[Any] = [Text(headline(report), style="bold"), groups]
    lift = report.lift
    if lift is not None:
        table = Table(title=f"Lift, intent-to-treat ({level} intervals)", title_justify="left")
        table.add_column("measure")
        table.add_column("estimate", justify="right")
        table.add_column("interval", justify="right")
        table.add_row("absolute lift", points(lift.absolute), span(lift.absolute_interval, points))
        if lift.relative is not None:
            relative_span = span(lift.relative_interval, signed_pct) if lift.relative_interval else "—"
            table.add_row("relative lift", signed_pct(lift.relative), relative_span)
        table.add_row(
            f"incremental {noun(report)}",
            count(lift.incremental_conversions),
            span(lift.incremental_conversions_interval),
        )
        table.add_row(
            "incremental revenue",
            money(lift.incremental_revenue),
            span(lift.incremental_revenue_interval, money),
        )
        table.add_row("two-sided p-value", p_text(lift.p_value), "")
        parts.append(table)
    parts.append(Text(_srm_sentence(report), style="red" if report.srm.mismatch else ""))
    breakdown = Table(
        title="Exposure patterns among treated users: OBSERVATIONAL, NOT CAUSAL",
        caption=Text(report.breakdown.note),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("pattern", "users", "share", "converted", f"rate ({level} CI)", "revenue / user"):
        breakdown.add_column(column, justify="left" if column == "pattern" else "right")
    for p in report.breakdown.patterns:
        breakdown.add_row(
            Text(p.pattern),
            f"{p.n:,}",
            pct(p.share),
            f"{p.conversions:,}",
            f"{pct(p.rate)} ({pct(p.rate_interval.low)}–{pct(p.rate_interval.high)})",
            money(p.revenue_per_user),
        )
    parts.append(breakdown)
    parts.extend(Text(f"Warning: {w}", style="yellow") for w in report.warnings)
    return Group(*parts)


# ---- JSON ----------------------------------------------------------------------------------------


def to_json(report: LiftReport) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(report)
    return data


def from_json(data: dict[str, Any]) -> LiftReport:
    return msgspec.convert(data, LiftReport)


# ---- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#fff;margin:0}
main{max-width:60rem;margin:0 auto;padding:2rem 1.5rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.meta{color:#59636e;margin:0 0 1rem}
.headline{font-size:1.15rem;font-weight:600;border-left:4px solid #2563eb;padding:.5rem 1rem;background:#f3f6fd}
.warning{border-left:4px solid #d97706;background:#fff7e6;padding:.5rem 1rem;margin:.5rem 0}
.mismatch{border-left-color:#dc2626;background:#fdeeee}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .6rem;border-bottom:1px solid #d1d9e0;text-align:right}
th:first-child,td:first-child{text-align:left}
th{font-weight:600;background:#f6f8fa}
.observational{border:2px dashed #d97706;border-radius:6px;padding:0 1rem 1rem;margin-top:2rem}
.badge{display:inline-block;background:#d97706;color:#fff;font-size:.75rem;font-weight:700;
letter-spacing:.04em;padding:.1rem .5rem;border-radius:3px;text-transform:uppercase}
.chart{width:100%;height:auto;max-width:45rem}
.method{color:#59636e;font-size:.9rem}
"""


def render_html(report: LiftReport) -> str:
    name = html.escape(report.name)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Lift: {name}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
{render_fragment(report)}</main>
</body>
</html>
"""


def render_fragment(report: LiftReport) -> str:
    """The report's body (headline, groups, lift, chart, sample ratio, breakdown, method) without a
    page around it: `render_html` wraps it, the console shows it in its own page."""
    e = html.escape
    level = f"{report.confidence:.0%}"
    name = e(report.name)
    window_days = report.window_ms / 86_400_000
    meta = (
        f"Conversion: <b>{e(report.conversion_event)}</b> within {window_days:g} days of assignment · "
        f"holdout {report.holdout_percent:g} % · {level} intervals · intent-to-treat"
    )
    warnings = "".join(
        f'<p class="warning{" mismatch" if w.startswith("Sample ratio") else ""}">{e(w)}</p>'
        for w in report.warnings
    )
    rows = "".join(
        f"<tr><td>{_group_name(g)}</td><td>{g.n:,}</td><td>{g.conversions:,}</td><td>{pct(g.rate)}</td>"
        f"<td>{pct(g.rate_interval.low)}–{pct(g.rate_interval.high)}</td><td>{money(g.revenue)}</td>"
        f"<td>{money(g.revenue_per_user)}</td></tr>"
        for g in (report.holdout, report.treatment)
    )
    groups = (
        "<table><thead><tr><th>Group</th><th>Users</th><th>Converted</th><th>Rate</th>"
        f"<th>{level} CI</th><th>Revenue</th><th>Revenue / user</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return f"""<h1>Lift: {name}</h1>
<p class="meta">{meta}</p>
<p class="headline">{e(headline(report))}</p>
{warnings}
<h2>Groups</h2>
{groups}
{_lift_html(report)}
<h2>Cumulative conversion by day since assignment</h2>
{chart_svg(report)}
<h2>Sample ratio</h2>
<p>{e(_srm_sentence(report))}</p>
{_breakdown_html(report)}
<h2>Method</h2>
<p class="method">Intent-to-treat: every assigned user counts in their group, whether or not a message
reached them. Rates: Wilson score intervals. Absolute lift: Newcombe's hybrid score interval. Relative
lift: delta method on the log of the ratio. p-value: two-sided two-proportion z-test (pooled).
Incremental revenue: Welch normal approximation. A user converts with at least one
{e(report.conversion_event)} from the moment of assignment to {window_days:g} days after it.</p>
"""


def _lift_html(report: LiftReport) -> str:
    lift = report.lift
    if lift is None:
        return ""
    level = f"{report.confidence:.0%}"
    rows = [
        ("Absolute lift", points(lift.absolute), span(lift.absolute_interval, points)),
        (
            "Relative lift",
            signed_pct(lift.relative) if lift.relative is not None else "—",
            span(lift.relative_interval, signed_pct) if lift.relative_interval else "—",
        ),
        (
            f"Incremental {noun(report)}",
            count(lift.incremental_conversions),
            span(lift.incremental_conversions_interval),
        ),
        (
            "Incremental revenue",
            money(lift.incremental_revenue),
            span(lift.incremental_revenue_interval, money),
        ),
        ("Two-sided p-value", p_text(lift.p_value), ""),
    ]
    body = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in rows
    )
    return (
        f"<h2>Lift (intent-to-treat)</h2><table><thead><tr><th>Measure</th><th>Estimate</th>"
        f"<th>{level} CI</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _breakdown_html(report: LiftReport) -> str:
    e = html.escape
    level = f"{report.confidence:.0%}"
    rows = "".join(
        f"<tr><td>{e(p.pattern)}</td><td>{p.n:,}</td><td>{pct(p.share)}</td><td>{p.conversions:,}</td>"
        f"<td>{pct(p.rate)}</td><td>{pct(p.rate_interval.low)}–{pct(p.rate_interval.high)}</td>"
        f"<td>{money(p.revenue_per_user)}</td></tr>"
        for p in report.breakdown.patterns
    )
    flag = "true" if report.breakdown.observational else "false"
    return f"""<section class="observational" data-observational="{flag}">
<h2>Exposure patterns among treated users <span class="badge">Observational, not causal</span></h2>
<p>{e(report.breakdown.note)}</p>
<table><thead><tr><th>Channels that messaged the user</th><th>Users</th><th>Share</th><th>Converted</th>
<th>Rate</th><th>{level} CI</th><th>Revenue / user</th></tr></thead><tbody>{rows}</tbody></table>
</section>"""


# ---- the chart -----------------------------------------------------------------------------------


def chart_svg(report: LiftReport) -> str:
    series = [
        Series(
            name=g.group,
            label=f"{_group_name(g)} ({g.n:,} users, {pct(g.rate)})",
            colour=colour,
            values=g.cumulative,
            dashed=g.group == "holdout",
        )
        for g, colour in ((report.holdout, HOLDOUT_COLOUR), (report.treatment, TREATMENT_COLOUR))
    ]
    description = (
        f"Share of each group converted within each day since assignment, days 0 to {report.window_days}: "
        f"the holdout reaches {pct(report.holdout.rate)}, treatment {pct(report.treatment.rate)}."
    )
    return share_by_day(
        series,
        report.window_days,
        title="Cumulative conversion by day since assignment",
        description=description,
    )
