"""A person: everything loopwire knows and sent about one user id or email — the identifiers the
identity graph ties together (`loopwire.identity.person`), profile traits, audiences and holdout
groups, and each event with its delivery state per destination (the seeds' "validate with a known
test profile")."""

from __future__ import annotations

from typing import Any

from loopwire import identity
from loopwire.audiences.engine import profile_of
from loopwire.model import Event, decode_event
from loopwire.store import console as queries
from loopwire.web import format as fmt
from loopwire.web.context import Console
from loopwire.web.layout import cards, empty, table

LIMIT = 200
PROFILE_USERS = 3  # the profile, audiences and holdout groups of at most this many of the person's user ids


def gather(console: Console, key: str) -> dict[str, Any]:
    runtime = console.runtime
    now = console.now_ms()
    data: dict[str, Any] = {
        "now": now,
        "key": key,
        "found": False,
        "dests": sorted(runtime.config.destinations),
    }
    if not key:
        return data
    found = identity.person(runtime.store, runtime.config, key, LIMIT)
    if found is None:
        return data
    users = found.identifiers.get("user_id", [])[:PROFILE_USERS]
    bodies = [row[8] for user in users for row in queries.person_events(runtime.store, user, LIMIT)]
    events: list[Event] = sorted((decode_event(body) for body in bodies), key=lambda e: e.time_ms)
    data.update(
        found=True,
        in_graph=found.in_graph,
        identifiers=found.identifiers,
        profile=profile_of(events),
        audiences={u: queries.memberships(runtime.store, u, list(runtime.config.audiences)) for u in users},
        groups={
            u: queries.person_assignments(runtime.store, u, list(runtime.config.experiments)) for u in users
        },
        events=found.events,
        limited=len(found.events) >= LIMIT,
    )
    return data


def _state(found: identity.DeliveryState | None, now: int) -> str:
    if found is None:
        return '<span class="muted">not routed</span>'
    state, note = found.state, found.reason or ""
    title = f' title="{fmt.text(note)}"' if note else ""
    when = f" {fmt.ago(found.updated_ms, now)}" if state in ("delivered", "dead") else ""
    tries = f" · {found.attempts} tries" if found.attempts > 1 else ""
    reason = f'<br><span class="muted">{fmt.text(note)}</span>' if note and state != "delivered" else ""
    return f'<span class="pill {fmt.text(state)}"{title}>{fmt.text(state.replace("_", " "))}</span>{when}{tries}{reason}'


def render(data: dict[str, Any]) -> str:
    key, now = data["key"], data["now"]
    search = (
        '<form method="get" action="/person"><label>User id or email <input name="key" size="40" '
        f'value="{fmt.text(key)}" placeholder="e.g. cust_000123 or ada@example.com"></label> <button type=submit class="primary">Look up</button></form>'
    )
    if not key:
        return search + empty(
            "Type the user id or email of a known test profile to see every event loopwire logged for them and what it"
            " sent to each destination. Person links on the dead letters and audiences pages land here too."
        )
    if not data["found"]:
        hint = (
            " Looking a person up by email needs the identity graph; search by their user id."
            if "@" in key
            else " Check the id's spelling, or send an event for them (a Customer.io webhook, a Segment or Amplitude call)."
        )
        return search + empty(
            f"loopwire has logged nothing for the user id <code>{fmt.text(key)}</code>.{hint}"
        )
    dests: list[str] = data["dests"]
    events = data["events"]
    per_dest = []
    for dest in dests:
        states = [e.deliveries[dest].state for e in events if dest in e.deliveries]
        per_dest.append((dest, {s: states.count(s) for s in set(states)}))
    summary = cards(
        [
            (
                "events (newest " + fmt.count(len(events)) + ")" if data["limited"] else "events",
                fmt.count(len(events)),
            )
        ]
        + [
            (
                f"{dest}: delivered / waiting / dead / skipped",
                " / ".join(
                    fmt.count(c.get(s, 0) + (c.get("in_flight", 0) if s == "pending" else 0))
                    for s in ("delivered", "pending", "dead", "skipped")
                ),
            )
            for dest, c in per_dest
        ]
    )
    ids = table(
        ["identifier", "values"],
        [[fmt.text(k), "<br>".join(fmt.text(v) for v in vs)] for k, vs in data["identifiers"].items()],
    )
    profile = (
        table(
            ["trait", "value"],
            [[f"<code>{fmt.text(k)}</code>", fmt.text(v)] for k, v in sorted(data["profile"].items())],
        )
        if data["profile"]
        else '<p class="muted">No traits or user properties seen.</p>'
    )
    memberships = [
        [
            fmt.text(user),
            fmt.text(a),
            '<span class="ok">member</span>' if member else '<span class="muted">not a member</span>',
            f"v{version}",
            fmt.moment(since, now),
        ]
        for user, found in sorted(data["audiences"].items())
        for a, (member, version, since) in sorted(found.items())
    ]
    groups = [
        [fmt.text(user), fmt.text(x), fmt.text(g), fmt.moment(at, now)]
        for user, found in sorted(data["groups"].items())
        for x, (g, at) in sorted(found.items())
    ]
    timeline = table(
        ["when", "source", "event", "event id", *dests],
        [
            [
                fmt.moment(e.time_ms, now),
                fmt.text(e.source),
                fmt.text(e.key),
                f"<code>{fmt.text(e.event_id)}</code>",
                *(_state(e.deliveries.get(d), now) for d in dests),
            ]
            for e in events
        ],
    )
    return (
        search
        + f"<h2>{fmt.text(key)}</h2>"
        + summary
        + "<h2>Identifiers seen together</h2>"
        + ids
        + (
            ""
            if data["in_graph"]
            else '<p class="muted">Found by user id in the log: the identity graph has not read this person yet.</p>'
        )
        + "<h2>Audiences</h2>"
        + (
            table(["user id", "audience", "membership", "version", "since"], memberships)
            if memberships
            else '<p class="muted">In no audience.</p>'
        )
        + "<h2>Holdout experiments</h2>"
        + (
            table(["user id", "experiment", "group", "assigned"], groups)
            if groups
            else '<p class="muted">Not assigned to any experiment.</p>'
        )
        + "<h2>Profile</h2>"
        + profile
        + "<h2>Events and what each destination got</h2>"
        + timeline
    )
