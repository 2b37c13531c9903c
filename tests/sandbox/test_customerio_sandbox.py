"""The Customer.io Track API sandbox over real HTTP: documented answers, identifier rules, limits,
dedupe, partial batches, auth, rate limiting, faults, and the official `customerio` client as a
client (over TLS, since it only speaks https). Time is an injected clock; nothing sleeps."""

from __future__ import annotations

import datetime
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from customerio import CustomerIO, CustomerIOException

from loopwire.sandbox.customerio import CustomerioSandbox
from tests.helpers import reference
from tests.helpers.servers import free_port, serve_app

NOW = 1_735_689_600.0
SITE, KEY = "site-0001", "track-key-0001"
CREDENTIALS = {SITE: KEY, "site-0002": "track-key-0002"}
CONTROL = "/_sandbox/customerio"
ULID_A = "01J9Z8A1B2C3D4E5F6G7H8J9KM"
ULID_B = "01J9Z8B1B2C3D4E5F6G7H8J9KN"
UNAUTHORIZED = "Unauthorized request: check your site ID and Track API key"


REFERENCE = reference.FIXTURES / "customerio" / "track-api"


def fixture(name: str) -> Any:
    return json.loads((REFERENCE / name).read_text())


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()
SANDBOX = CustomerioSandbox(credentials=CREDENTIALS, clock=CLOCK)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_app(SANDBOX.app) as url:
        yield url


@pytest.fixture
def sb() -> Iterator[CustomerioSandbox]:
    SANDBOX.reset()
    CLOCK.now = NOW
    yield SANDBOX
    SANDBOX.rate_limit = 1000
    SANDBOX.allow_email_update_by_id = False


@pytest.fixture
def client(base_url: str, sb: CustomerioSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, auth=(SITE, KEY), timeout=10) as c:
        yield c


def encode(doc: Any) -> bytes:
    return msgspec.json.encode(doc)


def send(client: httpx.Client, method: str, path: str, doc: Any = None, **headers: str) -> httpx.Response:
    body = doc if isinstance(doc, bytes) or doc is None else encode(doc)
    return client.request(method, path, content=body, headers={"Content-Type": "application/json", **headers})


def v1_400(*messages: str) -> dict[str, Any]:
    return {"meta": {"errors": list(messages)}}


def v2_400(field: str, message: str, reason: str = "invalid") -> dict[str, Any]:
    return {"errors": [{"reason": reason, "field": field, "message": message}]}


def op(action: str, ident: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    identifiers = {"id": "42"} if ident is None else ident
    return {"type": "person", "identifiers": identifiers, "action": action, **fields}


def delivery(**fields: Any) -> dict[str, Any]:
    return {
        "type": "delivery",
        "identifiers": {"id": "RPI="},
        "action": "event",
        "attributes": {"device_token": "t"},
        **fields,
    }


def person(sb: CustomerioSandbox, key: str) -> dict[str, Any]:
    found = sb.find(key)
    assert found is not None, f"no person {key!r}"
    return found


def kinds(sb: CustomerioSandbox) -> list[str]:
    return [a["kind"] for a in sb.activity]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sized(build: Callable[[int], Any], target: int) -> Any:
    """`build(n)` with n chosen so the compact JSON encoding is exactly `target` bytes."""
    base = len(encode(build(0)))
    doc = build(target - base)
    assert len(encode(doc)) == target
    return doc


# ---- reference requests --------------------------------------------------------------------------


def test_reference_identify_stores_attributes_identifiers_and_preferences(
    client: httpx.Client, sb: CustomerioSandbox
) -> None:
    response = send(
        client, "PUT", "/api/v1/customers/5", fixture("docs-openapi/v1_identify.PUT_customers_id.json")
    )
    assert (response.status_code, response.json()) == (200, {})
    assert sb.people == {
        "a3000001": {
            "cio_id": "a3000001",
            "id": "5",
            "email": "customer@example.com",
            "attributes": {
                "first_name": "Bob",
                "plan": "basic",
                "cio_subscription_preferences": {
                    "topics": {"topic_1": True, "topic_2": True, "topic_3": False}
                },
            },
            "devices": {},
            "created_at": 1361205308,
        }
    }
    assert sb.requests == [{"method": "PUT", "path": "/api/v1/customers/5", "status": 200, "time": NOW}]


@pytest.mark.parametrize(
    ("name", "expected_type"),
    [
        ("docs-openapi/v1_event.standard.POST_customers_id_events.json", "event"),
        ("docs-openapi/v1_event.page.POST_customers_id_events.json", "page"),
        ("docs-openapi/v1_event.screen.POST_customers_id_events.json", "screen"),
        ("constructed/v1_event.with_ulid_id.json", "event"),
    ],
)
def test_reference_person_events(
    client: httpx.Client, sb: CustomerioSandbox, name: str, expected_type: str
) -> None:
    body = fixture(name)
    response = send(client, "POST", "/api/v1/customers/5/events", body)
    assert (response.status_code, response.json()) == (200, {})
    assert sb.events == [
        {
            "person": "a3000001",  # unknown id: auto-created (§2.4, S12)
            "anonymous_id": None,
            "name": body["name"],
            "type": expected_type,
            "id": body.get("id"),
            "timestamp": body.get("timestamp", int(NOW)),
            "data": body.get("data", {}),
        }
    ]
    assert person(sb, "5")["id"] == "5"


@pytest.mark.parametrize("variant", ["standard", "page", "screen"])
def test_reference_anonymous_events(client: httpx.Client, sb: CustomerioSandbox, variant: str) -> None:
    body = fixture(f"docs-openapi/v1_anonymous_event.{variant}.POST_events.json")
    assert send(client, "POST", "/api/v1/events", body).json() == {}
    assert sb.events == [
        {
            "person": None,
            "anonymous_id": "abc123",
            "name": body["name"],
            "type": body.get("type", "event"),
            "id": None,
            "timestamp": int(NOW),
            "data": body.get("data", {}),
        }
    ]
    assert sb.people == {}


def test_reference_device(client: httpx.Client, sb: CustomerioSandbox) -> None:
    body = fixture("constructed/v1_add_device.PUT_customers_id_devices.json")
    assert send(client, "PUT", "/api/v1/customers/5/devices", body).json() == {}
    assert person(sb, "5")["devices"] == {"fcm-token-abc123": body["device"]}
    assert send(client, "DELETE", "/api/v1/customers/5/devices/fcm-token-abc123").json() == {}
    assert person(sb, "5")["devices"] == {}


def test_reference_v2_entity_examples(client: httpx.Client, sb: CustomerioSandbox) -> None:
    for name in ("identify_person", "person", "person_event", "person_page", "person_screen"):
        response = send(client, "POST", "/api/v2/entity", fixture(f"docs-openapi/v2_entity.{name}.json"))
        assert (response.status_code, response.json()) == (200, {})
    assert person(sb, "42")["attributes"] == {"first_name": "Jane", "last_name": "Doe", "plan": "premium"}
    assert [(e["type"], e["name"], e["data"]) for e in sb.events] == [
        ("event", "purchase", {"product": "Widget", "price": 29.99}),
        ("page", "/pricing", {"referrer": "https://example.com"}),
        ("screen", "Dashboard", {"app_version": "2.1.0"}),
    ]
    device = fixture("docs-openapi/v2_entity.person_add_device.json")
    assert send(client, "POST", "/api/v2/entity", device).json() == {}
    token = device["device"]["token"]
    assert person(sb, "42")["devices"] == {
        token: {"id": token, "platform": "ios", "last_used": 1713484800, "attributes": {}}
    }
    for name in ("object", "delivery"):  # valid, accepted, not modelled
        assert (
            send(client, "POST", "/api/v2/entity", fixture(f"docs-openapi/v2_entity.{name}.json")).json()
            == {}
        )
    assert kinds(sb) == ["not_modelled", "not_modelled"]
    assert (
        send(client, "POST", "/api/v2/entity", fixture("docs-openapi/v2_entity.person_delete.json")).json()
        == {}
    )
    assert sb.people == {}
    # The spec's merge example omits type and action (customerio.md §9): the sandbox refuses it.
    merge = send(client, "POST", "/api/v2/entity", fixture("docs-openapi/v2_entity.person_merge.json"))
    assert (merge.status_code, merge.json()) == (400, v2_400("type", "type is required", "required"))


def test_reference_v2_batches(client: httpx.Client, sb: CustomerioSandbox) -> None:
    response = send(client, "POST", "/api/v2/batch", fixture("constructed/v2_batch.mixed_person_ops.json"))
    assert (response.status_code, response.json()) == (200, {})
    ada = person(sb, "cust_000123")
    assert (ada["cio_id"], ada["email"]) == ("a3000001", "ada@example.com")
    assert ada["attributes"] == {"audience_cart_abandoners": True}
    lead = person(sb, "lead@example.com")
    assert [(e["person"], e["type"], e["name"], e["id"]) for e in sb.events] == [
        (lead["cio_id"], "event", "Entered Cart Abandon Segment", ULID_B),
        ("a3000001", "page", "https://shop.example.com/cart", None),  # addressed by cio_id
    ]
    assert send(client, "POST", "/api/v2/batch", fixture("docs-openapi/v2_batch.json")).status_code == 200
    assert person(sb, "42")["attributes"] == {"first_name": "Jane", "last_name": "Doe", "plan": "premium"}


def test_region_lookup(client: httpx.Client, sb: CustomerioSandbox, base_url: str) -> None:
    response = client.get("/api/v1/accounts/region")
    assert response.json() == {"url": base_url, "region": "us", "environment_id": 1}
    eu = CustomerioSandbox(region="eu", region_url="https://track-eu.customer.io", environment_id=3)
    with serve_app(eu.app) as url, httpx.Client(base_url=url, auth=("any", "pair")) as c:
        assert c.get("/api/v1/accounts/region").json() == fixture(
            "constructed/v1_region_response.GET_accounts_region.json"
        )
        assert httpx.get(url + "/api/v1/accounts/region").status_code == 401


# ---- identifier rules (§2.4) -----------------------------------------------------------------------


def test_email_identifiers_match_case_insensitively(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/Ada%40Example.com", {"plan": "basic"})
    send(client, "PUT", "/api/v1/customers/ada%40EXAMPLE.COM", {"plan": "premium"})
    send(client, "POST", "/api/v1/customers/ADA%40example.com/events", {"name": "purchase"})
    assert len(sb.people) == 1
    ada = person(sb, "ada@example.com")
    assert (ada["id"], ada["email"], ada["attributes"]) == (None, "Ada@Example.com", {"plan": "premium"})
    assert sb.events[0]["person"] == ada["cio_id"]


@pytest.mark.parametrize(
    ("path", "kind", "value"),
    [
        ("test%40gmail.com", "email", "test@gmail.com"),
        ("user%2Fwith%2Fslashes", "id", "user/with/slashes"),
        ("ada%2Bshop%40example.com", "email", "ada+shop@example.com"),
        ("%2B14155552671", "id", "+14155552671"),  # a phone number in the path is an id
        ("caf%C3%A9", "id", "café"),
        ("12345", "id", "12345"),
    ],
)
def test_url_encoded_path_identifiers(
    client: httpx.Client, sb: CustomerioSandbox, path: str, kind: str, value: str
) -> None:
    assert send(client, "PUT", f"/api/v1/customers/{path}", {"plan": "x"}).json() == {}
    assert send(client, "POST", f"/api/v1/customers/{path}/events", {"name": "n"}).json() == {}
    created = next(iter(sb.people.values()))
    assert len(sb.people) == 1 and created[kind] == value
    assert sb.requests[0]["path"] == f"/api/v1/customers/{path}"  # the log keeps what was sent


def test_cio_prefix_addresses_and_may_change_identifiers(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"email": "old@example.com"})
    cio_id = person(sb, "u1")["cio_id"]
    send(client, "PUT", f"/api/v1/customers/cio_{cio_id}", {"id": "u2", "email": "new@example.com"})
    moved = sb.people[cio_id]
    assert (moved["id"], moved["email"]) == ("u2", "new@example.com")
    assert sb.find("u1") is None and sb.find("old@example.com") is None
    # An unknown cio_id (or a deleted person) drops the call: 200, nothing stored, an activity entry.
    assert send(client, "PUT", "/api/v1/customers/cio_ffffffff", {"plan": "x"}).json() == {}
    assert send(client, "POST", "/api/v1/customers/cio_ffffffff/events", {"name": "n"}).json() == {}
    assert send(client, "POST", "/api/v2/entity", op("event", {"cio_id": "ffffffff"}, name="n")).json() == {}
    assert len(sb.people) == 1 and sb.events == []
    assert kinds(sb) == ["dropped"] * 3


def test_changing_identifiers_without_cio_id_is_an_attribute_update_failure(
    client: httpx.Client, sb: CustomerioSandbox
) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"email": "one@example.com", "plan": "a"})
    send(client, "PUT", "/api/v1/customers/u2", {"email": "two@example.com"})
    before = json.loads(json.dumps(sb.people))
    attempts = [
        ("u1", {"id": "u9", "plan": "b"}),  # a different id in the body
        ("u1", {"email": "changed@example.com", "plan": "b"}),  # email change by id (setting off)
        ("one%40example.com", {"email": "changed@example.com"}),  # email change by email
        ("u1", {"email": "two@example.com"}),  # body email belongs to someone else
        ("one%40example.com", {"id": "u2"}),  # body id belongs to someone else
    ]
    for path, body in attempts:
        assert send(client, "PUT", f"/api/v1/customers/{path}", body).json() == {}  # still 200 (§2.6)
    assert sb.people == before
    assert kinds(sb) == ["attribute_update_failure"] * len(attempts)
    sb.allow_email_update_by_id = True  # the workspace setting "Allow updates to email using ID"
    send(client, "PUT", "/api/v1/customers/u1", {"email": "changed@example.com"})
    assert person(sb, "u1")["email"] == "changed@example.com"


def test_new_id_with_a_known_email_updates_that_person(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/ada%40example.com", {"plan": "a"})
    send(client, "PUT", "/api/v1/customers/cust_1", {"email": "ADA@example.com", "plan": "b"})
    assert len(sb.people) == 1
    ada = person(sb, "cust_1")
    assert (ada["email"], ada["attributes"]) == ("ada@example.com", {"plan": "b"})
    send(client, "PUT", "/api/v1/customers/ada%40example.com", {"id": "cust_1", "email": "Ada@Example.com"})
    assert person(sb, "cust_1")["email"] == "Ada@Example.com"  # same email, new spelling


def test_update_only_never_creates(client: httpx.Client, sb: CustomerioSandbox) -> None:
    body = fixture("constructed/v1_identify.update_only.json")
    assert send(client, "PUT", "/api/v1/customers/cust_000123", body).json() == {}
    assert sb.people == {} and kinds(sb) == ["failed_attribute_change"]
    CLOCK.now += 60
    send(client, "PUT", "/api/v1/customers/cust_000123", {"plan": "basic"})
    send(client, "PUT", "/api/v1/customers/cust_000123", body)
    updated = person(sb, "cust_000123")
    assert updated["email"] == "ada@example.com" and updated["created_at"] == 1735600000
    assert updated["attributes"] == {
        "plan": "basic",  # `_timestamp` 1735689600 is older than the update received at NOW + 60: kept
        "ltv_band": "high",
        "cio_subscription_preferences": {"topics": {"topic_2": False}},
    }


def test_timestamp_orders_attribute_updates(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "new", "_timestamp": 200})
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "old", "tier": "t", "_timestamp": 100})
    assert person(sb, "u1")["attributes"] == {"plan": "new", "tier": "t"}
    send(
        client,
        "POST",
        "/api/v2/entity",
        op("identify", {"id": "u1"}, timestamp=300, attributes={"plan": "v2"}),
    )
    send(
        client,
        "POST",
        "/api/v2/entity",
        op("identify", {"id": "u1"}, timestamp=250, attributes={"plan": "x"}),
    )
    assert person(sb, "u1")["attributes"]["plan"] == "v2"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        (1, True),
        ("1", True),
        (False, False),
        ("yes", False),
        (0, False),
        ("", False),
    ],
)
def test_unsubscribed_semantics(
    client: httpx.Client, sb: CustomerioSandbox, value: Any, expected: bool
) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"unsubscribed": value})
    assert person(sb, "u1")["attributes"] == {"unsubscribed": expected}


def test_anonymous_id_merges_earlier_anonymous_events(client: httpx.Client, sb: CustomerioSandbox) -> None:
    old = int(NOW) - 31 * 86_400
    send(client, "POST", "/api/v1/events", {"name": "too old", "anonymous_id": "anon-1", "timestamp": old})
    send(client, "POST", "/api/v1/events", {"name": "viewed", "anonymous_id": "anon-1"})
    send(client, "POST", "/api/v1/events", {"name": "other", "anonymous_id": "anon-2"})
    send(client, "PUT", "/api/v1/customers/u1", {"anonymous_id": "anon-1"})
    cio_id = person(sb, "u1")["cio_id"]
    assert [(e["name"], e["person"]) for e in sb.events] == [
        ("too old", None),
        ("viewed", cio_id),
        ("other", None),
    ]
    assert person(sb, "u1")["attributes"] == {}
    send(client, "PUT", "/api/v1/customers/u2", {"anonymous_id": "anon-1"})  # not reusable
    assert kinds(sb) == ["attribute_update_failure"]


def test_delete_then_recreate(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "a"})
    first = person(sb, "u1")["cio_id"]
    assert send(client, "DELETE", "/api/v1/customers/u1").json() == {}
    assert sb.people == {}
    assert send(client, "DELETE", "/api/v1/customers/u1").json() == {}  # unknown: 200, noted
    assert send(client, "PUT", f"/api/v1/customers/cio_{first}", {"plan": "b"}).json() == {}  # dropped
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "c"})
    assert person(sb, "u1")["cio_id"] != first
    assert kinds(sb) == ["dropped", "dropped"]


def test_suppress_blocks_identifiers_until_unsuppressed(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/u1", {"email": "ada@example.com"})
    assert send(client, "POST", "/api/v1/customers/u1/suppress").json() == {}
    assert sb.people == {}
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "a"})
    send(client, "POST", "/api/v1/customers/ADA%40example.com/events", {"name": "n"})
    assert sb.people == {} and sb.events == [] and kinds(sb) == ["dropped", "dropped"]
    assert send(client, "POST", "/api/v2/entity", op("unsuppress", {"email": "ada@example.com"})).json() == {}
    send(client, "PUT", "/api/v1/customers/u1", {"plan": "a"})
    assert person(sb, "u1")["attributes"] == {"plan": "a"}


# ---- events ------------------------------------------------------------------------------------------


def test_event_ids_are_ulids_and_duplicates_are_ignored(client: httpx.Client, sb: CustomerioSandbox) -> None:
    body = {"name": "purchase", "id": ULID_A, "timestamp": 1735680000, "data": {"n": 1}}
    assert send(client, "POST", "/api/v1/customers/u1/events", body).json() == {}
    again = send(client, "POST", "/api/v1/customers/u2/events", {**body, "data": {"n": 2}})
    lower = send(client, "POST", "/api/v2/entity", op("event", name="purchase", id=ULID_A.lower()))
    anonymous = send(client, "POST", "/api/v1/events", {**body, "anonymous_id": "x"})
    assert [r.json() for r in (again, lower, anonymous)] == [{}, {}, {}]  # accepted, ignored
    assert [e["data"] for e in sb.events] == [{"n": 1}]
    assert sb.stats()["duplicates"] == 3
    assert sb.find("u2") is None  # a duplicate creates nobody


@pytest.mark.parametrize(
    "bad_id",
    ["evt-1", "01J9Z8A1B2C3D4E5F6G7H8J9K", "81J9Z8A1B2C3D4E5F6G7H8J9KM", "01J9Z8A1B2C3D4E5F6G7H8J9KU", 12],
)
def test_a_non_ulid_event_id_is_refused(client: httpx.Client, sb: CustomerioSandbox, bad_id: Any) -> None:
    response = send(client, "POST", "/api/v1/customers/u1/events", {"name": "n", "id": bad_id})
    assert (response.status_code, response.json()) == (400, v1_400("id must be a ULID"))
    batch = send(client, "POST", "/api/v2/batch", {"batch": [op("event", name="n", id=bad_id)]})
    assert batch.status_code == 207
    assert batch.json() == {
        "errors": [{"batch_index": 0, "reason": "invalid", "field": "id", "message": "id must be a ULID"}]
    }
    assert sb.events == [] and sb.people == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "name is required"),
        ({"name": "   "}, "name is required"),
        ({"name": 5}, "name must be a string"),
        ({"name": "n", "type": "click"}, "type must be one of event, page, screen"),
        ({"name": "n", "timestamp": 1735689600000}, "timestamp: must be a unix timestamp in whole seconds"),
        ({"name": "n", "timestamp": "1735689600"}, "timestamp: must be a unix timestamp in whole seconds"),
        ({"name": "n", "timestamp": 1735689600.5}, "timestamp: must be a unix timestamp in whole seconds"),
        ({"name": "n", "data": [1]}, "data: must be an object"),
    ],
)
def test_invalid_v1_events_get_400(
    client: httpx.Client, sb: CustomerioSandbox, body: Any, message: str
) -> None:
    response = send(client, "POST", "/api/v1/customers/u1/events", body)
    assert (response.status_code, response.json()) == (400, v1_400(message))
    assert sb.events == [] and sb.people == {}


def test_event_names_are_trimmed_and_unknown_people_created_by_email(
    client: httpx.Client, sb: CustomerioSandbox
) -> None:
    send(
        client, "POST", "/api/v1/customers/lead%40example.com/events", {"name": "  Viewed  ", "type": "page"}
    )
    lead = person(sb, "lead@example.com")
    assert (lead["id"], lead["email"]) == (None, "lead@example.com")
    assert sb.events[0]["name"] == "Viewed" and sb.events[0]["type"] == "page"


# ---- devices -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (None, "device must be an object"),
        ({"platform": "ios"}, "device.id is required"),
        ({"id": "t", "platform": "iOS"}, "device.platform must be ios or android"),
        (
            {"id": "t", "platform": "android", "last_used": "yesterday"},
            "device.last_used: must be a unix timestamp in whole seconds",
        ),
        (
            {"id": "t", "platform": "android", "attributes": {"push_enabled": True}},
            'device.attributes.push_enabled: must be "true" or "false"',
        ),
    ],
)
def test_invalid_devices_get_400(
    client: httpx.Client, sb: CustomerioSandbox, device: Any, message: str
) -> None:
    response = send(client, "PUT", "/api/v1/customers/u1/devices", {"device": device})
    assert (response.status_code, response.json()) == (400, v1_400(message))
    assert sb.people == {}


def test_v2_device_add_and_delete(client: httpx.Client, sb: CustomerioSandbox) -> None:
    add = op("add_device", device={"token": "tok", "platform": "android"})
    assert send(client, "POST", "/api/v2/entity", add).json() == {}
    assert person(sb, "42")["devices"]["tok"]["platform"] == "android"
    bad = send(client, "POST", "/api/v2/entity", op("add_device", device={"id": "tok", "platform": "ios"}))
    assert (bad.status_code, bad.json()) == (
        400,
        v2_400("device.token", "device.token is required", "required"),
    )
    send(client, "POST", "/api/v2/entity", op("delete_device", device={"token": "tok"}))
    assert person(sb, "42")["devices"] == {}


# ---- limits (§2.3, §2.5) -----------------------------------------------------------------------------


def test_identifier_limit_is_150_bytes(client: httpx.Client, sb: CustomerioSandbox) -> None:
    assert send(client, "PUT", f"/api/v1/customers/{'x' * 150}", {}).status_code == 200
    assert send(client, "PUT", f"/api/v1/customers/{'%C3%A9' * 75}", {}).status_code == 200  # 150 bytes
    for path in ("x" * 151, "%C3%A9" * 76):
        response = send(client, "PUT", f"/api/v1/customers/{path}", {})
        assert (response.status_code, response.json()) == (
            400,
            v1_400("identifier cannot be longer than 150 bytes"),
        )
    body_id = send(client, "PUT", "/api/v1/customers/cio_a3000001", {"id": "y" * 151})
    assert body_id.json() == v1_400("id: identifier cannot be longer than 150 bytes")
    v2 = send(client, "POST", "/api/v2/entity", op("identify", {"email": "e" * 141 + "@example.com"}))
    assert v2.json() == v2_400("identifiers.email", "identifier cannot be longer than 150 bytes")
    assert len(sb.people) == 2


def test_attribute_name_and_value_limits(client: httpx.Client, sb: CustomerioSandbox) -> None:
    ok = {"n" * 150: "v" * 1000, "multi": "é" * 500, "tags": ["t" * 994]}  # 1000, 1000 and 998 bytes
    assert send(client, "PUT", "/api/v1/customers/u1", ok).json() == {}
    response = send(
        client, "PUT", "/api/v1/customers/u1", {"n" * 151: 1, "plan": "v" * 1001, "nested": {"k": "v" * 993}}
    )
    assert response.status_code == 400
    assert response.json() == v1_400(
        f"{'n' * 151}: property name cannot be longer than 150 bytes",
        "plan: property value cannot be longer than 1000 bytes",
        "nested: property value cannot be longer than 1000 bytes",
    )
    assert person(sb, "u1")["attributes"] == ok


def test_attribute_count_limit_per_call_and_per_person(client: httpx.Client, sb: CustomerioSandbox) -> None:
    attrs = {f"a{i}": i for i in range(299)}
    assert send(client, "PUT", "/api/v1/customers/u1", {**attrs, "email": "u1@example.com"}).json() == {}
    over = send(client, "PUT", "/api/v1/customers/u2", {f"a{i}": i for i in range(301)})
    assert (over.status_code, over.json()) == (
        400,
        v1_400("attributes: cannot set more than 300 attributes in one call"),
    )
    person_limit = send(client, "PUT", "/api/v1/customers/u1", {"a299": 1, "a300": 1})
    assert person_limit.json() == v1_400("attributes: a person cannot have more than 300 attributes")
    assert send(client, "PUT", "/api/v1/customers/u1", {"a299": 1}).json() == {}
    assert len(person(sb, "u1")["attributes"]) == 300 and sb.find("u2") is None


def test_event_name_and_data_limits(client: httpx.Client, sb: CustomerioSandbox) -> None:
    path = "/api/v1/customers/u1/events"
    assert send(client, "POST", path, {"name": "n" * 100}).json() == {}
    too_long = send(client, "POST", path, {"name": "n" * 101})
    assert too_long.json() == v1_400("name: event name cannot be longer than 100 bytes")
    data = sized(lambda n: {"blob": "x" * n}, 100_000)
    assert send(client, "POST", path, {"name": "big", "data": data}).json() == {}
    over = send(client, "POST", path, {"name": "big", "data": sized(lambda n: {"blob": "x" * n}, 100_001)})
    assert over.json() == v1_400("data: event data cannot be larger than 100000 bytes")
    v2 = send(client, "POST", "/api/v2/batch", {"batch": [op("event", name="é" * 51)]})
    assert v2.json()["errors"][0]["field"] == "name"
    assert [e["name"] for e in sb.events] == ["n" * 100, "big"]


def test_v2_request_size_limits_are_413(client: httpx.Client, sb: CustomerioSandbox) -> None:
    def entity(n: int) -> dict[str, Any]:
        return op("event", name="n", attributes={"blob": "x" * n})

    assert send(client, "POST", "/api/v2/entity", sized(entity, 32_000)).json() == {}
    too_big = send(client, "POST", "/api/v2/entity", sized(entity, 32_001))
    assert too_big.status_code == 413
    assert too_big.json() == v2_400("body", "request body cannot be larger than 32000 bytes")

    def batch(n: int) -> dict[str, Any]:
        ops = [entity(31_000) for _ in range(16)] + [entity(n)]
        return {"batch": ops}

    assert send(client, "POST", "/api/v2/batch", sized(batch, 500_000)).status_code == 200
    over = send(client, "POST", "/api/v2/batch", sized(batch, 500_001))
    assert (over.status_code, over.json()) == (
        413,
        v2_400("body", "request body cannot be larger than 500000 bytes"),
    )
    big_op = send(client, "POST", "/api/v2/batch", {"batch": [op("event", name="ok"), sized(entity, 32_001)]})
    assert big_op.status_code == 207
    assert big_op.json() == {
        "errors": [
            {
                "batch_index": 1,
                "reason": "invalid",
                "field": "",
                "message": "operation cannot be larger than 32000 bytes",
            }
        ]
    }
    assert len(sb.events) == 1 + 17 + 1


def test_v1_body_memory_guard_is_413(client: httpx.Client, sb: CustomerioSandbox) -> None:
    response = send(
        client, "POST", "/api/v1/customers/u1/events", {"name": "n", "data": {"x": "y" * 1_000_001}}
    )
    assert (response.status_code, response.json()) == (
        413,
        v1_400("body: request body cannot be larger than 1000000 bytes"),
    )


# ---- v2 validation and partial failure -----------------------------------------------------------


def test_batch_partial_failure_is_207_and_the_rest_applied(
    client: httpx.Client, sb: CustomerioSandbox
) -> None:
    batch = [
        op("identify", {"id": "a"}, attributes={"plan": "ok"}),
        op("identify", {"id": "b"}, attributes={"plan": "x" * 1001}),
        "not an op",
        op("event", {"id": "c", "email": "c@example.com"}, name="n"),
        op("event", {"phone": "+14155552671"}, name="n"),
        op("fly", {"id": "d"}),
        {"type": "person", "identifiers": {"id": "e"}},
        op("event", {"email": "e@example.com"}, name="kept", id=ULID_A),
    ]
    response = send(client, "POST", "/api/v2/batch", {"batch": batch})
    assert response.status_code == 207
    assert response.json() == {
        "errors": [
            {
                "batch_index": 1,
                "reason": "invalid",
                "field": "attributes.plan",
                "message": "property value cannot be longer than 1000 bytes",
            },
            {"batch_index": 2, "reason": "invalid", "field": "", "message": "operation must be an object"},
            {
                "batch_index": 3,
                "reason": "invalid",
                "field": "identifiers",
                "message": "identifiers must have exactly one of id, email, cio_id",
            },
            {
                "batch_index": 4,
                "reason": "invalid",
                "field": "identifiers.phone",
                "message": "phone identifiers are not enabled in this workspace",
            },
            {
                "batch_index": 5,
                "reason": "invalid",
                "field": "action",
                "message": "unknown person action 'fly'",
            },
            {"batch_index": 6, "reason": "required", "field": "action", "message": "action is required"},
        ]
    }
    assert sorted(p["id"] or p["email"] for p in sb.people.values()) == ["a", "e@example.com"]
    assert [e["name"] for e in sb.events] == ["kept"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"batch": []}, v2_400("batch", "batch must be a non-empty list of operations", "required")),
        (
            {"batch": {"type": "person"}},
            v2_400("batch", "batch must be a non-empty list of operations", "required"),
        ),
        ({}, v2_400("batch", "batch must be a non-empty list of operations", "required")),
        ([], v2_400("", "request body must be a JSON object")),
        (b"{oops", v2_400("", "request body is not valid JSON")),
    ],
)
def test_whole_batch_invalid_is_400(
    client: httpx.Client, sb: CustomerioSandbox, doc: Any, expected: Any
) -> None:
    response = send(client, "POST", "/api/v2/batch", doc)
    assert (response.status_code, response.json()) == (400, expected)


@pytest.mark.parametrize(
    ("doc", "field", "message", "reason"),
    [
        (
            op("identify", {}),
            "identifiers",
            "identifiers must be an object with one of id, email, cio_id",
            "required",
        ),
        (
            op("identify", {"id": "1", "cio_id": "2"}),
            "identifiers",
            "identifiers must have exactly one of id, email, cio_id",
            "invalid",
        ),
        (op("identify", {"id": 42}), "identifiers.id", "identifier must be a string", "invalid"),
        (op("event"), "name", "name is required", "required"),
        (
            {"type": "robot", "action": "identify"},
            "type",
            "type must be one of person, object, delivery",
            "invalid",
        ),
        (delivery(name="clicked"), "name", "name must be one of opened, converted, delivered", "invalid"),
        (op("identify", attributes=[1]), "attributes", "must be an object", "invalid"),
        (op("add_relationships"), "cio_relationships", "cio_relationships must be a list", "required"),
    ],
)
def test_entity_validation_is_400(
    client: httpx.Client, sb: CustomerioSandbox, doc: Any, field: str, message: str, reason: str
) -> None:
    response = send(client, "POST", "/api/v2/entity", doc)
    assert (response.status_code, response.json()) == (400, v2_400(field, message, reason))
    assert sb.people == {} and sb.events == []


# ---- content type, auth, routing ----------------------------------------------------------------------


def test_content_type_must_be_json(client: httpx.Client, sb: CustomerioSandbox) -> None:
    text = {"Content-Type": "text/plain"}
    v1 = send(client, "POST", "/api/v1/customers/u1/events", {"name": "n"}, **text)
    assert (v1.status_code, v1.json()) == (400, v1_400("Content-Type must be application/json"))
    v2 = send(client, "POST", "/api/v2/entity", op("delete"), **text)
    assert (v2.status_code, v2.json()) == (400, v2_400("", "Content-Type must be application/json"))
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert send(client, "PUT", "/api/v1/customers/u1", {"a": 1}, **charset).json() == {}
    assert client.put("/api/v1/customers/u2").json() == {}  # no body: an identify without attributes
    empty = client.post("/api/v1/customers/u1/events")
    assert (empty.status_code, empty.json()) == (400, v1_400("request body is required"))
    assert send(client, "PUT", "/api/v1/customers/u1", b"{bad").json() == v1_400(
        "request body is not valid JSON"
    )
    assert send(client, "PUT", "/api/v1/customers/u1", [1]).json() == v1_400(
        "request body must be a JSON object"
    )


@pytest.mark.parametrize(
    "auth",
    [
        None,
        ("site-0001", "wrong"),
        ("site-9999", KEY),
        ("site-0001", ""),
        "Basic !!!not-base64",
        "Bearer track-key-0001",
    ],
)
def test_bad_credentials_are_401(base_url: str, sb: CustomerioSandbox, auth: Any) -> None:
    headers = {"Content-Type": "application/json"}
    basic = auth if isinstance(auth, tuple) else None
    if isinstance(auth, str):
        headers["Authorization"] = auth
    with httpx.Client(base_url=base_url, auth=basic) as c:
        v1 = c.put("/api/v1/customers/u1", content=b"{}", headers=headers)
        v2 = c.post("/api/v2/entity", content=encode(op("delete")), headers=headers)
    assert (v1.status_code, v1.json()) == (401, v1_400(UNAUTHORIZED))
    assert (v2.status_code, v2.json()) == (401, v2_400("", UNAUTHORIZED, "unauthorized"))
    assert v1.headers["WWW-Authenticate"] == 'Basic realm="Customer.io Track API"'
    assert sb.people == {}


def test_second_site_and_open_sandbox(base_url: str, sb: CustomerioSandbox) -> None:
    with httpx.Client(base_url=base_url, auth=("site-0002", "track-key-0002")) as c:
        assert c.put("/api/v1/customers/u1").status_code == 200
    open_sandbox = CustomerioSandbox(clock=CLOCK)
    with serve_app(open_sandbox.app) as url:
        assert httpx.put(url + "/api/v1/customers/u1", auth=("any", "thing")).status_code == 200
        assert httpx.put(url + "/api/v1/customers/u1", auth=("", "thing")).status_code == 401


def test_unknown_paths_and_methods(client: httpx.Client, sb: CustomerioSandbox) -> None:
    assert (r := client.get("/api/v1/customers/u1")).status_code == 405 and r.json() == v1_400(
        "Method Not Allowed"
    )
    assert (r := client.post("/api/v1/nope")).status_code == 404 and r.json() == v1_400("Not Found")
    assert (r := client.get("/api/v2/batch")).status_code == 405 and r.json() == v2_400(
        "", "Method Not Allowed"
    )
    assert client.put("/api/v1/customers/u1/").status_code == 404  # exact paths, no redirect
    assert client.get("/elsewhere").json() == v1_400("Not Found")
    assert client.put("/api/v1/customers/cio_").json() == v1_400(
        "identifier: cio_ must be followed by a cio_id"
    )


# ---- rate limiting ----------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(client: httpx.Client, sb: CustomerioSandbox) -> None:
    sb.rate_limit = 3
    for _ in range(3):
        assert client.put("/api/v1/customers/u1").status_code == 200
    limited = client.put("/api/v1/customers/u1")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json() == v1_400("rate limit exceeded: more than 3 requests per second")
    v2 = send(client, "POST", "/api/v2/entity", op("delete"))
    assert v2.json() == v2_400("", "rate limit exceeded: more than 3 requests per second", "rate_limited")
    with httpx.Client(base_url=str(client.base_url), auth=("site-0002", "track-key-0002")) as other:
        assert other.put("/api/v1/customers/u1").status_code == 200  # per site
    CLOCK.now += 0.5
    assert client.put("/api/v1/customers/u1").status_code == 429
    CLOCK.now += 0.5
    assert client.put("/api/v1/customers/u1").status_code == 200
    assert sb.stats()["rate_limited"] == 3


def test_default_rate_limit_is_generous(client: httpx.Client, sb: CustomerioSandbox) -> None:
    assert sb.rate_limit == 1000
    statuses = {client.put(f"/api/v1/customers/u{i}").status_code for i in range(50)}
    assert statuses == {200}


# ---- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 400, 401])
def test_status_faults_answer_then_expire(client: httpx.Client, sb: CustomerioSandbox, status: int) -> None:
    rule = {"status": status, "times": 2, "retry_after": 7}
    assert client.post(f"{CONTROL}/faults", json=rule).json() == {"queued": 1, "pending": 1}
    for _ in range(2):
        response = client.put("/api/v1/customers/u1", json={"a": 1})
        assert response.status_code == status and response.headers["Retry-After"] == "7"
        assert response.json() == v1_400(httpx.codes.get_reason_phrase(status))
    assert client.put("/api/v1/customers/u1", json={"a": 1}).status_code == 200
    assert [r["status"] for r in sb.requests] == [status, status, 200]


def test_fault_endpoint_filter_error_text_and_v2_shape(client: httpx.Client, sb: CustomerioSandbox) -> None:
    sb.add_fault(status=503, endpoint="batch", error="maintenance")
    assert client.put("/api/v1/customers/u1").status_code == 200
    response = send(client, "POST", "/api/v2/batch", {"batch": [op("delete")]})
    assert (response.status_code, response.json()) == (503, v2_400("", "maintenance"))
    assert "Retry-After" not in response.headers


def test_fail_batch_indexes_forces_207(client: httpx.Client, sb: CustomerioSandbox) -> None:
    client.post(f"{CONTROL}/faults", json={"fail_batch_indexes": [0, 2, 9], "times": 1})
    batch = [op("event", {"id": f"u{i}"}, name=f"e{i}") for i in range(3)]
    response = send(client, "POST", "/api/v2/batch", {"batch": batch})
    message = "sandbox fault: operation failed on purpose"
    assert (response.status_code, response.json()) == (
        207,
        {
            "errors": [
                {"batch_index": i, "reason": "invalid", "field": "", "message": message} for i in (0, 2)
            ]
        },
    )
    assert [e["name"] for e in sb.events] == ["e1"]
    assert send(client, "POST", "/api/v2/batch", {"batch": batch}).status_code == 200


def test_slow_fault_delays_then_processes(client: httpx.Client, sb: CustomerioSandbox) -> None:
    sb.add_fault(slow_ms=150)
    started = time.monotonic()
    assert client.put("/api/v1/customers/u1").status_code == 200
    assert time.monotonic() - started >= 0.15
    sb.add_fault(slow_ms=400, status=500)
    with pytest.raises(httpx.ReadTimeout):
        client.put("/api/v1/customers/u1", timeout=0.1)
    wait_for(lambda: len(sb.requests) == 2)  # let the slow answer finish before the next test


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"status": 200},
        {"status": 599},
        {"status": 500, "fail_batch_indexes": [1]},
        {"fail_batch_indexes": []},
        {"fail_batch_indexes": [0], "endpoint": "identify"},
        {"retry_after": 3, "slow_ms": 10},
        {"status": 500, "times": 0},
        {"status": 500, "endpoint": "nowhere"},
        {"status": 500, "colour": "red"},
    ],
)
def test_bad_fault_rules_are_refused(client: httpx.Client, rule: dict[str, Any]) -> None:
    response = client.post(f"{CONTROL}/faults", json=rule)
    assert response.status_code == 400 and response.json()["error"].startswith("invalid fault rule")


def test_fault_list_and_clear(client: httpx.Client, sb: CustomerioSandbox) -> None:
    client.post(f"{CONTROL}/faults", json=[{"status": 500}, {"slow_ms": 5, "times": 3}])
    listed = client.get(f"{CONTROL}/faults").json()
    assert listed == {"count": 2, "faults": [{"status": 500}, {"slow_ms": 5.0, "times": 3}]}
    assert client.delete(f"{CONTROL}/faults").json() == {"cleared": 2}
    assert sb.stats()["faults_pending"] == 0


# ---- control API ------------------------------------------------------------------------------------


def test_control_api_reads_filters_and_resets(client: httpx.Client, sb: CustomerioSandbox) -> None:
    send(client, "PUT", "/api/v1/customers/user%2F1", {"email": "Ada@Example.com"})
    send(client, "POST", "/api/v1/customers/user%2F1/events", {"name": "a", "id": ULID_A})
    send(client, "POST", "/api/v1/customers/user%2F1/events", {"name": "b"})
    send(client, "POST", "/api/v1/customers/other/events", {"name": "a"})
    send(client, "POST", "/api/v1/customers/user%2F1/events", {"name": "a", "id": ULID_A})
    ada = person(sb, "user/1")
    people = client.get(f"{CONTROL}/people").json()
    assert people["count"] == 2 and people["people"][0] == ada
    for key in (ada["cio_id"], "user%2F1", "ada%40example.com", "ADA@EXAMPLE.COM"):
        assert client.get(f"{CONTROL}/people/{key}").json() == ada
    missing = client.get(f"{CONTROL}/people/nobody")
    assert (missing.status_code, missing.json()) == (
        404,
        {"code": 404, "error": "no person has cio_id, id or email 'nobody'"},
    )
    by_person = client.get(f"{CONTROL}/events", params={"person": "user/1"}).json()
    assert [e["name"] for e in by_person["events"]] == ["a", "b"]
    assert client.get(f"{CONTROL}/events", params={"person": ada["cio_id"], "name": "a"}).json()["count"] == 1
    limited = client.get(f"{CONTROL}/events", params={"name": "a", "limit": "1"}).json()
    assert limited["count"] == 2 and len(limited["events"]) == 1
    assert client.get(f"{CONTROL}/events", params={"limit": "x"}).status_code == 400
    requests = client.get(f"{CONTROL}/requests").json()
    assert requests["count"] == 5 and requests["requests"][0] == {
        "method": "PUT",
        "path": "/api/v1/customers/user%2F1",
        "status": 200,
        "time": NOW,
    }
    assert client.get(f"{CONTROL}/stats").json() == {
        "requests": 5,
        "statuses": {"200": 5},
        "people": 2,
        "events": 3,
        "duplicates": 1,
        "rate_limited": 0,
        "activity": 0,
        "faults_pending": 0,
    }
    assert client.get(f"{CONTROL}/activity").json() == {"count": 0, "activity": []}
    assert client.post(f"{CONTROL}/reset").json() == {"reset": True}
    assert sb.people == {} and sb.events == [] and sb.requests == []
    send(client, "PUT", "/api/v1/customers/u1", {})
    assert person(sb, "u1")["cio_id"] == "a3000001"  # ids restart
    send(client, "POST", "/api/v1/customers/u1/events", {"name": "a", "id": ULID_A})
    assert len(sb.events) == 1  # dedupe memory was reset too


# ---- the official customerio client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The sandbox behind TLS on loopback: the official client only builds https:// URLs."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    port = free_port()
    config = uvicorn.Config(
        SANDBOX.app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "TLS sandbox did not start"
        time.sleep(0.01)
    try:
        yield port, str(cert_file)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def trusting(client: CustomerIO, cert: str) -> CustomerIO:
    """Trust the test certificate. `trust_env` off, or REQUESTS_CA_BUNDLE overrides `verify`."""
    client.http.trust_env = False
    client.http.verify = cert
    return client


@pytest.fixture
def cio(tls: tuple[int, str], sb: CustomerioSandbox) -> Iterator[CustomerIO]:
    port, cert = tls
    client = trusting(CustomerIO(SITE, KEY, host="127.0.0.1", port=port, timeout=5), cert)
    with client:
        yield client


def test_official_client_identify_track_and_devices(cio: CustomerIO, sb: CustomerioSandbox) -> None:
    cio.identify(
        "user/with/slashes",
        email="Ada@Example.com",
        plan="premium",
        created_at=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
    )
    cio.identify("test@gmail.com", first_name="Test")
    cio.track("user/with/slashes", "purchase", {"price": 23.45}, id=ULID_A, timestamp=1735680000)
    cio.track("user/with/slashes", "purchase", {"price": 23.45}, id=ULID_A)  # a redelivery: ignored
    cio.track_anonymous("anon-1", "watched_video", {"video": "intro"})
    cio.pageview("test@gmail.com", "https://mysite.com/page", title="Home")
    cio.backfill("user/with/slashes", "old_purchase", 1735600000, price=1)
    cio.add_device("user/with/slashes", "fcm-token", "android", last_used=1735689000)
    ada = person(sb, "ada@example.com")
    assert (ada["id"], ada["attributes"], ada["created_at"]) == (
        "user/with/slashes",
        {"plan": "premium"},
        1735689600,
    )
    assert ada["devices"] == {
        "fcm-token": {"id": "fcm-token", "platform": "android", "last_used": 1735689000, "attributes": {}}
    }
    assert person(sb, "test@gmail.com")["attributes"] == {"first_name": "Test"}
    assert [(e["name"], e["type"], e["id"], e["timestamp"]) for e in sb.events] == [
        ("purchase", "event", ULID_A, 1735680000),
        ("watched_video", "event", None, int(NOW)),
        ("https://mysite.com/page", "page", None, int(NOW)),
        ("old_purchase", "event", None, 1735600000),
    ]
    assert sb.requests[0]["path"] == "/api/v1/customers/user%2Fwith%2Fslashes"
    assert sb.requests[1]["path"] == "/api/v1/customers/test%40gmail.com"
    cio.delete_device("user/with/slashes", "fcm-token")
    cio.suppress("test@gmail.com")
    cio.unsuppress("test@gmail.com")
    cio.delete("user/with/slashes")
    assert sb.people == {}
    assert {r["status"] for r in sb.requests} == {200}


def test_official_client_batch(cio: CustomerIO, sb: CustomerioSandbox) -> None:
    cio.batch(
        [
            op("identify", {"id": "42"}, attributes={"plan": "premium"}),
            op("event", {"id": "42"}, name="purchase", id=ULID_B),
        ]
    )
    assert person(sb, "42")["attributes"] == {"plan": "premium"}
    assert sb.events[0]["id"] == ULID_B
    # 207 is a 2xx: the official client returns it without raising, so its caller must read the body.
    partial = cio.batch(
        [op("identify", {"id": "43"}, attributes={"plan": "x" * 1001}), op("delete", {"id": "42"})]
    )
    assert partial.status_code == 207
    assert partial.json()["errors"] == [
        {
            "batch_index": 0,
            "reason": "invalid",
            "field": "attributes.plan",
            "message": "property value cannot be longer than 1000 bytes",
        }
    ]
    assert sb.people == {}


def test_official_client_gets_the_rejections_the_api_would_give(
    cio: CustomerIO, sb: CustomerioSandbox
) -> None:
    with pytest.raises(CustomerIOException, match=r"^400: .*property value cannot be longer than 1000 bytes"):
        cio.identify("u1", plan="x" * 1001)
    with pytest.raises(CustomerIOException, match=r"^400: .*id must be a ULID"):
        cio.track("u1", "purchase", id="evt-1")
    with pytest.raises(CustomerIOException, match=r"^400: .*event name cannot be longer than 100 bytes"):
        cio.track("u1", "n" * 101)
    with pytest.raises(CustomerIOException, match=r"^400: .*platform must be ios or android"):
        cio.add_device("u1", "token", "web")
    wrong_key = trusting(CustomerIO(SITE, "wrong", host="127.0.0.1", port=cio.port), cio.http.verify)
    with wrong_key, pytest.raises(CustomerIOException, match=r"^401: "):
        wrong_key.identify("u1")
    assert sb.people == {} and sb.events == []


def test_official_client_retries_5xx_and_429_only_with_retry_after(
    cio: CustomerIO, sb: CustomerioSandbox
) -> None:
    sb.add_fault(status=503, times=2)
    cio.identify("u1", plan="a")  # urllib3 retries 500/502/503/504 (customerio.md §2.6)
    assert [r["status"] for r in sb.requests] == [503, 503, 200]
    sb.add_fault(status=429)
    with pytest.raises(CustomerIOException, match=r"^429: "):
        cio.identify("u1", plan="b")
    # urllib3 also retries a 429 that carries Retry-After (it honours the header), so the sandbox's
    # own 429s, which always carry it, are retried by the official client.
    sb.add_fault(status=429, retry_after=0)
    cio.identify("u1", plan="c")
    assert [r["status"] for r in sb.requests][3:] == [429, 429, 200]
    assert person(sb, "u1")["attributes"] == {"plan": "c"}
