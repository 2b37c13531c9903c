"""`SegmentDestination` over real HTTP against the Segment sandbox (loopback uvicorn), its faults
driven through the control API, and the delivery loop batching within Segment's limits (§4)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopwire.contracts.segment import write_key_hash
from loopwire.destinations.amplitude.options import RetryPolicy
from loopwire.destinations.base import Delivered, Invalid, Rejected, Retry, Skip, Split
from loopwire.destinations.routing import Route
from loopwire.destinations.segment import SegmentDestination, api
from loopwire.destinations.segment.options import Batching, SegmentOptions
from loopwire.destinations.segment.testing import TEST_USER, send_test_event
from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.pipeline.delivery import Courier
from loopwire.sandbox.segment import SegmentSandbox
from loopwire.settings import Duration, Secret
from loopwire.sources.customerio_parse import parse_webhook
from loopwire.store import SQLiteStore
from tests.conftest import wait_until
from tests.helpers.servers import serve_app

WRITE_KEY = "seg-write-key-0001"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "segment"
NOW_MS = 1_767_225_600_000
CONTROL = "/_sandbox/segment"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SegmentSandbox, str]]:
    box = SegmentSandbox(write_keys=frozenset({WRITE_KEY}))
    with serve_app(box.app) as url:
        yield box, url


@pytest.fixture
def sandbox(served: tuple[SegmentSandbox, str]) -> tuple[SegmentSandbox, str]:
    box, url = served
    httpx.post(f"{url}{CONTROL}/reset", timeout=5).raise_for_status()
    return box, url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def options(url: str, **raw: Any) -> SegmentOptions:
    raw.setdefault("write_key", Secret(WRITE_KEY))
    raw.setdefault("retry", RetryPolicy(timeout=Duration(5.0)))
    return SegmentOptions(region="us", base_url=url, **raw)


def webhook(case: str) -> Event:
    return parse_webhook((FIXTURES / case / "input.json").read_bytes(), NOW_MS)


def mapped(destination: SegmentDestination, *events: Event) -> tuple[list[bytes], list[dict[str, Any]]]:
    payloads = []
    for event in events:
        payload = destination.map(event, NOW_MS)
        assert not isinstance(payload, Skip | Invalid), payload
        payloads.append(payload)
    return [destination.encode(p) for p in payloads], payloads


def fault(url: str, **rule: Any) -> None:
    httpx.post(f"{url}{CONTROL}/faults", json=rule, timeout=5).raise_for_status()


async def test_delivers_one_batch_with_basic_auth_and_no_key_in_the_body(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = SegmentDestination("segment", options(url, send_identify=True), http)
    parts, payloads = mapped(destination, webhook("email_clicked"), webhook("customer_unsubscribed"))
    response, outcomes = await destination.send(parts, payloads)
    assert response is not None and response.status == 200
    assert outcomes == (Delivered(),)
    # The sandbox would answer 400 missing_write_key had the Basic header been wrong: the key is
    # only in the header.
    assert box.dropped == []
    assert [(m["type"], m.get("event"), m["userId"]) for m in box.messages] == [
        ("track", "Email Link Clicked", "cust_000123"),
        ("identify", None, "cust_000123"),
        ("track", "Customer Unsubscribed", "cust_000123"),
    ]
    assert {m["_write_key_hash"] for m in box.messages} == {write_key_hash(WRITE_KEY)}
    assert [m["messageId"] for m in box.messages] == [
        "01J9Z7B1B2C3D4E5F6G7H8J9KN",
        "01J9Z7S1B2C3D4E5F6G7H8J9M3-identify",
        "01J9Z7S1B2C3D4E5F6G7H8J9M3",
    ]
    assert box.requests[-1]["path"] == "/v1/batch" and box.requests[-1]["messages"] == 3


async def test_a_redelivery_is_deduped_by_message_id(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = SegmentDestination("segment", options(url), http)
    parts, payloads = mapped(destination, webhook("email_delivered"))
    for _ in range(2):
        _, outcomes = await destination.send(parts, payloads)
        assert outcomes == (Delivered(),)
    assert len(box.messages) == 1
    assert [d["reason"] for d in box.dropped] == ["duplicate_message_id"]


async def test_sent_at_is_the_send_time_not_the_event_time(http: httpx.AsyncClient) -> None:
    destination = SegmentDestination(
        "segment", options("http://127.0.0.1:9"), http, clock=lambda: 1_767_225_605.25
    )
    parts, _ = mapped(destination, webhook("email_clicked"))
    body = json.loads(destination.body(parts))
    assert body["sentAt"] == "2026-01-01T00:00:05.250Z"
    assert body["batch"][0]["timestamp"] == "2025-01-01T00:02:00.000Z"
    assert set(body) == {"batch", "sentAt"}


@pytest.mark.parametrize(
    ("rule", "kind", "after", "words"),
    [
        ({"status": 500}, Retry, None, "Segment answered 500"),
        ({"status": 503}, Retry, None, "Segment answered 503"),
        ({"status": 429, "retry_after": 3}, Retry, 3.0, "rate limiting"),
        ({"status": 401}, Rejected, None, "`write_key`"),
        ({"status": 403}, Rejected, None, "`write_key`"),
        ({"status": 413}, Split, None, "too large"),
        ({"status": 400, "message": "Request body is not valid JSON"}, Split, None, "not valid JSON"),
    ],
)
async def test_sandbox_faults_are_classified(
    sandbox: tuple[SegmentSandbox, str],
    http: httpx.AsyncClient,
    rule: dict[str, Any],
    kind: type,
    after: float | None,
    words: str,
) -> None:
    box, url = sandbox
    destination = SegmentDestination("segment", options(url), http)
    parts, payloads = mapped(destination, webhook("email_opened"), webhook("email_clicked"))
    fault(url, **rule, times=1)
    response, (outcome,) = await destination.send(parts, payloads)
    assert response is not None and response.status == rule["status"]
    assert isinstance(outcome, kind)
    assert words in outcome.reason
    if isinstance(outcome, Retry):
        assert outcome.after == after
    assert box.messages == []
    # the fault is spent: the same batch goes through now
    _, outcomes = await destination.send(parts, payloads)
    assert outcomes == (Delivered(),)
    assert len(box.messages) == 2


async def test_400_for_a_single_event_is_rejected_with_the_bodys_reason(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient
) -> None:
    _, url = sandbox
    destination = SegmentDestination("segment", options(url), http)
    parts, payloads = mapped(destination, webhook("email_opened"))
    fault(url, status=400, message="Request body is not valid JSON")
    _, (outcome,) = await destination.send(parts, payloads)
    assert outcome == Rejected(
        "Segment refused this event (400) (bad_request: Request body is not valid JSON)"
    )


async def test_a_dropped_connection_and_a_timeout_are_retried(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = SegmentDestination("segment", options(url, retry=RetryPolicy(timeout=Duration(0.2))), http)
    parts, payloads = mapped(destination, webhook("email_opened"))
    fault(url, close_connection=True)
    response, (outcome,) = await destination.send(parts, payloads)
    assert response is None
    assert isinstance(outcome, Retry) and outcome.after is None
    assert outcome.reason.startswith(f"could not reach {url}/v1/batch")
    fault(url, slow_ms=600)
    response, (outcome,) = await destination.send(parts, payloads)
    assert response is None
    assert outcome == Retry(None, f"no answer from {url}/v1/batch within 0.2s")
    # The sandbox still takes the slow request after we gave up (as Segment may): the retry's
    # messageId makes that harmless. Wait for it so it cannot land in the next test.
    wait_until(lambda: len(box.messages) == 1, what="the slow request to finish")


async def test_an_unknown_write_key_gets_200_and_is_dropped_later(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient
) -> None:
    # Segment's edge does not check keys (segmentio/analytics-node#59): 200 proves only the host.
    box, url = sandbox
    destination = SegmentDestination("segment", options(url, write_key=Secret("not-a-key")), http)
    parts, payloads = mapped(destination, webhook("email_opened"))
    _, outcomes = await destination.send(parts, payloads)
    assert outcomes == (Delivered(),)
    assert box.messages == []
    assert [d["reason"] for d in box.dropped] == ["invalid_write_key"]


# --- limits (segment.md §4) -------------------------------------------------------------------


def subscription(i: int) -> Event:
    return Event(
        id=f"01JE{i:022d}",
        source="customerio",
        kind="subscription",
        channel="customer",
        metric="unsubscribed",
        time_ms=NOW_MS,
        received_ms=NOW_MS,
        user_id=f"cust_{i}",
        email=f"p{i}@example.com",
        data={"identifiers": {"id": f"cust_{i}"}, "email_address": f"p{i}@example.com"},
    )


async def test_more_than_2500_messages_are_split_before_sending(http: httpx.AsyncClient) -> None:
    destination = SegmentDestination("segment", options("http://127.0.0.1:9", send_identify=True), http)
    parts, payloads = mapped(destination, *(subscription(i) for i in range(1_251)))
    response, (outcome,) = await destination.send(parts, payloads)
    assert response is None  # nothing was sent
    assert isinstance(outcome, Split) and "2,502 messages (Segment takes 2,500)" in outcome.reason


async def test_a_body_over_500_kb_is_split_before_sending(http: httpx.AsyncClient) -> None:
    destination = SegmentDestination("segment", options("http://127.0.0.1:9", body_content=True), http)
    events = [big_sent(i, 30_000) for i in range(20)]
    parts, payloads = mapped(destination, *events)
    assert sum(len(p) for p in parts) > api.BATCH_MAX_BYTES
    response, (outcome,) = await destination.send(parts, payloads)
    assert response is None
    assert isinstance(outcome, Split) and "Segment takes 500,000" in outcome.reason
    response, (alone,) = await destination.send(parts[:1], payloads[:1])
    assert response is None  # one event fits, so it was sent: nothing listens on port 9
    assert isinstance(alone, Retry) and alone.reason.startswith("could not reach")


def big_sent(i: int, size: int) -> Event:
    return Event(
        id=f"01JF{i:022d}",
        source="customerio",
        kind="message",
        channel="email",
        metric="sent",
        time_ms=NOW_MS,
        received_ms=NOW_MS,
        user_id=f"cust_{i}",
        data={
            "identifiers": {"id": f"cust_{i}"},
            "delivery_id": f"d{i}",
            "subject": "Your cart is waiting",
            "recipient": f"p{i}@example.com",
            "content": "x" * size,
        },
    )


async def test_max_bytes_leaves_room_for_the_envelope(http: httpx.AsyncClient) -> None:
    destination = SegmentDestination("segment", options("http://127.0.0.1:9"), http)
    head_and_tail = len(destination.body([]))
    assert destination.max_bytes + head_and_tail <= api.BATCH_MAX_BYTES
    batching = Batching(max_events=5_000, max_bytes=10_000)
    small = SegmentDestination("segment", options("http://127.0.0.1:9", batching=batching), http)
    assert small.max_events == api.MAX_EVENTS
    assert small.max_bytes == 10_000 - head_and_tail


async def test_delivery_loop_batches_within_the_limits_and_dead_letters_an_oversized_event(
    sandbox: tuple[SegmentSandbox, str], http: httpx.AsyncClient, tmp_path: Path
) -> None:
    box, url = sandbox
    destination = SegmentDestination("segment", options(url, body_content=True), http)
    store = SQLiteStore(tmp_path / "loopwire.db")
    try:
        events = [big_sent(i, 30_000) for i in range(40)]  # each just under 32 KB: ~1.2 MB in all
        events.append(big_sent(99, 40_000))  # over 32 KB once mapped
        await store.append(events, [["segment"]] * len(events))
        courier = Courier(destination, store, Metrics(), clock=lambda: NOW_MS / 1000)
        while await courier.run_once():
            pass
        counts = store.counts()["segment"]
        assert counts["delivered"] == 40 and counts["dead"] == 1
        (dead,) = store.dead_letters("segment")
        assert "32 KB (32,768 bytes) per message (segment.md §4)" in dead["reason"]
    finally:
        store.close()
    assert len(box.messages) == 40
    assert len(box.requests) >= 3  # 1.2 MB cannot go in fewer than three 500 KB requests
    assert box.stats()["statuses"] == {"200": len(box.requests)}  # no request was over a limit


# --- secrets and test-connection ---------------------------------------------------------------


async def test_redact_removes_the_key_and_its_basic_form(http: httpx.AsyncClient) -> None:
    destination = SegmentDestination("segment", options("http://127.0.0.1:9"), http)
    basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    text = f"bad key {WRITE_KEY} in Authorization: Basic {basic}"
    assert destination.redact(text) == "bad key *** in Authorization: Basic ***"
    assert WRITE_KEY not in repr(destination.options)


async def test_send_test_event_reaches_the_sandbox(sandbox: tuple[SegmentSandbox, str]) -> None:
    box, url = sandbox
    result = await send_test_event(options(url, route=Route(properties=["campaign_id"])))
    assert result.ok, result
    assert "Email Delivered" in result.summary and f"{url}/v1/batch" in result.summary
    assert "Debugger" in result.detail
    (message,) = box.messages
    assert (message["event"], message["userId"]) == ("Email Delivered", TEST_USER)
    assert message["properties"]["subject"] == "loopwire test connection"  # the allowlist is ignored


async def test_send_test_event_reports_a_refusal(sandbox: tuple[SegmentSandbox, str]) -> None:
    _, url = sandbox
    fault(url, status=401)
    result = await send_test_event(options(url))
    assert not result.ok
    assert result.summary.startswith(f"{url}/v1/batch answered 401: Segment refused the write key")
    unreachable = await send_test_event(options("http://127.0.0.1:9"))
    assert not unreachable.ok and unreachable.summary == "no answer from http://127.0.0.1:9/v1/batch"
