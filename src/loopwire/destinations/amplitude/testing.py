"""`loopwire test-connection amplitude`: one `Email Sent` event, as Customer.io's Test Connection sends."""

from __future__ import annotations

import time

import httpx
import msgspec
from ulid import ULID

from loopwire.destinations.amplitude import AmplitudeDestination
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Delivered, Skip
from loopwire.model import Event

TEST_USER = "loopwire-test-connection"


class ConnectionResult(msgspec.Struct, frozen=True):
    ok: bool
    summary: str
    detail: str = ""


def test_event(now_ms: int) -> Event:
    return Event(
        id=str(ULID()),
        source="customerio",
        kind="message",
        channel="email",
        metric="sent",
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


async def send_test_event(options: AmplitudeOptions) -> ConnectionResult:
    # The test ignores channel/metric selections: it must reach Amplitude to prove the key works.
    options = msgspec.structs.replace(options, channels=None, metrics=None)
    now_ms = int(time.time() * 1000)
    event = test_event(now_ms)
    async with httpx.AsyncClient() as http:
        destination = AmplitudeDestination("test-connection", options, http)
        payload = destination.map(event, now_ms)
        if isinstance(payload, Skip):
            return ConnectionResult(False, f"the test event was not sent: {payload.reason}")
        response, outcomes = await destination.send([destination.encode(payload)], [payload])
    where = destination.client.url
    if response is None:
        return ConnectionResult(False, f"no answer from {where}", outcomes[0].reason if outcomes else "")
    body = destination.redact(response.body.decode("utf-8", "replace")[:500])
    if all(isinstance(o, Delivered) for o in outcomes):
        return ConnectionResult(
            True,
            f"Amplitude accepted the test event `{payload['event_type']}` (insert_id {event.id}) at {where}",
            f"Look for user {TEST_USER} in your Amplitude project to confirm it is the right one.",
        )
    reason = getattr(outcomes[0], "reason", "") if outcomes else ""
    return ConnectionResult(False, f"{where} answered {response.status}: {reason}", body)
