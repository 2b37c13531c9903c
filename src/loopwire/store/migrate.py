"""`loopwire migrate --from sqlite:PATH --to postgres:DSN`: copy a SQLite store into a PostgreSQL one
(issue 11, item 4).

The target's schema is made by the PostgreSQL store itself (its migrations), so the two hold the
same tables and columns (`tests/store/test_postgres.py` checks it; the target's one more column,
`outbox.claimed_by`, stays empty). Then, in one transaction of the target:

- the log, `events`, is appended: only the rows after the target's newest seq, in seq order. An
  installation moves while it runs by migrating twice: once with `loopwire serve` still on SQLite
  (the bulk of the log), then again after stopping it (what it logged meanwhile, and the rest's
  latest state), and starting it on PostgreSQL;
- every other table (outboxes, memberships, timers, assignments, cursors, versions, paused
  destinations, the tallies) is replaced by the source's rows: small next to the log except the
  outbox, and its rows change state (delivered, retried, dead) between two runs.

The tallies go last, copied as they are: the target's triggers counted the rows inserted before
them, and those counts are replaced by the source's (lifetime totals, which the rows alone cannot
give back once retention has trimmed some). A target whose log does not begin as the source's (a
seq the source does not have, or another event under it) is refused before anything is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from loopwire.store.postgres import Store as PostgresStore
from loopwire.store.postgres_partitions import MIN_PARTITION_SEQS, PARTITION_SPAN_MS, add_partition, top
from loopwire.store.postgres_schema import APPEND_LOCK
from loopwire.store.sqlite import Store as SQLiteStore

BATCH = 5_000  # rows read from SQLite at a time
TALLIES = ("outbox_tally", "audience_tally", "retention_tally")
SKIPPED = ("ready_probe",)  # rewritten by `GET /readyz` on each side; nothing to carry over
# PostgreSQL's own (its migration 13): the ids of the log, written here beside the events it copies,
# and the partitions' bounds, made for them before they are copied
POSTGRES_ONLY = ("event_ids", "log_partitions")
Progress = Callable[[str, int, int], None]  # table, rows copied so far, rows to copy


class MigrateError(Exception):
    pass


class Copied(NamedTuple):
    table: str
    rows: int


def _one(conn: Any, sql: str, args: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _tables_of_target(conn: Any) -> list[str]:
    """The target's tables that are the source's too: not its partitions (the parents `events` and
    `outbox` take the rows), nor what only PostgreSQL keeps (`POSTGRES_ONLY`)."""
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' AND table_name <> 'loopwire_schema'"
        " AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition) ORDER BY table_name"
    ).fetchall()
    return [name for (name,) in rows if name not in POSTGRES_ONLY]


def _columns(source: sqlite3.Connection, conn: Any, table: str) -> list[str]:
    """The columns both sides have, in the source's order."""
    theirs = {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s",
            (table,),
        ).fetchall()
    }
    return [row[1] for row in source.execute(f'PRAGMA table_info("{table}")') if row[1] in theirs]


def _copy(
    source: sqlite3.Connection, conn: Any, table: str, where: str, args: tuple[Any, ...], progress: Progress
) -> int:
    columns = _columns(source, conn, table)
    names = ", ".join(f'"{c}"' for c in columns)
    (total,) = source.execute(f'SELECT COUNT(*) FROM "{table}" {where}', args).fetchone()
    done = 0
    progress(table, 0, total)
    cursor = source.execute(f'SELECT {names} FROM "{table}" {where}', args)
    with conn.cursor().copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        while rows := cursor.fetchmany(BATCH):
            for row in rows:
                copy.write_row(row)
            done += len(rows)
            progress(table, done, total)
    return done


def _first_seq_at(source: sqlite3.Connection, received_ms: int, low: int, high: int) -> int:
    while low < high:
        mid = (low + high) // 2
        row = source.execute(
            "SELECT received_ms FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)
        ).fetchone()
        if row is not None and row[0] >= received_ms:
            high = mid
        else:
            low = mid + 1
    return low


def _partition(source: sqlite3.Connection, conn: Any) -> None:
    """Partitions of the target for the seqs to be copied, each about a day of the source's log by
    its receipt times (`postgres_partitions`; the first node to start makes one ahead)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
    (last,) = source.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
    start = top(conn)
    while start <= last:
        row = source.execute(
            "SELECT received_ms FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (start,)
        ).fetchone()
        edge = _first_seq_at(source, int(row[0]) + PARTITION_SPAN_MS, start, last + 1)
        start = add_partition(conn, start, max(MIN_PARTITION_SEQS, edge - start)).high


def migrate_store(source_path: str | Path, dsn: str, progress: Progress = lambda *_: None) -> list[Copied]:
    path = Path(source_path)
    if not path.exists():
        raise MigrateError(f"{path}: no such SQLite store")
    SQLiteStore(path, recover=False).close()  # the source's schema brought up to date (if older)
    # The target's schema, made and migrated as a node would; `recover=False`: nothing to put back
    PostgresStore(dsn, recover=False).close()
    import psycopg

    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with psycopg.connect(dsn) as conn:  # one transaction: all of it, or nothing
            newest = _one(conn, "SELECT COALESCE(MAX(seq), 0) FROM events", ())
            if newest:
                mine = source.execute("SELECT id FROM events WHERE seq = ?", (newest,)).fetchone()
                theirs = _one(conn, "SELECT id FROM events WHERE seq = %s", (newest,))
                if mine is None or mine[0] != theirs:
                    raise MigrateError(
                        f"the target's log is not this store's: its event at seq {newest} is not"
                        " the source's (migrate into an empty database, or the one migrated before)"
                    )
            _partition(source, conn)
            copied = [
                Copied(
                    "events", _copy(source, conn, "events", "WHERE seq > ? ORDER BY seq", (newest,), progress)
                )
            ]
            conn.execute(
                "INSERT INTO event_ids (id, seq) SELECT id, seq FROM events WHERE seq > %s", (newest,)
            )
            tables = [t for t in _tables_of_target(conn) if t not in ("events", *SKIPPED)]
            ordered = [t for t in tables if t not in TALLIES] + [t for t in TALLIES if t in tables]
            for table in ordered:
                conn.execute(f'DELETE FROM "{table}"')
                copied.append(Copied(table, _copy(source, conn, table, "", (), progress)))
    finally:
        source.close()
    return copied
