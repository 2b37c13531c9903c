"""Retention: old rows of the log and the outboxes deleted in small transactions, and their pages
given back to the file system (docs/operations.md#retention).

What goes, at `now`:
- a dead letter that died longer than `dead` ago;
- a delivered or skipped outbox row settled longer than `delivered` ago;
- an event received (and, by its own time, that happened) longer than `events` ago, with its
  delivered and skipped rows — unless it still has a pending, in-flight or dead row (it is still
  owed to a destination), a reader of the log has not read it yet (`below`: the audience engine's
  and the identity graph's cursors), an audience or an experiment can still read it (`keep`, an SQL
  condition on the row), or it is the newest event (its seq would be given out again: `seq` is a
  rowid without AUTOINCREMENT, and the readers' cursors count on seqs only growing).

Every step is one job of the store's writer, one transaction of a few hundred rows (so it never
holds the write lock the ingest process also needs for long), and counts what it deleted in
`retention_tally` in the same transaction. A step that deletes events is a transaction of its own
without foreign-key enforcement (`Store.write_unenforced`: SQLite would scan the outbox for each
event), which checks the event's outbox rows by key itself. Rows are walked by primary key from the
start of the log up to the seq at which rows become recent (`boundary`, a binary search, since seqs
and receipt times grow together), so a run reads the old part of the log once and no index on time
is needed. The conditions above are checked on each row: the walk only bounds where to look.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import msgspec

from loopwire.store.base import Dialect
from loopwire.store.base import Store as AnyStore
from loopwire.store.scans import _PROFILE_ROW, matches_sql
from loopwire.store.sqlite import _DESTS_SQL, Store, when_unlocked

KINDS = ("events", "delivered", "skipped", "dead")  # `retention_tally.kind`, the metric's label
# Rows looked at per transaction. 500 events with their 1,000 outbox rows took 13 ms a transaction
# (median, fsync included; 2,000: 49 ms) on the development machine, about 30,000 events a second:
# short enough that a webhook's commit waiting for the lock is not held up for long.
BATCH_ROWS = 500
VACUUM_PAGES = 2_000  # pages given back per `PRAGMA incremental_vacuum` (8 MB at 4 KiB pages)
# An event with such a row is still owed. In the statements below, `+state` (a unary plus) keeps
# SQLite from reading the outbox through `outbox_ready` (dest, state, …), which would walk every
# delivered row of a destination: the primary key (dest, seq) is the way.
_UNDELIVERED = "('pending', 'in_flight', 'dead')"
_JSON = msgspec.json.Encoder().encode

Term = tuple[str, tuple[Any, ...]]  # an SQL condition on an events row and its parameters


class Cutoffs(NamedTuple):
    """Epoch ms before which each kind of row goes; None keeps that kind."""

    events: int | None
    delivered: int | None
    dead: int | None


class Trimmed(NamedTuple):
    events: int = 0
    delivered: int = 0
    skipped: int = 0
    dead: int = 0
    freed_pages: int = 0

    def __add__(self, other: object) -> Trimmed:
        assert isinstance(other, Trimmed)
        return Trimmed(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def rows(self) -> int:
        return self.events + self.delivered + self.skipped + self.dead


def keep_sql(lasting: set[str], profile: bool, conversions: set[str], dialect: Dialect = "sqlite") -> Term:
    """Rows retention keeps whatever their age: the events an audience may read at any age
    (`recompute.lasting_names`), the rows `profile_of` reads when an audience reads the profile, and
    the conversion events of the configured experiments."""
    terms: list[Term] = []
    if lasting:
        condition, args = matches_sql(lasting, dialect)
        terms.append((f"(user_id IS NOT NULL AND ({condition}))", args))
    if profile:
        terms.append((f"(user_id IS NOT NULL AND ({_PROFILE_ROW}))", ()))
    if conversions:
        condition, args = matches_sql(conversions, dialect)
        terms.append((f"(user_id IS NOT NULL AND ({condition}))", args))
    if not terms:
        return ("0" if dialect == "sqlite" else "FALSE"), ()
    return " OR ".join(sql for sql, _ in terms), tuple(arg for _, args in terms for arg in args)


def deleted(store: AnyStore) -> dict[str, int]:
    """Rows retention deleted over the store's life, by kind (every kind, 0 when none)."""
    rows = store.read(lambda c: c.execute("SELECT kind, n FROM retention_tally").fetchall())
    found = dict.fromkeys(KINDS, 0)
    found.update({kind: n for kind, n in rows})
    return found


def _count(conn: sqlite3.Connection, counts: dict[str, int]) -> None:
    conn.executemany(
        "INSERT INTO retention_tally (kind, n) VALUES (?, ?) ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n",
        [(kind, n) for kind, n in counts.items() if n],
    )


def boundary(store: Store, before_ms: int) -> int:
    """The lowest seq from which events were received at or after `before_ms` (past the newest
    event when all were received before). Seqs are given out in commit order and receipt times grow
    with them (to within a group commit), so this is a binary search of ~30 B-tree descents."""

    def query(c: sqlite3.Connection) -> int:
        first, last = c.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        if first is None:
            return 0
        low, high = first, last + 1
        while low < high:
            middle = (low + high) // 2
            (received,) = c.execute(
                "SELECT received_ms FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            ).fetchone()
            if received >= before_ms:
                high = middle
            else:
                low = middle + 1
        return int(low)

    return store.read(query)


def _chunk_end(
    conn: sqlite3.Connection, table: str, after: int, below: int, limit: int, dest: str | None
) -> int | None:
    where = "dest = ? AND " if dest is not None else ""
    args: tuple[Any, ...] = (dest,) if dest is not None else ()
    (end,) = conn.execute(
        f"SELECT MAX(seq) FROM (SELECT seq FROM {table} WHERE {where}seq > ? AND seq < ? ORDER BY seq LIMIT ?)",
        (*args, after, below, limit),
    ).fetchone()
    return None if end is None else int(end)


Step = Callable[[sqlite3.Connection], tuple[Trimmed, int | None]]


def _dead_step(before_ms: int, limit: int) -> Callable[[sqlite3.Connection], Trimmed]:
    """Dead letters that died before `before_ms`, oldest first, through `outbox_dead`. The delete
    trigger takes them off the dead-letter tally: that count is the queue as it is."""

    def job(conn: sqlite3.Connection) -> Trimmed:
        gone = conn.execute(
            "DELETE FROM outbox WHERE state = 'dead' AND (dest, seq) IN (SELECT dest, seq FROM outbox"
            " WHERE state = 'dead' AND updated_ms < ? ORDER BY updated_ms LIMIT ?)",
            (before_ms, limit),
        ).rowcount
        _count(conn, {"dead": gone})
        return Trimmed(dead=gone)

    return job


def _settled_step(dest: str, after: int, *, below: int, before_ms: int, limit: int) -> Step:
    """One destination's delivered and skipped rows settled before `before_ms`, among the next
    `limit` of its rows after seq `after`; returns what went and the last seq looked at."""

    def job(conn: sqlite3.Connection) -> tuple[Trimmed, int | None]:
        end = _chunk_end(conn, "outbox", after, below, limit, dest)
        if end is None:
            return Trimmed(), None
        gone = {}
        for state in ("delivered", "skipped"):
            gone[state] = conn.execute(
                "DELETE FROM outbox WHERE dest = ? AND seq > ? AND seq <= ? AND +state = ? AND updated_ms < ?",
                (dest, after, end, state, before_ms),
            ).rowcount
        _count(conn, gone)
        return Trimmed(delivered=gone["delivered"], skipped=gone["skipped"]), end

    return job


def _events_step(after: int, below: int, before_ms: int, keep: Term, limit: int) -> Step:
    """Among the next `limit` events after seq `after` (and below `below`), those received and
    happened before `before_ms` that nothing still needs, with their delivered and skipped rows."""
    keep_sql, keep_args = keep

    def job(conn: sqlite3.Connection) -> tuple[Trimmed, int | None]:
        end = _chunk_end(conn, "events", after, below, limit, None)
        if end is None:
            return Trimmed(), None
        dests = _JSON([dest for (dest,) in conn.execute(_DESTS_SQL)]).decode()
        (found,) = conn.execute(
            "SELECT json_group_array(seq) FROM events AS e WHERE seq > ? AND seq <= ?"
            " AND received_ms < ? AND time_ms < ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.dest IN (SELECT value FROM json_each(?))"
            f" AND o.seq = e.seq AND +o.state IN {_UNDELIVERED})"
            f" AND NOT ({keep_sql})",
            (after, end, before_ms, before_ms, dests, *keep_args),
        ).fetchone()
        if found == "[]":
            return Trimmed(), end
        gone = {}
        for state in ("delivered", "skipped"):
            gone[state] = conn.execute(
                "DELETE FROM outbox WHERE dest IN (SELECT value FROM json_each(?))"
                " AND seq IN (SELECT value FROM json_each(?)) AND +state = ?",
                (dests, found, state),
            ).rowcount
        # Run through `write_unenforced`: the outbox's foreign key is not checked by SQLite (it
        # would scan the outbox per event); the NOT EXISTS above checked it by key, in this same
        # transaction, and the rows it allowed were just deleted: no event goes from under a row.
        gone["events"] = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))", (found,)
        ).rowcount
        _count(conn, gone)
        return Trimmed(events=gone["events"], delivered=gone["delivered"], skipped=gone["skipped"]), end

    return job


async def _walk(store: Store, make: Callable[[int], Step], unenforced: bool = False) -> Trimmed:
    total = Trimmed()
    after = 0
    write = store.write_unenforced if unenforced else store.write
    while True:
        step, after_next = await write(make(after))
        total += step
        if after_next is None:
            return total
        after = after_next
        await asyncio.sleep(0)  # let the event loop (and the writer's other callers) in between


def _vacuum_job(pages: int) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        when_unlocked(lambda: conn.executescript(f"PRAGMA incremental_vacuum({pages})"))
        return before - int(conn.execute("PRAGMA freelist_count").fetchone()[0])

    return job


def incremental(store: Store) -> bool:
    """Whether the file gives freed pages back (`auto_vacuum=INCREMENTAL`: new stores do)."""
    return int(store.read(lambda c: c.execute("PRAGMA auto_vacuum").fetchone()[0])) == 2


async def reclaim(store: Store, pages: int = VACUUM_PAGES) -> int:
    """Give the free pages back to the file system, `pages` at a time (each a job of the writer
    by itself); returns how many. Nothing to do on a file without incremental auto-vacuum."""
    if not incremental(store):
        return 0
    freed = 0
    while True:
        step = await store.write_alone(_vacuum_job(pages))
        freed += step
        if step < pages:
            return freed
        await asyncio.sleep(0)


async def trim(
    store: AnyStore,
    cutoffs: Cutoffs,
    keep: Term = ("0", ()),
    below: int | None = None,
    limit: int = BATCH_ROWS,
    now_ms: int | None = None,
) -> Trimmed:
    """One retention run (see the module's docstring). `keep`: an SQL condition on an events row
    that keeps it whatever its age (`keep_sql`, for the store's dialect); `below`: no event with
    this seq or a higher one goes (the lowest seq a reader of the log has not read yet); `now_ms`
    sizes the PostgreSQL log's next partition (store/postgres_retention.py, which runs the same
    rules on PostgreSQL, dropping old partitions whole; `limit` is SQLite's batch there)."""
    if store.dialect == "postgres":
        from loopwire.store import postgres_retention  # psycopg: the `postgres` extra
        from loopwire.store.postgres import Store as PostgresStore

        assert isinstance(store, PostgresStore)
        if keep == ("0", ()):
            keep = ("FALSE", ())
        batch = postgres_retention.BATCH_ROWS if limit == BATCH_ROWS else limit
        return await postgres_retention.trim(store, cutoffs, keep, below, now_ms, batch)
    assert isinstance(store, Store)
    total = Trimmed()
    if cutoffs.dead is not None:
        dead = cutoffs.dead
        while True:
            step = await store.write(_dead_step(dead, limit))
            total += step
            if step.dead < limit:
                break
            await asyncio.sleep(0)
    if cutoffs.delivered is not None:
        settled = cutoffs.delivered
        bound = await asyncio.to_thread(boundary, store, settled)
        dests = await asyncio.to_thread(store.read, lambda c: [d for (d,) in c.execute(_DESTS_SQL)])
        for dest in dests:
            total += await _walk(
                store, partial(_settled_step, dest, below=bound, before_ms=settled, limit=limit)
            )
    if cutoffs.events is not None:
        logged = cutoffs.events
        bound = await asyncio.to_thread(boundary, store, logged)
        newest = await asyncio.to_thread(store.last_seq)
        bound = min(bound, newest, below if below is not None else newest)
        total += await _walk(store, lambda after: _events_step(after, bound, logged, keep, limit), True)
    if total.rows:
        total += Trimmed(freed_pages=await reclaim(store))
    return total
