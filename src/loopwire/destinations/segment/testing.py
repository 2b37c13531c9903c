"""`loopwire test-connection segment`: one `Email Delivered` track, the first event Segment's
Customer.io source documents (segment.md §8)."""

from __future__ import annotations

import time

import httpx
import msgspec
from ulid import ULID

from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.destinations.base import Delivered, Invalid, Skip
from loopwire.destinations.segment import SegmentDestination
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.model import Event

__all__ = ["TEST_USER", "ConnectionResult", "send_test_event", "test_event"]

TEST_USER = "loopwire-test-connection"


def test_event(now_ms: int) -> Event:
    return Event(
        id=str(ULID()),  # fresh each time: Segment would drop a repeated messageId as a duplicate (§5)
        source="customerio",
        kind="message",
        channel="email",
        metric="delivered",
        time_ms=now_ms,
        received_ms=now_ms,
        user_id=TEST_USER,
        data={
            "identifiers": {"id": TEST_USER},
            "delivery_id": "loopwire-test-connection",
            "subject": "loopwire test connection",
            "recipient": "test-connection@loopwire.invalid",
        },
    )


async def send_test_event(options: SegmentOptions) -> ConnectionResult:
    # The test ignores the property allowlist: it must reach Segment to prove the settings work.
    options = msgspec.structs.replace(options, route=msgspec.structs.replace(options.route, properties=None))
    now_ms = int(time.time() * 1000)
    event = test_event(now_ms)
    async with httpx.AsyncClient() as http:
        destination = SegmentDestination("test-connection", options, http)
        payload = destination.map(event, now_ms)
        if isinstance(payload, Skip | Invalid):
            return ConnectionResult(False, f"the test event was not sent: {payload.reason}")
        response, outcomes = await destination.send([destination.encode(payload)], [payload])
    where = destination.client.url
    if response is None:
        return ConnectionResult(False, f"no answer from {where}", outcomes[0].reason if outcomes else "")
    body = destination.redact(response.body.decode("utf-8", "replace")[:500])
    if all(isinstance(o, Delivered) for o in outcomes):
        track = payload["batch"][-1]
        return ConnectionResult(
            True,
            f"Segment accepted the test event `{track['event']}` (messageId {track['messageId']}) at {where}",
            # Segment's edge answers 200 to any well-formed write key and drops the events of an
            # unknown one later (segmentio/analytics-node#59, analytics-go#205): 200 proves the host.
            "Segment answers 200 even to a write key it does not know: open the source's Debugger in "
            f"Segment and look for user {TEST_USER} to confirm the key and region are right.",
        )
    reason = outcomes[0].reason if outcomes else ""
    return ConnectionResult(False, f"{where} answered {response.status}: {reason}", body)
