"""The `amplitude` destination: Customer.io engagement, forwarded Amplitude SDK events and loopwire's own
audience and holdout events → Amplitude HTTP V2 (or Batch)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from loopwire.destinations.amplitude import api
from loopwire.destinations.amplitude.client import AmplitudeClient
from loopwire.destinations.amplitude.mapping import envelope, map_event
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Outcome, Response, Retry, Skip
from loopwire.destinations.routing import accepts
from loopwire.model import Event

_encode = msgspec.json.Encoder().encode


class AmplitudeDestination:
    default_sources = frozenset({"customerio", "amplitude", "loopwire"})

    def __init__(self, name: str, options: AmplitudeOptions, http: httpx.AsyncClient) -> None:
        self.name = name
        self.options = options
        self.client = AmplitudeClient(options, http)
        max_events, max_bytes = api.limits(options.endpoint)
        self.max_events = min(options.batching.max_events, max_events)
        self.max_bytes = min(options.batching.max_bytes, max_bytes) - self._envelope_size()
        self.concurrency = options.batching.concurrency
        self.linger = float(options.batching.linger)
        self.retry = options.retry
        self._head, self._tail = envelope(options)

    def _envelope_size(self) -> int:
        return 200 + len(self.options.api_key.reveal())

    def accepts(self, event: Event) -> bool:
        return accepts(self.options.route, self.default_sources, event)

    def map(self, event: Event, now_ms: int) -> dict[str, Any] | Skip:
        return map_event(event, self.options, now_ms)

    def encode(self, payload: dict[str, Any]) -> bytes:
        return _encode(payload)

    def body(self, parts: list[bytes]) -> bytes:
        return self._head + b",".join(parts) + self._tail

    async def send(
        self, parts: list[bytes], payloads: list[dict[str, Any]]
    ) -> tuple[Response | None, tuple[Outcome, ...]]:
        response, failure = await self.client.post(self.body(parts))
        if response is None:
            return None, (Retry(None, failure),)
        ids = [(p.get("user_id"), p.get("device_id")) for p in payloads]
        return response, api.classify(response.status, response.headers, response.body, len(parts), ids)

    def redact(self, text: str) -> str:
        # Amplitude echoes the key in "Invalid API key: <key>" (amplitude.md §2.6).
        return text.replace(self.options.api_key.reveal(), "***")

    async def aclose(self) -> None:
        return None
