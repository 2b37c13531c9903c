"""`classify` for every Track API answer customerio.md §2.6 documents (the 207 and v1 400 bodies are
copied from tests/reference/customerio/track-api/constructed/ and checked against it),
plus the rules the reference leaves open (429, 413, Retry-After, 5xx) and the hosts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split
from loopwire.destinations.customerio import api
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.settings import Secret
from tests.helpers import reference

REFERENCE = reference.FIXTURES / "customerio" / "track-api" / "constructed"

FIXTURES: dict[str, dict[str, Any]] = {
    "v2_batch_207_response.json": {
        "errors": [
            {
                "batch_index": 1,
                "reason": "invalid",
                "field": "attributes.plan",
                "message": "property value cannot be longer than 1000 bytes",
            }
        ]
    },
    "v1_error_400.json": {"meta": {"errors": ["<error description>"]}},
}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def check_shape(outcomes: tuple[Outcome, ...], count: int) -> None:
    """Index sets are disjoint, in range, and at most one outcome takes 'the rest'."""
    seen: set[int] = set()
    rest = 0
    for outcome in outcomes:
        if outcome.indexes is None:
            rest += 1
            continue
        assert outcome.indexes, outcome
        assert not (seen & outcome.indexes), outcomes
        assert all(0 <= i < count for i in outcome.indexes)
        seen |= outcome.indexes
    assert rest <= 1
    assert rest == 1 or len(seen) == count, outcomes


def classify(
    status: int, doc: Any, op_payload: list[int], headers: dict[str, str] | None = None
) -> tuple[Outcome, ...]:
    raw = doc if isinstance(doc, bytes) else body(doc)
    count = max(op_payload, default=-1) + 1
    outcomes = api.classify(status, headers or {}, raw, count, op_payload)
    check_shape(outcomes, count)
    return outcomes


def test_response_fixtures_match_the_reference() -> None:
    for name, doc in FIXTURES.items():
        assert json.loads((REFERENCE / name).read_text()) == doc, name


@pytest.mark.parametrize("raw", [b"{}", b"", b"ok"])
def test_200_is_delivered(raw: bytes) -> None:
    assert api.classify(200, {}, raw, 3, [0, 1, 2]) == (Delivered(),)


def test_207_rejects_exactly_the_payload_whose_op_failed() -> None:
    # Payload 0 is one event op, payload 1 an event and an identify (ops 1, 2), payload 2 one op:
    # the reference's batch_index 1 is payload 1's event op.
    outcomes = classify(207, FIXTURES["v2_batch_207_response.json"], [0, 1, 1, 2])
    assert outcomes == (
        Rejected(
            "Customer.io rejected this event's operation: `attributes.plan`: property value cannot be "
            "longer than 1000 bytes (invalid)",
            frozenset({1}),
        ),
        Delivered(),
    )


def test_207_groups_payloads_by_reason_and_names_every_failed_op() -> None:
    errors = [
        {"batch_index": 0, "reason": "invalid", "field": "name", "message": "name is required"},
        {"batch_index": 2, "reason": "invalid", "field": "attributes.bio", "message": "too long"},
        {"batch_index": 3, "reason": "invalid", "field": "identifiers.id", "message": "too long"},
        {"batch_index": 5, "reason": "invalid", "field": "name", "message": "name is required"},
    ]
    outcomes = classify(207, {"errors": errors}, [0, 1, 1, 2, 3, 4])
    rejected = {o.indexes: o.reason for o in outcomes if isinstance(o, Rejected)}
    assert rejected == {
        frozenset({0, 4}): "Customer.io rejected this event's operation: `name`: name is required (invalid)",
        frozenset({1}): "Customer.io rejected this event's operation: `attributes.bio`: too long (invalid)",
        frozenset({2}): "Customer.io rejected this event's operation: `identifiers.id`: too long (invalid)",
    }
    assert outcomes[-1] == Delivered()  # payload 3


def test_207_every_payload_failed_leaves_nothing_delivered() -> None:
    errors = [{"batch_index": i, "message": "bad"} for i in range(3)]
    outcomes = classify(207, {"errors": errors}, [0, 0, 1])
    assert outcomes == (Rejected("Customer.io rejected this event's operation: bad", frozenset({0, 1})),)


@pytest.mark.parametrize(
    "doc",
    [{}, {"errors": []}, b"not json", {"errors": [{"batch_index": 9}]}, {"errors": [{"message": "x"}]}],
)
def test_207_that_names_no_usable_op_rejects_all(doc: Any) -> None:
    (outcome,) = classify(207, doc, [0, 1])
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None
    assert "207" in outcome.reason


def test_400_v2_errors_reject_all_with_the_reason() -> None:
    doc = {"errors": [{"reason": "required", "field": "batch", "message": "batch must be a non-empty list"}]}
    assert classify(400, doc, [0, 1]) == (
        Rejected(
            "Customer.io rejected the request as invalid (400): `batch`: batch must be a non-empty list (required)"
        ),
    )


def test_400_v1_body_is_read_too() -> None:
    assert classify(400, FIXTURES["v1_error_400.json"], [0]) == (
        Rejected("Customer.io rejected the request as invalid (400): <error description>"),
    )
    assert classify(400, b"", [0]) == (
        Rejected("Customer.io rejected the request as invalid (400): no detail given"),
    )


def test_400_naming_ops_rejects_those_and_resends_the_rest() -> None:
    doc = {"errors": [{"batch_index": 2, "field": "timestamp", "message": "must be a unix timestamp"}]}
    outcomes = classify(400, doc, [0, 1, 1, 2])
    assert outcomes == (
        Rejected(
            "Customer.io rejected this event's operation (400): `timestamp`: must be a unix timestamp",
            frozenset({1}),
        ),
        Retry(0.0, "resent at once: other events in the batch were invalid"),
    )


def test_401_rejects_all_and_says_what_to_check() -> None:
    (outcome,) = classify(401, {"errors": [{"message": "Unauthorized request"}]}, [0, 1])
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None
    assert "`site_id`" in outcome.reason and "`api_key`" in outcome.reason and "`region`" in outcome.reason


@pytest.mark.parametrize(("status", "word"), [(403, "403"), (404, "`base_url`"), (422, "422"), (405, "405")])
def test_other_4xx_reject_all(status: int, word: str) -> None:
    (outcome,) = classify(status, b"", [0, 1])
    assert isinstance(outcome, Rejected)
    assert word in outcome.reason


def test_413_splits_a_batch_and_rejects_a_single_event() -> None:
    assert classify(413, b"", [0, 0, 1]) == (
        Split("Customer.io refused the request as too large (413); splitting the batch"),
    )
    (single,) = classify(413, b"", [0, 0])
    assert isinstance(single, Rejected)
    assert "single event" in single.reason


def test_429_honours_retry_after_and_backs_off_without_it() -> None:
    assert classify(429, b"", [0, 1], {"Retry-After": "7"}) == (
        Retry(7.0, "Customer.io throttled the request (429); retrying when its Retry-After says"),
    )
    assert classify(429, b"", [0, 1], {"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT",
                                         "date": "Wed, 21 Oct 2026 07:28:00 GMT"}) == (
        Retry(30.0, "Customer.io throttled the request (429); retrying when its Retry-After says"),
    )  # fmt: skip
    assert classify(429, b"", [0, 1]) == (
        Retry(None, "Customer.io throttled the request (429); retrying with backoff"),
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425, 302])
def test_5xx_timeouts_and_unexpected_statuses_back_off(status: int) -> None:
    assert classify(status, b"<html>oops</html>", [0]) == (
        Retry(None, f"Customer.io answered {status}; retrying with backoff"),
    )


def test_5xx_with_retry_after_waits_as_told() -> None:
    assert classify(503, b"", [0], {"Retry-After": "120"}) == (
        Retry(120.0, "Customer.io answered 503; retrying when its Retry-After says"),
    )


def test_hosts_and_urls() -> None:
    def options(**extra: Any) -> CustomerioOptions:
        base: dict[str, Any] = {"site_id": Secret("s"), "api_key": Secret("k"), "identifier": "user_id"}
        return CustomerioOptions(**{"region": "us", **base, **extra})

    assert api.batch_url(options()) == "https://track.customer.io/api/v2/batch"
    assert api.batch_url(options(region="eu")) == "https://track-eu.customer.io/api/v2/batch"
    assert api.region_url(options(region="eu")) == "https://track-eu.customer.io/api/v1/accounts/region"
    assert api.batch_url(options(base_url="http://127.0.0.1:9/")) == "http://127.0.0.1:9/api/v2/batch"


def test_limits_are_customerio_s() -> None:
    assert (api.IDENTIFIER_MAX_BYTES, api.ATTRIBUTE_NAME_MAX_BYTES, api.ATTRIBUTE_VALUE_MAX_BYTES) == (
        150,
        150,
        1000,
    )
    assert (api.ATTRIBUTES_MAX, api.EVENT_NAME_MAX_BYTES, api.EVENT_DATA_MAX_BYTES) == (300, 100, 100_000)
    assert (api.OP_MAX_BYTES, api.BATCH_MAX_BYTES) == (32_000, 500_000)
    assert len(b'{"batch":[]}') == api.ENVELOPE_BYTES
