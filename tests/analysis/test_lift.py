"""The lift report: the window, intent-to-treat counting, and every statistic against scipy/statsmodels;
the intervals' coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

from loopwire.analysis import stats
from loopwire.analysis.lift import (
    DAY_MS,
    OBSERVATIONAL_NOTE,
    Assignment,
    Conversion,
    LiftReport,
    compute,
    pattern_label,
)

T0 = 1_700_000_000_000
WINDOW = 14 * DAY_MS
Z95 = 1.959963984540054


def experiment(
    nh: int, xh: int, nt: int, xt: int, revenue: tuple[float, float] = (50.0, 60.0)
) -> tuple[list[Assignment], list[Conversion], np.ndarray, np.ndarray]:
    """nh holdout users of whom xh convert, nt treated of whom xt convert, with varied revenues.
    Returns the inputs and, independently, each group's per-user revenue array."""
    rng = np.random.default_rng(nh * 31 + xh * 7 + nt * 3 + xt)
    assignments: list[Assignment] = []
    conversions: list[Conversion] = []
    per_user = {"holdout": np.zeros(nh), "treatment": np.zeros(nt)}
    for group, n, x, mean in (("holdout", nh, xh, revenue[0]), ("treatment", nt, xt, revenue[1])):
        for k in range(n):
            user = f"{group}-{k}"
            assignments.append(Assignment(user, group, T0 + k))  # type: ignore[arg-type]
            if k < x:
                amount = round(float(rng.gamma(2.0, mean / 2.0)), 2)
                conversions.append(Conversion(user, T0 + k + int(rng.integers(0, WINDOW)), amount))
                per_user[group][k] = amount
    return assignments, conversions, per_user["holdout"], per_user["treatment"]


def run(nh: int, xh: int, nt: int, xt: int, **kwargs: object) -> LiftReport:
    a, c, _, _ = experiment(nh, xh, nt, xt)
    return compute(a, c, {}, WINDOW, 10.0, **kwargs)  # type: ignore[arg-type]


# ---- the window ------------------------------------------------------------------------------------


def test_only_conversions_inside_the_closed_window_count() -> None:
    assignments = [Assignment(u, "treatment", T0) for u in ("before", "at-start", "at-end", "after", "never")]
    assignments.append(Assignment("holdout-user", "holdout", T0))
    conversions = [
        Conversion("before", T0 - 1, 10.0),
        Conversion("at-start", T0, 20.0),
        Conversion("at-end", T0 + WINDOW, 30.0),
        Conversion("after", T0 + WINDOW + 1, 40.0),
    ]
    report = compute(assignments, conversions, {}, WINDOW, 10.0)
    assert report.treatment.n == 5 and report.treatment.conversions == 2
    assert report.treatment.revenue == 50.0
    assert report.holdout.n == 1 and report.holdout.conversions == 0


def test_a_user_converts_once_and_their_in_window_revenue_adds_up() -> None:
    assignments = [Assignment("u", "treatment", T0), Assignment("h", "holdout", T0)]
    conversions = [
        Conversion("u", T0 + DAY_MS, 10.0),
        Conversion("u", T0 + 2 * DAY_MS, 15.5),
        Conversion("u", T0 + WINDOW + 1, 1000.0),  # after the window: neither counted nor summed
        Conversion("stranger", T0, 99.0),  # never assigned: not in the experiment
    ]
    report = compute(assignments, conversions, {}, WINDOW, 50.0)
    assert report.treatment.conversions == 1 and report.treatment.revenue == 25.5
    assert report.treatment.revenue_per_user == 25.5
    assert report.holdout.revenue == 0.0


def test_a_user_assigned_twice_keeps_the_earliest_assignment() -> None:
    assignments = [Assignment("u", "treatment", T0 + 5 * DAY_MS), Assignment("u", "treatment", T0)]
    conversions = [Conversion("u", T0 + 15 * DAY_MS, 1.0)]  # inside the later window, outside the first
    report = compute([*assignments, Assignment("h", "holdout", T0)], conversions, {}, WINDOW, 50.0)
    assert report.treatment.n == 1 and report.treatment.conversions == 0


def test_a_user_in_both_groups_is_an_error() -> None:
    with pytest.raises(ValueError, match="both groups"):
        compute([Assignment("u", "treatment", T0), Assignment("u", "holdout", T0)], [], {}, WINDOW, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_ms": 0}, "window_ms"),
        ({"holdout_percent": 100.0}, "holdout_percent"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    arguments: dict[str, object] = {
        "window_ms": WINDOW,
        "holdout_percent": 10.0,
        "confidence": 0.95,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        compute([], [], {}, **arguments)  # type: ignore[arg-type]


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="group"):
        compute([Assignment("u", "control", T0)], [], {}, WINDOW, 10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        compute([Assignment("u", "holdout", T0)], [Conversion("u", T0, math.nan)], {}, WINDOW, 10.0)


def test_cumulative_conversion_by_day_since_assignment() -> None:
    assignments = [Assignment(f"t{k}", "treatment", T0) for k in range(4)]
    assignments += [Assignment(f"h{k}", "holdout", T0) for k in range(2)]
    conversions = [
        Conversion("t0", T0, 1.0),  # day 0: at the moment of assignment
        Conversion("t1", T0 + 1, 1.0),  # within 1 day
        Conversion("t1", T0 + 3 * DAY_MS, 1.0),  # a second conversion does not move t1
        Conversion("t2", T0 + 2 * DAY_MS, 1.0),  # exactly 2 days: within 2 days
        Conversion("h0", T0 + 3 * DAY_MS, 1.0),  # within 3 days (its earlier conversion is out of window)
        Conversion("h0", T0 - 1, 1.0),
    ]
    report = compute(assignments, conversions, {}, 3 * DAY_MS, 50.0)
    assert report.window_days == 3
    assert report.treatment.cumulative == (0.25, 0.5, 0.75, 0.75)
    assert report.holdout.cumulative == (0.0, 0.0, 0.0, 0.5)
    assert report.treatment.cumulative[-1] == report.treatment.rate


def test_a_window_of_partial_days_ends_the_curve_at_the_window() -> None:
    assignments = [Assignment("t", "treatment", T0), Assignment("h", "holdout", T0)]
    window = DAY_MS + DAY_MS // 2
    conversions = [Conversion("t", T0 + window, 1.0)]
    report = compute(assignments, conversions, {}, window, 50.0)
    assert report.window_days == 2
    assert report.treatment.cumulative == (0.0, 0.0, 1.0)


# ---- the exposure breakdown ------------------------------------------------------------------------


def test_pattern_labels_come_from_the_channel_sets() -> None:
    assert pattern_label(frozenset()) == ("none", ())
    assert pattern_label({"sms"}) == ("sms only", ("sms",))
    assert pattern_label({"email", "sms"}) == ("sms + email", ("sms", "email"))
    assert pattern_label({"push", "email", "sms"}) == ("sms + email + push", ("sms", "email", "push"))
    assert pattern_label({"pigeon", "email"}) == ("email + pigeon", ("email", "pigeon"))


def test_breakdown_among_treated_users_is_observational() -> None:
    assignments = [Assignment(f"t{k}", "treatment", T0) for k in range(10)]
    assignments += [Assignment(f"h{k}", "holdout", T0) for k in range(3)]
    exposures = {
        "t0": frozenset({"sms"}),
        "t1": frozenset({"sms"}),
        "t2": frozenset({"email", "sms"}),
        "t3": frozenset({"sms", "email"}),
        "t4": frozenset({"sms", "email", "push"}),
        "t5": frozenset(),  # an empty set is "none", like no entry at all
        "h0": frozenset({"email"}),  # a holdout user who was messaged anyway: a leak
        "outsider": frozenset({"sms"}),  # not in the experiment
    }
    conversions = [Conversion(u, T0 + 1, 10.0) for u in ("t0", "t2", "t3", "t6", "h1")]
    report = compute(assignments, conversions, exposures, WINDOW, 20.0)
    breakdown = report.breakdown
    assert breakdown.observational is True and breakdown.note == OBSERVATIONAL_NOTE
    assert "not causal" in breakdown.note
    rows = {p.pattern: (p.n, p.conversions, p.revenue_per_user) for p in breakdown.patterns}
    assert rows == {
        "none": (5, 1, 2.0),  # t5..t9; t6 converted
        "sms only": (2, 1, 5.0),
        "sms + email": (2, 2, 10.0),
        "sms + email + push": (1, 0, 0.0),
    }
    assert [p.pattern for p in breakdown.patterns] == [
        "none",
        "sms only",
        "sms + email",
        "sms + email + push",
    ]
    assert sum(p.n for p in breakdown.patterns) == report.treatment.n
    assert sum(p.share for p in breakdown.patterns) == pytest.approx(1.0)
    assert report.holdout_exposed == 1
    assert any("holdout users received messages" in w for w in report.warnings)


# ---- the statistics against independent implementations --------------------------------------------

DATASETS = [
    (2_000, 200, 18_000, 2_160),  # 10 % holdout, a real lift
    (1_000, 100, 1_000, 103),  # nothing to see
    (20_000, 2_000, 20_000, 2_400),  # the simulation's shape
    (40, 3, 360, 41),  # small counts
    (500, 60, 4_500, 450),  # a negative lift
]


@pytest.mark.parametrize(("nh", "xh", "nt", "xt"), DATASETS)
def test_statistics_agree_with_statsmodels_and_scipy(nh: int, xh: int, nt: int, xt: int) -> None:
    a, c, rev_h, rev_t = experiment(nh, xh, nt, xt)
    report = compute(a, c, {}, WINDOW, 100 * nh / (nh + nt))
    lift = report.lift
    assert lift is not None
    h, t = report.holdout, report.treatment
    assert (h.n, h.conversions, t.n, t.conversions) == (nh, xh, nt, xt)

    for group, x, n in ((h, xh, nh), (t, xt, nt)):
        low, high = proportion_confint(x, n, alpha=0.05, method="wilson")
        assert group.rate == x / n
        assert group.rate_interval.low == pytest.approx(low, abs=1e-9)
        assert group.rate_interval.high == pytest.approx(high, abs=1e-9)

    assert lift.absolute == pytest.approx(xt / nt - xh / nh, abs=1e-12)
    low, high = confint_proportions_2indep(xt, nt, xh, nh, method="newcomb", compare="diff", alpha=0.05)
    assert lift.absolute_interval.low == pytest.approx(low, abs=1e-9)
    assert lift.absolute_interval.high == pytest.approx(high, abs=1e-9)
    assert lift.incremental_conversions == pytest.approx((xt / nt - xh / nh) * nt, rel=1e-12)
    assert lift.incremental_conversions_interval.low == pytest.approx(low * nt, rel=1e-9)

    low, high = confint_proportions_2indep(xt, nt, xh, nh, method="log", compare="ratio", alpha=0.05)
    assert lift.relative == pytest.approx((xt / nt) / (xh / nh) - 1, rel=1e-12)
    assert lift.relative_interval is not None
    assert lift.relative_interval.low == pytest.approx(low - 1, abs=1e-9)
    assert lift.relative_interval.high == pytest.approx(high - 1, abs=1e-9)

    z, p_value = proportions_ztest([xt, xh], [nt, nh])
    assert lift.z == pytest.approx(z, rel=1e-9)
    assert lift.p_value == pytest.approx(p_value, rel=1e-6, abs=1e-15)
    chi2, p_chi2, _, _ = scipy_stats.chi2_contingency([[xt, nt - xt], [xh, nh - xh]], correction=False)
    assert lift.z**2 == pytest.approx(chi2, rel=1e-9)
    assert lift.p_value == pytest.approx(p_chi2, rel=1e-6, abs=1e-15)
    assert lift.significant == (p_value < 0.05 and not low <= 1 <= high)

    assert h.revenue == pytest.approx(rev_h.sum(), rel=1e-12)
    assert t.revenue_per_user == pytest.approx(rev_t.mean(), rel=1e-12)
    welch = scipy_stats.ttest_ind(rev_t, rev_h, equal_var=False)
    difference = rev_t.mean() - rev_h.mean()
    se = difference / welch.statistic
    z95 = scipy_stats.norm.ppf(0.975)
    assert lift.incremental_revenue == pytest.approx(difference * nt, rel=1e-9)
    assert lift.incremental_revenue_interval.low == pytest.approx((difference - z95 * se) * nt, rel=1e-9)
    assert lift.incremental_revenue_interval.high == pytest.approx((difference + z95 * se) * nt, rel=1e-9)

    reference = scipy_stats.chisquare(
        [nh, nt], [(nh + nt) * report.holdout_percent / 100, (nh + nt) * (1 - report.holdout_percent / 100)]
    )
    assert report.srm.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.99])
def test_other_confidence_levels_agree_too(confidence: float) -> None:
    report = run(2_000, 200, 18_000, 2_160, confidence=confidence)
    lift = report.lift
    assert lift is not None
    alpha = 1 - confidence
    low, high = proportion_confint(2_160, 18_000, alpha=alpha, method="wilson")
    assert report.treatment.rate_interval.low == pytest.approx(low, abs=1e-9)
    assert report.treatment.rate_interval.high == pytest.approx(high, abs=1e-9)
    low, high = confint_proportions_2indep(2_160, 18_000, 200, 2_000, method="newcomb", alpha=alpha)
    assert (lift.absolute_interval.low, lift.absolute_interval.high) == pytest.approx((low, high), abs=1e-9)
    assert stats.z_for(confidence) == pytest.approx(scipy_stats.norm.ppf(0.5 + confidence / 2), rel=1e-12)


def test_z_for_95_percent() -> None:
    assert stats.z_for(0.95) == pytest.approx(Z95, rel=1e-12)


def test_zero_conversions_leave_the_relative_interval_undefined() -> None:
    report = run(100, 0, 900, 12)
    lift = report.lift
    assert lift is not None and lift.relative is None and lift.relative_interval is None
    low, high = proportion_confint(0, 100, method="wilson")
    assert report.holdout.rate_interval.low == pytest.approx(low, abs=1e-12)
    assert report.holdout.rate_interval.high == pytest.approx(high, abs=1e-9)
    assert any("no interval" in w for w in report.warnings)
    both_zero = run(100, 0, 900, 0)
    assert both_zero.lift is not None and both_zero.lift.p_value == 1.0 and not both_zero.lift.significant


def test_no_users_in_a_group_means_no_lift() -> None:
    report = compute([Assignment("t", "treatment", T0)], [], {}, WINDOW, 10.0)
    assert report.lift is None and report.holdout.n == 0
    assert report.holdout.rate_interval.low == 0.0 and report.holdout.rate_interval.high == 1.0
    assert report.srm.mismatch is False  # one user is no evidence
    empty = compute([], [], {}, WINDOW, 10.0)
    assert empty.lift is None and empty.breakdown.patterns == ()


def test_a_skewed_split_is_flagged() -> None:
    report = run(3_000, 300, 17_000, 1_870)  # 15 % where 10 % was configured
    assert report.srm.mismatch
    assert report.warnings[0].startswith("Sample ratio mismatch")


# ---- coverage by simulation ------------------------------------------------------------------------


def coverage(
    nh: int, ph: float, nt: int, pt: float, runs: int = 1_000, seed: int = 20240601
) -> tuple[float, float]:
    """Share of `runs` simulated experiments whose 95 % intervals cover the true absolute and relative lift."""
    rng = np.random.default_rng(seed)
    xh = rng.binomial(nh, ph, runs)
    xt = rng.binomial(nt, pt, runs)
    z = stats.z_for(0.95)
    absolute = relative = 0
    for h, t in zip(xh.tolist(), xt.tolist(), strict=True):
        low, high = stats.newcombe(t, nt, h, nh, z)
        absolute += low <= pt - ph <= high
        ratio = stats.log_ratio(t, nt, h, nh, z)
        assert ratio is not None
        relative += ratio[0] <= pt / ph <= ratio[1]
    return absolute / runs, relative / runs


@pytest.mark.parametrize(
    ("nh", "ph", "nt", "pt"),
    [
        (20_000, 0.10, 20_000, 0.12),  # equal groups, a 2-point lift
        (2_000, 0.10, 18_000, 0.12),  # a 10 % holdout
        (1_000, 0.03, 9_000, 0.036),  # a rare conversion
    ],
)
def test_intervals_cover_the_true_lift_about_95_percent_of_the_time(
    nh: int, ph: float, nt: int, pt: float
) -> None:
    absolute, relative = coverage(nh, ph, nt, pt)
    assert 0.93 <= absolute <= 0.97, absolute
    assert 0.93 <= relative <= 0.97, relative


def test_the_simulated_intervals_are_the_reports_intervals() -> None:
    """The coverage simulation calls the formulas directly; here they meet `compute`'s output."""
    report = run(2_000, 200, 18_000, 2_160)
    assert report.lift is not None
    low, high = stats.newcombe(2_160, 18_000, 200, 2_000, stats.z_for(0.95))
    assert (report.lift.absolute_interval.low, report.lift.absolute_interval.high) == (low, high)
    ratio = stats.log_ratio(2_160, 18_000, 200, 2_000, stats.z_for(0.95))
    assert ratio is not None and report.lift.relative_interval is not None
    assert report.lift.relative_interval.low == ratio[0] - 1
