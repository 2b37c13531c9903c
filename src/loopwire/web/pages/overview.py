"""Overview: volume in (from the log) and out, failures, backlog and delivery latency per destination."""

from __future__ import annotations

from typing import Any

from loopwire.store import console as queries
from loopwire.web import format as fmt
from loopwire.web.charts import line_chart
from loopwire.web.context import Console
from loopwire.web.layout import cards, empty, table
from loopwire.web.trend import latency_quantiles

RANGES = {"24h": (24, 3_600_000), "7d": (7 * 24, 3_600_000)}  # buckets, bucket length


def gather(console: Console, span: str) -> dict[str, Any]:
    runtime = console.runtime
    now = console.now_ms()
    buckets, size = RANGES.get(span, RANGES["24h"])
    end = now - now % size + size  # the current bucket's end
    edges = [end - size * k for k in range(buckets, -1, -1)]
    received = queries.received_per_bucket(runtime.store, edges)
    status = runtime.status()
    return {
        "now": now,
        "span": span if span in RANGES else "24h",
        "status": status,
        "oldest": runtime.store.oldest_undelivered_ms(list(status["destinations"])),
        "volume_in": [(min(edge, now), float(n)) for edge, n in zip(edges[1:], received, strict=True)],
        "range": (edges[0], min(end, now)),
        "series": console.trend.series(),
        "samples": len(console.trend.samples),
        "interval": console.trend.interval,
        "started": console.trend.started_ms,
        "quantiles": latency_quantiles(runtime.metrics.registry, (0.5, 0.95)),
        "paused": sorted(runtime.paused),
    }


def render(data: dict[str, Any]) -> str:
    status, now = data["status"], data["now"]
    dests: dict[str, dict[str, int]] = status["destinations"]
    total = {
        s: sum(states.get(s, 0) for states in dests.values())
        for s in ("pending", "in_flight", "delivered", "dead", "skipped")
    }
    summary = cards(
        [
            ("events in the log", fmt.count(status["events"])),
            ("delivered", fmt.count(total["delivered"])),
            ("waiting (pending + in flight)", fmt.count(total["pending"] + total["in_flight"])),
            ("dead letters", f'<a href="/dead-letters">{fmt.count(total["dead"])}</a>'),
            ("skipped by the vendors' rules", fmt.count(total["skipped"])),
        ]
    )
    if not status["events"]:
        summary += empty(
            "The log is empty. Point Customer.io's reporting webhooks at <code>/webhooks/customerio</code>,"
            " your apps' Amplitude SDK at <code>/2/httpapi</code> or your Segment library at"
            " <code>/v1/*</code> (docs/configuration.md); or try <code>loopwire demo --keep DIR</code>."
        )
    span = data["span"]
    switch = " · ".join(
        f"<b>{key}</b>" if key == span else f'<a href="/?range={key}">{key}</a>' for key in ("24h", "7d")
    )
    start, end = data["range"]
    charts = [line_chart(f"Events in per hour ({span})", [("logged", data["volume_in"])], start, end)]
    series = data["series"]
    if data["samples"] < 2:
        sampled = empty(
            f"Delivery charts are sampled every {fmt.seconds(data['interval'])} while this server runs"
            f" (started {fmt.ago(data['started'], now)}): their first points appear within"
            f" {fmt.seconds(data['interval'])}. The table below is live."
        )
    else:
        first = min((p[0][0] for chart in series.values() for p in chart.values() if p), default=start)
        titles = (
            ("delivered", "Delivered per interval", fmt.count),
            ("failed", "Failures per interval (dead letters + retries)", fmt.count),
            ("backlog", "Backlog (pending + in flight)", fmt.count),
            ("latency", "Delivery latency, mean (receipt → delivered)", fmt.seconds),
        )
        for key, title, form in titles:
            lines = sorted(series[key].items())
            charts.append(line_chart(title, lines, first, now, form))
        sampled = f'<p class="muted">Delivery charts: sampled every {fmt.seconds(data["interval"])} since this server started {fmt.ago(data["started"], now)}.</p>'
    rows = []
    for dest, states in sorted(dests.items()):
        oldest = data["oldest"].get(dest)
        q = data["quantiles"].get(dest, {})
        state = (
            '<span class="warn">paused</span>'
            if dest in status["paused"]
            else '<span class="ok">sending</span>'
        )
        rows.append(
            [
                f'<a href="/destinations#{fmt.text(dest)}">{fmt.text(dest)}</a>',
                state,
                fmt.count(states.get("pending", 0)),
                fmt.count(states.get("in_flight", 0)),
                fmt.count(states.get("delivered", 0)),
                fmt.count(states.get("skipped", 0)),
                fmt.count(states.get("dead", 0)),
                fmt.seconds(max(0, now - oldest) / 1000) if oldest is not None else "—",
                f"{fmt.seconds(q[0.5])} / {fmt.seconds(q[0.95])}" if q else "—",
            ]
        )
    per_dest = (
        table(
            [
                "destination",
                "state",
                "pending",
                "in flight",
                "delivered",
                "skipped",
                "dead",
                "oldest waiting",
                "latency p50 / p95 ≤",
            ],
            rows,
            numeric=range(2, 9),
        )
        if rows
        else empty(
            "No destination is configured: add one under <code>destinations:</code> (docs/configuration.md)."
        )
    )
    reasons = [
        [
            fmt.text(r["destination"]),
            f'<a href="/dead-letters?reason={fmt.text(r["reason"])}&amp;destination={fmt.text(r["destination"])}">{fmt.text(r["reason"])}</a>',
            fmt.count(r["count"]),
        ]
        for r in status["dead_reasons"][:10]
    ]
    skips = [
        [fmt.text(r["destination"]), fmt.text(r["reason"]), fmt.count(r["count"])]
        for r in status["skip_reasons"][:10]
    ]
    return (
        summary
        + f"<p>Range: {switch}</p>"
        + f'<div class="charts">{"".join(charts)}</div>'
        + sampled
        + "<h2>Destinations</h2>"
        + per_dest
        + "<h2>Dead letters by reason</h2>"
        + (
            table(["destination", "reason", "events"], reasons, numeric=[2])
            if reasons
            else empty("No dead letters.")
        )
        + "<h2>Skipped by reason</h2>"
        + (
            table(["destination", "reason", "events"], skips, numeric=[2])
            if skips
            else empty("Nothing was skipped.")
        )
        + '<p class="muted"><a href="/api/status">status JSON</a> · <a href="/metrics">metrics</a> · <a href="/openapi.json">OpenAPI</a></p>'
    )
