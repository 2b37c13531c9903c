"""The lift inputs, read from the store: who was assigned where, who converted, who was messaged."""

from __future__ import annotations

from loopwire.analysis.lift import Assignment, Conversion, LiftReport, compute
from loopwire.audiences.evaluate import properties
from loopwire.audiences.holdouts import Experiment
from loopwire.model import decode_event
from loopwire.store import Store
from loopwire.store import experiments as queries


def _number(value: object) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def lift_report(
    store: Store,
    experiment_id: str,
    experiment: Experiment,
    conversion: str | None = None,
    window_ms: int | None = None,
) -> LiftReport:
    """Intent-to-treat lift of one experiment from what the log holds (see docs/lift.md)."""
    conversion = conversion or experiment.conversion
    window_ms = window_ms or experiment.window_ms
    rows = queries.assignments(store, experiment_id)
    assignments = [Assignment(user_id, group, at) for user_id, group, at in rows]  # type: ignore[arg-type]
    since = min((at for _, _, at in rows), default=0)
    conversions = []
    for user_id, time_ms, body in queries.events_named(store, conversion, since):
        revenue = _number(properties(decode_event(body)).get(experiment.revenue_property))
        conversions.append(Conversion(user_id, time_ms, revenue))
    exposures = {
        user: frozenset(channels) for user, channels in queries.channels_reached(store, since).items()
    }
    return compute(
        assignments,
        conversions,
        exposures,
        window_ms,
        experiment.holdout_percent,
        name=experiment.name,
        conversion_event=conversion,
    )
