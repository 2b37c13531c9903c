"""Renders the console page from the status dict (no secrets: the status never contains any)."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f4f4f4}.dead{color:#a00}
"""


def render_console(status: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(dest)}{' (paused)' if dest in status.get('paused', ()) else ''}</td>"
        + "".join(
            f"<td>{states.get(s, 0)}</td>" for s in ("pending", "in_flight", "delivered", "skipped", "dead")
        )
        + "</tr>"
        for dest, states in sorted(status["destinations"].items())
    )
    reasons = "".join(
        f"<tr><td>{escape(r['destination'])}</td><td class=dead>{escape(r['reason'])}</td><td>{r['count']}</td></tr>"
        for r in status["dead_reasons"]
    )
    skips = "".join(
        f"<tr><td>{escape(r['destination'])}</td><td>{escape(r['reason'])}</td><td>{r['count']}</td></tr>"
        for r in status["skip_reasons"]
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>loopwire</title><style>{_STYLE}</style></head>"
        f"<body><h1>loopwire</h1><p>{status['events']} events in the log.</p>"
        "<h2>Destinations</h2><table><tr><th>destination</th><th>pending</th><th>in flight</th>"
        f"<th>delivered</th><th>skipped</th><th>dead</th></tr>{rows}</table>"
        "<h2>Dead letters by reason</h2><table><tr><th>destination</th><th>reason</th><th>events</th></tr>"
        f"{reasons}</table>"
        "<h2>Skipped by reason</h2><table><tr><th>destination</th><th>reason</th><th>events</th></tr>"
        f"{skips}</table><p><a href=/metrics>metrics</a> · <a href=/api/status>status JSON</a></p></body></html>"
    )
