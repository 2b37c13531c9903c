"""`classify` against every Amplitude response fixture (reference/fixtures/amplitude/*response*.json),
plus the rules the fixtures do not show (Retry-After, 2xx with code 429, 5xx, 413 of one event...).

The response bodies are copied here verbatim, next to the tests that read them; a test checks that
they still match the reference copy in tests/reference and that none is missing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from loopwire.destinations.amplitude import api
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split
from loopwire.settings import Secret
from tests.helpers import reference

REFERENCE = reference.FIXTURES / "amplitude"

FIXTURES: dict[str, dict[str, Any]] = {
    "batch_response_429_daily_quota.json": {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 1000,
        "throttled_devices": {"C8F9E604-F01A-4BD9-95C6-8E5357DF265D": 4000},
        "throttled_users": {"datamonster@amplitude.com": 4000},
        "exceeded_daily_quota_users": {"datanom@amplitude.com": 500200},
        "exceeded_daily_quota_devices": {"A1A1A000-F01A-4BD9-95C6-8E5357DF265D": 500900},
        "throttled_events": [3, 4, 7],
    },
    "httpapi_response_200.json": {
        "code": 200,
        "events_ingested": 50,
        "payload_size_bytes": 50,
        "server_upload_time": 1396381378123,
    },
    "httpapi_response_400_all_index_lists.json": {
        "code": 400,
        "error": "Test error",
        "events_with_invalid_fields": {"time": [0, 1, 2, 3, 4, 5]},
        "events_with_missing_fields": {"event_type": [5, 6, 7, 8, 9]},
        "events_with_invalid_id_lengths": {"user_id": [10, 11, 12], "device_id": [13, 14, 15]},
        "silenced_events": [16, 17, 18, 19],
    },
    "httpapi_response_400_invalid_api_key.json": {"code": 400, "error": "Invalid API key: TEST_API_KEY"},
    "httpapi_response_400_invalid_fields.json": {
        "code": 400,
        "error": "Request missing required field",
        "missing_field": "api_key",
        "events_with_invalid_fields": {"time": [3, 4, 7]},
        "events_with_missing_fields": {"event_type": [3, 4, 7]},
    },
    "httpapi_response_400_missing_field.json": {
        "code": 400,
        "error": "Request missing required field",
        "missing_field": "api_key",
        "events_with_missing_fields": {"event_type": [3]},
    },
    "httpapi_response_400_silenced_devices.json": {
        "code": 400,
        "eps_threshold": 100,
        "error": "Events silenced for device_id",
        "exceeded_daily_quota_devices": {},
        "silenced_devices": ["silenced_device_id_1", "silenced_device_id_2"],
        "silenced_events": [5, 6],
        "throttled_devices": {"throttled_device_id_1": 0, "throttled_device_id_2": 100},
        "throttled_events": [3, 4],
    },
    "httpapi_response_403.json": {"code": 403, "error": "Forbidden"},
    "httpapi_response_413.json": {"code": 413, "error": "Payload too large"},
    "httpapi_response_429.json": {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 30,
        "throttled_devices": {"C8F9E604-F01A-4BD9-95C6-8E5357DF265D": 31},
        "throttled_users": {"datamonster@amplitude.com": 32},
        "throttled_events": [3, 4, 7],
    },
}

Ids = list[tuple[str | None, str | None]]


def ids(count: int, **at: tuple[str | None, str | None]) -> Ids:
    """`count` distinct (user_id, device_id) pairs; `i3=("u", None)` replaces index 3."""
    result: Ids = [(f"user-{i:04d}", None) for i in range(count)]
    for key, pair in at.items():
        result[int(key.removeprefix("i"))] = pair
    return result


def classify(
    name: str, count: int, payload_ids: Ids | None = None, headers: dict[str, str] | None = None
) -> tuple[Outcome, ...]:
    doc = FIXTURES[name]
    status = doc["code"]
    body = json.dumps(doc).encode()
    outcomes = api.classify(status, headers or {}, body, count, payload_ids or ids(count))
    check_shape(outcomes, count)
    return outcomes


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


def test_every_reference_response_fixture_is_covered_verbatim() -> None:
    files = sorted(p.name for p in REFERENCE.glob("*response*.json"))
    assert files == sorted(FIXTURES)
    for name in files:
        assert json.loads((REFERENCE / name).read_text()) == FIXTURES[name], name


def test_200_is_delivered() -> None:
    assert classify("httpapi_response_200.json", 50) == (Delivered(),)


def test_400_all_index_lists_rejects_each_listed_event_with_its_field() -> None:
    outcomes = classify("httpapi_response_400_all_index_lists.json", 22)
    by_reason = {o.reason: o.indexes for o in outcomes if isinstance(o, Rejected)}
    assert by_reason == {
        "Amplitude rejected field `time` (invalid value)": frozenset({0, 1, 2, 3, 4}),
        "Amplitude rejected field `event_type` (missing) and field `time` (invalid value)": frozenset({5}),
        "Amplitude rejected field `event_type` (missing)": frozenset({6, 7, 8, 9}),
        "Amplitude rejected field `user_id` (shorter than min_id_length; set `min_id_length` to allow it)": (
            frozenset({10, 11, 12})
        ),
        "Amplitude rejected field `device_id` (shorter than min_id_length; set `min_id_length` to allow it)": (
            frozenset({13, 14, 15})
        ),
        "Amplitude rejected its device (silenced for sending too many events)": frozenset({16, 17, 18, 19}),
    }
    assert outcomes[-1] == Retry(0.0, "resent at once: other events in the batch were rejected")


def test_400_all_index_lists_covering_the_whole_batch_retries_nothing() -> None:
    outcomes = classify("httpapi_response_400_all_index_lists.json", 20)
    assert all(isinstance(o, Rejected) for o in outcomes)


@pytest.mark.parametrize(
    "name", ["httpapi_response_400_missing_field.json", "httpapi_response_400_invalid_fields.json"]
)
def test_400_request_level_missing_field_rejects_all(name: str) -> None:
    outcomes = classify(name, 8)
    assert outcomes == (
        Rejected(
            "Amplitude says the request is missing `api_key`: check this destination's `api_key` "
            "(Amplitude › Settings › Projects › General)"
        ),
    )


def test_400_invalid_api_key_rejects_all() -> None:
    (outcome,) = classify("httpapi_response_400_invalid_api_key.json", 3)
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None
    assert "API key" in outcome.reason
    assert "`api_key`" in outcome.reason
    assert "TEST_API_KEY" not in outcome.reason  # the key never reaches logs or the DLQ reason


def test_400_silenced_rejects_silenced_and_delays_throttled() -> None:
    payload_ids = ids(8, i1=(None, "throttled_device_id_1"), i5=(None, "silenced_device_id_1"))
    outcomes = classify("httpapi_response_400_silenced_devices.json", 8, payload_ids)
    assert outcomes[0] == Rejected(
        "Amplitude rejected its device (silenced for sending too many events)", frozenset({5, 6})
    )
    assert isinstance(outcomes[1], Retry)
    assert outcomes[1].after == 30.0
    assert outcomes[1].indexes == frozenset({1, 3, 4})  # index 1 matched through throttled_devices
    assert outcomes[2] == Retry(0.0, "resent at once: other events in the batch were rejected")


def test_403_rejects_all() -> None:
    (outcome,) = classify("httpapi_response_403.json", 4)
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None
    assert "403" in outcome.reason


def test_413_splits_a_batch_and_rejects_a_single_event() -> None:
    assert classify("httpapi_response_413.json", 2) == (
        Split("Amplitude refused the request as too large (413); splitting the batch"),
    )
    (single,) = classify("httpapi_response_413.json", 1)
    assert isinstance(single, Rejected)
    assert single.indexes is None
    assert "single event" in single.reason


def test_429_delays_throttled_indexes_and_ids_and_resends_the_rest() -> None:
    payload_ids = ids(
        10, i1=("datamonster@amplitude.com", None), i8=(None, "C8F9E604-F01A-4BD9-95C6-8E5357DF265D")
    )
    outcomes = classify("httpapi_response_429.json", 10, payload_ids)
    assert len(outcomes) == 2
    throttled, rest = outcomes
    assert isinstance(throttled, Retry)
    assert throttled.after == 30.0
    assert throttled.indexes == frozenset({1, 3, 4, 7, 8})
    assert rest == Retry(0.0, "resent at once: only other users or devices in the batch were throttled")


def test_429_matches_throttled_ids_without_throttled_events() -> None:
    doc = {k: v for k, v in FIXTURES["httpapi_response_429.json"].items() if k != "throttled_events"}
    payload_ids = ids(3, i2=("datamonster@amplitude.com", "dev-00001"))
    outcomes = api.classify(429, {}, json.dumps(doc).encode(), 3, payload_ids)
    check_shape(outcomes, 3)
    assert isinstance(outcomes[0], Retry)
    assert outcomes[0].indexes == frozenset({2})
    assert outcomes[0].after == 30.0


def test_429_daily_quota_ids_wait_an_hour() -> None:
    payload_ids = ids(
        9,
        i1=("datamonster@amplitude.com", None),
        i5=("datanom@amplitude.com", None),
        i6=("someone-else", "A1A1A000-F01A-4BD9-95C6-8E5357DF265D"),
        i7=("datanom@amplitude.com", None),
    )
    quota, throttled, rest = classify("batch_response_429_daily_quota.json", 9, payload_ids)
    assert isinstance(quota, Retry)
    assert quota.after == 3600.0
    assert quota.indexes == frozenset({5, 6, 7})  # 7 is throttled too: the quota decides
    assert "daily quota" in quota.reason
    assert isinstance(throttled, Retry)
    assert throttled.after == 30.0
    assert throttled.indexes == frozenset({1, 3, 4})
    assert isinstance(rest, Retry)
    assert rest.after == 0.0
    assert rest.indexes is None


def test_429_retry_after_overrides_the_throttle_delay() -> None:
    outcomes = classify("httpapi_response_429.json", 10, headers={"retry-after": "12"})
    assert isinstance(outcomes[0], Retry)
    assert outcomes[0].after == 12.0
    quota, throttled, _rest = classify(
        "batch_response_429_daily_quota.json",
        9,
        ids(9, i5=("datanom@amplitude.com", None)),
        headers={"Retry-After": "7200"},
    )
    assert isinstance(quota, Retry)
    assert quota.after == 7200.0  # the longer of the hint and the hourly quota retry
    assert isinstance(throttled, Retry)
    assert throttled.after == 7200.0


def test_429_without_lists_retries_everything_after_30s() -> None:
    assert api.classify(429, {}, b'{"code":429}', 5, ids(5)) == (
        Retry(30.0, "Amplitude throttled the request (429); retrying after a pause"),
    )


def test_2xx_whose_body_says_429_is_throttling() -> None:
    body = json.dumps(FIXTURES["httpapi_response_429.json"]).encode()
    outcomes = api.classify(200, {}, body, 10, ids(10))
    check_shape(outcomes, 10)
    assert isinstance(outcomes[0], Retry)
    assert outcomes[0].indexes == frozenset({3, 4, 7})


@pytest.mark.parametrize("body", [b"success", b"", b"[]", b'{"code": 400}'])
def test_other_2xx_bodies_are_delivered(body: bytes) -> None:
    assert api.classify(200, {}, body, 3, ids(3)) == (Delivered(),)


def test_400_without_lists_rejects_all_and_quotes_the_error() -> None:
    (outcome,) = api.classify(400, {}, b'{"code":400,"error":"Invalid event JSON"}', 4, ids(4))
    assert outcome == Rejected("Amplitude rejected the whole request as invalid (400) (Invalid event JSON)")
    (plain,) = api.classify(400, {}, b"bad request", 4, ids(4))
    assert plain == Rejected("Amplitude rejected the whole request as invalid (400)")


def test_400_index_lists_out_of_range_are_ignored() -> None:
    body = b'{"code":400,"events_with_invalid_fields":{"time":[9, -1, "2"]}}'
    (outcome,) = api.classify(400, {}, body, 3, ids(3))
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None


@pytest.mark.parametrize(("status", "word"), [(401, "credentials"), (404, "404")])
def test_401_and_404_reject_all(status: int, word: str) -> None:
    (outcome,) = api.classify(status, {}, b"", 2, ids(2))
    assert isinstance(outcome, Rejected)
    assert outcome.indexes is None
    assert word in outcome.reason


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 418, 302])
def test_timeouts_5xx_and_unknown_statuses_back_off(status: int) -> None:
    assert api.classify(status, {}, b"<html>oops</html>", 3, ids(3)) == (
        Retry(None, f"Amplitude answered {status}; retrying with backoff"),
    )


def test_retry_after_seconds_and_http_date() -> None:
    assert api.classify(503, {"Retry-After": "120"}, b"", 1, ids(1)) == (
        Retry(120.0, "Amplitude answered 503; retrying when its Retry-After says"),
    )
    headers = {"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}
    (outcome,) = api.classify(503, headers, b"", 1, ids(1))
    assert isinstance(outcome, Retry)
    assert outcome.after == 30.0
    assert api.retry_after({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"}) is None  # no Date to measure by
    assert api.retry_after({"retry-after": "soon"}) is None
    assert api.retry_after({"Retry-After": "-5"}) == 0.0
    assert api.retry_after({}) is None


def test_limits_and_urls() -> None:
    assert api.limits("httpapi") == (1_999, 999_999)
    assert api.limits("batch") == (2_000, 20_000_000)
    options = AmplitudeOptions(api_key=Secret("k"), region="us")
    assert api.events_url(options) == "https://api2.amplitude.com/2/httpapi"
    eu = AmplitudeOptions(api_key=Secret("k"), region="eu", endpoint="batch")
    assert api.events_url(eu) == "https://api.eu.amplitude.com/batch"
    sandbox = AmplitudeOptions(api_key=Secret("k"), region="us", base_url="http://127.0.0.1:9/")
    assert api.events_url(sandbox) == "http://127.0.0.1:9/2/httpapi"
