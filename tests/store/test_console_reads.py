"""The console's reads (store/console.py) give the same answers on both backends."""

from __future__ import annotations

import asyncio

from loopwire.model import Event
from loopwire.store import Settlement, Store
from loopwire.store import console as queries
from loopwire.store.audiences import Membership, save
from loopwire.store.experiments import record

HOUR = 3_600_000


def logged(n: int, **fields: object) -> Event:
    base: dict[str, object] = {
        "id": f"e{n}",
        "source": "segment",
        "kind": "track",
        "name": "Viewed",
        "time_ms": n * HOUR,
        "received_ms": n * 1_000,
        "user_id": "ada",
    }
    return Event(**{**base, **fields})  # type: ignore[arg-type]


def membership(n: int, name: str, audience: str) -> Event:
    return logged(n, source="loopwire", name=name, data={"properties": {"audience": audience}})


def test_every_read_of_the_console(store: Store) -> None:
    events = [logged(n) for n in range(1, 6)] + [
        membership(6, "Entered VIP", "vip"),
        membership(7, "Exited VIP", "vip"),
        membership(8, "Entered VIP", "vip"),
        membership(9, "Entered VIP", "other"),
    ]
    store.append_sync(events, [["amplitude"]] * 5 + [[]] * 4)
    rows = asyncio.run(store.claim("amplitude", 10, now_ms=50_000))
    asyncio.run(
        store.settle(
            "amplitude",
            [
                Settlement(rows[0].seq, "delivered"),
                Settlement(rows[1].seq, "dead", reason="bad", response="400 {}"),
                Settlement(rows[2].seq, "pending", next_ms=90_000, reason="429", response="429 {}"),
            ],
            now_ms=60_000,
        )
    )
    assert queries.received_per_bucket(store, [0, 2_500, 5_500, 100_000]) == [2, 3, 4]
    (dead,) = queries.dead_letters(store, "amplitude", reason="bad")
    assert (dead["event_id"], dead["attempts"], dead["dead_ms"], dead["response"]) == (
        "e2",
        1,
        60_000,
        "400 {}",
    )
    assert queries.dead_letters(store, reason="other") == []
    assert queries.event_body(store, "e1") == store.scan_events(0, 0, 1)[0][1]
    assert queries.event_body(store, "nope") is None
    (retry,) = queries.retrying(store, "amplitude")
    assert (retry["event_id"], retry["next_ms"], retry["reason"]) == ("e3", 90_000, "429")
    assert store.oldest_undelivered_ms(["amplitude", "segment"]) == {"amplitude": 3_000}
    assert queries.requeue_in_flight(store, "amplitude") == 2  # e4, e5: claimed, never settled
    queries.set_paused(store, "amplitude", True, 70_000)
    queries.set_paused(store, "amplitude", True, 80_000)  # already paused: since the first time
    assert queries.paused(store) == {"amplitude": 70_000}
    queries.set_paused(store, "amplitude", False, 90_000)
    assert queries.paused(store) == {}

    hourly, recent = queries.audience_changes(store, "vip", "Entered VIP", "Exited VIP", since_ms=7 * HOUR)
    assert hourly == [(7 * HOUR, 0, 1), (8 * HOUR, 1, 0)]
    assert [(user, change, event_id) for user, change, _, event_id in recent] == [
        ("ada", "entered", "e8"),
        ("ada", "exited", "e7"),
        ("ada", "entered", "e6"),
    ]
    save(store, [("vip", "ada", Membership(True, 2, None, 3, 8 * HOUR))], {"ada": 10 * HOUR}, [], None)
    assert queries.audience_size(store, "vip") == 1 and queries.audience_size(store, "other") == 0
    assert queries.memberships(store, "ada", ["vip", "other"]) == {"vip": (True, 2, 8 * HOUR)}
    record(store, "audiences", 9, [("cart", "ada", "holdout", 5)])
    assert queries.person_assignments(store, "ada", ["cart", "other"]) == {"cart": ("holdout", 5)}

    mine = queries.person_events(store, "ada", limit=3)
    assert [(seq, event_id) for seq, event_id, *_ in mine] == [(9, "e9"), (8, "e8"), (7, "e7")]
    found = queries.deliveries(store, ["amplitude"], [1, 2, 6])
    assert {seq: d["amplitude"]["state"] for seq, d in found.items()} == {1: "delivered", 2: "dead"}


def test_a_person_without_the_identity_graph_is_found_by_user_id(store: Store) -> None:
    from loopwire.config import parse_config
    from loopwire.identity import person

    config = parse_config(
        "destinations:\n  amp:\n    type: amplitude\n    api_key: k\n    region: us\n", env={}
    )
    store.append_sync([logged(1), logged(2, user_id="bob")], [["amp"], []])
    found = person(store, config, "ada")
    assert found is not None and found.identifiers == {"user_id": ["ada"]}
    assert [(e.seq, e.event_id) for e in found.events] == [(1, "e1")]
    assert person(store, config, "nobody") is None
