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


def gather(console: Console, chosen: str | None) -> dict[str, Any]:
    runtime = console.runtime
    experiments = runtime.config.experiments
    key = chosen if chosen in experiments else next(iter(experiments), None)
    report: LiftReport | None = None
    if key is not None:
        report = lift_report(runtime.store, key, experiments[key])
    return {"keys": list(experiments), "key": key, "report": report}


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
    report: LiftReport = data["report"]
    body = render_fragment(report).replace("<h1>", '<h2 class="lift-title">', 1).replace("</h1>", "</h2>", 1)
    if not report.holdout.n and not report.treatment.n:
        body = (
            empty(
                f"Nobody is assigned to <code>{fmt.text(key)}</code> yet: people are assigned as loopwire first"
                " sees them (or as they enter the experiment's audience)."
            )
            + body
        )
    return f"<p>{tabs} · CLI: <code>loopwire lift --experiment {fmt.text(key)}</code></p>{body}"
