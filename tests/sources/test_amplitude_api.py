"""Loopwire's Amplitude-compatible input, driven by the official `amplitude-analytics` SDK and by raw
requests, forwarding to the Amplitude sandbox over loopback."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify

from tests.conftest import API_KEY, wait_until

APP_KEY = "app-project-key-001"
SOURCES = {"amplitude_api": {"api_keys": ["${APP_KEY}"]}}
ENV = {"APP_KEY": APP_KEY}


def start(loopwire: Any, **options: Any) -> Any:
    return loopwire(extra_sources=SOURCES, env=ENV, **options)


def test_official_sdk_events_reach_amplitude_unchanged(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    with start(loopwire) as (url, runtime):
        client = Amplitude(APP_KEY, Config(server_url=f"{url}/2/httpapi", flush_queue_size=10))
        client.track(BaseEvent("Product Viewed", user_id="shopper-0001", event_properties={"sku": "TEE-1"}))
        client.track(BaseEvent("Order Completed", user_id="shopper-0001", event_properties={"revenue": 42.5}))
        client.identify(Identify().set("plan", "gold"), EventOptions(user_id="shopper-0001"))
        client.flush()
        wait_until(lambda: len(box.events) >= 3, what="forwarded events")
        client.shutdown()
        assert runtime.store.event_count() == 3
    by_type = {e["event_type"]: e for e in box.events}
    assert set(by_type) == {"Product Viewed", "Order Completed", "$identify"}
    viewed = by_type["Product Viewed"]
    assert viewed["event_properties"] == {"sku": "TEE-1"}
    assert viewed["library"].startswith("amplitude-python/")
    assert by_type["$identify"]["user_properties"] == {"$set": {"plan": "gold"}}
    assert all(len(e["insert_id"]) == 36 for e in box.events)  # the SDK's own uuid4 insert ids


def test_answers_with_amplitudes_codes_and_bodies(loopwire: Any) -> None:
    with start(loopwire) as (url, runtime):
        ok = httpx.post(
            f"{url}/2/httpapi",
            json={"api_key": APP_KEY, "events": [{"event_type": "x", "user_id": "user-1"}]},
        )
        assert ok.status_code == 200 and ok.json()["code"] == 200 and ok.json()["events_ingested"] == 1
        bad_key = httpx.post(
            f"{url}/2/httpapi", json={"api_key": "nope", "events": [{"event_type": "x", "user_id": "user-1"}]}
        )
        assert bad_key.status_code == 400 and bad_key.json() == {"code": 400, "error": "Invalid API key: ***"}
        missing = httpx.post(f"{url}/2/httpapi", json={"events": [{"event_type": "x", "user_id": "user-1"}]})
        assert missing.json()["missing_field"] == "api_key"
        invalid = httpx.post(
            f"{url}/2/httpapi",
            json={
                "api_key": APP_KEY,
                "events": [{"event_type": "x", "user_id": "user-1"}, {"user_id": "user-2"}],
            },
        )
        assert invalid.status_code == 400
        assert invalid.json()["events_with_missing_fields"] == {"event_type": [1]}
        not_json = httpx.post(f"{url}/2/httpapi", content=b"{", headers={"Content-Type": "application/json"})
        assert not_json.json() == {"code": 400, "error": "Invalid JSON request body"}
        too_many = httpx.post(
            f"{url}/2/httpapi",
            json={"api_key": APP_KEY, "events": [{"event_type": "x", "user_id": "user-1"}] * 2000},
        )
        assert too_many.status_code == 413 and too_many.json() == {"code": 413, "error": "Payload too large"}
        # nothing from the refused requests was written
        assert runtime.store.event_count() == 1


def test_gzip_and_beacon_bodies_and_cors(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    with start(loopwire) as (url, runtime):
        payload = json.dumps(
            {"api_key": APP_KEY, "events": [{"event_type": "Page Viewed", "device_id": "device-123"}]}
        )
        zipped = httpx.post(
            f"{url}/2/httpapi",
            content=gzip.compress(payload.encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        beacon = httpx.post(
            f"{url}/2/httpapi", content=payload, headers={"Content-Type": "text/plain;charset=UTF-8"}
        )
        preflight = httpx.options(f"{url}/2/httpapi", headers={"Origin": "https://shop.example.com"})
        assert zipped.json()["code"] == 200 and beacon.json()["code"] == 200
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
        wait_until(lambda: len(box.events) == 2, what="forwarded events")
    assert {e["device_id"] for e in box.events} == {"device-123"}
    assert len({e["insert_id"] for e in box.events}) == 2  # loopwire gave each an insert id


def test_identify_and_group_identify_forms_forward_as_events(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    with start(loopwire) as (url, runtime):
        ident = httpx.post(
            f"{url}/identify",
            data={
                "api_key": APP_KEY,
                "identification": json.dumps({"user_id": "shopper-0002", "user_properties": {"vip": True}}),
            },
        )
        group = httpx.post(
            f"{url}/groupidentify",
            data={
                "api_key": APP_KEY,
                "identification": json.dumps(
                    {"group_type": "org", "group_value": "acme", "group_properties": {"plan": "b2b"}}
                ),
            },
        )
        assert ident.json()["code"] == 200 and group.json()["code"] == 200
        malformed = httpx.post(f"{url}/identify", data={"api_key": APP_KEY, "identification": "{"})
        assert malformed.status_code == 400
        wait_until(lambda: len(box.events) == 2, what="identify events forwarded")
    by_type = {e["event_type"]: e for e in box.events}
    assert by_type["$identify"]["user_properties"] == {"vip": True}
    assert by_type["$groupidentify"]["groups"] == {"org": "acme"}
    assert by_type["$groupidentify"]["group_properties"] == {"plan": "b2b"}


def test_redelivered_insert_id_is_stored_once(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    body = {
        "api_key": APP_KEY,
        "events": [{"event_type": "x", "user_id": "user-1", "insert_id": "fixed-insert-1"}],
    }
    with start(loopwire) as (url, runtime):
        for _ in range(3):
            assert httpx.post(f"{url}/2/httpapi", json=body).json()["events_ingested"] == 1
        wait_until(lambda: box.events, what="forwarded event")
        assert runtime.store.event_count() == 1
    assert API_KEY and [e["insert_id"] for e in box.events] == ["fixed-insert-1"]
