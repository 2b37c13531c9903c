"""Fuzzing every ingest endpoint over loopback, with and without the ingest process: whatever the
body, the answer is never a 5xx, a refused request writes nothing, and the server stays healthy.

Hypothesis builds the bodies: valid requests with fields replaced by arbitrary JSON, strings cut or
spliced with bytes that are not UTF-8, numbers at and past every range, deep nesting, and plain
random bytes. Bounded and seeded (`derandomize`): the same examples on every run, in about as long.
Webhooks are signed, so they get past the signature to the parser they are meant to attack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwire.app import Runtime
from tests.conftest import API_KEY, SIGNING_KEY
from tests.helpers.bridge import BASIC, WRITE_KEY, serve_bridge
from tests.helpers.cio import encode, signed_headers, webhook

EXAMPLES = 60  # per endpoint and mode: ~1,900 requests in all
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

NASTY_NUMBERS = st.sampled_from(
    [2**63, -(2**63) - 1, 10**30, 1e308, -1e308, 0, -1, 253_402_300_800_000, 2**53 + 1, 1.5, 1e-320]
)
NASTY_STRINGS = st.sampled_from(
    ["", " ", "\x00", "null", "inf", "nan", "-1", "1e999", "x" * 5_000, "é" * 200]
)
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
JSON = st.recursive(
    JSON_LEAF | NASTY_NUMBERS | NASTY_STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """`template` with some fields replaced, removed or added, then maybe damaged as bytes."""
    doc = dict(template)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*template, "extra"]))
        if draw(st.booleans()):
            doc[key] = draw(JSON)
        else:
            doc.pop(key, None)
    body = msgspec.json.encode(doc)
    damage = draw(st.sampled_from(["none", "none", "bytes", "nest", "cut", "number"]))
    if damage == "bytes":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    elif damage == "nest":
        body = body[:-1] + b',"deep":' + _nest(draw(st.sampled_from([63, 64, 65, 900, 5_000, 60_000]))) + b"}"
    elif damage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "number":
        digits = draw(st.integers(18, 420))
        body = body[:-1] + b',"n":' + draw(st.sampled_from([b"", b"-"])) + b"9" * digits + b"}"
    return body


BODIES_CIO = mutated(webhook(event_id="01J9Z7B1B2C3D4E5F6G7H8J9KN")) | st.binary(max_size=300)
AMPLITUDE_EVENT = {
    "event_type": "Viewed Product",
    "user_id": "user-0001",
    "device_id": "device-0001",
    "time": 1_735_689_600_000,
    "insert_id": "ins-1",
    "event_properties": {"sku": "A1"},
}
BODIES_AMPLITUDE = (
    mutated({"api_key": API_KEY, "events": [AMPLITUDE_EVENT]})
    | st.builds(
        lambda event: msgspec.json.encode({"api_key": API_KEY, "events": [event]}),
        st.fixed_dictionaries({}, optional=dict.fromkeys(AMPLITUDE_EVENT, JSON)),
    )
    | st.binary(max_size=300)
)
SEGMENT_MESSAGE = {
    "userId": "u-1",
    "anonymousId": "a-1",
    "event": "Order Completed",
    "timestamp": "2025-03-04T10:15:30Z",
    "messageId": "m-1",
    "properties": {"total": 42},
}
BODIES_SEGMENT = mutated({"writeKey": WRITE_KEY, **SEGMENT_MESSAGE}) | st.binary(max_size=300)
BODIES_SEGMENT_BATCH = mutated(
    {"writeKey": WRITE_KEY, "batch": [{"type": "track", **SEGMENT_MESSAGE}]}
) | st.builds(lambda items: msgspec.json.encode({"batch": items}), st.lists(JSON, max_size=5))
IDENTIFICATION = {"user_id": "user-0001", "user_properties": {"$set": {"plan": "pro"}}}


@st.composite
def identify_forms(draw: st.DrawFn) -> bytes:
    identification = draw(mutated(IDENTIFICATION)).decode("utf-8", "surrogateescape")
    fields = {"api_key": API_KEY, "identification": identification}
    if draw(st.booleans()):
        fields["options"] = draw(st.sampled_from(["{", "[]", '{"min_id_length":-1}', "9" * 30, "[" * 3000]))
    return urlencode(fields, errors="surrogateescape").encode()


@pytest.fixture(scope="module", params=[True, False], ids=["ingest_process", "in_process"])
def bridge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Runtime]]:
    with serve_bridge(tmp_path_factory.mktemp("fuzz"), ingest_process=request.param) as served:
        yield served


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as one:  # one keep-alive connection: a reset would show up here
        yield one


def _check(runtime: Runtime, response: httpx.Response, before: int) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert runtime.store.event_count() == before, "a refused request wrote something"


@FUZZ
@given(body=BODIES_CIO)
def test_fuzz_customerio_webhooks(bridge: tuple[str, Runtime], client: httpx.Client, body: bytes) -> None:
    url, runtime = bridge
    before = runtime.store.event_count()
    _check(
        runtime,
        client.post(f"{url}/webhooks/customerio", content=body, headers=signed_headers(SIGNING_KEY, body)),
        before,
    )


@FUZZ
@given(path=st.sampled_from(["/2/httpapi", "/batch"]), body=BODIES_AMPLITUDE, typed=st.booleans())
def test_fuzz_amplitude_events(
    bridge: tuple[str, Runtime], client: httpx.Client, path: str, body: bytes, typed: bool
) -> None:
    url, runtime = bridge
    headers = {"Content-Type": "application/json"} if typed else {}
    before = runtime.store.event_count()
    _check(runtime, client.post(url + path, content=body, headers=headers), before)


@FUZZ
@given(path=st.sampled_from(["/identify", "/groupidentify"]), body=identify_forms())
def test_fuzz_amplitude_identify(
    bridge: tuple[str, Runtime], client: httpx.Client, path: str, body: bytes
) -> None:
    url, runtime = bridge
    before = runtime.store.event_count()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    _check(runtime, client.post(url + path, content=body, headers=headers), before)


@FUZZ
@given(
    call=st.sampled_from(["track", "identify", "group", "page", "screen", "alias"]),
    body=BODIES_SEGMENT,
    basic=st.booleans(),
)
def test_fuzz_segment_calls(
    bridge: tuple[str, Runtime], client: httpx.Client, call: str, body: bytes, basic: bool
) -> None:
    url, runtime = bridge
    headers = {"Content-Type": "application/json", **(BASIC if basic else {})}
    before = runtime.store.event_count()
    _check(runtime, client.post(f"{url}/v1/{call}", content=body, headers=headers), before)


@FUZZ
@given(body=BODIES_SEGMENT_BATCH)
def test_fuzz_segment_batch(bridge: tuple[str, Runtime], client: httpx.Client, body: bytes) -> None:
    url, runtime = bridge
    before = runtime.store.event_count()
    _check(
        runtime,
        client.post(f"{url}/v1/batch", content=body, headers={**BASIC, "Content-Type": "application/json"}),
        before,
    )


def test_after_the_fuzzing_the_server_is_healthy(bridge: tuple[str, Runtime], client: httpx.Client) -> None:
    """Runs after the fuzz tests of the same mode (file order): nothing crashed, everything answers."""
    url, runtime = bridge
    assert client.get(f"{url}/healthz").status_code == 200
    ready = client.get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    if runtime.ingest_process is not None:
        assert runtime.ingest_process.starts == 1
    body = encode(webhook())
    assert (
        client.post(
            f"{url}/webhooks/customerio", content=body, headers=signed_headers(SIGNING_KEY, body)
        ).status_code
        == 200
    )
