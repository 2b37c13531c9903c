from __future__ import annotations

from loopwire.destinations.base import Delivered, Rejected, Retry, Split
from loopwire.pipeline.delivery import _assign, backoff


def test_backoff_grows_exponentially_with_equal_jitter_and_caps() -> None:
    assert [backoff(n, 1.0, 300.0, 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff(n, 1.0, 300.0, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30, 1.0, 300.0, 1.0) == 300.0
    assert backoff(30, 1.0, 300.0, 0.0) == 150.0


def test_every_index_gets_exactly_one_outcome() -> None:
    bad = Rejected("field `time` invalid", frozenset({1, 3}))
    rest = Retry(0.0, "resend the rest")
    assert _assign((bad, rest), 4) == [rest, bad, rest, bad]


def test_uncovered_indexes_are_retried_not_lost() -> None:
    (only,) = _assign((Delivered(frozenset({5})),), 1)
    assert isinstance(only, Retry)


def test_first_outcome_naming_an_index_wins() -> None:
    slow = Retry(30.0, "throttled", frozenset({0}))
    assert _assign((slow, Split("too big", frozenset({0, 1})), Delivered()), 3) == [
        slow,
        Split("too big", frozenset({0, 1})),
        Delivered(),
    ]
