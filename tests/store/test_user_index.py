"""SQLite's per-user index in parts of the log (migration 14): a person's events are found in every
part by each reader of them, through seeks of the index, and a log of schema 13 is migrated to it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopwire.model import Event
from loopwire.store import SQLiteStore
from loopwire.store import console as queries
from loopwire.store import identity as graph
from loopwire.store.audiences import Reader
from loopwire.store.base import BY_USER, PART_BITS, newest_seqs
from loopwire.store.migrations import MIGRATIONS
from loopwire.store.scans import LogScan

PART = 1 << PART_BITS


def logged(ident: str, user: str | None, time_ms: int) -> Event:
    return Event(
        id=ident, source="segment", kind="track", name="Viewed", time_ms=time_ms, received_ms=1, user_id=user
    )


def jump(store: SQLiteStore, seq: int) -> None:
    """Make the next append's seq `seq + 1`: an event with no user, moved to `seq`."""
    store.append_sync([logged(f"filler-{seq}", None, 0)], [[]])
    store.run(lambda c: c.execute("UPDATE events SET seq = ? WHERE id = ?", (seq, f"filler-{seq}")))


@pytest.fixture
def spread(tmp_path: Path) -> Iterator[SQLiteStore]:
    """ada's events in three parts of the log (seqs 1, PART + 8, 2 * PART + 4), bob's in the first
    and the last, each part's newest by seq not its newest by time."""
    store = SQLiteStore(tmp_path / "log.db")
    store.append_sync([logged("a1", "ada", 50), logged("b1", "bob", 10)], [[], []])
    jump(store, PART + 7)
    store.append_sync([logged("a2", "ada", 10)], [[]])
    jump(store, 2 * PART + 3)
    store.append_sync([logged("a3", "ada", 90), logged("b2", "bob", 5)], [[], []])
    yield store
    store.close()


def test_every_reader_finds_a_persons_events_in_every_part(spread: SQLiteStore) -> None:
    seqs = {"a1": 1, "b1": 2, "a2": PART + 8, "a3": 2 * PART + 4, "b2": 2 * PART + 5}
    assert (
        spread.read(lambda c: dict(c.execute("SELECT id, seq FROM events WHERE user_id IS NOT NULL"))) == seqs
    )

    assert [row[1] for row in queries.person_events(spread, "ada", limit=10)] == ["a3", "a1", "a2"]  # by time
    assert [row[1] for row in queries.person_events(spread, "ada", limit=2)] == ["a3", "a1"]
    assert [row.event_id for row in graph.person_events(spread, [("user_id", "bob")], 10)] == ["b1", "b2"]
    assert graph.user_has_events(spread, "bob") and not graph.user_has_events(spread, "cy")

    reader = Reader(spread)
    histories = reader.histories(["ada", "bob", "cy"])
    reader.close()
    assert [len(bodies) for bodies in histories.values()] == [3, 2, 0]

    scan = LogScan(spread.scan_target())
    try:
        assert list(scan.people(None, None, 2 * PART + 5)) == [("ada", 3), ("bob", 2)]  # no filler (no user)
        assert list(scan.people("b", None, 2 * PART + 5)) == [("bob", 2)]
        assert list(scan.people(None, None, 2 * PART + 4)) == [("ada", 3), ("bob", 1)]  # up to a seq
        assert list(scan.people(None, "b", PART + 8)) == [("ada", 2)]
    finally:
        scan.close()


def test_a_persons_events_are_found_by_seeking_the_index_once_per_part(spread: SQLiteStore) -> None:
    def plan(sql: str) -> str:
        return " | ".join(
            row[3] for row in spread.read(lambda c: c.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
        )

    seek = "INDEX events_user (<expr>=? AND user_id=?)"
    assert seek in plan(f"SELECT 1 FROM events WHERE {BY_USER['sqlite']} = 'ada' LIMIT 1")
    assert seek in plan(
        f"SELECT body FROM events WHERE {BY_USER['sqlite']} IN ('ada', 'bob') ORDER BY user_id"
    )
    newest = plan(newest_seqs("sqlite").replace("?", "'ada'", 1).replace("?", "3"))
    assert f"COVERING {seek}" in newest  # the index alone: no row is read for the seqs
    indexed = spread.read(
        lambda c: c.execute("SELECT sql FROM sqlite_master WHERE name = 'events_user'").fetchone()
    )
    assert indexed[0].endswith(f"(seq >> {PART_BITS}, user_id, time_ms)")


def test_a_log_of_schema_13_gets_the_index_in_parts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:13], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    store = SQLiteStore(path)
    try:
        store.append_sync([logged("a1", "ada", 1)], [[]])
        assert [row[1] for row in queries.person_events(store, "ada", 5)] == ["a1"]
        indexes = store.read(
            lambda c: [r[0] for r in c.execute("SELECT sql FROM sqlite_master WHERE type = 'index'")]
        )
        assert sum("events_user" in (sql or "") for sql in indexes) == 1
        assert any((sql or "").endswith("(seq >> 20, user_id, time_ms)") for sql in indexes)
    finally:
        store.close()


def test_the_rebuild_says_what_it_does_and_when_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a big log migration 14 takes minutes before the server answers: the operator is told."""
    from loopwire.store import migrations

    path = tmp_path / "old.db"
    path.touch(0o600)  # as loopwire makes it (else the open warns about that first)
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:13], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    for seq in (1, 2, 5):  # seqs 1..5: about 5 events, from the range
        conn.execute(
            "INSERT INTO events (seq, id, source, kind, user_id, time_ms, received_ms, body)"
            " VALUES (?, ?, 'segment', 'track', 'ada', 1, 1, x'')",
            (seq, f"e{seq}"),
        )
    conn.close()
    monkeypatch.setattr(migrations, "SLOW_FROM_EVENTS", 5)
    caplog.set_level("WARNING", logger="loopwire.store")
    SQLiteStore(path).close()
    said = [r.getMessage() for r in caplog.records if r.name == "loopwire.store"]
    assert said[0].startswith("migrating the store to schema 14: it rebuilds the per-user index")
    assert "about 5 events" in said[0]
    assert said[1].startswith("store schema 14: done in ")
    caplog.clear()
    monkeypatch.setattr(migrations, "SLOW_FROM_EVENTS", 100_000)
    SQLiteStore(tmp_path / "new.db").close()  # a new store, or a small log: nothing to say
    assert not [r for r in caplog.records if r.name == "loopwire.store"]
