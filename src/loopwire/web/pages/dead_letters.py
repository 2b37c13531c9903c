"""Dead letters: filter by destination and reason, inspect one (the vendor's answer and the event as
logged), replay one or every one that matches (`loopwire dlq list|replay` in the browser)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from loopwire.store import console as queries
from loopwire.web import format as fmt
from loopwire.web.context import Console
from loopwire.web.layout import button_form, empty, table

LIMIT = 100


def gather(console: Console, dest: str | None, reason: str | None, event: str | None) -> dict[str, Any]:
    store = console.runtime.store
    reasons = [(d, r, n) for d, r, n in store.reasons("dead")]
    inspected = None
    if event:
        rows = [r for r in queries.dead_letters(store, dest, None, LIMIT) if r["event_id"] == event]
        body = queries.event_body(store, event)
        inspected = {
            "row": rows[0] if rows else None,
            "event": json.dumps(msgspec.json.decode(body), indent=2, ensure_ascii=False) if body else None,
            "id": event,
        }
    return {
        "now": console.now_ms(),
        "destinations": sorted(console.runtime.config.destinations),
        "reasons": reasons,
        "dest": dest,
        "reason": reason,
        "rows": queries.dead_letters(store, dest, reason, LIMIT),
        "inspected": inspected,
    }


def _options(values: list[str], chosen: str | None, everything: str) -> str:
    items = [f'<option value="">{everything}</option>'] + [
        f'<option value="{fmt.text(v)}"{" selected" if v == chosen else ""}>{fmt.text(v)}</option>'
        for v in values
    ]
    return "".join(items)


def render(data: dict[str, Any], csrf: str) -> str:
    now, dest, reason = data["now"], data["dest"], data["reason"]
    total = sum(
        n for d, r, n in data["reasons"] if (dest is None or d == dest) and (reason is None or r == reason)
    )
    reason_names = sorted({r for d, r, _ in data["reasons"] if dest is None or d == dest})
    filters = (
        '<form method="get" action="/dead-letters" class="filters">'
        f'<label>Destination <select name="destination">{_options(data["destinations"], dest, "every destination")}</select></label> '
        f'<label>Reason <select name="reason">{_options(reason_names, reason, "every reason")}</select></label> '
        "<button type=submit>Filter</button></form>"
    )
    parts = [filters]
    inspected = data["inspected"]
    if inspected is not None:
        row = inspected["row"]
        if row is None:
            parts.append(
                f'<div class="notice">Event {fmt.text(inspected["id"])} is not a dead letter (any more): it may have been replayed.</div>'
            )
        else:
            parts.append(
                f'<section class="inspect"><h2>Event {fmt.text(row["event_id"])} → {fmt.text(row["destination"])}</h2>'
                f"<p>Dead {fmt.moment(row['dead_ms'], now)} after {fmt.count(row['attempts'])} attempt(s): {fmt.text(row['reason'])}</p>"
                f"<h3>The vendor's answer</h3><pre>{fmt.text(row['response'] or 'no answer (refused before sending, or no response)')}</pre>"
                + button_form(
                    "/api/dead-letters/replay",
                    csrf,
                    "Replay this event",
                    {"destination": row["destination"], "event_id": row["event_id"]},
                    "primary",
                )
                + "</section>"
            )
        if inspected["event"]:
            parts.append(
                f"<details open><summary>The event as logged</summary><pre>{fmt.text(inspected['event'])}</pre></details>"
            )
    rows = data["rows"]
    if not rows:
        parts.append(
            empty(
                "No dead letters"
                + (" match this filter." if dest or reason else ".")
                + " When a destination refuses an event for good (a permanent 4xx, or retries past"
                " <code>retry.max_age</code>), it lands here with the vendor's answer; fix the cause, then replay it."
            )
        )
        return "".join(parts)
    fields = {k: v for k, v in (("destination", dest), ("reason", reason)) if v}
    scope = " of " + " with ".join(fmt.text(v) for v in fields.values()) if fields else ""
    parts.append(
        f"<p>{fmt.count(total)} dead letter(s){scope}; the newest {fmt.count(len(rows))} are listed. "
        + button_form(
            "/api/dead-letters/replay",
            csrf,
            f"Replay all {fmt.count(total)}",
            {**fields, "all": "1"},
            "primary",
        )
        + "</p>"
    )
    table_rows = []
    for r in rows:
        label = f"{r['channel'] or ''} {r['metric'] or r['name'] or r['kind']}".strip()
        link = f"/dead-letters?destination={fmt.text(r['destination'])}&amp;event={fmt.text(r['event_id'])}"
        who = (
            f'<a href="/person?key={fmt.text(r["user_id"])}">{fmt.text(r["user_id"])}</a>'
            if r["user_id"]
            else '<span class="muted">—</span>'
        )
        table_rows.append(
            [
                fmt.text(r["destination"]),
                f'<a href="{link}">{fmt.text(r["event_id"])}</a>',
                fmt.text(label),
                who,
                fmt.count(r["attempts"]),
                fmt.moment(r["dead_ms"], now),
                fmt.text(r["reason"]),
                button_form(
                    "/api/dead-letters/replay",
                    csrf,
                    "Replay",
                    {"destination": r["destination"], "event_id": r["event_id"]},
                ),
            ]
        )
    parts.append(
        table(
            ["destination", "event id", "event", "person", "attempts", "dead", "reason", ""],
            table_rows,
            numeric=[4],
        )
    )
    return "".join(parts)
