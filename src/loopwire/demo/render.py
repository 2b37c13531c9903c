"""The demo's report as tables (Rich): what came in, what went out, what each vendor holds, the checks,
and last the lift report (loopwire's own table) beside the lift the scenario was built with."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loopwire.analysis.report import from_json, pct, points, render_table, signed_pct, span
from loopwire.demo import wiring

INPUTS = (
    ("customerio_webhooks", "Customer.io webhooks", "signed, one event each"),
    ("segment_api", "storefront: Segment lib", "the official Segment Python library"),
    ("amplitude_api", "app: Amplitude SDK", "the official Amplitude Python SDK"),
)
TITLES = {
    wiring.AMPLITUDE: "→ amplitude  (the Amplitude sandbox, HTTP V2)",
    wiring.CUSTOMERIO: "→ customerio  (the Customer.io sandbox, Track API v2 batch)",
    wiring.SEGMENT: "→ segment  (the Segment sandbox, HTTP Tracking API)",
}
EXAMPLE_VALUE_CHARS = 150  # the table shows the start of long values; --json has them whole


def _counts(counts: dict[str, int]) -> str:
    return escape(" · ".join(f"{name} {n}" for name, n in counts.items()) or "nothing")


def _table(title: str, headers: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 1))
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    return table


def _line(console: Console, text: str) -> None:
    console.print(text, highlight=False)


def print_report(console: Console, report: dict[str, Any]) -> None:
    scenario, inputs, dests = report["scenario"], report["inputs"], report["destinations"]
    console.print()
    ins = _table(
        "IN: what came into loopwire", ("source", "sent", "accepted", "duplicates", "refused", "failed")
    )
    for key, label, _ in INPUTS:
        row = inputs[key]
        failed = str(row["failed"]) if "failed" in row else "-"
        ins.add_row(label, *(str(row[k]) for k in ("sent", "accepted", "duplicates", "refused")), failed)
    console.print(ins)
    for key, label, client in INPUTS:
        _line(console, f"  [dim]{label} → {inputs[key]['endpoint']} ({client})[/dim]")
    by_source = ", ".join(f"{source} {n}" for source, n in report["log"]["by_source"].items())
    _line(console, f"  the log holds {report['log']['events']} events, each once ({by_source})")
    _line(
        console,
        "  [dim]accepted: committed (fsync'd) before the answer; duplicates: an id already in the log,"
        " kept once; failed: given up by the library[/dim]",
    )
    for key, _, _ in INPUTS:
        row = inputs[key]
        for problem, count in {**row.get("refusals", {}), **row.get("errors", {})}.items():
            _line(console, f"  [red]{key}: {count}×[/red] {escape(problem)}")
    console.print()
    outs = _table(
        "OUT: what loopwire delivered",
        ("destination", "routed", "delivered", "skipped", "dead", "pending", "retried"),
    )
    for name, dest in dests.items():
        pending = dest["pending"] + dest["in_flight"]
        cells = (dest["routed"], dest["delivered"], dest["skipped"], dest["dead"], pending, dest["retried"])
        outs.add_row(f"→ {name}", *(str(c) for c in cells))
    console.print(outs)
    _line(
        console,
        "  [dim]routed: the events its route takes; retried: rows sent again after a retryable answer[/dim]",
    )
    for name, dest in dests.items():
        console.print()
        _destination(console, name, dest, scenario["machine_opens"])
    console.print()
    holdout = report["holdout"]
    _line(
        console,
        f"[bold]Holdout[/bold]: {holdout['people']} of {scenario['people']} shoppers ({holdout['share']:.0%},"
        f" chosen from their id) got no message: {holdout['webhooks']} webhooks,"
        f" {holdout['engagement_in_amplitude']} engagement events in Amplitude,"
        f" {holdout['engagement_in_segment']} in Segment. Their shopping still flows:"
        f" {holdout['checkouts_in_customerio']} checkouts in Customer.io, {holdout['orders']} orders placed on their own.",
    )
    _line(
        console,
        f"[bold]Orders[/bold]: {scenario['orders']} placed, {scenario['orders_after_a_click']} after a message"
        f" click (UTM campaign in context.campaign), {scenario['orders_on_their_own']} on their own,"
        f" {scenario['orders_by_guests']} by guests.",
    )
    if report["examples"]:
        console.print()
        _line(console, "[bold]One example per flow[/bold], as the receiving side got it (whole in --json)")
        for flow, example in report["examples"].items():
            console.print(_example(flow, example))
    console.print()
    for label, passed in report["checks"].items():
        mark = "[green]✓[/green]" if passed else "[red]✗[/red]"
        _line(console, f"{mark} {escape(label)}")
    verdict = "[green]all checks passed[/green]" if report["ok"] else "[red]some checks failed[/red]"
    _line(console, f"\n{verdict} in {report['seconds']:.1f} s")
    if report["folder"]:
        console.print(
            f"Kept in {report['folder']}: `set -a; . {report['folder']}/demo.env; set +a;"
            f" loopwire status --config {report['folder']}/demo.yaml`",
            highlight=False,
            markup=False,
        )
    _lift(console, report["lift"])


def _lift(console: Console, lift: dict[str, Any]) -> None:
    """loopwire's lift report, then the true lift the scenario was built with, side by side."""
    console.print()
    assigned, true = lift["assigned"], lift["true"]
    _line(console, "[bold]Did the journey cause the orders?[/bold]")
    placeholder = (
        ' Treatment includes the id "0" that the zero-id profiles share: loopwire assigns every id it'
        " sees, and this one never converts (those shoppers check out as guests)."
        if lift["placeholder_ids"]
        else ""
    )
    _line(
        console,
        escape(
            f"loopwire's experiment {lift['experiment']} holds out {lift['holdout_percent']:g} % of user ids"
            f" (salt {lift['salt']}), each assigned {lift['assigned_at']}: {assigned['holdout']} held out,"
            f" {assigned['treatment']} treated.{placeholder} The report, as `loopwire lift` prints it:"
        ),
    )
    console.print(render_table(from_json(lift["report"])))
    console.print()
    _line(
        console,
        f"[bold]True lift[/bold], as the scenario was built: {escape(true['how'])}. Holdout"
        f" {pct(true['holdout_rate'])}, treated {pct(true['treated_rate'])}: {points(true['absolute_lift'])}"
        f" ({signed_pct(true['relative_lift'])}).",
    )
    held, treated = true["sample"]["holdout"], true["sample"]["treatment"]
    line = (
        f"This sample: {held['converted']} of {held['users']} held-out users bought ({pct(held['rate'])}),"
        f" {treated['converted']} of {treated['users']} treated ({pct(treated['rate'])})"
    )
    report = from_json(lift["report"])
    if report.lift is not None:
        verdict = (
            "[green]covers the true lift[/green]"
            if lift["estimate"]["covers_true_lift"]
            else "[yellow]misses the true lift[/yellow], as a 95 % interval does about one run in 20"
        )
        line += (
            f": {points(treated['rate'] - held['rate'])}, and loopwire's estimate is that"
            f" difference. Its 95 % interval, {span(report.lift.absolute_interval, points)}, {verdict}."
        )
    else:
        line += ". A lift needs people in both groups: run the demo with more people."
    _line(console, line)
    if report.lift is not None:
        _line(
            console,
            f"[dim]With {held['users']} people held out, chance moves the holdout's rate a long way, and"
            " the interval says so: `--people 2000` narrows it. The exposure patterns are observational:"
            " who got which message was not randomised.[/dim]",
        )
    if lift["html"]:
        console.print(
            f"HTML report (self-contained, opens offline): {lift['html']}", highlight=False, markup=False
        )


def _destination(console: Console, name: str, dest: dict[str, Any], machine_opens: int) -> None:
    box = dest["sandbox"]
    _line(console, f"[bold]{TITLES[name]}[/bold]")
    requests = ", ".join(f"{n}× {status}" for status, n in dest["requests_by_status"].items())
    _line(console, f"  requests by HTTP status: {requests or 'none'}")
    if name == wiring.AMPLITUDE:
        _line(console, f"  holds {box['events']} events: {_counts(box['by_event_type'])}")
        _line(
            console,
            f"  {box['from_the_app_unchanged']} of the {box['from_the_app']} app events it holds are"
            " byte for byte what the SDK sent",
        )
        _line(
            console,
            f"  {machine_opens} of the opens are Apple Mail Privacy Protection fetches (prefetched,"
            " proxied: true), sent as Customer.io sends them",
        )
    elif name == wiring.CUSTOMERIO:
        plans = _counts(box["people_by_plan"])
        _line(console, f"  holds {box['people']} people (plan: {plans})")
        _line(console, f"  and {box['events']} events: {_counts(box['events_by_name'])}")
        _line(console, f"  operations received: {_counts(box['operations_by_action'])}")
    else:
        _line(console, f"  holds {box['messages']} calls: {_counts(box['by_event'])}")
        if box["dropped"]:
            _line(
                console, f"  [red]dropped {box['dropped']} messages[/red] (Segment would lose them silently)"
            )
    for row in dest["skip_reasons"]:
        _line(console, f"  [yellow]skipped {row['count']}×[/yellow] {escape(row['reason'])}")
    if dest["skip_reasons"] and "skip_note" in dest:
        _line(console, f"  [dim]{escape(dest['skip_note'])}[/dim]")
    for row in dest["dead_reasons"]:
        _line(console, f"  [red]dead {row['count']}×[/red] {escape(row['reason'])}")
    for letter in dest["dead_letters"]:
        _line(console, f"  [dim]dead letter {letter['event_id']} ({escape(letter['event'])})[/dim]")
    _line(console, f"  [dim]{escape(dest['note'])}[/dim]")


def _example(flow: str, example: dict[str, Any]) -> Table:
    table = Table(
        title=flow, title_justify="left", title_style="cyan", show_header=False, box=None, padding=(0, 1)
    )
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in example.items():
        text = msgspec.json.encode(value).decode()
        if len(text) > EXAMPLE_VALUE_CHARS:
            text = text[: EXAMPLE_VALUE_CHARS - 1] + "…"
        table.add_row(f"  {key}", text)
    return table
