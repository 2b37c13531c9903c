"""The demo's report: what was sent, stored, delivered, skipped and dead-lettered, checked against
the scenario. `build_report` is pure (dicts in, dict out); `print_report` renders it with Rich."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from loopwire.demo.scenario import Scenario

DESTINATION = "amplitude"
SKIP_NOTE = (
    "These are the email-only people (identifiers.id is null, no device): like Customer.io's native "
    "integration, loopwire sends Amplitude nothing for a person with neither an id nor a device id."
)
STATES = ("delivered", "skipped", "dead", "pending", "in_flight")


def _strip(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if not k.startswith("_")}  # the sandbox's own bookkeeping


def _examples(events: list[dict[str, Any]], zero_id_emails: set[str]) -> list[dict[str, Any]]:
    """A human click, an Apple MPP open, and an event of a customer id "0" sent under their email."""
    picks: tuple[Callable[[dict[str, Any]], bool], ...] = (
        lambda e: e.get("event_type") == "Email Clicked",
        lambda e: (
            e.get("event_type") == "Email Opened" and e.get("event_properties", {}).get("prefetched") is True
        ),
        lambda e: e.get("user_id") in zero_id_emails,
    )
    found: list[dict[str, Any]] = []
    for pick in picks:
        event = next((e for e in events if pick(e) and e not in found), None)
        if event is not None:
            found.append(event)
    return [_strip(e) for e in found]


def build_report(
    scenario: Scenario,
    observed: dict[str, Any],
    *,
    seed: int,
    expected_dead: int,
    fault_note: str,
    folder: str | None,
    seconds: float,
) -> dict[str, Any]:
    expected = scenario.expected
    status = observed["status"]
    sent = observed["sent"]
    states = {s: int(status["destinations"].get(DESTINATION, {}).get(s, 0)) for s in STATES}
    sandbox_events: list[dict[str, Any]] = observed["sandbox_events"]
    holdout = [p for p in scenario.people if p.holdout]
    holdout_keys = {p.key for p in holdout}
    # The user_id each held-out person would have in Amplitude: their id, or their email for id "0".
    holdout_ids = {p.id for p in holdout if p.kind == "customer"} | {
        p.email for p in holdout if p.kind == "zero_id"
    }
    holdout_webhooks = sum(w.person in holdout_keys for w in scenario.webhooks)
    holdout_in_sandbox = sum(e.get("user_id") in holdout_ids for e in sandbox_events)
    settled = states["delivered"] + states["skipped"] + states["dead"]
    routed = settled + states["pending"] + states["in_flight"]
    checks = {
        "every webhook was answered 200": sent["refused"] == 0,
        "accepted = distinct events in the scenario": sent["accepted"] == expected.events,
        "duplicates = redeliveries in the scenario": sent["duplicates"] == expected.redeliveries,
        "the log holds each event once": status["events"] == expected.events,
        "every logged event was routed to amplitude": routed == status["events"],
        "delivery settled (nothing pending or in flight)": observed["settled"] and settled == routed,
        "skipped = the email-only people's events": states["skipped"] == expected.skipped,
        "dead-lettered = the one event the sandbox refused": states["dead"] == expected_dead,
        "Amplitude holds each delivered event once": len(sandbox_events) == states["delivered"],
        "the holdout received nothing": holdout_webhooks == 0 and holdout_in_sandbox == 0,
    }
    dead_letters = [
        {
            "event_id": d["event_id"],
            "event": f"{d['channel']} {d['metric']}",
            "attempts": d["attempts"],
            "reason": d["reason"],
            "response": (d["response"] or "")[:300],
        }
        for d in observed["dead_letters"]
    ]
    zero_id_emails = {p.email for p in scenario.people if p.kind == "zero_id"}
    return {
        "ok": all(checks.values()),
        "seconds": round(seconds, 2),
        "scenario": {
            "people": expected.people,
            "seed": seed,
            "holdout_people": expected.holdout,
            "customer_id_0_people": expected.zero_id_people,
            "email_only_people": expected.email_only_people,
            "events": expected.events,
            "machine_opens": expected.machine_opens,
            "events_by_kind": dict(sorted(expected.by_pair.items())),
        },
        "webhooks": {
            "sent": sent["sent"],
            "accepted": sent["accepted"],
            "duplicates": sent["duplicates"],
            "refused": sent["refused"],
            "refusals": sent["refusals"],
        },
        "log": {"events": status["events"]},
        "amplitude": {
            "routed": routed,
            **states,
            "retried": observed["retried"],
            "requests_by_status": observed["requests_by_status"],
            "skip_reasons": [r for r in status["skip_reasons"] if r["destination"] == DESTINATION],
            "dead_reasons": [r for r in status["dead_reasons"] if r["destination"] == DESTINATION],
            "dead_letters": dead_letters,
            "dead_letter_note": fault_note,
        },
        "sandbox": {
            "events": len(sandbox_events),
            "by_event_type": dict(Counter(str(e.get("event_type")) for e in sandbox_events).most_common()),
        },
        "holdout": {
            "people": len(holdout),
            "share": round(len(holdout) / max(1, expected.people), 3),
            "webhooks": holdout_webhooks,
            "events_in_sandbox": holdout_in_sandbox,
        },
        "examples": _examples(sandbox_events, zero_id_emails),
        "checks": checks,
        "folder": folder,
    }


def _table(title: str, rows: list[tuple[str, Any, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", justify="right")
    table.add_column()
    table.add_column(style="dim")
    for label, value, meaning in rows:
        table.add_row(str(value), label, meaning)
    return table


def print_report(console: Console, report: dict[str, Any]) -> None:
    hooks, amp, sandbox = report["webhooks"], report["amplitude"], report["sandbox"]
    holdout, scenario = report["holdout"], report["scenario"]
    console.print()
    inbound = [
        ("webhooks sent", hooks["sent"], "one event each, HMAC-SHA256 signed"),
        ("accepted", hooks["accepted"], "committed (fsync'd) before the 200"),
        ("duplicates", hooks["duplicates"], "event_id seen before: 200, kept once"),
        ("refused", hooks["refused"], "4xx: bad signature or body"),
        ("events in the log", report["log"]["events"], ""),
    ]
    console.print(_table("Customer.io → loopwire  (POST /webhooks/customerio)", inbound))
    for refusal, count in hooks["refusals"].items():
        console.print(f"  [red]refused {count}×[/red] {refusal}", highlight=False)
    console.print()
    outbound = [
        ("delivered", amp["delivered"], "accepted by Amplitude"),
        ("skipped", amp["skipped"], "Amplitude may not take them (why below)"),
        ("dead-lettered", amp["dead"], "refused for good; kept with the answer"),
        ("still pending", amp["pending"] + amp["in_flight"], "unsettled when the demo stopped"),
        ("retried", amp["retried"], "re-queued and sent again (see note)"),
    ]
    console.print(_table("loopwire → Amplitude  (the local sandbox, HTTP V2)", outbound))
    requests = ", ".join(f"{n}× {s}" for s, n in amp["requests_by_status"].items())
    console.print(f"  requests to Amplitude by HTTP status: {requests}", highlight=False)
    for row in amp["skip_reasons"]:
        console.print(f"  [yellow]skipped {row['count']}×[/yellow] {row['reason']}", highlight=False)
    if amp["skip_reasons"]:
        console.print(f"  [dim]{SKIP_NOTE}[/dim]", highlight=False)
    for row in amp["dead_reasons"]:
        console.print(f"  [red]dead {row['count']}×[/red] {row['reason']}", highlight=False)
    for letter in amp["dead_letters"]:
        console.print(f"  [dim]dead letter {letter['event_id']} ({letter['event']})[/dim]", highlight=False)
    console.print(f"  [dim]{amp['dead_letter_note']}[/dim]", highlight=False)
    console.print()
    by_type = Table(title=f"In Amplitude: {sandbox['events']} events", title_justify="left", box=None)
    by_type.add_column("event_type")
    by_type.add_column("events", justify="right")
    for event_type, count in sandbox["by_event_type"].items():
        by_type.add_row(event_type, str(count))
    console.print(by_type)
    console.print(
        f"  {scenario['machine_opens']} of the opens are Apple Mail Privacy Protection fetches"
        " (prefetched/proxied: true), sent as Customer.io sends them.",
        highlight=False,
    )
    console.print()
    console.print(
        f"[bold]Holdout[/bold]: {holdout['people']} of {scenario['people']} shoppers "
        f"({holdout['share']:.0%}, chosen from their id) got no message: {holdout['webhooks']} webhooks, "
        f"{holdout['events_in_sandbox']} events in Amplitude.",
        highlight=False,
    )
    if report["examples"]:
        console.print()
        console.print("[bold]Examples of delivered Amplitude events[/bold]")
        for example in report["examples"]:
            console.print_json(msgspec.json.encode(example).decode())
    console.print()
    for label, passed in report["checks"].items():
        mark = "[green]✓[/green]" if passed else "[red]✗[/red]"
        console.print(f"{mark} {label}", highlight=False)
    verdict = "[green]all checks passed[/green]" if report["ok"] else "[red]some checks failed[/red]"
    console.print(f"\n{verdict} in {report['seconds']:.1f} s", highlight=False)
    if report["folder"]:
        console.print(
            f"Kept in {report['folder']}: `set -a; . {report['folder']}/demo.env; set +a;"
            f" loopwire status --config {report['folder']}/demo.yaml`",
            highlight=False,
            markup=False,
        )
