"""Holdout assignment is a pure function of (salt, user id): the same everywhere, at the configured
share; the SRM check flags a split that is not what was configured."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import msgspec
import pytest
from scipy import stats

from loopwire.audiences.holdouts import DEFAULT_WINDOW, Experiment, assign, bucket, srm, threshold
from loopwire.settings import Duration, dec_hook

IDS = [f"user-{n}" for n in range(100_000)]


def reference_group(user_id: str, salt: str, percent: float) -> str:
    """The documented rule, written independently: a fraction of 2**64 against millionths of a percent."""
    position = int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big")
    share = Fraction(round(percent * 1_000_000), 100 * 1_000_000)
    return "holdout" if Fraction(position, 2**64) < share else "treatment"


def test_bucket_is_the_first_eight_bytes_of_sha256_big_endian() -> None:
    # Pinned: changing the hash, the separator or the byte order would reshuffle every live holdout.
    assert bucket("user-1", "cart_abandon_v1") == 4300093545933944764
    assert bucket("user-2", "cart_abandon_v1") == 10920122269813323936
    assert bucket("ada@example.com", "winback_q3") == 5544329802722769617
    assert assign("user-1", "cart_abandon_v1", 23.32) == "holdout"  # 4300093545933944764 / 2**64 = 0.2331...
    assert assign("user-1", "cart_abandon_v1", 23.31) == "treatment"


@pytest.mark.parametrize("percent", [0.5, 5, 10, 33.333333, 50, 99.9])
def test_assign_follows_the_documented_rule(percent: float) -> None:
    for user_id in [*IDS[:5_000], "", "ünïcødé", "0", "user:with:colons"]:
        assert assign(user_id, "salt-1", percent) == reference_group(user_id, "salt-1", percent)


def test_threshold_edges_are_exact() -> None:
    t = threshold(10.0)
    assert t == -(-(10_000_000 << 64) // 100_000_000)
    assert (t - 1) * 100_000_000 < 10_000_000 * 2**64 <= t * 100_000_000


def test_same_ids_same_groups_in_another_process() -> None:
    ids = IDS[:3_000]
    here = [assign(u, "cart_abandon_v1", 10.0) for u in ids]
    program = (
        "import json, sys\n"
        "from loopwire.audiences.holdouts import assign\n"
        "ids = json.load(sys.stdin)\n"
        "print(json.dumps([assign(u, 'cart_abandon_v1', 10.0) for u in ids]))\n"
    )
    for seed in ("0", "12345"):  # a different str hash seed must not matter
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps(ids),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert json.loads(done.stdout) == here


@pytest.mark.parametrize(("percent", "salt"), [(10.0, "cart_abandon_v1"), (5.0, "winback_q3"), (50.0, "x")])
def test_observed_split_matches_the_configured_share(percent: float, salt: str) -> None:
    n = len(IDS)
    holdout = sum(assign(u, salt, percent) == "holdout" for u in IDS)
    p = percent / 100
    assert abs(holdout - n * p) < 4 * math.sqrt(n * p * (1 - p))
    assert not srm(holdout, n - holdout, percent).mismatch


def test_raising_the_percentage_only_moves_users_into_the_holdout() -> None:
    at_5 = {u for u in IDS[:20_000] if assign(u, "s", 5) == "holdout"}
    at_10 = {u for u in IDS[:20_000] if assign(u, "s", 10) == "holdout"}
    assert at_5 < at_10


def test_a_new_salt_draws_an_independent_holdout() -> None:
    first = {u for u in IDS if assign(u, "v1", 10) == "holdout"}
    second = {u for u in IDS if assign(u, "v2", 10) == "holdout"}
    expected = len(IDS) * 0.01  # both holdouts by chance
    assert abs(len(first & second) - expected) < 4 * math.sqrt(expected)


@pytest.mark.parametrize("percent", [0, 100, -1, 150, math.nan, math.inf, 1e-9])
def test_percentages_outside_the_open_interval_are_refused(percent: float) -> None:
    with pytest.raises(ValueError):
        assign("u", "s", percent)
    with pytest.raises(ValueError):
        srm(1, 1, percent)


def test_experiment_from_config() -> None:
    raw = {"name": "Cart abandon", "salt": "cart_abandon_v1", "holdout_percent": 10, "window": "7d"}
    experiment = msgspec.convert(raw, Experiment, dec_hook=dec_hook)
    assert experiment.window == Duration(7 * 86_400) and experiment.window_ms == 7 * 86_400_000
    assert experiment.audience is None
    assert experiment.conversion == "Order Completed" and experiment.revenue_property == "revenue"
    assert experiment.assign("user-1") == assign("user-1", "cart_abandon_v1", 10)
    defaults = Experiment(name="n", salt="s", holdout_percent=5)
    assert float(defaults.window) == float(DEFAULT_WINDOW) == 14 * 86_400
    with pytest.raises(AttributeError):
        defaults.salt = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        {"holdout_percent": 0},
        {"holdout_percent": 100},
        {"salt": ""},
        {"window": "0s"},
        {"window": "soon"},
        {"unknown_key": 1},
    ],
)
def test_experiment_config_errors(change: dict[str, object]) -> None:
    raw = {"name": "Cart abandon", "salt": "cart_abandon_v1", "holdout_percent": 10, **change}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, Experiment, dec_hook=dec_hook)


def test_experiment_checks_hold_for_direct_construction() -> None:
    with pytest.raises(ValueError):
        Experiment(name="n", salt="s", holdout_percent=100)


def test_srm_passes_a_fair_split_and_flags_a_skewed_one() -> None:
    fair = srm(10_050, 89_950, 10)
    assert not fair.mismatch and fair.p_value > 0.1
    assert fair.expected_holdout == pytest.approx(10_000) and fair.observed_holdout == 10_050
    skewed = srm(10_500, 89_500, 10)
    assert skewed.mismatch and skewed.p_value < 0.001
    assert srm(0, 0, 10) == srm(0, 0, 10) and not srm(0, 0, 10).mismatch


@pytest.mark.parametrize(
    ("holdout", "treatment", "percent"),
    [(10_050, 89_950, 10), (10_500, 89_500, 10), (37, 1_000, 5), (1, 1, 50)],
)
def test_srm_agrees_with_scipy(holdout: int, treatment: int, percent: float) -> None:
    total = holdout + treatment
    expected = [total * percent / 100, total * (1 - percent / 100)]
    reference = stats.chisquare([holdout, treatment], expected)
    ours = srm(holdout, treatment, percent)
    assert ours.chi2 == pytest.approx(reference.statistic, rel=1e-9, abs=1e-12)
    assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-15)
    assert ours.p_value == pytest.approx(stats.chi2.sf(ours.chi2, 1), rel=1e-9)
