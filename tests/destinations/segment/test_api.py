"""`classify` for every status segment.md §5 and §6 name, plus hosts, paths and limits."""

from __future__ import annotations

import json

import msgspec
import pytest

from loopwire.contracts import segment as segment_rules
from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split
from loopwire.destinations.segment import api
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.settings import Secret


def body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


def only(outcomes: tuple[Outcome, ...]) -> Outcome:
    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert outcome.indexes is None  # Segment's answer always covers the whole batch
    return outcome


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    assert api.classify(status, {}, b'{"success": true}', 10) == (Delivered(),)


def test_400_splits_a_batch_and_rejects_a_single_event_with_the_bodys_reason() -> None:
    answer = body("payload_too_large", "Message 3 of the batch exceeds 32768 bytes")
    split = only(api.classify(400, {}, answer, 8))
    assert isinstance(split, Split)
    assert "payload_too_large: Message 3 of the batch exceeds 32768 bytes" in split.reason
    rejected = only(api.classify(400, {}, answer, 1))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == (
        "Segment refused this event (400) (payload_too_large: Message 3 of the batch exceeds 32768 bytes)"
    )


def test_400_about_the_write_key_rejects_everything_at_once() -> None:
    answer = body("missing_write_key", "No write key: send writeKey in the body, or HTTP Basic auth")
    rejected = only(api.classify(400, {}, answer, 50))
    assert isinstance(rejected, Rejected)
    assert "write_key" in rejected.reason and "region" in rejected.reason


def test_400_with_a_body_that_is_not_json_quotes_it() -> None:
    rejected = only(api.classify(400, {}, b"Bad Request", 1))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "Segment refused this event (400) (Bad Request)"


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_reject_and_say_what_to_fix(status: int) -> None:
    rejected = only(api.classify(status, {}, body("unauthorized", "Unauthorized"), 5))
    assert isinstance(rejected, Rejected)
    assert f"Segment refused the write key ({status})" in rejected.reason
    assert "`write_key`" in rejected.reason and "`region`" in rejected.reason


def test_404_rejects_pointing_at_base_url() -> None:
    rejected = only(api.classify(404, {}, b"", 3))
    assert isinstance(rejected, Rejected)
    assert "`base_url`" in rejected.reason


def test_413_splits_a_batch_and_rejects_a_single_event() -> None:
    assert isinstance(only(api.classify(413, {}, b"", 2)), Split)
    rejected = only(api.classify(413, {}, b"", 1))
    assert isinstance(rejected, Rejected)
    assert "body_content" in rejected.reason


def test_429_honours_retry_after_then_rate_limit_reset() -> None:
    assert only(api.classify(429, {"Retry-After": "7"}, b"", 4)) == Retry(
        7.0,
        "Segment is rate limiting this workspace (429, §4: about 1,000 requests/s); retrying when Retry-After says",
    )
    by_reset = only(api.classify(429, {"x-ratelimit-reset": "3"}, b"", 4))
    assert isinstance(by_reset, Retry) and by_reset.after == 3.0
    both = only(api.classify(429, {"retry-after": "2", "X-RateLimit-Reset": "9"}, b"", 4))
    assert isinstance(both, Retry) and both.after == 2.0
    dated = only(
        api.classify(
            429,
            {"Retry-After": "Wed, 01 Jan 2025 00:00:30 GMT", "Date": "Wed, 01 Jan 2025 00:00:00 GMT"},
            b"",
            4,
        )
    )
    assert isinstance(dated, Retry) and dated.after == 30.0
    bare = only(api.classify(429, {}, b"", 4))
    assert isinstance(bare, Retry) and bare.after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 410, 460])
def test_5xx_and_transient_4xx_back_off(status: int) -> None:
    retry = only(api.classify(status, {}, body("internal", "oops"), 3))
    assert isinstance(retry, Retry)
    assert retry.after is None
    assert f"Segment answered {status} (internal: oops)" in retry.reason


def test_5xx_with_retry_after_waits_that_long() -> None:
    retry = only(api.classify(503, {"Retry-After": "12"}, b"", 3))
    assert isinstance(retry, Retry) and retry.after == 12.0


@pytest.mark.parametrize("status", [405, 409, 415, 422])
def test_other_4xx_reject(status: int) -> None:
    assert isinstance(only(api.classify(status, {}, b"", 3)), Rejected)


def test_error_text() -> None:
    assert api.error_text(body("invalid_json", "Request body is not valid JSON")) == (
        "invalid_json: Request body is not valid JSON"
    )
    assert api.error_text(b'{"message": "only a message"}') == "only a message"
    assert api.error_text(b"") == ""
    assert api.error_text(b"x" * 500) == "x" * 200


def options(**raw: object) -> SegmentOptions:
    return SegmentOptions(write_key=Secret("k"), **raw)  # type: ignore[arg-type]


def test_hosts_and_paths() -> None:
    assert api.batch_url(options(region="us")) == "https://api.segment.io/v1/batch"
    assert api.batch_url(options(region="eu")) == "https://events.eu1.segmentapis.com/v1/batch"
    for base in ("http://127.0.0.1:8788", "http://127.0.0.1:8788/", "http://127.0.0.1:8788/v1"):
        assert api.batch_url(options(region="eu", base_url=base)) == "http://127.0.0.1:8788/v1/batch"


def test_limits_agree_with_the_segment_sandbox() -> None:
    # The sandbox plays Segment's contract; both read segment.md §4 the same (stricter) way.
    assert api.MESSAGE_MAX_BYTES == segment_rules.MESSAGE_MAX_BYTES == 32_768
    assert api.BATCH_MAX_BYTES == segment_rules.BATCH_MAX_BYTES == 500_000
    assert api.BATCH_MAX_MESSAGES == segment_rules.BATCH_MAX_MESSAGES == 2_500
    assert api.MESSAGE_ID_MAX_CHARS == segment_rules.MESSAGE_ID_MAX_CHARS == 99
    assert api.MAX_EVENTS * api.MESSAGES_PER_EVENT <= api.BATCH_MAX_MESSAGES


def test_classify_is_pure() -> None:
    args = (429, {"Retry-After": "5"}, b'{"code": "rate_limited"}', 3)
    assert api.classify(*args) == api.classify(*args)
    assert msgspec.json.encode(api.classify(*args))  # outcomes are plain data
