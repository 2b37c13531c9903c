"""Lift of a journey over its holdout, intent-to-treat: everyone assigned counts in their group,
whether or not a message reached them.

A user converts if they have at least one conversion in [assigned_ms, assigned_ms + window_ms], both
ends included; their revenue is the sum of the revenue of their conversions in that window. The
formulas are in `stats.py`, their reasons in docs/lift.md. `compute` is one pass over the
assignments, one over the conversions and one over the exposures (standard library only: a million
users take about a second, see bench/lift_bench.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

from loopwire.analysis import stats
from loopwire.audiences.holdouts import Group, SrmResult, srm

DAY_MS = 86_400_000
# Channels in the order people say them ("sms + email"); any other channel follows, alphabetically.
CHANNEL_ORDER = ("sms", "email", "push", "in_app", "whatsapp", "webhook")
OBSERVATIONAL_NOTE = (
    "Observational, not causal: which messages a treated user received was not randomised (it depends on "
    "their consent, reachability and behaviour), so these rates compare different kinds of people, not the "
    "effect of each channel. Only the holdout comparison above measures what the journey caused."
)


class Assignment(msgspec.Struct, frozen=True):
    user_id: str
    group: Group
    assigned_ms: int


class Conversion(msgspec.Struct, frozen=True):
    user_id: str
    time_ms: int
    revenue: float = 0.0


class Interval(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    low: float
    high: float


class GroupStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group: Group
    n: int
    conversions: int  # users with at least one conversion in their window
    rate: float
    rate_interval: Interval  # Wilson score
    revenue: float  # in-window revenue of the group's users
    revenue_per_user: float
    cumulative: tuple[float, ...]  # [d] = share converted within d days of assignment, d = 0..window_days


class Lift(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    absolute: float  # treatment rate − holdout rate
    absolute_interval: Interval  # Newcombe hybrid score
    relative: float | None  # treatment rate / holdout rate − 1; None when the holdout never converted
    relative_interval: Interval | None  # delta method on the log ratio; None when either group has 0
    z: float
    p_value: float  # two-sided, pooled two-proportion z-test
    significant: bool  # p < 1 − confidence and the interval of the absolute lift excludes 0
    incremental_conversions: float  # absolute × treated users
    incremental_conversions_interval: Interval
    incremental_revenue: float  # (revenue per treated user − per holdout user) × treated users
    incremental_revenue_interval: Interval  # Welch, normal approximation


class Pattern(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pattern: str  # "none", "sms only", "sms + email", ...
    channels: tuple[str, ...]
    n: int
    share: float  # of the treated users
    conversions: int
    rate: float
    rate_interval: Interval
    revenue_per_user: float


class Breakdown(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    observational: bool
    note: str
    patterns: tuple[Pattern, ...]


class LiftReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    conversion_event: str
    confidence: float
    holdout_percent: float
    window_ms: int
    window_days: int
    holdout: GroupStats
    treatment: GroupStats
    lift: Lift | None  # None until both groups have users
    srm: SrmResult
    breakdown: Breakdown  # among treated users, by the channels that messaged them
    holdout_exposed: int  # holdout users some channel messaged anyway: the holdout leaks
    warnings: tuple[str, ...]


def pattern_label(channels: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """("sms + email", ("sms", "email")) for {"email", "sms"}; ("none", ()) for no channel."""
    ordered = tuple(sorted(set(channels), key=_channel_key))
    if not ordered:
        return "none", ordered
    if len(ordered) == 1:
        return f"{ordered[0]} only", ordered
    return " + ".join(ordered), ordered


def _channel_key(channel: str) -> tuple[int, str]:
    try:
        return (CHANNEL_ORDER.index(channel), channel)
    except ValueError:
        return (len(CHANNEL_ORDER), channel)


class _Side:
    """Running totals of one group, or of one exposure pattern."""

    __slots__ = ("converted", "n", "revenues")

    def __init__(self) -> None:
        self.n = 0
        self.converted = 0
        self.revenues: list[float] = []  # per converting user (everyone else has 0)

    def revenue(self) -> float:
        return math.fsum(self.revenues)

    def variance(self) -> float:
        """Sample variance of per-user revenue, zeros included, in two passes (no cancellation)."""
        if self.n < 2:
            return 0.0
        mean = self.revenue() / self.n
        spread = math.fsum((r - mean) ** 2 for r in self.revenues)
        spread += (self.n - len(self.revenues)) * mean * mean
        return spread / (self.n - 1)


def compute(
    assignments: Iterable[Assignment],
    conversions: Iterable[Conversion],
    exposures: Mapping[str, frozenset[str]],
    window_ms: int,
    holdout_percent: float,
    confidence: float = 0.95,
    *,
    name: str = "experiment",
    conversion_event: str = "Order Completed",
) -> LiftReport:
    """The lift report of one experiment. A user assigned twice keeps their earliest assignment; a
    user assigned to both groups is an error (the assignment is not deterministic upstream)."""
    if window_ms <= 0:
        raise ValueError(f"window_ms must be positive, got {window_ms!r}")
    z_crit = stats.z_for(confidence)
    srm_check = srm(0, 0, holdout_percent)  # validates the percentage before the work

    index: dict[str, int] = {}
    starts: list[int] = []
    treated: list[bool] = []
    for a in assignments:
        at = index.get(a.user_id)
        is_treated = a.group == "treatment"
        if not is_treated and a.group != "holdout":
            raise ValueError(f"user {a.user_id!r}: group must be 'holdout' or 'treatment', got {a.group!r}")
        if at is None:
            index[a.user_id] = len(starts)
            starts.append(a.assigned_ms)
            treated.append(is_treated)
        elif treated[at] != is_treated:
            raise ValueError(f"user {a.user_id!r} is assigned to both groups")
        elif a.assigned_ms < starts[at]:
            starts[at] = a.assigned_ms

    first: dict[int, int] = {}  # user index → ms from assignment to their first in-window conversion
    revenue: dict[int, float] = {}
    for c in conversions:
        at = index.get(c.user_id)
        if at is None:
            continue  # not in the experiment
        since = c.time_ms - starts[at]
        if 0 <= since <= window_ms:
            if not math.isfinite(c.revenue):
                raise ValueError(f"user {c.user_id!r}: revenue must be a finite number, got {c.revenue!r}")
            revenue[at] = revenue.get(at, 0.0) + c.revenue
            if since < first.get(at, window_ms + 1):
                first[at] = since

    window_days = -(-window_ms // DAY_MS)
    sides = {"holdout": _Side(), "treatment": _Side()}
    histogram = {"holdout": [0] * (window_days + 1), "treatment": [0] * (window_days + 1)}
    n_treated = sum(treated)
    sides["treatment"].n = n_treated
    sides["holdout"].n = len(treated) - n_treated
    for at, since in first.items():
        group = "treatment" if treated[at] else "holdout"
        side = sides[group]
        side.converted += 1
        side.revenues.append(revenue[at])
        histogram[group][-(-since // DAY_MS)] += 1

    holdout = _group_stats("holdout", sides["holdout"], histogram["holdout"], z_crit)
    treatment = _group_stats("treatment", sides["treatment"], histogram["treatment"], z_crit)
    srm_check = srm(holdout.n, treatment.n, holdout_percent)
    lift = _lift(sides["treatment"], sides["holdout"], confidence, z_crit)
    breakdown, holdout_exposed = _breakdown(
        index, treated, first, revenue, exposures, sides["treatment"], z_crit
    )
    return LiftReport(
        name=name,
        conversion_event=conversion_event,
        confidence=confidence,
        holdout_percent=holdout_percent,
        window_ms=window_ms,
        window_days=window_days,
        holdout=holdout,
        treatment=treatment,
        lift=lift,
        srm=srm_check,
        breakdown=breakdown,
        holdout_exposed=holdout_exposed,
        warnings=_warnings(holdout, treatment, lift, srm_check, holdout_exposed),
    )


def _group_stats(group: Group, side: _Side, histogram: list[int], z: float) -> GroupStats:
    n = side.n
    total = side.revenue()
    cumulative: list[float] = []
    running = 0
    for count in histogram:
        running += count
        cumulative.append(running / n if n else 0.0)
    low, high = stats.wilson(side.converted, n, z)
    return GroupStats(
        group=group,
        n=n,
        conversions=side.converted,
        rate=side.converted / n if n else 0.0,
        rate_interval=Interval(low, high),
        revenue=total,
        revenue_per_user=total / n if n else 0.0,
        cumulative=tuple(cumulative),
    )


def _lift(treatment: _Side, holdout: _Side, confidence: float, z_crit: float) -> Lift | None:
    nt, nh, xt, xh = treatment.n, holdout.n, treatment.converted, holdout.converted
    if nt == 0 or nh == 0:
        return None
    absolute = xt / nt - xh / nh
    low, high = stats.newcombe(xt, nt, xh, nh, z_crit)
    relative = (xt / nt) / (xh / nh) - 1.0 if xh else None
    ratio = stats.log_ratio(xt, nt, xh, nh, z_crit)
    z, p_value = stats.pooled_z(xt, nt, xh, nh)
    rpu_t, rpu_h = treatment.revenue() / nt, holdout.revenue() / nh
    rev_low, rev_high = stats.welch(rpu_t, treatment.variance(), nt, rpu_h, holdout.variance(), nh, z_crit)
    return Lift(
        absolute=absolute,
        absolute_interval=Interval(low, high),
        relative=relative,
        relative_interval=Interval(ratio[0] - 1.0, ratio[1] - 1.0) if ratio else None,
        z=z,
        p_value=p_value,
        significant=p_value < 1.0 - confidence and (low > 0 or high < 0),
        incremental_conversions=absolute * nt,
        incremental_conversions_interval=Interval(low * nt, high * nt),
        incremental_revenue=(rpu_t - rpu_h) * nt,
        incremental_revenue_interval=Interval(rev_low * nt, rev_high * nt),
    )


def _breakdown(
    index: Mapping[str, int],
    treated: list[bool],
    first: Mapping[int, int],
    revenue: Mapping[int, float],
    exposures: Mapping[str, frozenset[str]],
    everyone: _Side,
    z: float,
) -> tuple[Breakdown, int]:
    labels: dict[frozenset[str], tuple[str, tuple[str, ...]]] = {}
    by_pattern: dict[str, _Side] = {}
    channels_of: dict[str, tuple[str, ...]] = {}
    holdout_exposed = 0
    for user_id, channels in exposures.items():
        at = index.get(user_id)
        if at is None or not channels:
            continue  # not in the experiment, or messaged by no channel ("none", counted below)
        if not treated[at]:
            holdout_exposed += 1
            continue
        label = labels.get(channels)
        if label is None:
            label = labels[channels] = pattern_label(channels)
        side = by_pattern.get(label[0])
        if side is None:
            side = by_pattern[label[0]] = _Side()
            channels_of[label[0]] = label[1]
        side.n += 1
        if at in first:
            side.converted += 1
            side.revenues.append(revenue[at])
    none = _Side()  # the treated users no channel reached: what is left of the treated totals
    none.n = everyone.n - sum(s.n for s in by_pattern.values())
    none.converted = everyone.converted - sum(s.converted for s in by_pattern.values())
    none.revenues = [everyone.revenue() - math.fsum(s.revenue() for s in by_pattern.values())]
    ordered = sorted(
        by_pattern, key=lambda p: (len(channels_of[p]), [_channel_key(c) for c in channels_of[p]])
    )
    rows: list[tuple[str, tuple[str, ...], _Side]] = [("none", (), none)] if none.n else []
    rows += [(p, channels_of[p], by_pattern[p]) for p in ordered]
    patterns = tuple(
        Pattern(
            pattern=label,
            channels=channels,
            n=side.n,
            share=side.n / everyone.n,
            conversions=side.converted,
            rate=side.converted / side.n,
            rate_interval=Interval(*stats.wilson(side.converted, side.n, z)),
            revenue_per_user=side.revenue() / side.n,
        )
        for label, channels, side in rows
    )
    return Breakdown(observational=True, note=OBSERVATIONAL_NOTE, patterns=patterns), holdout_exposed


def _warnings(
    holdout: GroupStats, treatment: GroupStats, lift: Lift | None, check: SrmResult, holdout_exposed: int
) -> tuple[str, ...]:
    found: list[str] = []
    if check.mismatch:
        found.append(
            f"Sample ratio mismatch: {check.observed_holdout:,} users in the holdout where "
            f"{check.expected_holdout:,.0f} were expected (p = {check.p_value:.2g}). The assignment or the "
            "data is broken somewhere; do not trust the lift until that is explained."
        )
    if holdout_exposed:
        found.append(
            f"{holdout_exposed:,} holdout users received messages anyway: the holdout leaks, which shrinks "
            "the measured lift towards zero."
        )
    if lift is None:
        found.append("A lift needs users in both groups.")
    elif lift.relative_interval is None:
        found.append("The relative lift has no interval while a group has no conversions.")
    if min(holdout.n, treatment.n) > 0 and min(holdout.conversions, treatment.conversions) < 10:
        found.append("Fewer than 10 conversions in a group: the intervals are rough approximations.")
    return tuple(found)
