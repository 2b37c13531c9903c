"""Both directions at once, with unmodified official clients over loopback:

Amplitude SDK ──► loopwire /2/httpapi ──► Amplitude sandbox (unchanged)
                                     └──► Customer.io sandbox (selected events, identifier rules)
Segment library ──► loopwire /v1/* ──────► Customer.io sandbox
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify
from segment.analytics.client import Client

from loopwire.sandbox.customerio import CustomerioSandbox
from tests.conftest import wait_until
from tests.helpers.servers import serve_app

APP_KEY = "app-project-key-001"
WRITE_KEY = "storefront-write-key"
SITE, TRACK_KEY = "site-0001", "track-key-0001"


@pytest.fixture
def customerio() -> Iterator[tuple[CustomerioSandbox, str]]:
    box = CustomerioSandbox(credentials={SITE: TRACK_KEY})
    with serve_app(box.app) as url:
        yield box, url


def destination(url: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "customerio",
        "site_id": "${CIO_SITE}",
        "api_key": "${CIO_KEY_T}",
        "region": "us",
        "base_url": url,
        "batching": {"linger": "10ms"},
        "retry": {"initial_backoff": "50ms", "max_backoff": "200ms", "max_age": "1h", "timeout": "2s"},
        **options,
    }


ENV = {"APP_KEY": APP_KEY, "SEG_KEY": WRITE_KEY, "CIO_SITE": SITE, "CIO_KEY_T": TRACK_KEY}
SOURCES = {"amplitude_api": {"api_keys": ["${APP_KEY}"]}, "segment_api": {"write_keys": ["${SEG_KEY}"]}}


def test_amplitude_sdk_to_amplitude_unchanged_and_selected_to_customerio(
    loopwire: Any, sandbox: Any, customerio: tuple[CustomerioSandbox, str]
) -> None:
    amplitude_box, _ = sandbox
    cio, cio_url = customerio
    cio_destination = destination(
        cio_url,
        identifier="email",
        send_users=True,
        event_properties=["total"],
        user_properties=["plan"],
        route={"events": ["Order *", "[Amplitude] Page Viewed"]},
    )
    with loopwire(extra_sources=SOURCES, extra_destinations={"customerio": cio_destination}, env=ENV) as (
        url,
        runtime,
    ):
        client = Amplitude(APP_KEY, Config(server_url=f"{url}/2/httpapi", flush_queue_size=50))
        who = EventOptions(user_id="shopper-0001")
        client.identify(Identify().set("email", "Ada@Example.com").set("plan", "gold"), who)
        client.track(BaseEvent("Product Viewed", user_id="shopper-0001", event_properties={"sku": "TEE-1"}))
        client.track(
            BaseEvent(
                "Order Completed", user_id="shopper-0001", event_properties={"total": 42.5, "coupon": "X"}
            )
        )
        client.track(
            BaseEvent("Order Completed", device_id="anonymous-device-1", event_properties={"total": 1})
        )
        client.track(
            BaseEvent("[Amplitude] Page Viewed", user_id="shopper-0001", event_properties={"total": 0})
        )
        client.flush()
        wait_until(lambda: len(amplitude_box.events) == 5, what="all five events forwarded to Amplitude")
        wait_until(lambda: len(cio.events) == 2, what="the selected events in Customer.io")
        client.shutdown()
        counts = wait_until(
            lambda: (c := runtime.store.counts()["customerio"])["pending"] + c["in_flight"] == 0 and c,
            what="the Customer.io outbox to settle",
        )
    # Amplitude got every event exactly as the SDK sent it
    assert sorted(e["event_type"] for e in amplitude_box.events) == sorted(
        ["$identify", "Product Viewed", "Order Completed", "Order Completed", "[Amplitude] Page Viewed"]
    )
    # Customer.io: one person addressed by email, the selected user property, only selected events
    (person,) = cio.people.values()
    assert person["email"].lower() == "ada@example.com"
    assert person["attributes"].get("plan") == "gold"
    by_name = {e["name"]: e for e in cio.events}
    assert by_name["Order Completed"]["data"] == {"total": 42.5}
    assert by_name["Order Completed"]["type"] == "event"
    page = next(e for e in cio.events if e["type"] == "page")
    assert page["person"] == person["cio_id"]
    assert counts["skipped"] >= 1  # the anonymous device's order: events without a user are never sent


def test_storefront_segment_events_stream_to_customerio(
    loopwire: Any, customerio: tuple[CustomerioSandbox, str]
) -> None:
    cio, cio_url = customerio
    cio_destination = destination(cio_url, identifier="user_id", event_properties=["value", "items"])
    with loopwire(extra_sources=SOURCES, extra_destinations={"customerio": cio_destination}, env=ENV) as (
        url,
        _,
    ):
        client = Client(WRITE_KEY, host=url, sync_mode=True, max_retries=0)
        client.track("shopper-0002", "Checkout Started", {"value": 99.0, "items": 3, "secret": "x"})
        client.track("shopper-0002", "Order Completed", {"value": 99.0})
        wait_until(lambda: len(cio.events) == 2, what="storefront events in Customer.io")
    assert [e["name"] for e in cio.events] == ["Checkout Started", "Order Completed"]
    assert cio.events[0]["data"] == {"value": 99.0, "items": 3}
    (person,) = cio.people.values()
    assert person["id"] == "shopper-0002"
