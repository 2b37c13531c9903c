"""The full recompute over a real SQLite log gives the memberships of evaluating each person directly
(every event decoded, `profile_of`, `evaluate_all`), however it cuts the work: events no audience
reads left out, bodies cut to the fields read, shared results for people with nothing relevant, two
worker processes. With `write` it stores the rows and timers the engine stores."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.audiences.engine import Engine, profile_of
from loopwire.audiences.evaluate import EventMatcher, PersonHistory, compile_all, evaluate_all
from loopwire.audiences.library import resolve_audiences
from loopwire.audiences.recompute import (
    Share,
    needs,
    recompute,
    recompute_share,
    seq_parts,
    split,
)
from loopwire.model import Event, decode_event, event_key
from loopwire.settings import dec_hook
from loopwire.store import SQLiteStore, Store
from loopwire.store.base import Connection, Dialect
from loopwire.store.postgres import PgConnection
from loopwire.store.postgres import Store as PostgresStore
from loopwire.store.scans import matches_sql
from tests.helpers.postgres import Cluster

NOW = 1_795_435_200_000  # 2026-11-23T12:00:00Z
HOUR = 3_600_000
DAY = 86_400_000
LIBRARY = (
    "high_intent_engagers",
    "fatigue_risk",
    "cart_click_no_purchase",
    "lapsed_30_60",
    "lapsed_60_90",
    "lapsed_90_plus",
    "vip",
    "first_time_buyers",
    "recent_purchasers",
    "lifecycle_state",
)
CUSTOM: dict[str, Any] = {
    "cart_abandoners": {"library": "cart_abandoners", "version": 1, "exclude": ["recent_purchasers"]},
    # profile conditions and a profile value: the recompute must then build the profile
    "pro_clickers": {
        "version": 1,
        "rule": {
            "all": [{"profile": {"plan": {"eq": "pro"}}}, {"count": {"event": "*.clicked", "within": "30d"}}]
        },
        "qualifying_values": {"plan": {"profile": "plan"}, "country": {"profile": "geo.country"}},
    },
    # a raw path into Amplitude's payload, a nested path, a dotted literal key, a list of names
    "app_spenders": {
        "version": 1,
        "rule": {"sum": {"event": ["Purchase", "Order Completed"], "property": "$.revenue", "gt": 40}},
        "qualifying_values": {"first_sku": {"event": "Order Completed", "property": "products.0.sku"}},
    },
    "tee_buyers": {
        "version": 1,
        "rule": {"count": {"event": "Order Completed", "where": {"products.0.sku": {"eq": "TEE-1"}}}},
    },
    "dotted": {
        "version": 1,
        "rule": {
            "any": [
                {"count": {"event": "Product Viewed", "where": {"a.b": {"eq": 1}}}},
                {"count": {"event": "*.clicked", "where": {"link.kind": {"eq": "cart"}}}},
            ]
        },
    },
    "sms_or_push": {
        "version": 1,
        "rule": {
            "any": [
                {"count": {"event": "sms.clicked", "within": "14d"}},
                {"member_of": "high_intent_engagers"},
            ]
        },
        "priority_group": "recovery",
        "priority": 1,
    },
    "recovery_top": {
        "version": 1,
        "rule": {"not": {"absent": {"event": "Checkout Started", "within": "3d"}}},
        "priority_group": "recovery",
        "priority": 2,
    },
}


def definitions() -> dict[str, AudienceDefinition]:
    given = {name: AudienceDefinition(version=1, library=name) for name in LIBRARY}
    given |= {
        name: msgspec.convert(raw, AudienceDefinition, dec_hook=dec_hook) for name, raw in CUSTOM.items()
    }
    return resolve_audiences(given)


class Log:
    """A seeded mix of every source's events for `people` people, with the corner cases: ties, events
    after now, loopwire's own events, events without a user, people with nothing an audience reads."""

    def __init__(self, people: int, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.serial = 0
        self.events: list[Event] = []
        for n in range(people):
            self.person(f"u{n:03d}", n)

    def add(
        self, user: str | None, source: str, kind: str, at: int, data: dict[str, Any], **head: Any
    ) -> None:
        self.serial += 1
        self.events.append(
            Event(
                id=f"e{self.serial}",
                source=source,
                kind=kind,
                time_ms=at,
                received_ms=at,
                user_id=user,
                data=data,
                **head,
            )
        )

    def cio(self, user: str, metric: str, at: int, channel: str = "email", **data: Any) -> None:
        data = {"identifiers": {"id": user}, "campaign_id": 412, **data}
        self.add(user, "customerio", "message", at, data, channel=channel, metric=metric)

    def track(self, user: str, name: str, at: int, **properties: Any) -> None:
        message = {"type": "track", "event": name, "userId": user, "properties": properties}
        self.add(user, "segment", "track", at, message, name=name)

    def amp(self, user: str | None, name: str, at: int, **top: Any) -> None:
        self.add(user, "amplitude", "track", at, {"event_type": name, "user_id": user, **top}, name=name)

    def person(self, user: str, n: int) -> None:
        rng = self.rng
        if n % 7 == 3:  # only what no audience reads
            self.cio(user, "sent", NOW - rng.randrange(90 * DAY))
            self.amp(user, "Session Start", NOW - rng.randrange(90 * DAY), event_properties={})
            return
        if rng.random() < 0.7:
            traits = {"plan": rng.choice(["pro", "free"]), "geo": {"country": "DE"}}
            self.add(user, "segment", "identify", NOW - 100 * DAY, {"type": "identify", "traits": traits})
        if rng.random() < 0.4:
            props = {"$set": {"plan": rng.choice(["pro", "free"])}} if n % 2 else {"plan": "pro"}
            self.amp(user, "Session Start", NOW - rng.randrange(50 * DAY), user_properties=props)
        for _ in range(rng.randrange(1, 14)):
            at = NOW - rng.randrange(110 * DAY) if rng.random() < 0.7 else NOW - rng.randrange(3 * DAY)
            kind = rng.random()
            if kind < 0.45:
                channel = rng.choice(["email", "sms", "push"])
                for metric in ("sent", "delivered") + (("clicked",) if rng.random() < 0.3 else ()):
                    href = rng.choice(["https://shop.example/cart", "https://shop.example/new"])
                    extra = {"href": href, "machine": rng.random() < 0.2} if metric == "clicked" else {}
                    if metric == "clicked" and rng.random() < 0.5:  # a literal dotted key wins over nesting
                        extra |= {"link.kind": rng.choice(["cart", "home"]), "link": {"kind": "cart"}}
                    self.cio(user, metric, at, channel, **extra)
                    at += rng.choice([0, 1000, 60_000])  # same-millisecond ties too
            elif kind < 0.7:
                value = rng.choice([20, 35.5, "49.90", None, 240])
                products = [{"sku": rng.choice(["TEE-1", "CAP-2"])}]
                self.track(user, "Checkout Started", at, value=value, products=products)
                if rng.random() < 0.6:
                    at += rng.randrange(5 * HOUR)
                    self.track(user, "Order Completed", at, revenue=value, products=products)
            elif kind < 0.85:
                self.amp(user, "Purchase", at, revenue=rng.choice([12, 30.0, "18"]), event_properties={})
            else:
                self.amp(
                    user, "Product Viewed", at, event_properties={"a.b": rng.choice([1, 2]), "a": {"b": 2}}
                )
        if n % 5 == 0:  # the future: in the history, in no window yet
            self.track(user, "Order Completed", NOW + HOUR, revenue=500)
        if n % 4 == 0:  # the engine's own events never count
            self.add(user, "loopwire", "track", NOW - DAY, {"properties": {}}, name="Order Completed")
        if n % 9 == 0:
            self.amp(None, "Order Completed", NOW - DAY, revenue=999)  # no user: in nobody's history


StoreWith = Callable[[Sequence[Event]], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def store_with(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreWith]:
    """A new store (a file, or a database of the session's PostgreSQL server) holding `events`."""
    opened: list[Store] = []

    def make(events: Sequence[Event]) -> Store:
        if request.param == "sqlite":
            store: Store = SQLiteStore(tmp_path / f"log-{len(opened)}.db")
        else:
            store = PostgresStore(request.getfixturevalue("postgres").create_database())
        opened.append(store)
        store.append_sync(events, [[] for _ in events])
        return store

    yield make
    for store in opened:
        store.close()


def direct(store: Store, audiences: Mapping[str, AudienceDefinition], now: int) -> dict[str, dict[str, Any]]:
    """Per person: every event decoded, the profile, `evaluate_all` — the reference."""
    compiled = compile_all(audiences)
    by_person: dict[str, list[Event]] = {}
    for _, body in store.scan_events(0, 0, 1_000_000):
        event = decode_event(body)
        if event.user_id is not None and event.source != "loopwire":
            by_person.setdefault(event.user_id, []).append(event)
    return {
        user: evaluate_all(compiled, PersonHistory(events, profile_of(events)), now)
        for user, events in by_person.items()
    }


def members_table(store: Store) -> list[tuple[Any, ...]]:
    return store.run(lambda c: c.execute("SELECT * FROM members ORDER BY audience, user_id").fetchall())


def timers_table(store: Store) -> list[tuple[Any, ...]]:
    return store.run(lambda c: c.execute("SELECT * FROM timers ORDER BY user_id").fetchall())


@pytest.fixture
def log() -> Log:
    return Log(120)


def test_counts_and_rows_are_those_of_evaluating_everyone_directly(store_with: StoreWith, log: Log) -> None:
    audiences = definitions()
    assert needs(audiences).profile
    store = store_with(log.events)
    expected = direct(store, audiences, NOW)
    stats = recompute(store, audiences, NOW, write=True, workers=1)

    assert stats.people == len(expected) == 120
    for name in audiences:
        assert stats.members[name] == sum(results[name].member for results in expected.values()), name
    assert 0 < stats.decoded_events < stats.evaluated_events < stats.events
    assert_stored_as_evaluated(store, expected)
    # every audience has members here, so the test says something about each of them
    assert all(stats.members.values()), stats.members
    store.close()


def assert_stored_as_evaluated(store: Store, expected: Mapping[str, Mapping[str, Any]]) -> None:
    """The rows say exactly who is a member (and in which state), the timers when to look again."""
    rows = {
        (audience, user): (member, state) for audience, user, member, _, state, *_ in members_table(store)
    }
    assert rows == {
        (name, user): (1, result.state)
        for user, results in expected.items()
        for name, result in results.items()
        if result.member
    }
    moments = {
        user: min(m for r in results.values() if (m := r.next_check_ms) is not None)
        for user, results in expected.items()
        if any(r.next_check_ms is not None for r in results.values())
    }
    assert dict(timers_table(store)) == moments


def test_events_older_than_every_window_that_can_see_them_are_not_read(store_with: StoreWith) -> None:
    # deliveries are seen only within 14 days (fatigue_risk), clicks within 14 and 7 days; the
    # last order at any age (lapsed_90_plus)
    names = ("fatigue_risk", "high_intent_engagers", "lapsed_90_plus")
    audiences = resolve_audiences({name: AudienceDefinition(version=1, library=name) for name in names})
    log = Log(0)
    for day in range(40):  # a delivery a day: those of the last 14 days are read (not one at 14 days)
        log.cio("u1", "delivered", NOW - day * DAY - HOUR)
    log.cio("u1", "delivered", NOW - 14 * DAY)  # 14 days old: out of the window already, not read
    log.cio("u1", "clicked", NOW - 13 * DAY, machine=False)  # read: keeps u1 out of fatigue_risk
    log.cio("u1", "clicked", NOW - 15 * DAY)
    log.cio("u2", "delivered", NOW - 20 * DAY)  # nothing of u2's is read but their last order
    log.track("u2", "Order Completed", NOW - 200 * DAY, revenue=10)
    log.track("u2", "Order Completed", NOW - 100 * DAY, revenue=10)
    for n in range(6):  # fatigued: six deliveries in 14 days, no click, until the 2nd oldest ages out
        log.cio("u3", "delivered", NOW - (n + 8) * DAY)
    store = store_with(log.events)
    expected = direct(store, audiences, NOW)
    stats = recompute(store, audiences, NOW, write=True, workers=1)
    assert stats.events == len(log.events) == 52
    assert stats.evaluated_events == 14 + 1 + 2 + 6
    assert stats.members == {"fatigue_risk": 1, "high_intent_engagers": 0, "lapsed_90_plus": 1}
    assert_stored_as_evaluated(store, expected)
    assert dict(timers_table(store))["u3"] == NOW - 12 * DAY + 14 * DAY  # 4 left in the window then
    store.close()


def test_without_profile_audiences_the_same_results_from_fewer_decoded_events(
    store_with: StoreWith, log: Log
) -> None:
    audiences = {n: d for n, d in definitions().items() if n not in ("pro_clickers",)}
    assert not needs(audiences).profile
    store = store_with(log.events)
    expected = direct(store, audiences, NOW)
    stats = recompute(store, audiences, NOW, workers=1)
    assert stats.members == {
        name: sum(results[name].member for results in expected.values()) for name in stats.members
    }
    store.close()


def test_workers_reading_parts_of_the_log_count_everyone_once(store_with: StoreWith, log: Log) -> None:
    audiences = definitions()
    store = store_with(log.events)
    one = recompute(store, audiences, NOW, write=True, workers=1)
    for workers in (2, 3):  # each reads a part of the log and passes the others their people's rows
        other = store_with(log.events)
        many = recompute(other, audiences, NOW, write=True, workers=workers)
        assert many.ranges == many.workers == workers
        assert (many.people, many.events, many.evaluated_events, many.decoded_events, many.members) == (
            one.people,
            one.events,
            one.evaluated_events,
            one.decoded_events,
            one.members,
        )
        assert members_table(other) == members_table(store)
        assert timers_table(other) == timers_table(store)
        other.close()
    ranges = split(store.scan_target(), 5)
    assert ranges[0][0] is None and ranges[-1][1] is None
    assert all(hi == lo for (_, hi), (lo, _) in pairwise(ranges))
    parts, last = seq_parts(store.scan_target(), 3)
    assert parts[0][0] == 1 and parts[-1][1] == last == len(log.events)
    assert all(end + 1 == start for (_, end), (start, _) in pairwise(parts))
    store.close()


def test_events_appended_after_the_start_are_left_to_the_engine(store_with: StoreWith, log: Log) -> None:
    audiences = definitions()
    store = store_with(log.events)
    expected = direct(store, audiences, NOW)
    parts, last = seq_parts(store.scan_target(), 1)  # what `recompute` hands its workers, at its start
    late = Log(0)
    late.serial = len(log.events)  # new ids
    late.track("u001", "Order Completed", NOW - HOUR, revenue=1000)
    late.track("zz-new", "Order Completed", NOW - HOUR, revenue=1000)
    store.append_sync(late.events, [[] for _ in late.events])
    done = recompute_share(store.scan_target(), audiences, NOW, Share(0, parts, [(None, None)], last))
    assert (done.people, done.events) == (
        len(expected),
        sum(e.user_id is not None and e.source != "loopwire" for e in log.events),
    )
    assert done.members == {
        name: sum(results[name].member for results in expected.values()) for name in done.members
    }
    assert recompute(store, audiences, NOW, workers=1).members != done.members  # they do count, later
    store.close()


def run_engine(store: Store, audiences: Mapping[str, AudienceDefinition], now: int) -> None:
    async def ingest(events: Sequence[Event]) -> list[bool]:
        return await store.append(events, [[] for _ in events])

    async def catch_up() -> None:
        engine = Engine(store, {}, ingest, audiences, clock=lambda: now / 1000, batch=500)
        while await engine.run_once():
            pass
        await engine.stop()

    asyncio.run(catch_up())


def test_write_stores_what_the_engine_stores_then_and_after_new_events(
    store_with: StoreWith, log: Log
) -> None:
    audiences = definitions()
    by_engine = store_with(log.events)
    by_recompute = store_with(log.events)
    run_engine(by_engine, audiences, NOW)
    first = recompute(by_recompute, audiences, NOW, write=True, workers=1)
    assert members_table(by_recompute) == members_table(by_engine)
    assert timers_table(by_recompute) == timers_table(by_engine)
    assert first.written_members == len(members_table(by_engine))

    # later: orders end cart abandonment, a click starts high intent; both write the same changes
    later = NOW + 2 * HOUR
    news = Log(0)
    for n in range(0, 120, 3):
        news.track(f"u{n:03d}", "Order Completed", later - HOUR, revenue=80, products=[{"sku": "TEE-1"}])
        news.cio(f"u{n + 1:03d}", "clicked", later - HOUR, channel="sms", href="https://shop.example/cart")
    for store in (by_engine, by_recompute):
        store.append_sync(news.events, [[] for _ in news.events])
    run_engine(by_engine, audiences, later)
    again = recompute(by_recompute, audiences, later, write=True, workers=1)
    assert members_table(by_recompute) == members_table(by_engine)
    assert timers_table(by_recompute) == timers_table(by_engine)
    assert 0 < again.written_members < first.written_members
    assert any(row[5] == 2 for row in members_table(by_recompute))  # an exit: the second change
    # nothing new: nothing to write
    assert recompute(by_recompute, audiences, later, write=True, workers=1).written_members == 0
    by_engine.close()
    by_recompute.close()


def test_an_empty_log(store_with: StoreWith) -> None:
    stats = recompute(store_with([]), definitions(), NOW, workers=2)
    assert (stats.people, stats.events, set(stats.members.values())) == (0, 0, {0})


HEADS = [  # (source, kind, channel, metric, name): what `event_key` makes of each, corners included
    ("customerio", "message", "email", "clicked", None),
    ("customerio", "message", "sms", "delivered", None),
    ("customerio", "message", "in_app", "opened", None),
    ("customerio", "message", "email", None, None),  # a missing metric: "email.None"
    ("customerio", "message", "a.b", "c", None),  # dots in either part
    ("customerio", "message", "a", "b.c", None),
    ("customerio", "message", "push", "", None),  # "push."
    ("customerio", "subscription", None, "clicked", "Subscribed"),  # no channel: the name
    ("customerio", "identify", None, None, None),  # no channel, no name: the kind
    ("segment", "track", None, None, "Order Completed"),
    ("segment", "track", None, None, "order completed"),  # matching is case-sensitive
    ("segment", "track", None, "clicked", "email.clicked"),  # named like a message key
    ("segment", "track", None, None, ""),  # an empty name: the kind
    ("segment", "identify", None, None, None),
    ("amplitude", "track", None, None, "[Amplitude] Page Viewed"),
    ("amplitude", "track", None, None, "A"),
    ("amplitude", "track", None, None, "Ünïcode ✓"),
    ("segment", "track", None, None, "50%_off \\ deal"),  # LIKE's and escapes' own characters
]
PATTERNS = [
    "50%_*",
    "5?%?off*",
    "*\\ deal",
    "50_*",
    "*.clicked",
    "email.*",
    "*",
    "email.clicked",
    "email.None",
    "*.None",
    "a.b.c",
    "*.c",
    "a.*",
    "push.",
    "push.?",
    "?????.*",
    "Order Completed",
    "Order *",
    "order*",
    "email.clicked",
    "identify",
    "track",
    "[Amplitude] Page Viewed",
    "[Amplitude]*",
    "[A]*",
    "?",
    "*?*",
    "Ünïcode ?",
    "*.*.*",
    "s?s.*",
    "*ed",
    "Subscribed",
    "nothing",
]


@pytest.fixture(scope="module")
def heads_on_postgres(postgres: Cluster) -> Iterator[Connection]:
    conn = PgConnection(psycopg.connect(postgres.create_database(), autocommit=True))
    conn.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, source TEXT, kind TEXT, channel TEXT, metric TEXT, name TEXT)"
    )
    conn.executemany(
        "INSERT INTO events (seq, source, kind, channel, metric, name) VALUES (?, ?, ?, ?, ?, ?)",
        [(seq, *head) for seq, head in enumerate(HEADS, start=1)],
    )
    yield conn
    conn.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_sql_filter_selects_the_rows_whose_key_the_matcher_matches(
    pattern: str, dialect: Dialect, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        conn: Connection = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, source, kind, channel, metric, name)")
        conn.executemany(
            "INSERT INTO events (source, kind, channel, metric, name) VALUES (?, ?, ?, ?, ?)", HEADS
        )
    else:
        conn = request.getfixturevalue("heads_on_postgres")
    condition, args = matches_sql([pattern], dialect)
    found = {seq for (seq,) in conn.execute(f"SELECT seq FROM events WHERE {condition}", args)}
    matcher = EventMatcher(pattern, {})
    expected = {
        seq
        for seq, (source, kind, channel, metric, name) in enumerate(HEADS, start=1)
        if matcher.key_matches(
            event_key(
                Event(
                    id="x",
                    source=source,
                    kind=kind,
                    channel=channel,
                    metric=metric,
                    name=name,
                    time_ms=0,
                    received_ms=0,
                )
            )
        )
    }
    assert found == expected
    # several names at once: the rows any of them matches
    condition, args = matches_sql([pattern, "Order Completed", "sms.*"], dialect)
    both = {seq for (seq,) in conn.execute(f"SELECT seq FROM events WHERE {condition}", args)}
    assert both == expected | {2, 10}
