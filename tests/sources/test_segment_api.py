"""Loopwire's Segment-compatible input, driven by the official `segment-analytics-python` library."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import msgspec
from segment.analytics.client import Client

from loopwire.model import decode_event
from tests.conftest import wait_until

WRITE_KEY = "storefront-write-key"
SOURCES = {"segment_api": {"write_keys": ["${SEG_KEY}"]}}
ENV = {"SEG_KEY": WRITE_KEY}


def logged(runtime: Any) -> list[Any]:
    rows = runtime.store.scan_events(0, 0, 1000)
    return [decode_event(body) for _, body in rows]


def test_official_library_calls_are_committed(loopwire: Any) -> None:
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        client = Client(WRITE_KEY, host=url, sync_mode=True, max_retries=0)
        client.identify("shopper-0001", {"email": "ada@example.com", "plan": "gold"})
        client.track("shopper-0001", "Product Viewed", {"sku": "TEE-1"})
        client.track("shopper-0001", "Checkout Started", {"value": 42.5})
        client.track(anonymous_id="anon-77", event="Order Completed", properties={"revenue": 42.5})
        client.page("shopper-0001", category="Docs", name="Pricing")
        client.screen("shopper-0001", name="Cart")
        client.group("shopper-0001", "acme", {"plan": "b2b"})
        client.alias("anon-77", "shopper-0001")
        events = wait_until(
            lambda: len(logged(runtime)) == 8 and logged(runtime), what="eight events in the log"
        )
    kinds = [(e.kind, e.name) for e in events]
    assert kinds == [
        ("identify", None),
        ("track", "Product Viewed"),
        ("track", "Checkout Started"),
        ("track", "Order Completed"),
        ("page", "Pricing"),
        ("screen", "Cart"),
        ("group", None),
        ("alias", None),
    ]
    assert events[0].email == "ada@example.com" and events[0].user_id == "shopper-0001"
    assert events[3].anonymous_id == "anon-77" and events[3].user_id is None
    assert all(e.id == e.data["messageId"] for e in events)  # the library's messageId is the event id
    assert all("writeKey" not in e.data for e in events)


def test_queued_gzip_batches_arrive_once(loopwire: Any) -> None:
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        client = Client(WRITE_KEY, host=url, gzip=True, max_retries=0, upload_size=10)
        for n in range(25):
            client.track(f"user-{n:03d}", "Product Viewed", {"n": n})
        client.flush()
        wait_until(lambda: runtime.store.event_count() == 25, what="25 events")
        client.shutdown()


def test_auth_and_contract_answers(loopwire: Any) -> None:
    good = {"userId": "u-1", "event": "Order Completed"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        assert httpx.post(f"{url}/v1/track", json=good, headers=basic).json() == {"success": True}
        assert httpx.post(f"{url}/v1/track", json={**good, "writeKey": WRITE_KEY}).status_code == 200
        unknown = httpx.post(f"{url}/v1/track", json={**good, "writeKey": "stolen"})
        assert (unknown.status_code, unknown.json()["code"]) == (401, "invalid_write_key")
        missing = httpx.post(f"{url}/v1/track", json=good)
        assert (missing.status_code, missing.json()["code"]) == (401, "missing_write_key")
        no_id = httpx.post(f"{url}/v1/track", json={"event": "x"}, headers=basic)
        assert (no_id.status_code, no_id.json()["code"]) == (400, "no_user_anon_id")
        no_event = httpx.post(f"{url}/v1/track", json={"userId": "u-1"}, headers=basic)
        assert (no_event.status_code, no_event.json()["code"]) == (400, "missing_event")
        big = httpx.post(f"{url}/v1/track", json={**good, "properties": {"x": "y" * 40_000}}, headers=basic)
        assert (big.status_code, big.json()["code"]) == (400, "payload_too_large")
        not_json = httpx.post(
            f"{url}/v1/track", content=b"{", headers={**basic, "Content-Type": "application/json"}
        )
        assert not_json.status_code == 400
        mixed = httpx.post(
            f"{url}/v1/batch",
            json={
                "batch": [{"type": "track", "userId": "u-2", "event": "A"}, {"type": "track", "event": "B"}]
            },
            headers=basic,
        )
        assert mixed.status_code == 200
        assert mixed.json() == {
            "success": True,
            "rejected": [
                {"index": 1, "reason": "no_user_anon_id", "message": "userId or anonymousId is required"}
            ],
        }
        assert runtime.store.event_count() == 3
        metrics = httpx.get(f"{url}/metrics").text
    assert 'loopwire_ingest_rejected_requests_total{code="invalid_write_key",source="segment"} 1.0' in metrics
    assert 'loopwire_ingest_rejected_requests_total{code="no_user_anon_id",source="segment"} 2.0' in metrics


def test_redelivered_message_id_is_stored_once(loopwire: Any) -> None:
    message = {"userId": "u-1", "event": "Order Completed", "messageId": "msg-0001", "writeKey": WRITE_KEY}
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        for _ in range(3):
            assert httpx.post(f"{url}/v1/track", json=message).status_code == 200
        assert runtime.store.event_count() == 1


def test_event_time_is_the_message_timestamp_in_every_accepted_form(loopwire: Any) -> None:
    # Segment takes ISO-8601 with a timezone (segment.md §3); each accepted form keeps its instant,
    # a comma before the fraction included.
    forms = {
        "2024-01-02T03:04:05Z": 1_704_164_645_000,
        "2024-01-02T03:04:05.250+02:00": 1_704_157_445_250,
        "2024-01-02 03:04:05,5+0200": 1_704_157_445_500,
        "2024-01-02T03:04:05-05": 1_704_182_645_000,
    }
    batch = [
        {"type": "track", "userId": "u-1", "event": "Product Viewed", "messageId": f"m-{n}", "timestamp": ts}
        for n, ts in enumerate(forms)
    ]
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        answer = httpx.post(f"{url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY})
        assert answer.status_code == 200 and "rejected" not in answer.json()
        times = {e.id: e.time_ms for e in logged(runtime)}
    assert times == {f"m-{n}": ms for n, ms in enumerate(forms.values())}


def test_batch_messages_are_measured_by_their_compact_encoding(loopwire: Any) -> None:
    # 32 KB per message (segment.md §4), measured on the compact encoding. The raw JSON of the second
    # message is over the limit only because of whitespace; the third is small as sent but grows past
    # the limit once its floats are written out (1e15 is 1000000000000000.0).
    def track(n: int, **properties: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": "u-1",
            "event": "Viewed",
            "messageId": f"m-{n}",
            "properties": properties,
        }

    padded = json.dumps(track(1, note="y" * 20_000), indent=12_000).encode()
    assert len(padded) > 32_768
    grows = track(2, **{f"p{k}": "__FLOAT__" for k in range(2_000)})
    grows_raw = json.dumps(grows).replace('"__FLOAT__"', "1e15").encode()
    assert len(grows_raw) < 32_000 and len(msgspec.json.encode(msgspec.json.decode(grows_raw))) > 32_768
    headers = {"Content-Type": "application/json"}
    with loopwire(extra_sources=SOURCES, env=ENV) as (url, runtime):
        body = b'{"writeKey": "' + WRITE_KEY.encode() + b'", "batch": [' + padded + b"]}"
        assert httpx.post(f"{url}/v1/batch", content=body, headers=headers).json() == {"success": True}
        body = (
            b'{"writeKey": "'
            + WRITE_KEY.encode()
            + b'", "batch": [{"type": "track", "userId": "u", "event": "A"},'
            + grows_raw
            + b"]}"
        )
        refused = httpx.post(f"{url}/v1/batch", content=body, headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (400, "payload_too_large")
        assert "Message 1 of the batch" in refused.json()["message"]
        assert [e.id for e in logged(runtime)] == ["m-1"]
