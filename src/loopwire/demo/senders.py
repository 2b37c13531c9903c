"""The three senders of the demo, each speaking to loopwire as the real thing would:

- Customer.io's reporting webhooks: one signed `POST /webhooks/customerio` per event (httpx);
- the storefront: the official Segment Python library (`segment-analytics-python`), its host
  pointed at loopwire, batching in its own thread as it does in a shop's backend;
- the app: the official Amplitude Python SDK (`amplitude-analytics`), its server URL pointed at
  loopwire's `/2/httpapi`.

Retries are bounded everywhere, so a broken loopwire shows up as failures in the report, not a hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from loopwire.demo.scenario import Webhook
from loopwire.demo.shop import AppEvent, StoreCall

CONCURRENCY = 8  # webhook requests in flight, as Customer.io's senders overlap
SDK_TIMEOUT = 30.0  # seconds to wait for an SDK's answers after a flush
_encode = msgspec.json.Encoder().encode

SDKS = {"segment.analytics": "segment-analytics-python", "amplitude": "amplitude-analytics"}


def missing_sdks() -> list[str]:
    """The official libraries the demo drives that are not installed (pip names)."""
    return [pip for module, pip in SDKS.items() if importlib.util.find_spec(module.split(".")[0]) is None]


async def send_webhooks(
    base_url: str, webhooks: Sequence[Webhook], key: bytes, done: Callable[[], None]
) -> dict[str, Any]:
    """POST every webhook, signed as Customer.io signs it (customerio.md §1.2); counts the answers."""
    counts: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    queue = iter(webhooks)  # shared by the workers: each takes the next webhook in order

    async def worker(client: httpx.AsyncClient) -> None:
        for hook in queue:
            raw = _encode(hook.body)
            timestamp = str(int(time.time()))
            signature = hmac.new(key, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
            headers = {
                "X-CIO-Timestamp": timestamp,
                "X-CIO-Signature": signature,
                "Content-Type": "application/json",
            }
            answer = await client.post("/webhooks/customerio", content=raw, headers=headers)
            if answer.status_code == 200:
                counts[str(answer.json().get("status"))] += 1
            else:
                counts["refused"] += 1
                refusals[f"{answer.status_code} {answer.text[:200]}"] += 1
            done()

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return {
        "sent": len(webhooks),
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "refused": counts["refused"],
        "refusals": dict(refusals),
    }


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def segment_call(call: StoreCall) -> tuple[str, dict[str, Any]]:
    """The Segment library method and its arguments for one storefront call."""
    arguments: dict[str, Any] = {
        "user_id": call.user_id,
        "anonymous_id": call.anonymous_id,
        "context": dict(call.context),  # the library adds `library` to the dict it is given
        "timestamp": _datetime(call.timestamp_ms),
        "message_id": call.message_id,
    }
    if call.call == "identify":
        return "identify", {**arguments, "traits": dict(call.traits)}
    return "track", {**arguments, "event": call.event, "properties": dict(call.properties)}


def amplitude_options(item: AppEvent) -> dict[str, Any]:
    """The Amplitude SDK's `EventOptions` fields of one app event."""
    return {
        "user_id": item.user_id,
        "device_id": item.device_id,
        "time": item.time_ms,
        "insert_id": item.insert_id,
        "session_id": item.session_id,
        "platform": item.platform,
        "os_name": item.os_name,
        "app_version": item.app_version,
    }


class Storefront:
    """The shop's backend: one Segment `Client`, batching in its consumer thread."""

    def __init__(self, host: str, write_key: str) -> None:
        from segment.analytics.client import Client  # type: ignore[import-untyped]

        self.sent = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = Client(
            write_key,
            host=host,
            on_error=self._on_error,
            max_retries=2,  # bounded: a broken loopwire shows as failures, not a hang
            max_total_backoff_duration=10,
            max_rate_limit_duration=10,
            timeout=10,
            upload_size=100,
            upload_interval=0.05,
        )

    def _on_error(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self.failed += len(batch)
            self.errors[str(error)[:200]] += len(batch)

    def send(self, calls: Sequence[StoreCall], done: Callable[[], None]) -> None:
        """Hand every call to the library, then flush (blocks until its queue is empty)."""
        for call in calls:
            method, arguments = segment_call(call)
            getattr(self.client, method)(**arguments)
            self.sent += 1
            done()
        self.client.flush()

    def close(self) -> None:
        self.client.shutdown()

    def counts(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "errors": dict(self.errors)}


class App:
    """The app's analytics: one Amplitude client; its callback reports each event's final answer."""

    def __init__(self, server_url: str, api_key: str) -> None:
        from amplitude import Amplitude, Config  # type: ignore[import-untyped]

        self.sent = 0
        self.answered = 0
        self.codes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.bodies: dict[str, dict[str, Any]] = {}  # insert_id → the event as the SDK sent it
        self._cond = threading.Condition()
        config = Config(
            server_url=server_url,
            flush_queue_size=100,
            flush_interval_millis=50,
            flush_max_retries=3,  # bounded
            callback=self._callback,
        )
        self.client = Amplitude(api_key, config)

    def _callback(self, event: Any, code: int, message: str | None) -> None:
        with self._cond:
            self.answered += 1
            self.codes[code] += 1
            if code == 200:
                self.bodies[str(event.insert_id)] = event.get_event_body()
            else:
                self.errors[f"{code} {message}"[:200]] += 1
            self._cond.notify_all()

    def send(self, events: Sequence[AppEvent], done: Callable[[], None]) -> None:
        """Track every event, flush, and wait until each has its answer (or `SDK_TIMEOUT` passes);
        `done` is called once per answer."""
        from amplitude import BaseEvent, EventOptions, Identify

        with self._cond:
            seen = self.answered
        for item in events:
            options = amplitude_options(item)
            if item.event_type == "$identify":
                identify = Identify()
                for name, value in item.user_properties.items():
                    identify.set(name, value)
                self.client.identify(identify, EventOptions(**options))
            else:
                self.client.track(
                    BaseEvent(item.event_type, event_properties=item.event_properties, **options)
                )
            with self._cond:
                self.sent += 1
        self.client.flush()
        deadline = time.monotonic() + SDK_TIMEOUT
        while True:
            with self._cond:
                if self.answered < self.sent and time.monotonic() < deadline:
                    self._cond.wait(0.05)
                answered, finished = self.answered, self.answered >= self.sent
            for _ in range(answered - seen):
                done()
            seen = answered
            if finished or time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self.client.shutdown()

    def counts(self) -> dict[str, Any]:
        with self._cond:
            failed = self.answered - self.codes[200]
            return {
                "sent": self.sent,
                "answered_200": self.codes[200],
                "failed": failed,
                "unanswered": self.sent - self.answered,
                "errors": dict(self.errors),
            }
