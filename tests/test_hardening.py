"""Issue 12, item by item: bad input gets a precise 4xx, touches no other request and writes nothing;
readiness; the store's file modes; bounded ids. Each test here failed on the main of 2026-12-05."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from loopwire import jsonsafe
from loopwire.app import Runtime
from loopwire.settings import Duration
from loopwire.store import SQLiteStore
from tests.conftest import API_KEY, SIGNING_KEY, wait_until
from tests.helpers.bridge import BASIC, WRITE_KEY, serve_bridge
from tests.helpers.cio import encode, signed_headers, webhook
from tests.helpers.servers import free_port

DEEP_ARRAYS = b'{"event_id":"01J9Z7B1B2C3D4E5F6G7H8J9KN","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
DEEP_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def _webhook_bytes(**fields: Any) -> bytes:
    doc = webhook()
    doc.update(fields)
    return encode(doc)


POISON_WEBHOOKS = {
    "invalid_utf8": (webhook_bytes := _webhook_bytes(event_id="01J9Z7B1B2C3D4E5F6G7H8J9KA")).replace(
        b"Your cart", b"Your \xff\xfe cart"
    ),
    "deep_arrays": DEEP_ARRAYS,
    "deep_objects": DEEP_OBJECTS,
    "timestamp_1e308": webhook_bytes.replace(b'"timestamp":1735689600', b'"timestamp":1e308'),
    "timestamp_10^400": webhook_bytes.replace(b'"timestamp":1735689600', b'"timestamp":1' + b"0" * 400),
    "timestamp_10^30": webhook_bytes.replace(b'"timestamp":1735689600', b'"timestamp":1' + b"0" * 30),
    "timestamp_inf": _webhook_bytes(timestamp="inf"),
    "timestamp_nan": _webhook_bytes(timestamp="NaN"),
    "timestamp_negative": _webhook_bytes(timestamp=-5),
}
EXPECTED_CODES = {
    "invalid_utf8": "invalid_utf8",
    "deep_arrays": "too_deep",
    "deep_objects": "too_deep",
    "timestamp_1e308": "invalid_field",
    "timestamp_10^400": "number_out_of_range",
    "timestamp_10^30": "number_out_of_range",
    "timestamp_inf": "invalid_field",
    "timestamp_nan": "invalid_field",
    "timestamp_negative": "invalid_field",
}


@pytest.fixture(params=[True, False], ids=["ingest_process", "in_process"])
def bridge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Runtime]]:
    with serve_bridge(tmp_path, ingest_process=request.param) as served:
        yield served


def _signed_post(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return client.post(f"{url}/webhooks/customerio", content=body, headers=signed_headers(SIGNING_KEY, body))


def _starts(runtime: Runtime) -> int:
    return runtime.ingest_process.starts if runtime.ingest_process is not None else 1


# -- 1. signed poison webhooks ---------------------------------------------------------------------
def test_signed_poison_webhooks_get_a_precise_400_and_crash_nothing(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    with httpx.Client(timeout=10) as client:
        for name, body in POISON_WEBHOOKS.items():
            response = _signed_post(client, url, body)
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["code"] == EXPECTED_CODES[name], name
        assert _signed_post(client, url, encode(webhook())).status_code == 200
    assert runtime.store.event_count() == 1
    assert _starts(runtime) == 1  # the ingest process never died


def test_a_poison_webhook_between_valid_ones_changes_nothing_for_them(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    statuses: list[int] = []
    lock = threading.Lock()

    def valid(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            for n in range(40):
                status = _signed_post(client, url, encode(webhook(user_id=f"u{worker}-{n}"))).status_code
                with lock:
                    statuses.append(status)

    def poison() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(4):
                for body in POISON_WEBHOOKS.values():
                    assert _signed_post(client, url, body).status_code == 400

    threads = [threading.Thread(target=valid, args=(w,)) for w in range(8)] + [
        threading.Thread(target=poison)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 320
    assert runtime.store.event_count() == 320
    assert _starts(runtime) == 1


# -- 2. unauthenticated garbage: a 4xx before any parsing, and the connection stays usable --------
UNAUTHENTICATED = [
    ("/v1/track", b'{"writeKey":"\xff"}', 401),
    ("/v1/batch", b'{"writeKey":"\xff","batch":[]}', 401),
    ("/v1/batch", b'{"batch":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 401),
    ("/v1/identify", b"\xff\xfe\xfd", 401),
    ("/2/httpapi", b'{"api_key":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("/batch", b'{"events":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("/2/httpapi", b'{"api_key":"\xff"}', 400),
]


@pytest.mark.parametrize(("path", "body", "status"), UNAUTHENTICATED)
def test_unauthenticated_garbage_gets_a_4xx_and_the_connection_is_kept(
    bridge: tuple[str, Runtime], path: str, body: bytes, status: int
) -> None:
    url, runtime = bridge
    with httpx.Client(timeout=10) as client:
        response = client.post(url + path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        if path.startswith("/v1/"):
            assert response.json()["code"] in ("missing_write_key", "invalid_write_key")
        else:
            assert response.json()["code"] == 400
            assert "Invalid API key: \xff" not in response.text
        # the same keep-alive connection answers the next request
        assert client.get(f"{url}/healthz").status_code == 200
    assert runtime.store.event_count() == 0


def test_authenticated_deep_or_invalid_bodies_get_a_precise_400(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    deep = b"[" * 2_000 + b"]" * 2_000
    with httpx.Client(timeout=10, headers={"Content-Type": "application/json"}) as client:
        segment = client.post(f"{url}/v1/batch", content=b'{"batch":' + deep + b"}", headers=BASIC)
        assert (segment.status_code, segment.json()["code"]) == (400, "too_deep")
        segment = client.post(f"{url}/v1/track", content=b'{"event":"\xff"}', headers=BASIC)
        assert (segment.status_code, segment.json()["code"]) == (400, "invalid_utf8")
        for depth in (200, 2_000):  # past ~1,000 even the key cannot be read: no detail then
            nested = b"[" * depth + b"]" * depth
            body = b'{"api_key":"' + API_KEY.encode() + b'","events":' + nested + b"}"
            amplitude = client.post(f"{url}/2/httpapi", content=body)
            assert amplitude.status_code == 400
            assert amplitude.json()["error"] == "Invalid JSON request body"
        assert (
            "64 levels"
            in client.post(f"{url}/batch", content=body.replace(nested, b"[" * 200 + b"]" * 200)).json()[
                "detail"
            ]
        )
        form = {"api_key": API_KEY, "identification": '{"user_id":"user-1","user_properties":' + "[" * 5000}
        identify = client.post(f"{url}/identify", data=form, headers={"Content-Type": ""})
        assert identify.status_code == 400
    assert runtime.store.event_count() == 0


# -- 3. out-of-range numbers: a permanent 400 naming the field, never a retryable 5xx ----------------
@pytest.mark.parametrize("moment", [10**30, 2**63, 253_402_300_800_000, -1])
def test_out_of_range_time_is_a_400_naming_the_field(bridge: tuple[str, Runtime], moment: int) -> None:
    url, runtime = bridge
    events = [
        {"event_type": "Viewed", "user_id": "user-0001", "time": 1_735_689_600_000},
        {"event_type": "Viewed", "user_id": "user-0001", "time": moment},
    ]
    response = httpx.post(
        f"{url}/2/httpapi", content=msgspec.json.encode({"api_key": API_KEY, "events": events})
    )
    assert response.status_code == 400, response.text
    assert response.json()["events_with_invalid_fields"] == {"time": [1]}
    assert runtime.store.event_count() == 0


def test_out_of_range_numbers_elsewhere_are_a_400_with_the_path(bridge: tuple[str, Runtime]) -> None:
    url, _ = bridge
    body = b'{"userId":"u-1","event":"Order Completed","properties":{"total":' + b"9" * 25 + b"}}"
    response = httpx.post(
        f"{url}/v1/track", content=body, headers={**BASIC, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": "number_out_of_range",
        "message": "the integer at `$.properties.total` is outside the 64-bit range",
    }


# -- 4. readiness (disk full: tests/test_disk_full.py) ------------------------------------------------
def test_readyz_reports_the_store_the_ingest_process_and_the_backlog(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert body["checks"]["store"] == {"ok": True}
    assert set(body["checks"]["backlog"]) == {"amplitude"}
    if runtime.ingest_process is not None:
        assert body["checks"]["ingest_process"] == {"ok": True}
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_readyz_fails_while_the_ingest_process_is_down(tmp_path: Path) -> None:
    with serve_bridge(tmp_path) as (url, runtime):
        assert runtime.ingest_process is not None and runtime.ingest_process.pid is not None
        os.kill(runtime.ingest_process.pid, 9)
        wait_until(
            lambda: not runtime.ingest_process or not runtime.ingest_process.up, what="the crash to be seen"
        )
        runtime._ready = None  # no cached answer from before the crash
        down = httpx.get(f"{url}/readyz")
        if down.status_code == 503:  # unless the restart (1 s) already happened
            assert "ingest_process" in down.json()["failing"]
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=20, what="the restart")


def test_readyz_fails_when_a_destination_falls_behind(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: every delivery is retried
    age = Duration(0.05)
    with serve_bridge(tmp_path, destination_url=unreachable, ready_max_backlog_age=age) as (url, runtime):
        assert _signed_post(httpx.Client(), url, encode(webhook())).status_code == 200
        time.sleep(0.1)
        behind = httpx.get(f"{url}/readyz")
        assert behind.status_code == 503
        body = behind.json()
        assert body["failing"] == ["backlog:amplitude"]
        assert body["checks"]["backlog"]["amplitude"]["oldest_age_seconds"] >= 0.05
        assert body["checks"]["store"] == {"ok": True}


# -- 5. size and key before parsing, everywhere -------------------------------------------------------
def test_batch_obeys_max_body_bytes(tmp_path: Path) -> None:
    with serve_bridge(tmp_path, max_body_bytes=100_000) as (url, runtime):
        events = [
            {"event_type": "Viewed", "user_id": f"user-{n:06d}", "event_properties": {"p": "x" * 300}}
            for n in range(2_000)
        ]
        body = msgspec.json.encode({"api_key": "not-a-key", "events": events})
        assert len(body) > 700_000
        response = httpx.post(f"{url}/batch", content=body)
        assert response.status_code == 413
        assert response.json() == {"code": 413, "error": "Payload too large"}
        segment = httpx.post(
            f"{url}/v1/batch",
            content=b'{"batch":[' + b'"x",' * 30_000 + b'"x"]}',
            headers={**BASIC, "Content-Type": "application/json"},
        )
        # Segment answers a too-large body with 400 (segment.md §4), and so does loopwire
        assert (segment.status_code, segment.json()["code"]) == (400, "payload_too_large")
        assert runtime.store.event_count() == 0


def test_the_key_is_checked_before_the_body_is_parsed(
    bridge: tuple[str, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = bridge
    parsed: list[int] = []
    real = jsonsafe.decode

    def counting(body: bytes | str) -> Any:
        parsed.append(len(body))
        return real(body)

    monkeypatch.setattr(jsonsafe, "decode", counting)
    events = [{"event_type": "Viewed", "user_id": "user-0001"}]
    wrong_amplitude = msgspec.json.encode({"api_key": "not-a-key", "events": events})
    for path in ("/2/httpapi", "/batch"):
        response = httpx.post(url + path, content=wrong_amplitude)
        assert response.status_code == 400 and response.json()["error"] == "Invalid API key: ***"
    wrong_segment = msgspec.json.encode({"writeKey": "not-a-key", "userId": "u-1", "event": "Viewed"})
    assert (
        httpx.post(
            f"{url}/v1/track", content=wrong_segment, headers={"Content-Type": "application/json"}
        ).status_code
        == 401
    )
    assert parsed == []
    right = msgspec.json.encode({"api_key": API_KEY, "events": events})
    assert httpx.post(f"{url}/2/httpapi", content=right).status_code == 200
    assert parsed == [len(right)]


# -- 7. the store is private -----------------------------------------------------------------------
def test_the_store_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = SQLiteStore(tmp_path / "private.db")
        store.run(lambda conn: conn.execute("INSERT INTO cursors (name, seq) VALUES ('x', 1)"))
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE((tmp_path / f"private.db{suffix}").stat().st_mode)
            assert mode == 0o600, (suffix, oct(mode))
        store.close()
    finally:
        os.umask(old)


def test_an_existing_readable_store_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="loopwire.store"):
        SQLiteStore(path).close()
    assert any("chmod 600" in record.getMessage() for record in caplog.records)


# -- 8. every id and name bounded by the vendors' limits --------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": "e" * 10_000}, "event_id"),
        ({"event_id": "e" * 1_025}, "event_id"),
        ({"metric": "m" * 101}, "metric"),
        ({"object_type": "o" * 101}, "object_type"),
    ],
)
def test_webhook_ids_and_names_are_bounded(
    bridge: tuple[str, Runtime], fields: dict[str, Any], field: str
) -> None:
    url, runtime = bridge
    response = httpx.post(
        f"{url}/webhooks/customerio",
        content=(body := _webhook_bytes(**fields)),
        headers=signed_headers(SIGNING_KEY, body),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "field_too_long" and f"`{field}`" in error["message"]
    assert runtime.store.event_count() == 0


def test_webhook_person_id_and_email_are_bounded(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    with httpx.Client(timeout=10) as client:
        too_long_id = encode(webhook(user_id="u" * 151))
        assert _signed_post(client, url, too_long_id).json()["error"]["code"] == "field_too_long"
        too_long_email = encode(webhook(email="a" * 1_000 + "@example.com"))
        assert _signed_post(client, url, too_long_email).json()["error"]["code"] == "field_too_long"
        at_the_limits = encode(webhook(event_id="e" * 1_024, user_id="u" * 150, metric="m" * 100))
        assert _signed_post(client, url, at_the_limits).status_code == 200
    assert runtime.store.event_count() == 1


def test_amplitude_and_segment_ids_are_bounded(bridge: tuple[str, Runtime]) -> None:
    url, runtime = bridge
    long_id = "u" * 1_025
    for field in ("user_id", "device_id", "event_type", "insert_id"):
        event = {"event_type": "Viewed", "user_id": "user-0001", field: long_id}
        body = msgspec.json.encode({"api_key": API_KEY, "events": [event]})
        response = httpx.post(f"{url}/2/httpapi", content=body)
        assert response.status_code == 400, field
        assert response.json()["events_with_invalid_fields"] == {field: [0]}
    for field in ("userId", "anonymousId", "event"):
        message = {"userId": "u-1", "event": "Viewed", field: long_id}
        response = httpx.post(
            f"{url}/v1/track",
            content=msgspec.json.encode(message),
            headers={**BASIC, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, field
        assert response.json()["code"] == "field_too_long"
    assert runtime.store.event_count() == 0
    assert WRITE_KEY
