"""Audiences end to end (on both stores): a storefront event over HTTP → the engine → membership events in the log,
and a time-based exit with no new event once the window closes (the clock is advanced, no sleep)."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loopwire.model import decode_event
from tests.conftest import StoreSection, wait_until

WRITE_KEY = "storefront-write-key"
SOURCES = {"segment_api": {"write_keys": ["${SEG_KEY}"]}}
AUDIENCES = {
    "cart_abandoners": {"library": "cart_abandoners", "version": 1},
    "recent_purchasers": {"library": "recent_purchasers", "version": 1},
}
EXPERIMENTS = {
    "cart": {"name": "Cart journey", "salt": "s1", "holdout_percent": 10, "audience": "cart_abandoners"}
}


def own_events(runtime: Any) -> list[Any]:
    events = [decode_event(body) for _, body in runtime.store.scan_events(0, 0, 10_000)]
    return [e for e in events if e.source == "loopwire"]


def audience_metrics(url: str, audience: str) -> tuple[float, float, float]:
    """(members, entered, exited) as `/metrics` reports them, read with prometheus-client's parser."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("audience") == audience:
                found[(sample.name, sample.labels.get("change", ""))] = sample.value
    changes = "loopwire_audience_membership_changes_total"
    return (
        found.get(("loopwire_audience_members", ""), 0.0),
        found.get((changes, "entered"), 0.0),
        found.get((changes, "exited"), 0.0),
    )


def test_cart_abandoner_enters_then_leaves_when_the_window_closes(
    clock: Any, both_backends: StoreSection
) -> None:
    import time

    import yaml

    from loopwire.app import create_app
    from loopwire.config import parse_config
    from tests.helpers.servers import serve_app

    document = {
        "store": both_backends.section,
        "sources": SOURCES,
        "audiences": AUDIENCES,
        "experiments": EXPERIMENTS,
    }
    config = parse_config(yaml.safe_dump(document), env={"SEG_KEY": WRITE_KEY, **both_backends.env})
    assert set(config.audiences) == {"cart_abandoners", "recent_purchasers"}
    now_iso = "2026-11-23T12:00:00Z"
    clock.offset = 1_795_435_200 - time.time()  # 2026-11-23T12:00:00Z
    app = create_app(config, clock=clock)
    with serve_app(app) as url:
        runtime = app.state.runtime
        message = {
            "writeKey": WRITE_KEY,
            "userId": "shopper-0001",
            "event": "Checkout Started",
            "timestamp": now_iso,
            "properties": {"value": 129.0, "products": [{"sku": "TEE-1"}, {"sku": "CAP-2"}]},
        }
        assert httpx.post(f"{url}/v1/track", json=message).status_code == 200
        entered = wait_until(
            lambda: [e for e in own_events(runtime) if e.name == "Entered Cart Abandon Segment"],
            what="the entered event",
        )
        assert entered[0].data["properties"]["cart_value"] == 129.0
        assert entered[0].data["properties"]["audience_version"] == 1
        assert audience_metrics(url, "cart_abandoners") == (1, 1, 0)  # members, entered, exited
        assert audience_metrics(url, "recent_purchasers") == (0, 0, 0)
        traits = wait_until(
            lambda: [
                e
                for e in own_events(runtime)
                if e.kind == "identify" and "audience_cart_abandoners" in e.data["traits"]
            ],
            what="the membership trait",
        )
        assert traits[0].data["traits"]["audience_cart_abandoners"] is True
        holdout = wait_until(
            lambda: [
                e for e in own_events(runtime) if e.kind == "identify" and "holdout_cart" in e.data["traits"]
            ],
            what="the holdout assignment on entry",
        )
        assert holdout[0].data["traits"]["holdout_cart"] in ("holdout", "treatment")
        clock.advance(4 * 3600 + 1)  # the 4-hour window closes; no new event arrives
        exited = wait_until(
            lambda: [e for e in own_events(runtime) if e.name == "Exited Cart Abandon Segment"],
            timeout=15,
            what="the time-based exit",
        )
        assert exited[0].data["properties"]["audience"] == "cart_abandoners"
        assert audience_metrics(url, "cart_abandoners") == (0, 1, 1)
