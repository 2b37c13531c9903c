"""Canonical types shared by every layer: sources produce `Event`s, destinations consume them."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import msgspec

# The end of year 9999 in unix milliseconds: the latest moment an event may carry (every store and
# vendor can hold dates up to it); sources refuse later ones, and earlier than 1970, with a 400.
TIME_MAX_MS = 253_402_300_799_999


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing that happened, as loopwire keeps it in its log.

    `id` is stable for the life of the event: it becomes Amplitude's `insert_id`, Segment's
    `messageId` and Customer.io's event `id`, so redelivery never double-counts.
    """

    id: str
    source: str  # "customerio", "amplitude", "segment", "loopwire"
    kind: str  # "message" (Customer.io engagement), "subscription", "track", "identify", ...
    channel: str | None = None  # Customer.io object_type: email, sms, push, in_app, ...
    metric: str | None = None  # Customer.io metric: sent, delivered, opened, clicked, ...
    name: str | None = None  # event name for track-style events
    time_ms: int  # when it happened, milliseconds since the epoch
    received_ms: int  # when loopwire committed it
    user_id: str | None = None
    anonymous_id: str | None = None  # Amplitude device_id, Segment anonymousId
    email: str | None = None
    data: dict[str, Any] = {}  # the source payload's own fields, unchanged


class Profile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    user_id: str | None = None
    email: str | None = None
    attributes: dict[str, Any] = {}
    updated_ms: int = 0


def event_key(event: Event) -> str:
    """How routes and audiences name an event: "<object_type>.<metric>" for Customer.io engagement
    ("email.clicked"), the event name for everything else ("Order Completed")."""
    if event.source == "customerio" and event.channel is not None:
        return f"{event.channel}.{event.metric}"
    return event.name or event.kind


@lru_cache(maxsize=1024)
def event_pattern(pattern: str) -> re.Pattern[str]:
    """A pattern on `event_key`: `*` is any run of characters, `?` one character, and everything
    else literal — brackets too, so "[Amplitude] Page Viewed" matches that name."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(raw: bytes) -> Event:
    return _decoder.decode(raw)
