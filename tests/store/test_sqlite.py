from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loopwire.model import Event, decode_event, encode_event
from loopwire.store import Settlement, SQLiteStore
from loopwire.store import sqlite as sqlite_store
from loopwire.store.migrations import MIGRATIONS


def event(n: int) -> Event:
    return Event(
        id=f"evt-{n:05d}",
        source="customerio",
        kind="message",
        channel="email",
        metric="sent",
        time_ms=1_000 + n,
        received_ms=5_000,
        user_id=f"user-{n}",
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "log.db")
    yield s
    s.close()


def test_wal_and_full_sync_and_migrations(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL


def test_append_dedupes_on_event_id_and_enqueues_once(store: SQLiteStore) -> None:
    assert store.append_sync([event(1), event(2)], [["amplitude"], ["amplitude"]]) == [True, True]
    assert store.append_sync([event(1)], [["amplitude"]]) == [False]
    assert store.event_count() == 2
    assert store.counts() == {
        "amplitude": {"pending": 2, "in_flight": 0, "delivered": 0, "dead": 0, "skipped": 0}
    }


def test_concurrent_appends_share_commits(store: SQLiteStore) -> None:
    async def burst() -> list[list[bool]]:
        return await asyncio.gather(*(store.append([event(n)], [["amplitude"]]) for n in range(300)))

    results = asyncio.run(burst())
    assert all(r == [True] for r in results)
    assert store.event_count() == 300
    assert store.commits < 300  # grouped: fewer fsync'd transactions than writes


def test_a_failing_job_rolls_back_alone(store: SQLiteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO events (id, source, kind, time_ms, received_ms, body) VALUES ('x','s','k',1,1,x'00')"
        )
        raise RuntimeError("boom")

    async def mixed() -> tuple[object, object]:
        return await asyncio.gather(
            store.write(bad), store.append([event(7)], [["amplitude"]]), return_exceptions=True
        )

    failed, ok = asyncio.run(mixed())
    assert isinstance(failed, RuntimeError) and ok == [True]
    assert store.run(lambda c: c.execute("SELECT id FROM events").fetchall()) == [("evt-00007",)]


def test_claim_settle_and_crash_recovery(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = SQLiteStore(path)
    store.append_sync([event(n) for n in range(5)], [["amplitude"]] * 5)
    claimed = asyncio.run(store.claim("amplitude", 3, now_ms=10_000))
    assert [decode_event(c.body).id for c in claimed] == ["evt-00000", "evt-00001", "evt-00002"]
    assert all(c.attempts == 1 for c in claimed)
    asyncio.run(store.settle("amplitude", [Settlement(claimed[0].seq, "delivered")], now_ms=10_001))
    store.close()  # two rows left in flight, as after a crash

    reopened = SQLiteStore(path)
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


def test_claim_respects_next_attempt_time(store: SQLiteStore) -> None:
    store.append_sync([event(1)], [["amplitude"]])
    (row,) = asyncio.run(store.claim("amplitude", 10, now_ms=10_000))
    asyncio.run(
        store.settle("amplitude", [Settlement(row.seq, "pending", next_ms=40_000, reason="429")], 10_000)
    )
    assert asyncio.run(store.claim("amplitude", 10, now_ms=39_999)) == []
    assert store.next_due_ms("amplitude") == 40_000
    assert len(asyncio.run(store.claim("amplitude", 10, now_ms=40_000))) == 1


def test_dead_letters_list_and_replay(store: SQLiteStore) -> None:
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


def test_cli_store_does_not_steal_in_flight_rows(tmp_path: Path) -> None:
    server = SQLiteStore(tmp_path / "log.db")
    server.append_sync([event(1)], [["amplitude"]])
    asyncio.run(server.claim("amplitude", 1, now_ms=10_000))
    cli = SQLiteStore(tmp_path / "log.db", recover=False)
    assert cli.recovered == 0 and cli.counts()["amplitude"]["in_flight"] == 1
    cli.close()
    server.close()


def test_sent_memory_recalls_what_was_remembered(tmp_path: Path) -> None:
    from loopwire.store import SentMemory

    store = SQLiteStore(tmp_path / "log.db")
    memory = SentMemory(store, "customerio")
    assert memory.recall("person:ada") is None
    asyncio.run(memory.remember({"person:ada": {"plan": "gold"}}, now_ms=1))
    asyncio.run(memory.remember({"person:ada": {"plan": "platinum"}}, now_ms=2))
    assert memory.recall("person:ada") == {"plan": "platinum"}
    assert SentMemory(store, "other").recall("person:ada") is None
    memory.close()
    store.close()


def test_backfill_enqueues_only_missing_rows_unless_resend(store: SQLiteStore) -> None:
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


def test_a_second_copy_in_the_same_group_is_a_duplicate(store: SQLiteStore) -> None:
    assert store.append_sync([event(1), event(2), event(1)], [["amplitude"]] * 3) == [True, True, False]
    assert store.counts()["amplitude"]["pending"] == 2


def test_stored_rows_are_the_events_byte_for_byte(store: SQLiteStore) -> None:
    # The group's rows travel as one JSON document that SQLite takes apart; what lands in the log
    # must be exactly what was encoded — escapes, non-ASCII, big and small numbers, nulls.
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
            "SELECT id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body,"
            " typeof(body) FROM events ORDER BY seq"
        ).fetchall()
    )
    assert [r[:9] for r in rows] == [
        (tricky.id, "amplitude", "track", None, None, tricky.name, None, tricky.time_ms, tricky.received_ms),
        (plain.id, "customerio", "message", "email", "sent", None, "user-7", 1_007, 5_000),
    ]
    assert [r[10] for r in rows] == ["blob", "blob"]
    assert rows[0][9] == encode_event(tricky) and decode_event(rows[0][9]) == tricky
    assert rows[1][9] == encode_event(plain)
    outbox = store.read(lambda c: c.execute("SELECT dest, seq, state FROM outbox ORDER BY dest").fetchall())
    assert outbox == [("amplitude", 1, "pending"), ("segment", 1, "pending")]


def test_a_duplicate_of_an_older_event_in_a_mixed_group_gets_no_outbox_row(store: SQLiteStore) -> None:
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


# ---- the two ways appends reach the log ---------------------------------------------------------


@pytest.fixture
def writer(tmp_path: Path) -> sqlite3.Connection:
    """A migrated connection prepared like the store's writer, driven directly (no thread), so the
    make-up of a group is exact."""
    SQLiteStore(tmp_path / "log.db").close()
    conn = sqlite_store.connect(tmp_path / "log.db")
    yield conn
    conn.close()


GROUP = [
    ([event(1), event(2)], [["amplitude"], ["amplitude", "segment"]]),
    ([event(1), event(3)], [["amplitude"], []]),  # a copy of an event earlier in the group; an older one
    ([event(4), event(4)], [[], []]),  # unrouted, twice
]


@pytest.mark.parametrize("way", ["view", "many"])
def test_both_ways_report_every_duplicate_across_a_groups_jobs(
    writer: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    monkeypatch.setattr(sqlite_store, "_VIEW_MAX_ROWS", 128 if way == "view" else 0)
    duplicates = sqlite_store._prepare_ingest(writer)
    sqlite_store._append(writer, [sqlite_store._Append([event(3)], [["amplitude"]])], duplicates)
    jobs = [sqlite_store._Append(events, routes) for events, routes in GROUP]
    writer.execute("BEGIN IMMEDIATE")
    assert sqlite_store._append(writer, jobs, duplicates) == [[True, True], [False, False], [True, False]]
    writer.execute("COMMIT")
    outbox = writer.execute(
        "SELECT o.dest, e.id, o.state, o.enqueued_ms, o.next_ms, o.updated_ms FROM outbox o"
        " JOIN events e ON e.seq = o.seq ORDER BY e.id, o.dest"
    ).fetchall()
    assert [(dest, ident) for dest, ident, *_ in outbox] == [
        ("amplitude", "evt-00001"),
        ("amplitude", "evt-00002"),
        ("segment", "evt-00002"),
        ("amplitude", "evt-00003"),
    ]
    assert {tuple(row[2:]) for row in outbox} == {("pending", 5_000, 5_000, 5_000)}
    assert writer.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 4


def test_the_view_gives_outbox_rows_the_new_events_seq(writer: sqlite3.Connection) -> None:
    duplicates = sqlite_store._prepare_ingest(writer)
    routes = [["a", "b", "c"], [], ["a"], ["b"], ["c", "a"]]
    sqlite_store._append_by_view(
        writer, [sqlite_store._Append([event(n) for n in range(1, 6)], routes)], duplicates
    )
    rows = writer.execute(
        "SELECT e.seq, e.id, o.dest FROM outbox o JOIN events e USING (seq) ORDER BY 1, 3"
    ).fetchall()
    assert [(ident, dest) for _, ident, dest in rows] == [
        ("evt-00001", "a"),
        ("evt-00001", "b"),
        ("evt-00001", "c"),
        ("evt-00003", "a"),
        ("evt-00004", "b"),
        ("evt-00005", "a"),
        ("evt-00005", "c"),
    ]


@pytest.mark.parametrize("view_max", [128, 0])
def test_a_group_is_one_commit_whichever_way_it_goes(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, view_max: int
) -> None:
    monkeypatch.setattr(sqlite_store, "_VIEW_MAX_ROWS", view_max)
    monkeypatch.setattr(sqlite_store, "_ROWS_PER_INSERT", 2)  # several statements on the big way
    commits = store.commits
    fresh = store.append_sync([event(n) for n in (1, 2, 3, 2, 4)], [["amplitude"]] * 5)
    assert fresh == [True, True, True, False, True]
    assert store.commits == commits + 1
    assert store.counts()["amplitude"]["pending"] == 4


def test_appends_alone_in_autocommit_are_durable_when_answered(store: SQLiteStore, tmp_path: Path) -> None:
    assert store.append_sync([event(1), event(2)], [["amplitude"], []]) == [True, True]
    other = sqlite3.connect(tmp_path / "log.db")  # another connection sees them: committed
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    assert other.execute("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'ingest%'").fetchone()[0] == 0
    other.close()


def test_an_append_of_no_events_is_answered(store: SQLiteStore) -> None:
    assert store.append_sync([], []) == []
    assert store.append_sync([event(1)], [["amplitude"]]) == [True]


def hold_write_lock(path: str, seconds: float) -> threading.Thread:
    """Another writer (as the ingest process is to the server's store) holding the write lock."""
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO cursors (name, seq) VALUES ('other-writer', 1)")
        held.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    return thread


@pytest.mark.parametrize("size", [1, 500], ids=["view", "two-inserts"])
def test_a_writer_waits_for_the_other_writer_and_then_commits(store: SQLiteStore, size: int) -> None:
    holder = hold_write_lock(store.path, 0.2)
    fresh = store.append_sync([event(n) for n in range(size)], [["amplitude"]] * size)
    holder.join()
    assert fresh == [True] * size
    assert store.event_count() == size
    assert store.run(
        lambda c: c.execute("SELECT seq FROM cursors WHERE name = 'other-writer'").fetchone()
    ) == (1,)


def test_the_appender_of_another_process_waits_its_turn_too(store: SQLiteStore) -> None:
    appender = sqlite_store.Appender(store.path)
    holder = hold_write_lock(store.path, 0.2)
    try:
        assert appender.append([([event(1), event(1)], [["amplitude"], ["amplitude"]])]) == [[True, False]]
    finally:
        holder.join()
        appender.close()
    assert store.counts()["amplitude"]["pending"] == 1


def test_a_writer_gives_up_after_the_busy_timeout(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.05)
    holder = hold_write_lock(store.path, 0.5)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.append_sync([event(1)], [["amplitude"]])
    finally:
        holder.join()
    assert store.append_sync([event(1)], [["amplitude"]]) == [True]  # nothing of the failed one stayed
