"""The store's contract, the same on both backends (SQLite and PostgreSQL: tests/store/conftest.py)."""

from __future__ import annotations

import asyncio

from loopwire.model import Event, decode_event, encode_event
from loopwire.store import SentMemory, Settlement, Store
from loopwire.store.base import Connection
from tests.store.conftest import Opener, event


def test_append_dedupes_on_event_id_and_enqueues_once(store: Store) -> None:
    assert store.append_sync([event(1), event(2)], [["amplitude"], ["amplitude"]]) == [True, True]
    assert store.append_sync([event(1)], [["amplitude"]]) == [False]
    assert store.event_count() == 2
    assert store.counts() == {
        "amplitude": {"pending": 2, "in_flight": 0, "delivered": 0, "dead": 0, "skipped": 0}
    }


def test_concurrent_appends_share_commits(store: Store) -> None:
    async def burst() -> list[list[bool]]:
        return await asyncio.gather(*(store.append([event(n)], [["amplitude"]]) for n in range(300)))

    results = asyncio.run(burst())
    assert all(r == [True] for r in results)
    assert store.event_count() == 300
    assert store.commits < 300  # grouped: fewer fsync'd transactions than writes


def test_a_failing_job_rolls_back_alone(store: Store) -> None:
    def bad(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO events (seq, id, source, kind, time_ms, received_ms, body) VALUES (9, 'x', 's', 'k', 1, 1, ?)",
            (b"\0",),
        )
        raise RuntimeError("boom")

    async def mixed() -> tuple[object, object]:
        return await asyncio.gather(
            store.write(bad), store.append([event(7)], [["amplitude"]]), return_exceptions=True
        )

    failed, ok = asyncio.run(mixed())
    assert isinstance(failed, RuntimeError) and ok == [True]
    assert store.run(lambda c: c.execute("SELECT id FROM events").fetchall()) == [("evt-00007",)]


def test_claim_settle_and_crash_recovery(backend: Opener) -> None:
    store = backend()
    store.append_sync([event(n) for n in range(5)], [["amplitude"]] * 5)
    claimed = asyncio.run(store.claim("amplitude", 3, now_ms=10_000))
    assert [decode_event(c.body).id for c in claimed] == ["evt-00000", "evt-00001", "evt-00002"]
    assert all(c.attempts == 1 for c in claimed)
    asyncio.run(store.settle("amplitude", [Settlement(claimed[0].seq, "delivered")], now_ms=10_001))
    store.close()  # two rows left in flight, as after a crash (on PostgreSQL: its node is gone)

    reopened = backend()
    assert reopened.recovered == 2
    assert reopened.counts()["amplitude"] == {
        "pending": 4,
        "in_flight": 0,
        "delivered": 1,
        "dead": 0,
        "skipped": 0,
    }
    again = asyncio.run(reopened.claim("amplitude", 10, now_ms=10_000))
    assert len(again) == 4 and sorted(c.attempts for c in again) == [1, 1, 2, 2]
    reopened.close()


def test_claim_respects_next_attempt_time(store: Store) -> None:
    store.append_sync([event(1)], [["amplitude"]])
    (row,) = asyncio.run(store.claim("amplitude", 10, now_ms=10_000))
    asyncio.run(
        store.settle("amplitude", [Settlement(row.seq, "pending", next_ms=40_000, reason="429")], 10_000)
    )
    assert asyncio.run(store.claim("amplitude", 10, now_ms=39_999)) == []
    assert store.next_due_ms("amplitude") == 40_000
    assert len(asyncio.run(store.claim("amplitude", 10, now_ms=40_000))) == 1


def test_dead_letters_list_and_replay(store: Store) -> None:
    store.append_sync([event(1), event(2)], [["amplitude"], ["amplitude"]])
    rows = asyncio.run(store.claim("amplitude", 10, now_ms=10_000))
    asyncio.run(
        store.settle(
            "amplitude", [Settlement(r.seq, "dead", reason="bad", response="400 {}") for r in rows], 11_000
        )
    )
    dead = store.dead_letters("amplitude")
    assert {d["event_id"] for d in dead} == {"evt-00001", "evt-00002"}
    assert dead[0]["reason"] == "bad" and dead[0]["response"] == "400 {}"
    assert store.replay_dead(20_000, "amplitude", ["evt-00001"]) == 1
    assert store.counts()["amplitude"]["dead"] == 1
    (replayed,) = asyncio.run(store.claim("amplitude", 10, now_ms=20_000))
    assert replayed.attempts == 1 and replayed.enqueued_ms == 20_000


def test_cli_store_does_not_steal_in_flight_rows(backend: Opener) -> None:
    server = backend()
    server.append_sync([event(1)], [["amplitude"]])
    asyncio.run(server.claim("amplitude", 1, now_ms=10_000))
    cli = backend(recover=False)
    assert cli.recovered == 0 and cli.counts()["amplitude"]["in_flight"] == 1
    cli.close()
    server.close()


def test_sent_memory_recalls_what_was_remembered(store: Store) -> None:
    memory = SentMemory(store, "customerio")
    assert memory.recall("person:ada") is None
    asyncio.run(memory.remember({"person:ada": {"plan": "gold"}}, now_ms=1))
    asyncio.run(memory.remember({"person:ada": {"plan": "platinum"}}, now_ms=2))
    assert memory.recall("person:ada") == {"plan": "platinum"}
    assert SentMemory(store, "other").recall("person:ada") is None
    memory.close()


def test_backfill_enqueues_only_missing_rows_unless_resend(store: Store) -> None:
    store.append_sync([event(1), event(2), event(3)], [["amplitude"], [], []])
    rows = store.scan_events(since_ms=1_002, after_seq=0, limit=10)
    assert [decode_event(body).id for _, body in rows] == ["evt-00002", "evt-00003"]
    all_seqs = [seq for seq, _ in store.scan_events(0, 0, 10)]
    assert store.enqueue("amplitude", all_seqs, now_ms=9_000, resend=False) == 2
    assert store.counts()["amplitude"]["pending"] == 3
    (first, *_) = asyncio.run(store.claim("amplitude", 1, now_ms=10_000))
    asyncio.run(store.settle("amplitude", [Settlement(first.seq, "delivered")], 10_000))
    assert store.enqueue("amplitude", all_seqs, now_ms=11_000, resend=False) == 0
    assert store.enqueue("amplitude", all_seqs, now_ms=11_000, resend=True) == 3
    assert store.counts()["amplitude"]["delivered"] == 0


def test_a_second_copy_in_the_same_group_is_a_duplicate(store: Store) -> None:
    assert store.append_sync([event(1), event(2), event(1)], [["amplitude"]] * 3) == [True, True, False]
    assert store.counts()["amplitude"]["pending"] == 2


def test_stored_rows_are_the_events_byte_for_byte(store: Store) -> None:
    # What lands in the log must be exactly what was encoded — escapes, non-ASCII, big and small
    # numbers, nulls — whichever way the rows travel to the database.
    tricky = Event(
        id='evt-"quoted"\\slash',
        source="amplitude",
        kind="track",
        name="Ordér \u2028 ✓ 🛒",
        time_ms=1_700_000_000_123,
        received_ms=1_700_000_000_456,
        user_id=None,
        email="a@b.c",
        data={
            "big": 2**63 - 1,
            "negative": -0.0000001,
            "float": 1.5e300,
            "escapes": 'tab\tnewline\n"quote" \\ \u0000 \u001f',
            "empty": {},
            "list": [None, True, False, [], {"k": "v"}],
            "unicode": "naïve café 日本語",
        },
    )
    plain = event(7)
    assert store.append_sync([tricky, plain], [["segment", "amplitude"], []]) == [True, True]
    rows = store.read(
        lambda c: c.execute(
            "SELECT id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body FROM events ORDER BY seq"
        ).fetchall()
    )
    assert [r[:9] for r in rows] == [
        (tricky.id, "amplitude", "track", None, None, tricky.name, None, tricky.time_ms, tricky.received_ms),
        (plain.id, "customerio", "message", "email", "sent", None, "user-7", 1_007, 5_000),
    ]
    assert rows[0][9] == encode_event(tricky) and decode_event(rows[0][9]) == tricky
    assert rows[1][9] == encode_event(plain)
    outbox = store.read(lambda c: c.execute("SELECT dest, seq, state FROM outbox ORDER BY dest").fetchall())
    assert outbox == [("amplitude", 1, "pending"), ("segment", 1, "pending")]


def test_a_duplicate_of_an_older_event_in_a_mixed_group_gets_no_outbox_row(store: Store) -> None:
    store.append_sync([event(1)], [["amplitude"]])
    assert store.append_sync([event(2), event(1), event(3), event(2)], [["amplitude"]] * 4) == [
        True,
        False,
        True,
        False,
    ]
    seqs = store.read(lambda c: c.execute("SELECT seq FROM outbox ORDER BY seq").fetchall())
    assert seqs == [(1,), (2,), (3,)]
    assert store.event_count() == 3
