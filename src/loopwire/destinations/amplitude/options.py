"""Typed settings of the `amplitude` destination (see examples/loopwire.yaml for every key)."""

from __future__ import annotations

from typing import Literal

import msgspec

from loopwire.destinations.routing import Route
from loopwire.settings import Duration, Secret

CHANNELS = ("email", "push", "sms", "in_app", "slack", "webhook", "whatsapp", "customer")


class Naming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # title: "Email Sent" (Customer.io's native casing); snake: "<prefix>email_sent"
    style: Literal["title", "snake"] = "title"
    prefix: str = ""


class Batching(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_events: int = 1000  # HTTP V2 takes < 2,000 events per request (amplitude.md §2.5)
    max_bytes: int = 900_000  # HTTP V2 takes < 1 MB per request; the rest is headroom
    concurrency: int = 4  # requests in flight at once
    linger: Duration = Duration(0.25)  # wait this long for a fuller batch (fewer, larger requests)


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    initial_backoff: Duration = Duration(1.0)
    max_backoff: Duration = Duration(300.0)
    max_age: Duration = Duration(86_400.0)  # older than this and still failing → dead-letter
    timeout: Duration = Duration(10.0)  # one request


class AmplitudeOptions(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="amplitude"
):
    api_key: Secret
    region: Literal["us", "eu"]  # no silent default: the user must say where their project lives
    endpoint: Literal["httpapi", "batch"] = "httpapi"
    base_url: str | None = None  # override the host, e.g. the local sandbox
    account_id: str | None = None  # sent as groups.account_id (Customer.io native behaviour)
    workspace_id: str | None = None  # sent as groups.workspace
    body_content: bool = False  # send message bodies on Sent events, cut to 1024 characters
    channels: list[str] | None = None  # None: every channel
    metrics: list[str] | None = None  # None: every metric
    naming: Naming = Naming()
    machine_activity: Literal["include", "exclude", "property"] = "include"
    min_id_length: int | None = None  # sent as options.min_id_length
    batching: Batching = Batching()
    retry: RetryPolicy = RetryPolicy()
    # Default sources: customerio (engagement), amplitude (forwarded SDK events) and loopwire (its own
    # audience and holdout events).
    # Paused: events are still routed and queued (nothing is lost), but nothing is sent until the
    # server runs with `paused: false` again (vendor outage, maintenance, a controlled backfill).
    paused: bool = False
    route: Route = Route()
