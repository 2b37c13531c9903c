from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loopwire.store import SQLiteStore
from loopwire.store import sqlite as sqlite_store
from loopwire.store.migrations import MIGRATIONS
from tests.store.conftest import event


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


def test_the_body_is_stored_as_a_blob(store: SQLiteStore) -> None:
    assert store.append_sync([event(1)], [[]]) == [True]
    assert store.read(lambda c: c.execute("SELECT typeof(body) FROM events").fetchall()) == [("blob",)]


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


def test_the_appender_keeps_its_statement_journals_in_memory(store: SQLiteStore) -> None:
    # (a temporary file per commit otherwise: seven system calls on the webhooks' path)
    appender = sqlite_store.Appender(store.path)
    try:
        assert appender._conn.execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY
        group = [event(n) for n in range(32)]
        assert appender.append([(group, [["amplitude"]] * 32)]) == [[True] * 32]
    finally:
        appender.close()
    assert store.counts()["amplitude"]["pending"] == 32


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
