"""The `segment` destination: Customer.io engagement (and forwarded calls) → Segment /v1/batch."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from loopwire.destinations.base import Invalid, Outcome, Rejected, Response, Retry, Skip, Split
from loopwire.destinations.routing import accepts
from loopwire.destinations.segment import api
from loopwire.destinations.segment.client import SegmentClient
from loopwire.destinations.segment.mapping import encode_payload, envelope, iso_ms, map_event
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.model import Event

_SENT_AT_SIZE = len(msgspec.json.encode(iso_ms(0)))  # every sentAt has this length


class SegmentDestination:
    default_sources = frozenset({"customerio", "loopwire"})

    def __init__(
        self,
        name: str,
        options: SegmentOptions,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options
        self.client = SegmentClient(options, http)
        self.max_events = max(1, min(options.batching.max_events, api.MAX_EVENTS))
        head, tail = envelope(iso_ms(0))
        self.max_bytes = min(options.batching.max_bytes, api.BATCH_MAX_BYTES) - len(head) - len(tail)
        self.concurrency = options.batching.concurrency
        self.linger = float(options.batching.linger)
        self.retry = options.retry
        self._clock = clock  # for sentAt only: the request's real send time (segment.md §3)
        key = options.write_key.reveal()
        self._secrets = (key, base64.b64encode(f"{key}:".encode()).decode("ascii"))

    def accepts(self, event: Event) -> bool:
        return accepts(self.options.route, self.default_sources, event)

    def map(self, event: Event, now_ms: int) -> dict[str, Any] | Skip | Invalid:
        return map_event(event, self.options, now_ms)

    def encode(self, payload: dict[str, Any]) -> bytes:
        return encode_payload(payload)

    def body(self, parts: list[bytes]) -> bytes:
        head, tail = envelope(iso_ms(int(self._clock() * 1000)))
        return head + b",".join(parts) + tail

    async def send(
        self, parts: list[bytes], payloads: list[dict[str, Any]]
    ) -> tuple[Response | None, tuple[Outcome, ...]]:
        """POST the rows' messages as one batch; Segment's answer covers every row alike (§5)."""
        count = len(parts)
        messages = sum(len(p["batch"]) for p in payloads)
        body = self.body(parts)
        # Over either limit Segment would answer 200 and drop the batch, or 400 it (§4, §5): split
        # here instead, before anything is sent.
        if messages > api.BATCH_MAX_MESSAGES or len(body) > api.BATCH_MAX_BYTES:
            what = (
                f"{messages:,} messages (Segment takes {api.BATCH_MAX_MESSAGES:,})"
                if messages > api.BATCH_MAX_MESSAGES
                else f"{len(body):,} bytes (Segment takes {api.BATCH_MAX_BYTES:,})"
            )
            if count > 1:
                return None, (Split(f"the batch would be {what}; splitting it before sending"),)
            return None, (Rejected(f"this event alone would be {what} (segment.md §4)"),)
        response, failure = await self.client.post(body)
        if response is None:
            return None, (Retry(None, failure),)
        return response, api.classify(response.status, response.headers, response.body, count)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        return None
