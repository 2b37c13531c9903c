"""The engine over a real log (SQLite and PostgreSQL): holdout assignment is deterministic, stored once and exported."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loopwire.audiences.engine import CURSOR, Engine
from loopwire.audiences.holdouts import Experiment, assign
from loopwire.model import Event, decode_event
from loopwire.store import Store
from loopwire.store import experiments as queries
from tests.conftest import Opener

EXPERIMENT = Experiment(name="Cart journey", salt="cart-v1", holdout_percent=10)


def order(user: str | None, n: int, t: int) -> Event:
    return Event(
        id=f"o-{n}",
        source="segment",
        kind="track",
        name="Order Completed",
        time_ms=t,
        received_ms=t,
        user_id=user,
    )


def run(store: Store, engine: Engine) -> int:
    return asyncio.run(engine.run_once())


def test_assigns_each_person_once_at_first_sight_and_exports_the_group(backend: Opener) -> None:
    store = backend()

    async def ingest(events: Sequence[Event]) -> list[bool]:
        return await store.append(events, [[] for _ in events])

    engine = Engine(store, {"cart": EXPERIMENT}, ingest)
    store.append_sync(
        [order(f"user-{n % 50}", n, 1_000 + n) for n in range(200)] + [order(None, 999, 5)], [[]] * 201
    )
    assert run(store, engine) == 201
    rows = queries.assignments(store, "cart")
    assert len(rows) == 50
    assert all(group == assign(user, "cart-v1", 10) for user, group, _ in rows)
    assert {user: at for user, _, at in rows}["user-7"] == 1_007  # first sight
    exported = [decode_event(body) for _, body in store.scan_events(0, 201, 1000)]
    assert len(exported) == 50 and all(e.source == "loopwire" and e.kind == "identify" for e in exported)
    seven = next(e for e in exported if e.user_id == "user-7")
    assert seven.data["traits"] == {"holdout_cart": assign("user-7", "cart-v1", 10)}
    # the engine's own events do not get assigned again, and later events keep the first assignment
    assert run(store, engine) == 50
    store.append_sync([order("user-7", 5000, 99_999)], [[]])
    run(store, engine)
    assert len(queries.assignments(store, "cart")) == 50
    assert queries.cursor(store, CURSOR) == store.event_count()
    store.close()


def test_a_restart_repeats_no_export(backend: Opener) -> None:
    store = backend()

    async def ingest(events: Sequence[Event]) -> list[bool]:
        return await store.append(events, [[] for _ in events])

    store.append_sync([order("user-1", 1, 10)], [[]])
    run(store, Engine(store, {"cart": EXPERIMENT}, ingest))
    # as if the process died after exporting but before recording: rewind the cursor
    queries.record(store, CURSOR, 0, [])
    run(store, Engine(store, {"cart": EXPERIMENT}, ingest))
    assert store.event_count() == 2  # the order and one export, not two
    store.close()
