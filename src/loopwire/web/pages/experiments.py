"""Experiments: each holdout experiment's lift report (intent-to-treat, with its chart), as
`loopwire lift` computes it."""

from __future__ import annotations

from typing import Any

from loopwire.analysis.inputs import lift_report
from loopwire.analysis.lift import LiftReport
from loopwire.analysis.report import render_fragment
from loopwire.web import format as fmt
from loopwire.web.context import Console
from loopwire.web.layout import empty


def compute(console: Console, key: str) -> LiftReport:
    """The lift of one experiment, from the store (run in a thread by the console's LiftCache)."""
    runtime = console.runtime
    return lift_report(runtime.store, key, runtime.config.experiments[key])


def pick(console: Console, chosen: str | None) -> str | None:
    experiments = console.runtime.config.experiments
    return chosen if chosen in experiments else next(iter(experiments), None)


def gather(console: Console, key: str | None, found: tuple[int, float, LiftReport] | None) -> dict[str, Any]:
    return {
        "keys": list(console.runtime.config.experiments),
        "key": key,
        "found": found,
        "now": console.now_ms(),
    }


def render(data: dict[str, Any]) -> str:
    key = data["key"]
    if key is None:
        return empty(
            "No experiments are configured. Add a holdout under <code>experiments:</code> (docs/lift.md):"
            " loopwire assigns people deterministically, exports the group to every destination, and"
            " reports here whether the journey caused the conversions."
        )
    tabs = " · ".join(
        f"<b>{fmt.text(k)}</b>" if k == key else f'<a href="/experiments?id={fmt.text(k)}">{fmt.text(k)}</a>'
        for k in data["keys"]
    )
    if data["found"] is None:
        return f"<p>{tabs}</p>" + empty(
            "Computing the lift report: it reads every conversion and message of the experiment's window."
            " This page reloads itself in a few seconds."
        )
    computed, took, report = data["found"]
    age = (
        f'<p class="muted">Computed {fmt.moment(computed, data["now"])} in {fmt.seconds(took)}; recomputed'
        " in the background at most once a minute while this page is viewed.</p>"
    )
    body = render_fragment(report).replace("<h1>", '<h2 class="lift-title">', 1).replace("</h1>", "</h2>", 1)
    if not report.holdout.n and not report.treatment.n:
        body = (
            empty(
                f"Nobody is assigned to <code>{fmt.text(key)}</code> yet: people are assigned as loopwire first"
                " sees them (or as they enter the experiment's audience)."
            )
            + body
        )
    return f"<p>{tabs} · CLI: <code>loopwire lift --experiment {fmt.text(key)}</code></p>{age}{body}"
