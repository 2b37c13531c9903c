"""Typed settings of the `segment` destination (every key is described in docs/mapping-segment.md)."""

from __future__ import annotations

from typing import Literal

import msgspec

# One retry policy for every destination: the same keys mean the same thing everywhere.
from loopwire.destinations.amplitude.options import RetryPolicy
from loopwire.destinations.routing import Route
from loopwire.settings import Duration, Secret

__all__ = ["Batching", "Naming", "RetryPolicy", "SegmentOptions"]


class Naming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # segment: the names Customer.io's Segment source uses ("Email Link Clicked", "Email Marked as
    # Spam"); title / snake: the amplitude destination's names ("Email Clicked", "email_clicked"),
    # for one set of names across tools.
    style: Literal["segment", "title", "snake"] = "segment"
    prefix: str = ""  # added verbatim in every style
    # Exact names that win over the style and the prefix, keyed "<object_type>.<metric>".
    events: dict[str, str] = {}


class Batching(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Outbox events per request. An event is one or two Segment messages (track, plus identify for
    # subscription changes), so the cap is 1,250 to stay within 2,500 messages (segment.md §4).
    max_events: int = 500
    max_bytes: int = 500_000  # per /v1/batch body, envelope included (segment.md §4: 500 KB)
    concurrency: int = 4  # requests in flight at once
    linger: Duration = Duration(0.05)  # wait this long for a fuller batch


class SegmentOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="segment"):
    write_key: Secret
    region: Literal["us", "eu"]  # no silent default: an EU workspace's key only works on the EU host
    base_url: str | None = None  # override the host (no /v1), e.g. the local sandbox
    naming: Naming = Naming()
    send_identify: bool = False  # subscription changes also send identify {unsubscribed, email}
    body_content: bool = False  # message bodies on Sent events (and preferences on preferences-changed)
    message_id_prefix: str = ""  # Segment dedupes messageId across all sources: one per destination
    integrations: dict[str, bool] | None = None  # Segment's per-destination switches, e.g. {"All": false}
    default_country_code: str = "1"  # for hashing phone numbers written without one
    batching: Batching = Batching()
    retry: RetryPolicy = RetryPolicy()
    # Paused: events are still routed and queued (nothing is lost), but nothing is sent until the
    # server runs with `paused: false` again (vendor outage, maintenance, a controlled backfill).
    paused: bool = False
    route: Route = Route()  # default sources: customerio and loopwire (audience and holdout events)
