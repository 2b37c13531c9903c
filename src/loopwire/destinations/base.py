"""What every destination shares: the mapping result `Skip` and the delivery outcomes.

A client's `classify(status, headers, body, count)` turns one HTTP answer into a tuple of outcomes.
Each outcome names the batch indexes it covers; `indexes=None` means "every index no other outcome
in the tuple names", so a 400 that lists two bad events reads as
`(Rejected(frozenset({3, 7}), reason), Retry(0.0, reason))`: dead-letter 3 and 7, resend the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from loopwire.model import Event


class Skip(msgspec.Struct, frozen=True):
    """The vendor contract (or the user's options) forbid sending this event. Counted, never raised."""

    reason: str
    # bounded, for metrics (loopwire.metrics.REASON_CODES); `reason` says it for people
    code: str = "not_selected"


class Invalid(msgspec.Struct, frozen=True):
    """The event breaks a vendor limit the user must fix (an attribute over 1000 bytes, say):
    dead-lettered with this reason before anything is sent, so it can be corrected and replayed."""

    reason: str


class Delivered(msgspec.Struct, frozen=True):
    indexes: frozenset[int] | None = None
    reason: str = "accepted"


class Retry(msgspec.Struct, frozen=True):
    """Send again after `after` seconds (None: the delivery loop's own exponential backoff)."""

    after: float | None
    reason: str
    indexes: frozenset[int] | None = None


class Split(msgspec.Struct, frozen=True):
    """The request was too large: halve the batch and send again (a single event is rejected)."""

    reason: str
    indexes: frozenset[int] | None = None


class Rejected(msgspec.Struct, frozen=True):
    """Permanently refused: dead-letter these events with the reason and the response."""

    reason: str
    indexes: frozenset[int] | None = None


Outcome = Delivered | Retry | Split | Rejected


class Response(msgspec.Struct, frozen=True):
    """One HTTP answer as the delivery loop records it (the body cut for the dead-letter queue)."""

    status: int
    body: bytes
    headers: dict[str, str] = {}


class Memory(Protocol):
    """What a destination last sent per key (store-backed; see `store.SentMemory`)."""

    def recall(self, key: str) -> dict[str, Any] | None: ...

    async def remember(self, items: dict[str, dict[str, Any]], now_ms: int) -> None: ...


class RetrySettings(Protocol):
    @property
    def initial_backoff(self) -> float: ...
    @property
    def max_backoff(self) -> float: ...
    @property
    def max_age(self) -> float: ...


class Destination(Protocol):
    """What a destination package hands the delivery loop (see `destinations/registry.py`)."""

    name: str
    max_events: int  # per request, within the vendor's limit
    max_bytes: int  # per request body, within the vendor's limit
    concurrency: int  # requests in flight
    linger: float  # seconds to wait for a fuller batch

    @property
    def retry(self) -> RetrySettings: ...

    def accepts(self, event: Event) -> bool:
        """Routing: does this destination take the event (its `route:` options)?"""
        ...

    def map(self, event: Event, now_ms: int) -> dict[str, Any] | Skip | Invalid: ...

    def encode(self, payload: dict[str, Any]) -> bytes: ...

    async def send(
        self, parts: list[bytes], payloads: list[dict[str, Any]]
    ) -> tuple[Response | None, tuple[Outcome, ...]]:
        """POST one batch (already-encoded events) and classify the answer; never raises for I/O."""
        ...

    def redact(self, text: str) -> str:
        """Remove this destination's secrets from text kept in the dead-letter queue or logs."""
        ...

    async def aclose(self) -> None: ...
