"""Identity: what breaks attribution (one email on several user ids, one user id with several emails,
people without the primary identifier, device and anonymous ids never tied to a user) and each
destination's match rate, from `loopwire.identity.report` (the graph's tallies; a few rows)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from loopwire import identity
from loopwire.web import format as fmt
from loopwire.web.context import Console
from loopwire.web.layout import cards, empty, table

EXAMPLES = 20
PROBLEMS = {
    "email_on_many_users": (
        "One email on several user ids",
        "The same address signed up or was imported twice: its events split between people, so"
        " lift and audiences count it as two.",
    ),
    "user_with_many_emails": (
        "One user id with several emails",
        "A user changed their address, or ids are reused: destinations that match by email see strangers.",
    ),
    "without_primary": (
        "People without the primary identifier",
        "They can be messaged or measured, but not attributed to a known person.",
    ),
    "untied_anonymous": (
        "Device and anonymous ids never tied to a user",
        "Sessions nobody identified: their behaviour counts for no one.",
    ),
}


def gather(console: Console) -> dict[str, Any]:
    runtime = console.runtime
    return {"report": identity.report(runtime.store, runtime.config, examples=EXAMPLES)}


def _member(label: str) -> str:
    kind, _, value = label.partition(":")
    if kind in ("user_id", "email"):
        return f'<a href="/person?key={quote(value, safe="")}">{fmt.text(label)}</a>'
    return fmt.text(label)


def render(data: dict[str, Any]) -> str:
    report: identity.IdentityReport = data["report"]
    if not report.enabled:
        return empty(
            "The identity graph is off (<code>identity.graph: false</code> in the config): set it to true and"
            " restart <code>loopwire serve</code> to see who is split across ids (docs/identity.md)."
        )
    parts = []
    if report.lag_events:
        parts.append(
            f'<div class="notice">{fmt.count(report.lag_events)} logged events are not in the graph yet:'
            " the counts below grow as it catches up.</div>"
        )
    if not report.people:
        parts.append(
            empty(
                "Nobody is in the identity graph yet. It is built from the log as events arrive: send a few"
                " (or run <code>loopwire demo --keep DIR</code>) and come back."
            )
        )
    parts.append(
        cards(
            [
                ("people", fmt.count(report.people)),
                *((PROBLEMS[key][0], fmt.count(getattr(report, key))) for key in PROBLEMS),
            ]
        )
    )
    parts.append(f"<p>Primary identifier: <code>{fmt.text(report.primary)}</code>.</p>")
    rates = [
        [fmt.text(dest), fmt.share(rate), fmt.count(report.matched.get(dest, 0))]
        for dest, rate in sorted(report.match_rates.items())
    ]
    parts.append("<h2>Match rate per destination</h2>")
    parts.append(
        '<p class="muted">The share of people carrying what the destination needs to match them (a user id,'
        " an email, a device id, …).</p>"
        + table(["destination", "match rate", "people it can reach"], rates, numeric=[1, 2])
        if rates
        else empty("No destination is configured.")
    )
    for key, (title, why) in PROBLEMS.items():
        groups = report.examples.get(key, [])
        parts.append(
            f"<h2>{fmt.text(title)}: {fmt.count(getattr(report, key))}</h2><p class=muted>{fmt.text(why)}</p>"
        )
        if groups:
            parts.append(
                table(
                    ["identifiers seen together"],
                    [[" · ".join(_member(label) for label in group)] for group in groups],
                )
            )
        else:
            parts.append('<p class="ok">None.</p>')
    kinds = [[fmt.text(k), fmt.count(n)] for k, n in sorted(report.identifiers.items())]
    if kinds:
        parts.append(
            "<h2>Identifiers in the graph</h2>" + table(["kind", "distinct values"], kinds, numeric=[1])
        )
    return "".join(parts)
