"""Audiences: size now and over the last week, the definition, its version history, and the newest
entries and exits (read from loopwire's own entered/exited events in the log, by name)."""

from __future__ import annotations

import json
from typing import Any

from loopwire.audiences.definitions import event_names
from loopwire.audiences.engine import history_of
from loopwire.audiences.versions import canonical_json, changes
from loopwire.store import console as queries
from loopwire.web import format as fmt
from loopwire.web.charts import line_chart
from loopwire.web.context import Console
from loopwire.web.layout import cards, empty, table

WEEK_MS = 7 * 86_400_000


def gather(console: Console, chosen: str | None) -> dict[str, Any]:
    runtime = console.runtime
    audiences = runtime.config.audiences
    now = console.now_ms()
    name = chosen if chosen in audiences else next(iter(audiences), None)
    data: dict[str, Any] = {"now": now, "names": list(audiences), "name": name}
    if name is None:
        return data
    definition = audiences[name]
    entered, exited = event_names(name, definition)
    hourly, recent = queries.audience_changes(runtime.store, name, entered, exited, now - WEEK_MS)
    size = queries.audience_size(runtime.store, name)
    # size at the end of each hour: today's size less the net change after that hour
    curve: list[tuple[int, float]] = []
    after = sum(n_in - n_out for _, n_in, n_out in hourly)
    level = size - after
    curve.append((now - WEEK_MS, float(max(level, 0))))
    for hour, n_in, n_out in hourly:
        level += n_in - n_out
        curve.append((min(hour + 3_600_000, now), float(max(level, 0))))
    curve.append((now, float(size)))
    records = history_of(runtime.store, name)
    data.update(
        definition=json.dumps(json.loads(canonical_json(definition)), indent=2),
        description=definition.description or "",
        version=definition.version,
        size=size,
        curve=curve,
        week_in=sum(r[1] for r in hourly),
        week_out=sum(r[2] for r in hourly),
        recent=recent,
        history=[
            (
                r.version,
                r.recorded_ms,
                changes(records[i - 1].definition_json, r.definition_json) if i else ["first recorded"],
            )
            for i, r in enumerate(records)
        ],
    )
    return data


def render(data: dict[str, Any]) -> str:
    if data["name"] is None:
        return empty(
            "No audiences are defined. Declare one under <code>audiences:</code> in the config (a rule, or"
            " <code>library: cart_abandoners</code>; see docs/audiences.md) and restart <code>loopwire serve</code>:"
            " loopwire computes its membership from the log and syncs it to every destination."
        )
    now, name = data["now"], data["name"]
    tabs = " · ".join(
        f"<b>{fmt.text(n)}</b>" if n == name else f'<a href="/audiences?name={fmt.text(n)}">{fmt.text(n)}</a>'
        for n in data["names"]
    )
    summary = cards(
        [
            ("members now", fmt.count(data["size"])),
            ("version", fmt.count(data["version"])),
            ("entered in 7 days", fmt.count(data["week_in"])),
            ("exited in 7 days", fmt.count(data["week_out"])),
        ]
    )
    chart = line_chart(f"{name}: members over 7 days", [("members", data["curve"])], now - WEEK_MS, now)
    history = (
        table(
            ["version", "recorded", "what changed"],
            [
                [fmt.count(v), fmt.moment(at, now), "<br>".join(fmt.text(line) for line in lines)]
                for v, at, lines in reversed(data["history"])
            ],
        )
        if data["history"]
        else empty("No version recorded yet: versions are recorded when <code>loopwire serve</code> starts.")
    )
    recent = (
        table(
            ["person", "change", "when", "event id"],
            [
                [
                    f'<a href="/person?key={fmt.text(user)}">{fmt.text(user)}</a>',
                    f'<span class="{"ok" if change == "entered" else "warn"}">{change}</span>',
                    fmt.moment(at, now),
                    fmt.text(event_id),
                ]
                for user, change, at, event_id in data["recent"]
            ],
        )
        if data["recent"]
        else empty(
            "Nobody has entered or left this audience yet: changes appear as the engine reads events that qualify."
        )
    )
    description = f"<p>{fmt.text(data['description'])}</p>" if data["description"] else ""
    return (
        f"<p>{tabs}</p><h2>{fmt.text(name)}</h2>{description}{summary}{chart}"
        f"<h2>Newest entries and exits</h2>{recent}<h2>Version history</h2>{history}"
        f"<h2>Definition (version {fmt.count(data['version'])})</h2><pre>{fmt.text(data['definition'])}</pre>"
    )
