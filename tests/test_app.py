"""End to end over real HTTP on loopback: signed webhooks into loopwire, delivery into the sandbox,
on both stores (SQLite, and PostgreSQL: `both_backends` in tests/conftest.py)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, SIGNING_KEY, Clock, StoreSection, post, wait_until
from tests.helpers.cio import encode, signed_headers, webhook
from tests.helpers.console import login


@pytest.fixture
def store_section(both_backends: StoreSection) -> StoreSection:
    return both_backends


def send(url: str, doc: dict[str, Any], key: str = SIGNING_KEY, now: float | None = None) -> httpx.Response:
    body = encode(doc)
    return post(f"{url}/webhooks/customerio", body, signed_headers(key, body, now))


def delivered(runtime: Any) -> int:
    return int(runtime.store.counts().get("amplitude", {}).get("delivered", 0))


def test_signed_webhook_arrives_in_amplitude_exactly(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    doc = webhook("email", "clicked", href="https://shop.example.com/cart", link_id=3, machine=False)
    with loopwire(account_id="1", workspace_id="56354") as (url, runtime):
        answer = send(url, doc)
        assert answer.status_code == 200
        assert answer.json() == {"status": "accepted", "event_id": doc["event_id"]}
        wait_until(lambda: box.events, what="the event in the sandbox")
    (event,) = box.events
    assert event["event_type"] == "Email Clicked"
    assert event["insert_id"] == doc["event_id"]
    assert event["user_id"] == "cust_000123"
    assert event["time"] == 1735689600 * 1000
    assert event["groups"] == {"account_id": ["1"], "workspace": ["56354"]}
    assert event["event_properties"]["href"] == "https://shop.example.com/cart"
    assert event["event_properties"]["email"] == "ada@example.com"


def test_redelivered_event_is_stored_and_sent_once(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    doc = webhook()
    with loopwire() as (url, runtime):
        first, second = send(url, doc), send(url, doc)
        assert first.json()["status"] == "accepted"
        assert second.status_code == 200 and second.json()["status"] == "duplicate"
        wait_until(lambda: delivered(runtime) == 1, what="delivery")
        assert runtime.store.event_count() == 1
        metrics = httpx.get(f"{url}/metrics").text
    assert len(box.events) == 1
    assert 'loopwire_ingest_duplicate_events_total{source="customerio"} 1.0' in metrics


def test_rotated_keys_both_verify(store_section: StoreSection, sandbox: Any, clock: Clock) -> None:
    from loopwire.app import create_app
    from tests.conftest import make_config
    from tests.helpers.servers import serve_app

    config = make_config(store_section, sandbox[1], signing_keys=["old-key", "${CIO_KEY}"])
    with serve_app(create_app(config, clock=clock)) as url:
        assert send(url, webhook(), key="old-key").status_code == 200
        assert send(url, webhook(), key=SIGNING_KEY).status_code == 200
        assert send(url, webhook(), key="neither").status_code == 401


def test_bad_input_gets_precise_4xx_and_writes_nothing(loopwire: Any) -> None:
    with loopwire() as (url, runtime):
        good = encode(webhook())
        endpoint = f"{url}/webhooks/customerio"
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (good, {"Content-Type": "application/json"}, 401, "missing_signature"),
            (
                good,
                {**signed_headers(SIGNING_KEY, good), "X-CIO-Signature": "0" * 64},
                401,
                "invalid_signature",
            ),
            (good, signed_headers("wrong-key", good), 401, "invalid_signature"),
            (good, signed_headers(SIGNING_KEY, good, now=1_000_000), 401, "stale_timestamp"),
            (b"{not json", signed_headers(SIGNING_KEY, b"{not json"), 400, "invalid_json"),
            (b"[1, 2]", signed_headers(SIGNING_KEY, b"[1, 2]"), 400, "invalid_json"),
        ]
        for field in ("event_id", "object_type", "metric", "timestamp"):
            doc = webhook()
            del doc[field]
            body = encode(doc)
            cases.append((body, signed_headers(SIGNING_KEY, body), 400, "missing_field"))
        bad_ts = encode(webhook(timestamp="abc"))  # type: ignore[arg-type]
        cases.append((bad_ts, signed_headers(SIGNING_KEY, bad_ts), 400, "invalid_field"))
        huge = encode(webhook(content="x" * 1_100_000))
        cases.append((huge, signed_headers(SIGNING_KEY, huge), 413, "body_too_large"))
        for body, headers, status, code in cases:
            answer = post(endpoint, body, headers)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), code
            assert answer.json()["error"]["message"]
        assert runtime.store.event_count() == 0
        metrics = httpx.get(f"{url}/metrics").text
    assert (
        'loopwire_ingest_rejected_requests_total{code="invalid_signature",source="customerio"} 2.0' in metrics
    )
    assert 'loopwire_ingest_rejected_requests_total{code="missing_field",source="customerio"} 4.0' in metrics


def test_signature_is_checked_over_the_raw_bytes(loopwire: Any) -> None:
    with loopwire() as (url, runtime):
        body = b'{"event_id": "01J9Z7B1B2C3D4E5F6G7H8J9KN", "object_type": "email", "metric": "sent",  "timestamp": 1}'
        headers = signed_headers(SIGNING_KEY, body)
        reserialized = encode(httpx.Response(200, content=body).json())
        assert post(f"{url}/webhooks/customerio", reserialized, headers).status_code == 401
        assert post(f"{url}/webhooks/customerio", body, headers).status_code == 200


def test_unknown_pair_is_stored_and_counted(loopwire: Any, sandbox: Any) -> None:
    with loopwire() as (url, runtime):
        assert send(url, webhook("carrier_pigeon", "landed")).status_code == 200
        assert runtime.store.event_count() == 1
        metrics = httpx.get(f"{url}/metrics").text
    assert 'loopwire_ingest_events_total{known="no",source="customerio"} 1.0' in metrics


def test_person_without_id_or_device_is_skipped_with_reason(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    with loopwire() as (url, runtime):
        send(url, webhook(user_id=None))
        wait_until(lambda: runtime.store.counts().get("amplitude", {}).get("skipped"), what="the skip")
        (row,) = runtime.store.reasons("skipped")
    assert box.events == []
    assert row[0] == "amplitude" and row[2] == 1 and row[1]


def fault(sandbox_url: str, rule: dict[str, Any]) -> None:
    httpx.post(f"{sandbox_url}/_sandbox/amplitude/faults", json=rule).raise_for_status()


def test_5xx_is_retried_until_delivered_once(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 503, "times": 2})
    with loopwire() as (url, runtime):
        docs = [webhook(user_id=f"user-{i:04d}") for i in range(5)]
        for doc in docs:
            send(url, doc)
        wait_until(lambda: delivered(runtime) == 5, what="delivery after two 503s")
    assert sorted(e["insert_id"] for e in box.events) == sorted(d["event_id"] for d in docs)
    assert [r["status"] for r in box.requests].count(503) == 2


def test_timeout_is_retried_without_duplicates(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"slow_ms": 1500, "times": 1})
    retry = {"initial_backoff": "50ms", "max_backoff": "100ms", "max_age": "1h", "timeout": "500ms"}
    with loopwire(retry=retry) as (url, runtime):
        doc = webhook()
        send(url, doc)
        wait_until(lambda: delivered(runtime) == 1, what="delivery after a timeout")
        wait_until(lambda: len(box.requests) >= 2, what="the slow request to finish")
    assert [e["insert_id"] for e in box.events] == [doc["event_id"]]


def test_413_splits_the_batch(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 413, "times": 1})
    with loopwire(batching={"linger": "300ms"}) as (url, runtime):
        docs = [webhook(user_id=f"user-{i:04d}") for i in range(8)]
        for doc in docs:
            send(url, doc)
        wait_until(lambda: delivered(runtime) == 8, what="delivery after a split")
    statuses = [r["status"] for r in box.requests]
    assert statuses[0] == 413 and statuses.count(200) >= 2
    assert len(box.events) == 8


def test_400_dead_letters_exactly_the_named_events(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 400, "invalid_indexes": [1], "times": 1})
    with loopwire(batching={"linger": "300ms"}) as (url, runtime):
        docs = [webhook(user_id=f"user-{i:04d}") for i in range(3)]
        for doc in docs:
            send(url, doc)
        wait_until(lambda: delivered(runtime) == 2, what="delivery of the valid events")
        dead = runtime.store.dead_letters("amplitude")
    assert len(dead) == 1
    assert dead[0]["event_id"] == docs[1]["event_id"]
    assert dead[0]["response"].startswith("400 ")
    assert sorted(e["insert_id"] for e in box.events) == sorted([docs[0]["event_id"], docs[2]["event_id"]])


def test_429_backs_off_only_the_throttled_user(loopwire: Any, sandbox: Any, clock: Clock) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"throttle_ids": ["user-slow"], "times": 1})
    with loopwire(batching={"linger": "300ms"}) as (url, runtime):
        slow, fast = webhook(user_id="user-slow"), webhook(user_id="user-fast")
        send(url, slow)
        send(url, fast)
        wait_until(lambda: delivered(runtime) == 1, what="the unthrottled user")
        assert [e["user_id"] for e in box.events] == ["user-fast"]
        pending = runtime.store.counts()["amplitude"]["pending"]
        assert pending == 1  # the throttled user waits its 30 s
        clock.advance(31)
        wait_until(lambda: delivered(runtime) == 2, what="the throttled user after 30 s")
    assert sorted(e["user_id"] for e in box.events) == ["user-fast", "user-slow"]


def test_past_max_age_an_event_is_dead_lettered_with_its_last_response(
    loopwire: Any, sandbox: Any, clock: Clock
) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 500, "times": 1000})
    retry = {"initial_backoff": "20ms", "max_backoff": "50ms", "max_age": "300ms", "timeout": "2s"}
    with loopwire(retry=retry) as (url, runtime):
        send(url, webhook())
        wait_until(lambda: runtime.store.dead_letters("amplitude"), what="the dead letter")
        (dead,) = runtime.store.dead_letters("amplitude")
        assert "gave up after" in dead["reason"] and "retry.max_age" in dead["reason"]
        assert dead["response"].startswith("500")
        httpx.delete(f"{sandbox_url}/_sandbox/amplitude/faults").raise_for_status()
        assert runtime.store.replay_dead(int(clock() * 1000), "amplitude") == 1
        wait_until(lambda: delivered(runtime) == 1, timeout=15, what="the replayed letter")
    assert len(box.events) == 1


def test_invalid_api_key_dead_letters_with_advice(store_section: StoreSection, clock: Clock) -> None:
    from loopwire.app import create_app
    from loopwire.sandbox.amplitude import AmplitudeSandbox
    from tests.conftest import make_config
    from tests.helpers.servers import serve_app

    box = AmplitudeSandbox(api_keys=frozenset({"some-other-key"}))
    with serve_app(box.app) as sandbox_url:
        config = make_config(store_section, sandbox_url)
        app = create_app(config, clock=clock)
        with serve_app(app) as url:
            send(url, webhook())
            runtime = app.state.runtime
            wait_until(lambda: runtime.store.dead_letters("amplitude"), what="the dead letter")
            (dead,) = runtime.store.dead_letters("amplitude")
    assert "api" in dead["reason"].lower()
    assert API_KEY not in dead["reason"]


def test_health_status_and_console(loopwire: Any) -> None:
    with loopwire() as (url, runtime):
        send(url, webhook())
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        wait_until(lambda: delivered(runtime) == 1, what="delivery")
        with login(url) as operator:
            status = operator.get("/api/status").json()
            page = operator.get("/").text
        spec = httpx.get(f"{url}/openapi.json").json()
    assert status["events"] == 1 and status["destinations"]["amplitude"]["delivered"] == 1
    assert "loopwire" in page and API_KEY not in page and SIGNING_KEY not in page
    assert {"/webhooks/customerio", "/healthz", "/metrics", "/api/status", "/"} <= set(spec["paths"])


def test_one_webhook_reaches_amplitude_and_segment(loopwire: Any, sandbox: Any) -> None:
    from loopwire.sandbox.segment import SegmentSandbox
    from tests.helpers.servers import serve_app

    box, _ = sandbox
    segment = SegmentSandbox(write_keys=frozenset({"seg-write-key"}))
    with serve_app(segment.app) as segment_url:
        destination = {
            "type": "segment",
            "write_key": "${SEG_KEY}",
            "region": "us",
            "base_url": segment_url,
            "batching": {"linger": "10ms"},
            "retry": {"initial_backoff": "50ms", "max_backoff": "200ms", "max_age": "1h", "timeout": "2s"},
        }
        with loopwire(extra_destinations={"segment": destination}, env={"SEG_KEY": "seg-write-key"}) as (
            url,
            runtime,
        ):
            doc = webhook("email", "delivered")
            send(url, doc)
            wait_until(
                lambda: (
                    runtime.store.counts().get("segment", {}).get("delivered") == 1
                    and delivered(runtime) == 1
                ),
                what="delivery to both",
            )
    (message,) = segment.messages
    assert message["event"] == "Email Delivered" and message["messageId"] == doc["event_id"]
    assert message["userId"] == "cust_000123"
    assert [e["event_type"] for e in box.events] == ["Email Delivered"]


def test_429_with_retry_after_waits_as_told(loopwire: Any, sandbox: Any, clock: Clock) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 429, "retry_after": 120, "times": 1})
    with loopwire() as (url, runtime):
        send(url, webhook())
        wait_until(lambda: box.requests, what="the throttled request")
        wait_until(
            lambda: runtime.store.counts()["amplitude"]["pending"] == 1, what="the retry to be scheduled"
        )
        due = runtime.store.next_due_ms("amplitude")
        assert due is not None and due - clock() * 1000 > 100_000  # Retry-After: 120 s, not the 30 s default
        clock.advance(121)
        wait_until(lambda: delivered(runtime) == 1, what="delivery after Retry-After")
    assert len(box.events) == 1


def test_401_is_dead_lettered_not_retried(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    fault(sandbox_url, {"status": 401, "times": 1})
    with loopwire() as (url, runtime):
        send(url, webhook())
        wait_until(lambda: runtime.store.dead_letters("amplitude"), what="the dead letter")
    assert [r["status"] for r in box.requests] == [401]


def test_a_paused_destination_queues_and_sends_after_resuming(loopwire: Any, sandbox: Any) -> None:
    box, _ = sandbox
    docs = [webhook(), webhook("sms", "delivered")]
    with loopwire(paused=True) as (url, runtime):
        assert all(send(url, doc).status_code == 200 for doc in docs)
        with login(url) as operator:
            status = operator.get("/api/status").json()
            console = operator.get("/destinations").text
        time.sleep(0.5)  # a running courier would have claimed them by now (linger is 0.25 s)
        assert runtime.store.counts()["amplitude"]["pending"] == 2
    assert status["paused"] == ["amplitude"] and status["destinations"]["amplitude"]["pending"] == 2
    assert "paused by the config" in console
    assert box.events == []
    with loopwire() as (url, runtime):  # the same store, unpaused: the queue drains
        wait_until(lambda: delivered(runtime) == 2, what="delivery after resuming")
        with login(url) as operator:
            assert operator.get("/api/status").json()["paused"] == []
    assert sorted(e["insert_id"] for e in box.events) == sorted(d["event_id"] for d in docs)


def test_it_runs_on_the_store_the_config_names(loopwire: Any, store_section: StoreSection) -> None:
    with loopwire() as (url, runtime):
        assert runtime.store.dialect == store_section.section.get("type", "sqlite")
        assert all(dsn not in runtime.store.path for dsn in store_section.env.values())
        assert send(url, webhook()).status_code == 200
        wait_until(lambda: delivered(runtime) == 1, what="the delivery")
