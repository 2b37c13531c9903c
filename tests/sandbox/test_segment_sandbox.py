"""The Segment sandbox over real HTTP: documented answers, silent drops made visible, limits, dedupe,
rate limit, faults, and the official `segment-analytics-python` library as a client. Time is an
injected clock; nothing sleeps a fixed amount (the library's own backoff is real, and kept short)."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from starlette.types import Receive, Scope, Send

from loopwire.contracts.segment import write_key_hash
from loopwire.sandbox.segment import SegmentSandbox
from tests.helpers import reference
from tests.helpers.servers import serve_app

NOW = 1_741_083_300.0
KEY = "SEGMENT_WRITE_KEY_PLACEHOLDER"  # the reference fixtures' key
LIB_KEY = "WRITE_KEY_EXAMPLE"  # the key in the captured library request
KEYS = frozenset({KEY, LIB_KEY, "test-key"})
H = write_key_hash(KEY)
CONTROL = "/_sandbox/segment"
OK = {"success": True}


REFERENCE = reference.FIXTURES / "segment"


def fixture(name: str) -> Any:
    return json.loads((REFERENCE / name).read_text())


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()
SANDBOX = SegmentSandbox(write_keys=KEYS, clock=CLOCK)
HEADERS: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request, for library checks


async def _capturing(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        HEADERS.append((scope["path"], {k.decode().lower(): v.decode() for k, v in scope["headers"]}))
    await SANDBOX.app(scope, receive, send)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_app(_capturing) as url:
        yield url


@pytest.fixture
def sb() -> SegmentSandbox:
    SANDBOX.reset()
    HEADERS.clear()
    CLOCK.now = NOW
    return SANDBOX


@pytest.fixture
def client(base_url: str, sb: SegmentSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def encode(doc: Any) -> bytes:
    return msgspec.json.encode(doc)


def post(client: httpx.Client, path: str, doc: Any, **headers: str) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else encode(doc)
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def basic(key: str, colon: bool = True) -> str:
    return "Basic " + base64.b64encode(f"{key}{':' if colon else ''}".encode()).decode()


def stored(doc: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    """What the sandbox keeps of a message: as sent, without the key, plus the key's hash."""
    return {**{k: v for k, v in doc.items() if k != "writeKey"}, "_write_key_hash": write_key_hash(key)}


def track(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": f"user-{n}", "event": "Viewed", "messageId": f"m-{n}", **fields}


def drops(sb: SegmentSandbox) -> list[tuple[str, int]]:
    return [(d["reason"], d["index"]) for d in sb.dropped]


# ---- accepted: the reference fixtures ------------------------------------------------------------


@pytest.mark.parametrize("call", ["identify", "track", "page", "screen", "group", "alias"])
def test_reference_single_calls_are_accepted_and_stored_as_sent(
    client: httpx.Client, sb: SegmentSandbox, call: str
) -> None:
    doc = fixture(f"{call}.json")
    response = post(client, f"/v1/{call}", doc)
    assert (response.status_code, response.json()) == (200, OK)
    assert response.headers["content-type"] == "application/json"
    assert sb.messages == [stored(doc)]
    assert sb.dropped == []
    assert sb.requests == [{"path": f"/v1/{call}", "status": 200, "messages": 1, "time": NOW}]


def test_reference_batch_merges_envelope_context_and_integrations(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    doc = fixture("batch.json")
    assert post(client, "/v1/batch", doc).json() == OK
    context = doc["context"]
    items = doc["batch"]
    assert sb.messages == [
        stored({**items[0], "context": context, "integrations": {"All": True}}),
        stored({**items[1], "context": context, "integrations": {"All": True}}),
        # the item's own integrations win key by key over the envelope's (§3, Batch)
        stored({**items[2], "context": context, "integrations": {"All": False, "Amplitude": True}}),
    ]
    assert sb.requests == [{"path": "/v1/batch", "status": 200, "messages": 3, "time": NOW}]


def test_library_capture_is_accepted_with_its_nulls_and_alias(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    doc = fixture("analytics_python_batch.json")
    wire = fixture("analytics_python_request_headers.json")
    headers = {
        k: v for k, v in wire["headers"].items() if k in ("Content-Type", "Authorization", "User-Agent")
    }
    response = client.post(wire["path"], content=encode(doc), headers=headers)
    assert response.json() == OK
    assert sb.messages == [stored(item, LIB_KEY) for item in doc["batch"]]
    assert [m["type"] for m in sb.messages] == ["identify", "track", "group", "page", "screen", "alias"]


# ---- silently dropped, but visible here ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("invalid_track_no_identity.json", "no_user_anon_id", "userId or anonymousId is required"),
        ("invalid_track_no_event.json", "missing_event", "track needs an event name"),
    ],
)
def test_invalid_reference_payloads_get_200_and_are_dropped_with_the_reason(
    client: httpx.Client, sb: SegmentSandbox, name: str, reason: str, detail: str
) -> None:
    doc = fixture(name)
    response = post(client, "/v1/track", doc)
    assert (response.status_code, response.json()) == (200, OK)  # what production answers (§5)
    assert sb.messages == []
    expected = {"reason": reason, "detail": detail, "path": "/v1/track", "index": 0, "time": NOW}
    assert sb.dropped == [{**expected, "message": stored(doc)}]
    listed = client.get(f"{CONTROL}/dropped").json()
    assert listed == {"count": 1, "dropped": [{**expected, "message": stored(doc)}]}


def _with_key(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "writeKey": KEY}


@pytest.mark.parametrize(
    ("path", "message", "reason"),
    [
        ("/v1/identify", {"userId": "", "anonymousId": None, "traits": {}}, "no_user_anon_id"),
        ("/v1/page", {"userId": None, "name": "Home"}, "no_user_anon_id"),
        ("/v1/track", {"userId": {"id": 1}, "event": "Viewed"}, "no_user_anon_id"),
        ("/v1/track", {"userId": "u-1", "event": ""}, "missing_event"),
        ("/v1/track", {"userId": "u-1", "event": 42}, "missing_event"),
        ("/v1/group", {"userId": "u-1", "traits": {"name": "Initech"}}, "missing_group_id"),
        ("/v1/alias", {"previousId": "anon-1"}, "missing_user_id"),
        ("/v1/alias", {"userId": "u-1"}, "missing_previous_id"),
        ("/v1/alias", {"anonymousId": "anon-1", "userId": "u-1"}, "missing_previous_id"),
        ("/v1/track", track(timestamp="2025-03-04"), "invalid_timestamp"),
        ("/v1/track", track(timestamp="2025-03-04T10:15:30"), "invalid_timestamp"),  # no zone (§3)
        ("/v1/track", track(timestamp="2015-2-02T00:30:08.276Z"), "invalid_timestamp"),
        ("/v1/track", track(timestamp="2025-02-30T10:15:30Z"), "invalid_timestamp"),
        ("/v1/track", track(timestamp=1741083300), "invalid_timestamp"),
        ("/v1/track", track(sentAt="yesterday"), "invalid_timestamp"),
        ("/v1/track", track(messageId="x" * 100), "invalid_message_id"),  # "< 100 chars" (§4)
        ("/v1/track", track(messageId=7), "invalid_message_id"),
    ],
)
def test_each_message_rule_drops_behind_200(
    client: httpx.Client, sb: SegmentSandbox, path: str, message: dict[str, Any], reason: str
) -> None:
    assert post(client, path, _with_key(message)).json() == OK
    assert sb.messages == []
    assert drops(sb) == [(reason, 0)]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/track", {"anonymousId": "anon-1", "event": "Viewed"}),
        ("/v1/track", {"userId": 12345, "event": "Viewed"}),  # numbers are ids (the library stringifies)
        ("/v1/group", {"anonymousId": "anon-1", "groupId": 9}),
        ("/v1/alias", {"previousId": "anon-1", "userId": "u-1"}),
        ("/v1/screen", {"userId": "u-1"}),  # name is optional
        ("/v1/track", track(timestamp="2025-03-04T12:15:30+02:00")),
        ("/v1/track", track(timestamp="2025-03-04T10:15:30.123456789Z", sentAt="2025-03-04T10:15:31+0000")),
        ("/v1/track", track(messageId="x" * 99)),
    ],
)
def test_valid_edge_messages_are_stored(
    client: httpx.Client, sb: SegmentSandbox, path: str, message: dict[str, Any]
) -> None:
    assert post(client, path, _with_key(message)).json() == OK
    assert sb.dropped == []
    assert len(sb.messages) == 1


def test_the_path_decides_the_type_and_a_missing_message_id_is_minted(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    body = {"type": "identify", "userId": "u-1", "event": "Viewed", "writeKey": KEY}
    post(client, "/v1/track", body)
    post(client, "/v1/track", body)  # resent without a messageId: Segment mints a new one (§5)
    assert [m["type"] for m in sb.messages] == ["track", "track"]
    ids = [m["messageId"] for m in sb.messages]
    assert len(set(ids)) == 2 and all(len(i) == 36 for i in ids)


def test_batch_items_are_checked_one_by_one(client: httpx.Client, sb: SegmentSandbox) -> None:
    items = [
        track(0),
        {"userId": "u-1", "event": "no type"},
        {"type": "bogus", "userId": "u-2"},
        "not an object",
        track(4, userId=None),
        {"type": "alias", "previousId": "anon-5", "userId": "u-5"},  # alias goes through batch (§7)
    ]
    response = post(client, "/v1/batch", {"batch": items, "writeKey": KEY, "sentAt": "2025-03-04T10:15:31Z"})
    assert response.json() == OK
    assert [m["type"] for m in sb.messages] == ["track", "alias"]
    assert drops(sb) == [
        ("invalid_type", 1),
        ("invalid_type", 2),
        ("invalid_message", 3),
        ("no_user_anon_id", 4),
    ]
    assert sb.dropped[2]["message"] == "not an object"
    assert sb.requests[-1]["messages"] == 6


def test_an_invalid_batch_sent_at_drops_every_message_that_relies_on_it(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    items = [track(0), track(1, sentAt="2025-03-04T10:15:31Z")]
    post(client, "/v1/batch", {"batch": items, "writeKey": KEY, "sentAt": "10:15"})
    assert [m["messageId"] for m in sb.messages] == ["m-1"]
    assert drops(sb) == [("invalid_timestamp", 0)]


# ---- authentication (§2) -------------------------------------------------------------------------


def test_basic_auth_alone_with_or_without_the_colon(client: httpx.Client, sb: SegmentSandbox) -> None:
    assert post(client, "/v1/track", track(0), Authorization=basic("test-key")).json() == OK
    assert post(client, "/v1/track", track(1), Authorization=basic("test-key", colon=False)).json() == OK
    assert [m["_write_key_hash"] for m in sb.messages] == [write_key_hash("test-key")] * 2
    assert "writeKey" not in sb.messages[0]


def test_body_write_key_wins_over_basic(client: httpx.Client, sb: SegmentSandbox) -> None:
    post(client, "/v1/track", _with_key(track()), Authorization=basic("test-key"))
    assert sb.messages[0]["_write_key_hash"] == H


MISSING_KEY = {
    "code": "missing_write_key",
    "message": "No write key: send writeKey in the body, or HTTP Basic auth with the write key as username",
}


@pytest.mark.parametrize(
    ("body_key", "authorization"),
    [
        (None, None),
        ("", None),
        (123, None),
        (None, "Bearer some-oauth-token"),  # OAuth needs the key in the body too (§2)
        (None, "Basic !!!not-base64"),
        (None, basic("")),
    ],
)
def test_no_write_key_is_a_400(
    client: httpx.Client, sb: SegmentSandbox, body_key: Any, authorization: str | None
) -> None:
    body = track() if body_key is None else {**track(), "writeKey": body_key}
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(client, "/v1/track", body, **headers)
    assert (response.status_code, response.json()) == (400, MISSING_KEY)
    assert sb.messages == sb.dropped == []


def test_unknown_write_key_gets_200_and_every_message_is_dropped(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    secret = "not-a-known-key-0123456789"
    body = {"batch": [track(0), track(1)], "writeKey": secret}
    assert post(client, "/v1/batch", body).json() == OK
    assert sb.messages == []
    assert drops(sb) == [("invalid_write_key", 0), ("invalid_write_key", 1)]
    assert sb.dropped[0]["message"]["_write_key_hash"] == write_key_hash(secret)
    everything = json.dumps([sb.messages, sb.dropped, sb.requests, client.get(f"{CONTROL}/stats").json()])
    assert secret not in everything


def test_without_a_key_list_any_non_empty_key_works() -> None:
    open_box = SegmentSandbox(clock=CLOCK)
    with serve_app(open_box.app) as url, httpx.Client(base_url=url) as c:
        assert post(c, "/v1/track", {**track(), "writeKey": "whatever"}).json() == OK
        assert post(c, "/v1/track", {**track(1), "writeKey": ""}).status_code == 400
    assert len(open_box.messages) == 1


# ---- 400 answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected"),
    [
        ("/v1/track", b"", {}, {"code": "invalid_json", "message": "Request body is not valid JSON"}),
        (
            "/v1/track",
            b"{not json",
            {},
            {"code": "invalid_json", "message": "Request body is not valid JSON"},
        ),
        (
            "/v1/track",
            b"[1, 2]",
            {},
            {"code": "invalid_json", "message": "Request body must be a JSON object"},
        ),
        (
            "/v1/batch",
            b'{"writeKey": "test-key"}',
            {},
            {"code": "invalid_json", "message": "batch must be an array of messages"},
        ),
        (
            "/v1/batch",
            b'{"writeKey": "test-key", "batch": {"type": "track"}}',
            {},
            {"code": "invalid_json", "message": "batch must be an array of messages"},
        ),
        (
            "/v1/track",
            b'{"writeKey": "test-key"}',
            {"Content-Type": "application/x-www-form-urlencoded"},
            {"code": "invalid_content_type", "message": "Content-Type must be application/json"},
        ),
        (
            "/v1/track",
            b'{"writeKey": "test-key"}',
            {"Content-Encoding": "br"},
            {"code": "invalid_content_encoding", "message": "Content-Encoding must be gzip or identity"},
        ),
        (
            "/v1/track",
            b"not gzip at all",
            {"Content-Encoding": "gzip"},
            {"code": "invalid_json", "message": "Request body is not valid gzip"},
        ),
        (
            "/v1/track",
            gzip.compress(b'{"a": 1}')[:-6],
            {"Content-Encoding": "gzip"},
            {"code": "invalid_json", "message": "Request body is truncated gzip"},
        ),
    ],
)
def test_malformed_requests_get_400_and_change_nothing(
    client: httpx.Client,
    sb: SegmentSandbox,
    path: str,
    body: bytes,
    headers: dict[str, str],
    expected: dict[str, str],
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
    assert (response.status_code, response.json()) == (400, expected)
    assert sb.messages == sb.dropped == []
    assert [r["status"] for r in sb.requests] == [400]


def test_a_request_without_content_type_is_refused(client: httpx.Client, sb: SegmentSandbox) -> None:
    response = client.post("/v1/track", content=encode(_with_key(track())))
    assert response.json()["code"] == "invalid_content_type"


def test_text_plain_and_gzip_bodies_are_accepted(client: httpx.Client, sb: SegmentSandbox) -> None:
    plain = client.post(
        "/v1/track", content=encode(_with_key(track(0))), headers={"Content-Type": "text/plain"}
    )
    assert plain.json() == OK
    zipped = gzip.compress(encode({"batch": [track(1), track(2)], "writeKey": KEY}))
    response = post(client, "/v1/batch", zipped, **{"Content-Encoding": "gzip"})
    assert response.json() == OK
    assert [m["messageId"] for m in sb.messages] == ["m-0", "m-1", "m-2"]


# ---- limits (§4) -----------------------------------------------------------------------------------


def _single_of_size(size: int) -> bytes:
    doc = _with_key(track(properties={"pad": ""}))
    doc["properties"]["pad"] = "x" * (size - len(encode(doc)))
    body = encode(doc)
    assert len(body) == size
    return body


def test_single_request_body_limit_is_32_kib(client: httpx.Client, sb: SegmentSandbox) -> None:
    assert post(client, "/v1/track", _single_of_size(32_768)).json() == OK
    response = post(client, "/v1/track", _single_of_size(32_769))
    assert (response.status_code, response.json()) == (
        400,
        {"code": "payload_too_large", "message": "Request body exceeds 32768 bytes"},
    )
    assert len(sb.messages) == 1


def _item_of_size(n: int, size: int) -> dict[str, Any]:
    item = track(n, properties={"pad": ""})
    item["properties"]["pad"] = "x" * (size - len(encode(item)))
    assert len(encode(item)) == size
    return item


def _batch_of_size(size: int) -> bytes:
    doc: dict[str, Any] = {"batch": [_item_of_size(i, 30_000) for i in range(16)], "writeKey": KEY}
    doc["batch"].append(_item_of_size(16, 200))
    doc["batch"][-1] = _item_of_size(16, 200 + size - len(encode(doc)))
    body = encode(doc)
    assert len(body) == size
    return body


def test_batch_body_limit_is_500_kb(client: httpx.Client, sb: SegmentSandbox) -> None:
    assert post(client, "/v1/batch", _batch_of_size(500_000)).json() == OK
    assert len(sb.messages) == 17
    response = post(client, "/v1/batch", _batch_of_size(500_001))
    assert (response.status_code, response.json()) == (
        400,
        {"code": "payload_too_large", "message": "Batch request exceeds 500000 bytes"},
    )
    assert len(sb.messages) == 17


def test_one_message_over_32_kib_fails_the_whole_batch(client: httpx.Client, sb: SegmentSandbox) -> None:
    fits = {"batch": [track(0), _item_of_size(1, 32_768)], "writeKey": KEY}
    assert post(client, "/v1/batch", fits).json() == OK
    over = {"batch": [track(2), _item_of_size(3, 32_769)], "writeKey": KEY}
    response = post(client, "/v1/batch", over)
    assert (response.status_code, response.json()) == (
        400,
        {"code": "payload_too_large", "message": "Message 1 of the batch exceeds 32768 bytes"},
    )
    assert [m["messageId"] for m in sb.messages] == ["m-0", "m-1"]


def test_gzip_limits_count_decoded_bytes(client: httpx.Client, sb: SegmentSandbox) -> None:
    inflating = gzip.compress(_batch_of_size(600_000))
    assert len(inflating) < 50_000
    response = post(client, "/v1/batch", inflating, **{"Content-Encoding": "gzip"})
    assert response.json() == {"code": "payload_too_large", "message": "Batch request exceeds 500000 bytes"}
    single = gzip.compress(_single_of_size(40_000))
    assert (
        post(client, "/v1/track", single, **{"Content-Encoding": "gzip"}).json()["code"]
        == "payload_too_large"
    )
    assert sb.messages == []


def test_batch_message_count_limit(client: httpx.Client, sb: SegmentSandbox) -> None:
    small = [{"type": "track", "userId": "u", "event": "e", "messageId": f"c-{i}"} for i in range(2_501)]
    assert post(client, "/v1/batch", {"batch": small[:2_500], "writeKey": KEY}).json() == OK
    assert len(sb.messages) == 2_500
    sb.reset()
    response = post(client, "/v1/batch", {"batch": small, "writeKey": KEY})
    assert (response.status_code, response.json()) == (200, OK)  # over the cap: still 200 (§4)
    assert sb.messages == []
    assert {d["reason"] for d in sb.dropped} == {"too_many_messages"}
    assert len(sb.dropped) == 2_501


# ---- dedupe (§5) -------------------------------------------------------------------------------------


def test_message_id_dedupe_is_global_and_lasts_24_hours(client: httpx.Client, sb: SegmentSandbox) -> None:
    post(client, "/v1/track", _with_key(track(1)))
    post(client, "/v1/batch", {"batch": [track(1, event="Retried"), track(2), track(2)], "writeKey": KEY})
    post(client, "/v1/track", {**track(1), "writeKey": "test-key"})  # another source: still a duplicate
    assert [(m["messageId"], m["event"]) for m in sb.messages] == [("m-1", "Viewed"), ("m-2", "Viewed")]
    assert drops(sb) == [
        ("duplicate_message_id", 0),
        ("duplicate_message_id", 2),
        ("duplicate_message_id", 0),
    ]
    assert sb.dropped[0]["detail"] == "messageId m-1 was already received"
    CLOCK.now += 86_399
    post(client, "/v1/track", _with_key(track(1)))
    assert len(sb.messages) == 2
    CLOCK.now += 1
    post(client, "/v1/track", _with_key(track(1, event="After a day")))
    assert sb.messages[-1]["event"] == "After a day"


def test_a_dropped_message_does_not_reserve_its_id(client: httpx.Client, sb: SegmentSandbox) -> None:
    post(client, "/v1/track", _with_key(track(1, event="")))
    post(client, "/v1/track", _with_key(track(1)))
    assert drops(sb) == [("missing_event", 0)]
    assert [m["messageId"] for m in sb.messages] == ["m-1"]


# ---- rate limit (§4) ---------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_reset() -> None:
    clock = Clock()
    box = SegmentSandbox(clock=clock, rate_limit=2)
    with serve_app(box.app) as url, httpx.Client(base_url=url) as c:
        assert post(c, "/v1/track", _with_key(track(0))).json() == OK
        clock.now += 0.5
        assert post(c, "/v1/track", _with_key(track(1))).json() == OK
        refused = post(c, "/v1/track", _with_key(track(2)))
        assert (refused.status_code, refused.json()) == (
            429,
            {"code": "too_many_requests", "message": "Too Many Requests"},
        )
        assert (refused.headers["Retry-After"], refused.headers["X-RateLimit-Reset"]) == ("1", "1")
        clock.now += 0.5  # the first request leaves the one-second window
        assert post(c, "/v1/track", _with_key(track(2))).json() == OK
    assert [r["status"] for r in box.requests] == [200, 200, 429, 200]
    assert [m["messageId"] for m in box.messages] == ["m-0", "m-1", "m-2"]
    with pytest.raises(ValueError, match="rate_limit"):
        SegmentSandbox(rate_limit=0)


# ---- faults ------------------------------------------------------------------------------------------


def add_fault(client: httpx.Client, rule: Any) -> None:
    response = client.post(f"{CONTROL}/faults", json=rule)
    assert response.status_code == 200, response.text


BODY = {"batch": [track(0), track(1)], "writeKey": KEY}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"code": "internal_server_error", "message": "Internal Server Error"}),
        (502, {"code": "bad_gateway", "message": "Bad Gateway"}),
        (503, {"code": "service_unavailable", "message": "Service Unavailable"}),
        (400, {"code": "bad_request", "message": "Bad Request"}),
    ],
)
def test_status_faults_answer_then_expire(
    client: httpx.Client, sb: SegmentSandbox, status: int, body: dict[str, str]
) -> None:
    add_fault(client, {"status": status, "times": 2, "retry_after": 7})
    for _ in range(2):
        response = post(client, "/v1/batch", BODY)
        assert (response.status_code, response.json()) == (status, body)
        assert response.headers["Retry-After"] == "7"
        assert "X-RateLimit-Reset" not in response.headers
    assert sb.messages == []
    assert post(client, "/v1/batch", BODY).json() == OK
    assert client.get(f"{CONTROL}/stats").json()["statuses"] == {str(status): 2, "200": 1}
    assert [r["messages"] for r in sb.requests] == [2, 2, 2]


def test_429_fault_carries_both_documented_headers(client: httpx.Client, sb: SegmentSandbox) -> None:
    add_fault(client, [{"status": 429}, {"status": 429, "retry_after": 30, "message": "slow down"}])
    first = post(client, "/v1/batch", BODY)
    assert (first.headers["Retry-After"], first.headers["X-RateLimit-Reset"]) == ("1", "1")
    second = post(client, "/v1/batch", BODY)
    assert second.json() == {"code": "too_many_requests", "message": "slow down"}
    assert (second.headers["Retry-After"], second.headers["X-RateLimit-Reset"]) == ("30", "30")


def test_faults_are_queued_in_order_and_filtered_by_endpoint(
    client: httpx.Client, sb: SegmentSandbox
) -> None:
    add_fault(client, {"status": 503, "endpoint": "track"})
    add_fault(client, {"status": 502})
    assert post(client, "/v1/batch", BODY).status_code == 502  # the track rule doesn't match batch
    assert post(client, "/v1/track", _with_key(track(5))).status_code == 503
    assert post(client, "/v1/batch", BODY).status_code == 200
    assert client.get(f"{CONTROL}/faults").json() == {"count": 0, "faults": []}


def test_slow_fault_delays_then_processes(client: httpx.Client, sb: SegmentSandbox) -> None:
    add_fault(client, {"slow_ms": 200})
    started = time.monotonic()
    assert post(client, "/v1/batch", BODY).json() == OK
    assert time.monotonic() - started >= 0.2
    assert len(sb.messages) == 2


def test_close_connection_fault_answers_nothing(client: httpx.Client, sb: SegmentSandbox) -> None:
    sb.add_fault(close_connection=True)
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, "/v1/batch", BODY)
    assert sb.messages == []
    assert post(client, "/v1/batch", BODY).json() == OK
    stats = client.get(f"{CONTROL}/stats").json()
    assert (stats["connections_closed"], stats["statuses"]) == (1, {"200": 1})
    assert [r["status"] for r in sb.requests] == [0, 200]


@pytest.mark.parametrize(
    "rule",
    [
        {"status": 200},
        {"status": 999},
        {"status": 503, "close_connection": True},
        {"times": 2},
        {"status": 503, "times": 0},
        {"status": 503, "surprise": 1},
        {"slow_ms": 10, "retry_after": 3},
        {"status": 503, "endpoint": "import"},
    ],
)
def test_bad_fault_rules_are_refused(client: httpx.Client, rule: dict[str, Any]) -> None:
    response = client.post(f"{CONTROL}/faults", json=rule)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert response.json()["message"].startswith("invalid fault rule")
    with pytest.raises((ValueError, msgspec.ValidationError)):
        SANDBOX.add_fault(**rule)


def test_fault_list_and_clear(client: httpx.Client, sb: SegmentSandbox) -> None:
    add_fault(client, [{"status": 503, "times": 3}, {"slow_ms": 50}])
    assert client.get(f"{CONTROL}/faults").json() == {
        "count": 2,
        "faults": [{"status": 503, "times": 3}, {"slow_ms": 50.0}],
    }
    assert client.delete(f"{CONTROL}/faults").json() == {"cleared": 2}
    assert post(client, "/v1/batch", BODY).json() == OK


# ---- control API -------------------------------------------------------------------------------------


def test_control_api_reads_filters_and_resets(client: httpx.Client, sb: SegmentSandbox) -> None:
    post(client, "/v1/batch", {"batch": [track(0), track(1), track(2, event="Bought")], "writeKey": KEY})
    post(client, "/v1/identify", {"userId": "user-1", "traits": {}, "messageId": "i-1", "writeKey": KEY})
    post(client, "/v1/track", _with_key(track(3, event="")))
    messages = client.get(f"{CONTROL}/messages").json()
    assert messages["count"] == 4
    assert messages["messages"] == sb.messages
    assert client.get(f"{CONTROL}/messages", params={"userId": "user-1"}).json()["count"] == 2
    bought = client.get(f"{CONTROL}/messages", params={"event": "Bought"}).json()
    assert [m["messageId"] for m in bought["messages"]] == ["m-2"]
    identifies = client.get(f"{CONTROL}/messages", params={"type": "identify"}).json()
    assert [m["messageId"] for m in identifies["messages"]] == ["i-1"]
    limited = client.get(f"{CONTROL}/messages", params={"type": "track", "limit": 1}).json()
    assert (limited["count"], len(limited["messages"])) == (3, 1)
    assert client.get(f"{CONTROL}/messages", params={"limit": "x"}).status_code == 400
    assert client.get(f"{CONTROL}/dropped", params={"reason": "missing_event"}).json()["count"] == 1
    assert client.get(f"{CONTROL}/dropped", params={"type": "identify"}).json()["count"] == 0
    assert client.get(f"{CONTROL}/dropped", params={"limit": "0"}).json() == {"count": 1, "dropped": []}
    assert client.get(f"{CONTROL}/requests").json()["requests"] == [
        {"path": "/v1/batch", "status": 200, "messages": 3, "time": NOW},
        {"path": "/v1/identify", "status": 200, "messages": 1, "time": NOW},
        {"path": "/v1/track", "status": 200, "messages": 1, "time": NOW},
    ]
    assert client.get(f"{CONTROL}/stats").json() == {
        "requests": 3,
        "statuses": {"200": 3},
        "connections_closed": 0,
        "messages_received": 5,
        "messages_stored": 4,
        "messages_dropped": 1,
        "dropped_by_reason": {"missing_event": 1},
        "faults_pending": 0,
    }
    kept = sb.messages
    assert client.post(f"{CONTROL}/reset").json() == {"reset": True}
    assert (sb.messages, sb.dropped, sb.requests, kept) == ([], [], [], [])
    assert client.get(f"{CONTROL}/stats").json()["requests"] == 0


def test_unknown_paths_and_methods(client: httpx.Client, sb: SegmentSandbox) -> None:
    assert client.post("/v1/import", json={}).json() == {"code": "not_found", "message": "Not Found"}
    assert client.post("/v1/track/", json={}).status_code == 404  # exact paths, no redirect
    refused = client.get("/v1/track")
    assert (refused.status_code, refused.json()["code"]) == (405, "method_not_allowed")
    assert sb.requests == []


# ---- the official Python library as a client ----------------------------------------------------------


class Errors:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, int]] = []

    def __call__(self, error: Any, batch: list[Any]) -> None:
        with self.lock:
            self.calls.append((error, len(batch)))


def _library(base_url: str, key: str = LIB_KEY, **options: Any) -> Any:
    from segment.analytics.client import Client

    defaults: dict[str, Any] = {"upload_interval": 0.05, "max_retries": 3, "timeout": 5}
    return Client(key, host=base_url, **{**defaults, **options})


def _send_all(library: Any) -> list[dict[str, Any]]:
    """One of each call; returns the messages exactly as the library built them."""
    sent = [
        library.identify("user-123", {"email": "ada@example.com"}, message_id="lib-identify"),
        library.track("user-123", "Email Opened", {"campaign_id": 42}, message_id="lib-track"),
        library.page("user-123", name="Pricing", properties={"path": "/pricing"}, message_id="lib-page"),
        library.screen(anonymous_id="anon-1", name="Home", message_id="lib-screen"),
        library.group("user-123", "acct-9", {"name": "Initech"}, message_id="lib-group"),
        library.alias("anon-1", "user-123", message_id="lib-alias"),
    ]
    assert all(ok for ok, _ in sent)
    return [msg for _, msg in sent]


def test_library_sync_mode_messages_arrive_exactly(base_url: str, sb: SegmentSandbox) -> None:
    library = _library(base_url, sync_mode=True)
    sent = _send_all(library)
    assert sb.messages == [stored(msg, LIB_KEY) for msg in sent]
    assert [m["type"] for m in sb.messages] == ["identify", "track", "page", "screen", "group", "alias"]
    assert sb.messages[1]["context"]["library"]["name"] == "analytics-python"
    assert sb.messages[3]["userId"] is None  # the library sends nulls; they are kept as sent
    assert sb.requests == [{"path": "/v1/batch", "status": 200, "messages": 1, "time": NOW}] * 6
    path, headers = HEADERS[0]
    assert path == "/v1/batch"
    assert headers["authorization"] == basic(LIB_KEY)
    assert headers["user-agent"].startswith("analytics-python/")
    assert "x-retry-count" not in headers


def test_library_queue_with_gzip_batches_everything(base_url: str, sb: SegmentSandbox) -> None:
    errors = Errors()
    library = _library(base_url, gzip=True, on_error=errors)
    try:
        sent = _send_all(library)
        library.flush()
    finally:
        library.join()
    assert sb.messages == [stored(msg, LIB_KEY) for msg in sent]
    assert errors.calls == []
    assert all(h["content-encoding"] == "gzip" for _, h in HEADERS)
    assert sum(r["messages"] for r in sb.requests) == 6


def test_library_retries_5xx_with_a_growing_count(base_url: str, sb: SegmentSandbox) -> None:
    sb.add_fault(status=503, times=2)
    errors = Errors()
    library = _library(base_url, on_error=errors)
    try:
        library.track("user-123", "Email Opened", message_id="retry-1")
        library.flush()
    finally:
        library.join()
    assert [r["status"] for r in sb.requests] == [503, 503, 200]
    assert [h.get("x-retry-count") for _, h in HEADERS] == [None, "1", "2"]
    assert [m["messageId"] for m in sb.messages] == ["retry-1"]  # same id on every attempt
    assert errors.calls == []


def test_library_gives_up_after_max_retries_and_reports_it(base_url: str, sb: SegmentSandbox) -> None:
    sb.add_fault(status=500, times=5)
    errors = Errors()
    library = _library(base_url, on_error=errors, max_retries=1)
    try:
        library.track("user-123", "Email Opened", message_id="lost-1")
        library.flush()
    finally:
        library.join()
    assert [r["status"] for r in sb.requests] == [500, 500]  # max_retries=1: two attempts
    [(error, size)] = errors.calls
    assert (error.status, error.code, error.message, size) == (
        500,
        "internal_server_error",
        "Internal Server Error",
        1,
    )
    assert sb.messages == []


def test_library_waits_out_a_429_retry_after_then_resends(base_url: str, sb: SegmentSandbox) -> None:
    sb.add_fault(status=429, retry_after=1)
    errors = Errors()
    library = _library(base_url, on_error=errors)
    started = time.monotonic()
    try:
        library.track("user-123", "Email Opened", message_id="limited-1")
        library.flush()
    finally:
        library.join()
    assert time.monotonic() - started >= 0.9  # it honoured Retry-After (2.4.0, §6)
    assert [r["status"] for r in sb.requests] == [429, 200]
    assert [m["messageId"] for m in sb.messages] == ["limited-1"]
    assert errors.calls == []


def test_library_does_not_retry_a_400(base_url: str, sb: SegmentSandbox) -> None:
    from segment.analytics.request import APIError

    sb.add_fault(status=400, times=2)
    errors = Errors()
    library = _library(base_url, on_error=errors)
    try:
        library.track("user-123", "Email Opened", message_id="bad-1")
        library.flush()
    finally:
        library.join()
    assert [r["status"] for r in sb.requests] == [400]
    [(error, _)] = errors.calls
    assert (error.status, error.code, error.message) == (400, "bad_request", "Bad Request")
    with pytest.raises(APIError) as raised:  # sync mode: no retry loop, the caller gets the error
        _library(base_url, sync_mode=True).track("user-123", "Email Opened")
    assert raised.value.status == 400


def test_library_with_an_unknown_key_sees_success_while_everything_is_dropped(
    base_url: str, sb: SegmentSandbox
) -> None:
    errors = Errors()
    library = _library(base_url, key="typo-in-the-key", on_error=errors)
    try:
        library.track("user-123", "Email Opened", message_id="silent-1")
        library.flush()
    finally:
        library.join()
    assert errors.calls == []  # the library reports nothing: production would lose it silently
    assert sb.messages == []
    assert drops(sb) == [("invalid_write_key", 0)]
