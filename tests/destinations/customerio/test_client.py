"""The `customerio` destination over real HTTP against the Customer.io Track sandbox, with a real
`SentMemory` on a real SQLite file and the real delivery loop where the outcome per row matters:
207 dead-letters exactly the failed events, 429 with and without Retry-After, 5xx, 400, 401,
timeouts, identify only when a selected user property changed, and the connection test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Skip
from loopwire.destinations.customerio import CustomerioDestination, api, assign
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.destinations.customerio.testing import send_test_event
from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.pipeline.delivery import Courier
from loopwire.sandbox.customerio import CustomerioSandbox
from loopwire.settings import dec_hook
from loopwire.store import SentMemory, SQLiteStore
from tests.helpers.servers import free_port, serve_app

SITE_ID = "site-0001"
API_KEY = "track-key-0001"
T = 1_767_225_000_000  # 2025-12-31T23:50:00Z


@pytest.fixture
def sandbox() -> Iterator[tuple[CustomerioSandbox, str]]:
    box = CustomerioSandbox(credentials={SITE_ID: API_KEY})
    with serve_app(box.app) as url:
        yield box, url


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "loopwire.db")
    yield s
    s.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def options(url: str, **extra: Any) -> CustomerioOptions:
    raw: dict[str, Any] = {
        "site_id": SITE_ID,
        "api_key": API_KEY,
        "region": "us",
        "base_url": url,
        "identifier": "user_id",
        "retry": {"initial_backoff": "50ms", "max_backoff": "200ms", "max_age": "1h", "timeout": "2s"},
        **extra,
    }
    result: CustomerioOptions = msgspec.convert(raw, CustomerioOptions, dec_hook=dec_hook)
    return result


def amp(
    event_type: str,
    n: int = 0,
    user_id: str | None = "cust_000123",
    event_properties: dict[str, Any] | None = None,
    user_properties: dict[str, Any] | None = None,
) -> Event:
    data: dict[str, Any] = {"event_type": event_type, "time": T + n, "insert_id": f"evt-{n:04d}"}
    if user_id is not None:
        data["user_id"] = user_id
    if event_properties is not None:
        data["event_properties"] = event_properties
    if user_properties is not None:
        data["user_properties"] = user_properties
    kind = "identify" if event_type == "$identify" else "track"
    return Event(
        id=f"evt-{n:04d}",
        source="amplitude",
        kind=kind,
        name=event_type,
        time_ms=T + n,
        received_ms=T + n,
        user_id=user_id,
        data=data,
    )


async def send(
    destination: CustomerioDestination, events: list[Event]
) -> tuple[int | None, list[Outcome | None]]:
    payloads = []
    for event in events:
        payload = destination.map(event, T)
        assert isinstance(payload, dict), payload
        payloads.append(payload)
    response, outcomes = await destination.send([destination.encode(p) for p in payloads], payloads)
    return (response.status if response else None), assign(outcomes, len(payloads))


def memory(store: SQLiteStore) -> SentMemory:
    return SentMemory(store, "customerio")


# --- 200 ---------------------------------------------------------------------------------------------


async def test_events_and_identifies_reach_customerio(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, send_users=True, event_properties=["total"], user_properties=["plan"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    events = [
        amp("Order Completed", 1, event_properties={"total": 59.5, "secret": "x"}),
        amp("$identify", 2, user_properties={"$set": {"plan": "pro"}}),
        amp(
            "[Amplitude] Page Viewed",
            3,
            event_properties={"[Amplitude] Page URL": "https://shop.example.com/"},
        ),
    ]
    status, outcomes = await send(destination, events)
    assert status == 200
    assert all(isinstance(o, Delivered) for o in outcomes)
    person = box.find("cust_000123")
    assert person is not None
    assert person["attributes"] == {"plan": "pro"}
    got = [(e["type"], e["name"], e["data"]) for e in box.events]
    assert got == [
        ("event", "Order Completed", {"total": 59.5}),
        ("page", "https://shop.example.com/", {}),
    ]
    request = box.requests[-1]
    assert (request["method"], request["path"]) == ("POST", "/api/v2/batch")


async def test_redelivery_carries_the_same_ulid_and_is_dropped(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = CustomerioDestination("customerio", options(url), http, memory(store))
    event = amp("Order Completed", 1)
    for _ in range(2):
        status, _ = await send(destination, [event])
        assert status == 200
    assert len(box.events) == 1
    assert box.stats()["duplicates"] == 1


async def test_eu_options_reach_the_sandbox_through_base_url(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = CustomerioDestination("customerio", options(url, region="eu"), http, memory(store))
    assert destination.client.url == f"{url}/api/v2/batch"
    status, _ = await send(destination, [amp("Order Completed", 1)])
    assert status == 200


# --- 207 through the real delivery loop -----------------------------------------------------------


async def deliver(destination: CustomerioDestination, store: SQLiteStore, events: list[Event]) -> None:
    await store.append(events, [[destination.name]] * len(events))
    courier = Courier(destination, store, Metrics(), rand=lambda: 0.0)
    await courier.run_once()


def states(store: SQLiteStore) -> dict[str, tuple[str, str | None]]:
    rows = store.run(
        lambda c: c.execute(
            "SELECT e.id, o.state, o.reason FROM outbox o JOIN events e ON e.seq = o.seq ORDER BY e.seq"
        ).fetchall()
    )
    return {event_id: (state, reason) for event_id, state, reason in rows}


async def test_207_dead_letters_exactly_the_failed_events(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, send_users=True, user_properties=["plan"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    events = [
        amp("Order Completed", 1),  # op 0
        amp("Plan Upgraded", 2, user_properties={"$set": {"plan": "pro"}}),  # ops 1 (event), 2 (identify)
        amp("Order Completed", 3, user_id="cust_000456"),  # op 3
        amp("$identify", 4, user_id="cust_000789", user_properties={"$set": {"plan": "team"}}),  # op 4
    ]
    box.add_fault(fail_batch_indexes=[2, 4])
    await deliver(destination, store, events)
    got = states(store)
    assert got["evt-0001"] == ("delivered", None)
    assert got["evt-0003"] == ("delivered", None)
    for failed in ("evt-0002", "evt-0004"):
        state, reason = got[failed]
        assert state == "dead"
        assert reason is not None and reason.startswith("Customer.io rejected this event's operation")
    assert [e["name"] for e in box.events] == ["Order Completed", "Plan Upgraded", "Order Completed"]
    # Only what Customer.io accepted is remembered: the failed identifies will be sent again.
    assert destination.memory.recall("person:id:cust_000123") is None
    assert destination.memory.recall("person:id:cust_000789") is None
    dead = store.dead_letters("customerio")
    assert {d["event_id"] for d in dead} == {"evt-0002", "evt-0004"}
    assert all(d["response"].startswith("207 ") for d in dead)
    # Replayed, the event op of evt-0002 is dropped as a duplicate and its identify goes through.
    store.replay_dead(int(time.time() * 1000), "customerio")
    await Courier(destination, store, Metrics()).run_once()
    assert states(store)["evt-0002"] == ("delivered", None)
    assert box.stats()["duplicates"] == 1
    person = box.find("cust_000123")
    assert person is not None and person["attributes"] == {"plan": "pro"}
    assert destination.memory.recall("person:id:cust_000123") == {"sent": {"plan": "pro"}}


# --- retryable and permanent failures ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"status": 429, "retry_after": 7}, Retry(7.0, "Customer.io throttled the request (429); retrying when its Retry-After says")),
        ({"status": 429}, Retry(None, "Customer.io throttled the request (429); retrying with backoff")),
        ({"status": 500}, Retry(None, "Customer.io answered 500; retrying with backoff")),
        ({"status": 503, "retry_after": 30}, Retry(30.0, "Customer.io answered 503; retrying when its Retry-After says")),
    ],
)  # fmt: skip
async def test_throttling_and_server_errors_are_retried(
    sandbox: tuple[CustomerioSandbox, str],
    store: SQLiteStore,
    http: httpx.AsyncClient,
    fault: dict[str, Any],
    expected: Retry,
) -> None:
    box, url = sandbox
    destination = CustomerioDestination("customerio", options(url), http, memory(store))
    box.add_fault(**fault)
    status, outcomes = await send(destination, [amp("Order Completed", 1), amp("Order Completed", 2)])
    assert status == fault["status"]
    assert outcomes == [expected, expected]
    assert box.events == []
    status, outcomes = await send(destination, [amp("Order Completed", 1), amp("Order Completed", 2)])
    assert status == 200 and len(box.events) == 2


async def test_400_rejects_all_with_the_reason(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = CustomerioDestination("customerio", options(url), http, memory(store))
    box.add_fault(status=400, error="batch is malformed")
    status, outcomes = await send(destination, [amp("Order Completed", 1), amp("Order Completed", 2)])
    assert status == 400
    reason = "Customer.io rejected the request as invalid (400): batch is malformed (invalid)"
    assert outcomes == [Rejected(reason), Rejected(reason)]


async def test_401_wrong_credentials_rejects_all_and_redacts_the_key(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    _, url = sandbox
    opts = options(url, api_key="wrong-key-0001")
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    status, outcomes = await send(destination, [amp("Order Completed", 1)])
    assert status == 401
    (outcome,) = outcomes
    assert isinstance(outcome, Rejected)
    assert "`site_id`" in outcome.reason and "`region`" in outcome.reason
    token = "c2l0ZS0wMDAxOndyb25nLWtleS0wMDAx"  # base64("site-0001:wrong-key-0001")
    assert destination.redact(f"auth {token} key wrong-key-0001") == "auth *** key ***"


async def test_a_timeout_is_retried(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, retry={"timeout": "200ms"})
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    box.add_fault(slow_ms=1500)
    status, outcomes = await send(destination, [amp("Order Completed", 1)])
    assert status is None
    (outcome,) = outcomes
    assert isinstance(outcome, Retry) and outcome.after is None
    assert "within 0.2s" in outcome.reason


async def test_an_unreachable_host_is_retried(store: SQLiteStore, http: httpx.AsyncClient) -> None:
    destination = CustomerioDestination(
        "customerio", options(f"http://127.0.0.1:{free_port()}"), http, memory(store)
    )
    status, outcomes = await send(destination, [amp("Order Completed", 1)])
    assert status is None
    (outcome,) = outcomes
    assert isinstance(outcome, Retry) and "could not reach" in outcome.reason


# --- identify only when a selected user property changed (real SentMemory, real SQLite) -------------


async def test_identify_only_when_a_selected_property_changed(
    sandbox: tuple[CustomerioSandbox, str], tmp_path: Path, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    path = tmp_path / "memory.db"
    opts = options(url, send_users=True, user_properties=["plan", "city"])

    store = SQLiteStore(path)
    destination = CustomerioDestination("customerio", opts, http, SentMemory(store, "customerio"))
    first = amp("$identify", 1, user_properties={"$set": {"plan": "pro", "city": "Paris", "nick": "ada"}})
    status, outcomes = await send(destination, [first])
    assert status == 200 and outcomes == [Delivered()]
    assert destination.memory.recall("person:id:cust_000123") == {"sent": {"plan": "pro", "city": "Paris"}}

    same = amp("$identify", 2, user_properties={"$set": {"plan": "pro", "nick": "lovelace"}})
    assert destination.map(same, T) == Skip(
        "no selected user property changed since it was last sent", "nothing_to_send"
    )
    store.close()

    # The memory is durable: a restarted loopwire still knows what it sent.
    store = SQLiteStore(path)
    destination = CustomerioDestination("customerio", opts, http, SentMemory(store, "customerio"))
    assert destination.map(same, T) == Skip(
        "no selected user property changed since it was last sent", "nothing_to_send"
    )
    changed = amp("Plan Upgraded", 3, user_properties={"$set": {"plan": "team", "city": "Paris"}})
    payload = destination.map(changed, T)
    assert isinstance(payload, dict)
    assert [op["action"] for op in payload["ops"]] == ["event", "identify"]
    assert payload["ops"][1]["attributes"] == {"plan": "team"}
    status, _ = await send(destination, [changed])
    assert status == 200
    person = box.find("cust_000123")
    assert person is not None and person["attributes"] == {"plan": "team", "city": "Paris"}
    assert destination.memory.recall("person:id:cust_000123") == {"sent": {"plan": "team", "city": "Paris"}}

    # $unset forgets without sending; the next $set of the old value counts as a change again.
    requests = len(box.requests)
    status, outcomes = await send(
        destination, [amp("$identify", 4, user_properties={"$unset": {"city": "-"}})]
    )
    assert status is None and outcomes == [
        Delivered(frozenset({0}), "nothing for Customer.io; remembered for later events")
    ]
    assert len(box.requests) == requests  # nothing was sent
    assert destination.memory.recall("person:id:cust_000123") == {"sent": {"plan": "team"}}
    again = destination.map(amp("$identify", 5, user_properties={"$set": {"city": "Paris"}}), T)
    assert isinstance(again, dict) and again["ops"][0]["attributes"] == {"city": "Paris"}
    store.close()


async def test_changes_in_one_batch_are_all_remembered(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    _, url = sandbox
    opts = options(url, send_users=True, user_properties=["plan", "city"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    events = [
        amp("$identify", 1, user_properties={"$set": {"plan": "pro"}}),
        amp("$identify", 2, user_properties={"$set": {"city": "Paris"}}),
        amp("$identify", 3, user_properties={"$set": {"plan": "team"}}),
    ]
    status, _ = await send(destination, events)
    assert status == 200
    assert destination.memory.recall("person:id:cust_000123") == {"sent": {"plan": "team", "city": "Paris"}}


async def test_email_identifiers_share_memory_whatever_their_case(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, identifier="email", send_users=True, user_properties=["plan"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    first = amp("$identify", 1, user_properties={"$set": {"email": "Ada@Example.com", "plan": "pro"}})
    status, _ = await send(destination, [first])
    assert status == 200
    second = amp(
        "$identify", 2, user_id="other", user_properties={"$set": {"email": "ada@example.COM", "plan": "pro"}}
    )
    # No identify: the person (by email, whatever its case) was sent plan=pro already. Only the
    # identifier of Amplitude user `other` is new, and is remembered.
    assert destination.map(second, T) == {
        "ops": [],
        "remember": {"user:other": {"identifier": "ada@example.COM"}},
    }
    status, _ = await send(destination, [second, amp("Order Completed", 3, user_id="other")])
    assert status == 200
    assert len(box.people) == 1  # Customer.io matched the email case-insensitively too


async def test_identifier_learned_from_an_identify_addresses_later_events(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, identifier="email")
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    order = amp("Order Completed", 2)
    assert destination.map(order, T) == Skip(
        "events without a user are never sent: no Customer.io identifier (seed 003)", "no_identifier"
    )
    identify = amp("$identify", 1, user_properties={"$set": {"email": "ada@example.com"}})
    assert destination.accepts(identify)  # even with send_users off: the identifier is learned
    status, outcomes = await send(destination, [identify])
    assert status is None and isinstance(outcomes[0], Delivered)
    assert box.requests == []  # nothing went to Customer.io
    status, _ = await send(destination, [order])
    assert status == 200
    (event,) = box.events
    person = box.find("ada@example.com")
    assert person is not None and event["person"] == person["cio_id"]


def own(kind: str, n: int, user_id: str = "cust_000123", **data: Any) -> Event:
    """One of loopwire's own events, Segment-shaped as the audience and holdout engine writes it."""
    event_id = f"lw-{n:04d}"
    name = data.get("event")
    body = {"type": kind, "userId": user_id, "messageId": event_id, "timestamp": "2025-12-31T23:50:00.000Z"}
    return Event(
        id=event_id,
        source="loopwire",
        kind=kind,
        name=name,
        time_ms=T + n,
        received_ms=T + n,
        user_id=user_id,
        data={**body, **data},
    )


async def test_loopwire_attributes_and_audience_events_reach_the_learned_person(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    # Defaults otherwise: send_users off, nothing selected. loopwire's own attributes go all the same.
    destination = CustomerioDestination("customerio", options(url, identifier="email"), http, memory(store))
    traits = {"holdout_cart_journey": "holdout", "audience_cart_abandoners": True}
    holdout = own("identify", 1, traits=traits)
    assert destination.accepts(holdout)
    assert destination.map(holdout, T) == Skip(
        "no Customer.io identifier known yet for this user: loopwire's own events are addressed by the "
        "`email` learned from the user's Amplitude or Segment events, and none has been seen (seed 003)",
        "no_identifier",
    )
    learn = amp("$identify", 2, user_properties={"$set": {"email": "ada@example.com"}})
    entered = own(
        "track", 3, event="Audience Entered", properties={"audience": "cart_abandoners", "items": 2}
    )
    status, outcomes = await send(destination, [learn, holdout, entered])
    assert status == 200 and all(isinstance(o, Delivered) for o in outcomes)
    person = box.find("ada@example.com")
    assert person is not None and person["attributes"] == traits
    assert [(e["name"], e["data"]) for e in box.events] == [
        ("Audience Entered", {"audience": "cart_abandoners", "items": 2})
    ]
    assert destination.memory.recall("person:email:ada@example.com") == {
        "sent": {"holdout_cart_journey": "holdout", "audience_cart_abandoners": "true"}
    }
    # Sent once: the same traits again change nothing; a changed one goes alone.
    assert destination.map(own("identify", 4, traits=traits), T) == Skip(
        "none of loopwire's attributes changed since they were last sent", "nothing_to_send"
    )
    exited = own("identify", 5, traits={**traits, "audience_cart_abandoners": False})
    payload = destination.map(exited, T)
    assert isinstance(payload, dict)
    assert payload["ops"][0]["attributes"] == {"audience_cart_abandoners": False}


async def test_a_failed_memory_write_retries_memory_only_events(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    _, url = sandbox

    class Broken:
        def recall(self, key: str) -> dict[str, Any] | None:
            return None

        async def remember(self, items: dict[str, dict[str, Any]], now_ms: int) -> None:
            raise OSError("disk full")

    destination = CustomerioDestination("customerio", options(url, identifier="email"), http, Broken())
    learn = amp("$identify", 1, user_properties={"$set": {"email": "ada@example.com"}})
    sent = amp("Order Completed", 2, user_properties={"$set": {"email": "ada@example.com"}})
    status, outcomes = await send(destination, [learn, sent])
    assert status == 200
    assert isinstance(outcomes[0], Retry) and "memory" in outcomes[0].reason
    assert isinstance(outcomes[1], Delivered)  # Customer.io has it; only the memory is behind


# --- routing ------------------------------------------------------------------------------------------


async def test_accepts_follows_sources_selection_and_user_updates(
    store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    opts = options("http://127.0.0.1:9", route={"events": ["Order *"]}, user_properties=["plan"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    assert destination.accepts(amp("Order Completed"))
    assert not destination.accepts(amp("Product Viewed"))
    assert not destination.accepts(
        amp("$identify", user_properties={"$set": {"plan": "pro"}})
    )  # send_users off
    group = amp("$groupidentify")
    assert not destination.accepts(msgspec.structs.replace(group, kind="groupidentify"))
    webhook = msgspec.structs.replace(amp("Order Completed"), source="customerio")
    assert not destination.accepts(webhook)
    users = CustomerioDestination(
        "customerio", msgspec.structs.replace(opts, send_users=True), http, memory(store)
    )
    upgraded = amp("Plan Upgraded", user_properties={"$set": {"plan": "pro"}})
    assert users.accepts(upgraded)  # not a selected event, but it carries a selected user property
    payload = users.map(upgraded, T)
    assert isinstance(payload, dict) and [op["action"] for op in payload["ops"]] == ["identify"]


async def test_batch_limits_fit_customerio(http: httpx.AsyncClient) -> None:
    opts = options("http://127.0.0.1:9")
    destination = CustomerioDestination("customerio", opts, http, _Nothing())
    assert destination.max_events == api.MAX_PAYLOADS == 500
    assert destination.max_bytes + api.ENVELOPE_BYTES <= api.BATCH_MAX_BYTES


class _Nothing:
    def recall(self, key: str) -> dict[str, Any] | None:
        return None

    async def remember(self, items: dict[str, dict[str, Any]], now_ms: int) -> None:
        return None


async def test_a_full_outbox_is_sent_in_batches_under_500kb(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    opts = options(url, event_properties=["description"])
    destination = CustomerioDestination("customerio", opts, http, memory(store))
    events = [amp("Order Completed", n, event_properties={"description": "d" * 30_000}) for n in range(40)]
    await deliver(destination, store, events)
    assert {state for state, _ in states(store).values()} == {"delivered"}
    assert len(box.events) == 40
    assert len(box.requests) == 3  # 40 × ~30 KB in requests of at most 500 KB


# --- test connection ----------------------------------------------------------------------------------


async def test_connection_checks_credentials_and_region(sandbox: tuple[CustomerioSandbox, str]) -> None:
    box, url = sandbox
    ok = await send_test_event(options(url))
    assert ok.ok, ok
    assert "region `us`" in ok.summary
    wrong_region = await send_test_event(options(url, region="eu"))
    assert not wrong_region.ok
    assert "set `region: us`" in wrong_region.summary
    bad_key = await send_test_event(options(url, api_key="wrong-key-0001"))
    assert not bad_key.ok
    assert "401" in bad_key.summary and "`api_key`" in bad_key.summary
    assert "wrong-key-0001" not in bad_key.detail
    assert [r["path"] for r in box.requests] == ["/api/v1/accounts/region"] * 3
    assert box.events == [] and box.people == {}  # no test person left in the workspace


async def test_connection_reports_an_eu_account(tmp_path: Path) -> None:
    box = CustomerioSandbox(credentials={SITE_ID: API_KEY}, region="eu")
    with serve_app(box.app) as url:
        result = await send_test_event(options(url, region="eu"))
        assert result.ok and "region `eu`" in result.summary
        wrong = await send_test_event(options(url, region="us"))
        assert not wrong.ok and "set `region: eu`" in wrong.summary


async def test_connection_reports_an_unreachable_host() -> None:
    result = await send_test_event(options(f"http://127.0.0.1:{free_port()}"))
    assert not result.ok
    assert result.summary.startswith("no answer from")


async def test_an_identifier_learned_in_a_failed_batch_is_stored_once_it_goes_through(
    sandbox: tuple[CustomerioSandbox, str], store: SQLiteStore, http: httpx.AsyncClient
) -> None:
    box, url = sandbox
    destination = CustomerioDestination("customerio", options(url, identifier="email"), http, memory(store))
    signup = amp("Signed Up", 1, user_properties={"$set": {"email": "ada@example.com"}})
    order = amp("Order Completed", 2)  # carries no email: addressed by the one learned just before
    box.add_fault(status=500)
    status, outcomes = await send(destination, [signup, order])
    assert status == 500 and all(isinstance(o, Retry) for o in outcomes)
    assert destination.memory.recall("user:cust_000123") is None  # not stored: not delivered yet
    status, outcomes = await send(destination, [signup, order])  # the retry maps them again
    assert status == 200 and all(isinstance(o, Delivered) for o in outcomes)
    assert destination.memory.recall("user:cust_000123") == {"identifier": "ada@example.com"}
    person = box.find("ada@example.com")
    assert person is not None
    assert [e["person"] for e in box.events] == [person["cio_id"]] * 2
