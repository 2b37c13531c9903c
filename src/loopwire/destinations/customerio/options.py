"""Typed settings of the `customerio` destination: Amplitude's Customer.io event stream (seed 003)."""

from __future__ import annotations

from typing import Literal

import msgspec

# Batching and retry have the same shape for every HTTP destination; the limits that differ per API
# are applied by the destination (`api.MAX_PAYLOADS`, `api.BATCH_MAX_BYTES`), whatever these say.
from loopwire.destinations.amplitude.options import Batching, RetryPolicy
from loopwire.destinations.routing import Route
from loopwire.settings import Secret

USER_ID = "user_id"  # `identifier` value meaning "the event's user_id", not a user property

# Amplitude's Browser SDK names its page views `[Amplitude] Page Viewed`, the iOS and Android SDKs their
# screen views `[Amplitude] Screen Viewed` (Amplitude's autocapture docs); the plain names are the
# common hand-written ones. Segment `page` and `screen` calls are page and screen views by kind.
PAGE_EVENTS = ("[Amplitude] Page Viewed", "Page Viewed")
SCREEN_EVENTS = ("[Amplitude] Screen Viewed", "Screen Viewed")


class CustomerioOptions(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="customerio"
):
    site_id: Secret  # Track API Site ID (Customer.io › Workspace Settings › API Credentials)
    api_key: Secret  # Track API key of that site
    region: Literal["us", "eu"]  # no silent default: the account's data centre decides
    base_url: str | None = None  # override the host, e.g. the local sandbox
    # The ONE Amplitude user property holding the Customer.io identifier, or `user_id` for the
    # event's own user id. Email values address `email`, `cio_`-prefixed values `cio_id`, others `id`.
    identifier: str
    send_events: bool = True  # "Send Events": selected events become Customer.io events
    send_users: bool = False  # "Send Users": selected user property changes become identify calls
    # "Select additional properties": only these are sent; none selected → none sent (seed 003).
    event_properties: list[str] = []
    user_properties: list[str] = []
    # Event names sent as Customer.io page / screen views instead of plain events.
    page_events: list[str] = msgspec.field(default_factory=lambda: list(PAGE_EVENTS))
    screen_events: list[str] = msgspec.field(default_factory=lambda: list(SCREEN_EVENTS))
    batching: Batching = Batching()
    retry: RetryPolicy = RetryPolicy()
    # Default sources: amplitude (SDK traffic), segment and loopwire (audience and holdout events).
    # `route.events` selects the events sent as Customer.io events; user updates follow `send_users`,
    # whatever `route.events` says (loopwire's own attributes are sent whatever `send_users` says).
    # Paused: events are still routed and queued (nothing is lost), but nothing is sent until the
    # server runs with `paused: false` again (vendor outage, maintenance, a controlled backfill).
    paused: bool = False
    route: Route = Route()

    def __post_init__(self) -> None:
        if not self.identifier.strip():
            raise ValueError("`identifier` must name a user property, or be `user_id`")
        if self.route.properties is not None:
            raise ValueError(
                "`route.properties` does not apply to customerio: select properties with "
                "`event_properties` and `user_properties`"
            )
        if self.route.hash_identifiers:
            raise ValueError(
                "`route.hash_identifiers` does not apply to customerio: it needs real identifiers"
            )
