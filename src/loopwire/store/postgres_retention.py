"""Retention on PostgreSQL: the rules of store/retention.py (the same config, the same meaning), kept
by dropping old partitions whole (store/postgres_partitions.py) and deleting the rest row by row.

A run, on the node that leads "retention" (pipeline/retention.py), on a connection of its own (not
the writer's: a run's transactions never hold up a group commit):
1. `ensure_ahead`: an empty partition ready after the one being written.
2. Dead letters that died before `dead`, in batches, through `outbox_dead`.
3. A partition waits while any of its events was received after `events` (so an event outlives
   its window by at most a partition's span). Below the one holding the newest event (whose seq
   would be given out again) and below every reader's cursor (`below`), one is dropped whole when
   all its events may go: each received and happened before `events`, none matching `keep`, no
   pending, in-flight or dead row. Its delivered and skipped rows go with their events, as on SQLite. First its ids leave `event_ids`
   (in batches, through the partition's own ids), then one short transaction, with `lock_timeout`,
   locks both tables, looks again for an owed row (a backfill may have queued one since: two index
   probes), drops both partitions and counts what went in `retention_tally`. When it cannot get the
   locks (a long reader), it tries again a few times, then gives up for this run and puts the ids
   back; when a row is owed after all, it puts the ids back too.
4. A partition all old but with rows owed or kept (or holding the newest event), row by row, in
   batches: the events that may go, each with its delivered and skipped rows and its `event_ids`
   row. Events are locked FOR UPDATE before their
   rows are looked at: `enqueue` locks the events it queues FOR KEY SHARE, so a backfill either
   queued its row before (and the event stays) or finds the event gone.
5. Delivered and skipped rows settled before `delivered`, per destination, in batches.

Every batch counts what it deleted in `retention_tally` in its own transaction (status, metrics and
`event_count` read it). An outbox statement names the parent, `outbox`, so the tally triggers fire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from loopwire.store.postgres import pg_sql
from loopwire.store.postgres_partitions import (
    DDL_LOCK_TIMEOUT,
    Partition,
    ensure_ahead,
    first_seq_at,
    partitions,
)
from loopwire.store.retention import KINDS, Cutoffs, Term, Trimmed

if TYPE_CHECKING:
    from loopwire.store.postgres import Store

log = logging.getLogger("loopwire.retention")
BATCH_ROWS = 5_000  # rows a transaction: on a connection of its own, only row locks are at stake
DROP_TRIES = 3  # a drop that cannot get its locks gives up after so many tries, DROP_PAUSE_S apart
DROP_PAUSE_S = 0.5
_OWED = "('pending', 'in_flight', 'dead')"


def _count(conn: psycopg.Connection[Any], counts: dict[str, int]) -> None:
    rows = [(kind, n) for kind, n in counts.items() if n]
    if rows:
        conn.cursor().executemany(
            "INSERT INTO retention_tally AS t (kind, n) VALUES (%s, %s)"
            " ON CONFLICT (kind) DO UPDATE SET n = t.n + EXCLUDED.n",
            rows,
        )


def _one(conn: psycopg.Connection[Any], sql: str, args: Any = ()) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _dests(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "WITH RECURSIVE d(dest) AS (SELECT MIN(dest) FROM outbox UNION ALL"
        " SELECT (SELECT MIN(dest) FROM outbox WHERE dest > d.dest) FROM d WHERE d.dest IS NOT NULL)"
        " SELECT dest FROM d WHERE dest IS NOT NULL"
    ).fetchall()
    return [dest for (dest,) in rows]


def _dead(conn: psycopg.Connection[Any], before_ms: int, limit: int) -> Trimmed:
    total = Trimmed()
    while True:
        with conn.transaction():
            gone = conn.execute(
                "DELETE FROM outbox WHERE state = 'dead' AND (dest, seq) IN (SELECT dest, seq FROM outbox"
                " WHERE state = 'dead' AND updated_ms < %s ORDER BY updated_ms LIMIT %s)",
                (before_ms, limit),
            ).rowcount
            _count(conn, {"dead": gone})
        total += Trimmed(dead=gone)
        if gone < limit:
            return total


def _age(conn: psycopg.Connection[Any], part: Partition, before_ms: int, keep: Term) -> str:
    """What the partition's rows allow: "young" (an event received at or after `before_ms`: the
    partition waits until all of it is old), "blocked" (all old, but some rows owed, kept, or
    happened since: trimmed row by row) or "free" (every event may go: dropped whole). Read outside
    the drop's locks: events never change, and a row that becomes owed is looked for again under
    them."""
    keep_sql, keep_args = keep
    events, outbox = part.table("events"), part.table("outbox")
    # receipt rises with seq (to within a group commit): the newest tells a young partition quickly
    newest = _one(conn, f"SELECT received_ms FROM {events} ORDER BY seq DESC LIMIT 1")
    if newest is not None and newest >= before_ms:
        return "young"
    row = conn.execute(
        pg_sql(f"SELECT bool_or(received_ms >= ?), bool_or(time_ms >= ? OR ({keep_sql})) FROM {events}"),
        (before_ms, before_ms, *keep_args),
    ).fetchone()
    young, kept = row if row is not None else (None, None)
    if young:
        return "young"
    if kept or _one(conn, f"SELECT EXISTS (SELECT 1 FROM {outbox} WHERE state IN {_OWED})"):
        return "blocked"
    return "free"


def _forget_ids(conn: psycopg.Connection[Any], part: Partition, limit: int) -> int:
    """Take the partition's events out of `event_ids`, `limit` at a time; returns how many events it
    holds. Only rows naming this seq go: an id that came back later (after its first event went)
    maps to its new seq."""
    events = part.table("events")
    after, seen = max(part.low, 1) - 1, 0  # seqs start at 1 (partition 1's low is BIGINT's least)
    while True:
        row = conn.execute(
            f"WITH batch AS (SELECT id, seq FROM {events} WHERE seq > %s ORDER BY seq LIMIT %s),"
            " gone AS (DELETE FROM event_ids AS i USING batch AS b WHERE i.id = b.id AND i.seq = b.seq)"
            " SELECT COUNT(*), MAX(seq) FROM batch",
            (after, limit),
        ).fetchone()
        assert row is not None  # an aggregate's one row
        batch, end = row
        seen += int(batch)
        if batch < limit:
            return seen
        after = int(end)


def _restore_ids(conn: psycopg.Connection[Any], part: Partition) -> None:
    conn.execute(
        f"INSERT INTO event_ids (id, seq) SELECT id, seq FROM {part.table('events')} ON CONFLICT (id) DO NOTHING"
    )


def _drop(conn: psycopg.Connection[Any], part: Partition, limit: int) -> Trimmed | None:
    """Drop the partition (see the module's docstring); None if it stays after all."""
    events, outbox = part.table("events"), part.table("outbox")
    settled = dict(conn.execute(f"SELECT state, COUNT(*) FROM {outbox} GROUP BY state").fetchall())
    count = _forget_ids(conn, part, limit)
    for attempt in range(DROP_TRIES):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                # The parents too: dropping a partition takes ACCESS EXCLUSIVE on its parent.
                conn.execute(
                    f"LOCK TABLE ONLY outbox, {outbox}, ONLY events, {events} IN ACCESS EXCLUSIVE MODE"
                )
                if _one(conn, f"SELECT EXISTS (SELECT 1 FROM {outbox} WHERE state IN {_OWED})"):
                    break  # a backfill queued a row since: the partition stays
                conn.execute(f"DROP TABLE {outbox}")
                conn.execute(f"DROP TABLE {events}")
                conn.execute("DELETE FROM log_partitions WHERE n = %s", (part.n,))
                trimmed = Trimmed(
                    events=count,
                    delivered=int(settled.get("delivered", 0)),
                    skipped=int(settled.get("skipped", 0)),
                )
                _count(conn, dict(zip(KINDS, trimmed, strict=False)))
                return trimmed
        except psycopg.errors.LockNotAvailable:
            if attempt + 1 < DROP_TRIES:
                time.sleep(DROP_PAUSE_S)
    log.info(
        "partition %d of the log stays for now (a lock, or a row queued since); it is looked at next run",
        part.n,
    )
    _restore_ids(conn, part)
    return None


def _chunk_end(
    conn: psycopg.Connection[Any], table: str, where: str, args: tuple[Any, ...], limit: int
) -> int | None:
    end = _one(
        conn,
        f"SELECT MAX(seq) FROM (SELECT seq FROM {table} WHERE {where} ORDER BY seq LIMIT %s) AS chunk",
        (*args, limit),
    )
    return None if end is None else int(end)


def _events(
    conn: psycopg.Connection[Any], spans: list[tuple[int, int]], before_ms: int, keep: Term, limit: int
) -> Trimmed:
    """Row by row, the events in these seq ranges ((after, below)) that may go, with their delivered
    and skipped rows."""
    keep_sql, keep_args = keep
    select = pg_sql(
        "SELECT seq, id FROM events WHERE seq > ? AND seq <= ? AND received_ms < ? AND time_ms < ?"
        f" AND NOT ({keep_sql}) ORDER BY seq FOR UPDATE"
    )
    total = Trimmed()
    for after, below in spans:
        total += _events_in(conn, after, below, select, keep_args, before_ms, limit)
    return total


def _events_in(
    conn: psycopg.Connection[Any],
    after: int,
    below: int,
    select: str,
    keep_args: tuple[Any, ...],
    before_ms: int,
    limit: int,
) -> Trimmed:
    total = Trimmed()
    while (end := _chunk_end(conn, "events", "seq > %s AND seq < %s", (after, below), limit)) is not None:
        with conn.transaction():
            found = conn.execute(select, (after, end, before_ms, before_ms, *keep_args)).fetchall()
            seqs = [seq for seq, _ in found]
            dests = _dests(conn)  # after the locks: a destination's row queued before them is seen
            owed = {
                seq
                for (seq,) in conn.execute(
                    f"SELECT DISTINCT seq FROM outbox WHERE dest = ANY(%s) AND seq = ANY(%s) AND state IN {_OWED}",
                    (dests, seqs),
                )
            }
            gone = [(seq, event_id) for seq, event_id in found if seq not in owed]
            if gone:
                seqs = [seq for seq, _ in gone]
                states = conn.execute(
                    "DELETE FROM outbox WHERE dest = ANY(%s) AND seq = ANY(%s) RETURNING state", (dests, seqs)
                ).fetchall()
                conn.execute(
                    "DELETE FROM event_ids AS i USING unnest(%s::text[], %s::bigint[]) AS g (id, seq)"
                    " WHERE i.id = g.id AND i.seq = g.seq",
                    ([event_id for _, event_id in gone], seqs),
                )
                events = conn.execute("DELETE FROM events WHERE seq = ANY(%s)", (seqs,)).rowcount
                step = Trimmed(
                    events=events,
                    delivered=sum(1 for (state,) in states if state == "delivered"),
                    skipped=sum(1 for (state,) in states if state == "skipped"),
                )
                _count(conn, dict(zip(KINDS, step, strict=False)))
                total += step
        after = end
    return total


def _settled(conn: psycopg.Connection[Any], below: int, before_ms: int, limit: int) -> Trimmed:
    """Per destination, delivered and skipped rows below seq `below` settled before `before_ms`."""
    total = Trimmed()
    for dest in _dests(conn):
        after = 0
        while (
            end := _chunk_end(
                conn, "outbox", "dest = %s AND seq > %s AND seq < %s", (dest, after, below), limit
            )
        ) is not None:
            with conn.transaction():
                states = conn.execute(
                    "DELETE FROM outbox WHERE dest = %s AND seq > %s AND seq <= %s"
                    " AND state IN ('delivered', 'skipped') AND updated_ms < %s RETURNING state",
                    (dest, after, end, before_ms),
                ).fetchall()
                step = Trimmed(
                    delivered=sum(1 for (state,) in states if state == "delivered"),
                    skipped=sum(1 for (state,) in states if state == "skipped"),
                )
                _count(conn, {"delivered": step.delivered, "skipped": step.skipped})
            total += step
            after = end
    return total


@contextmanager
def _connection(store: Store) -> Iterator[psycopg.Connection[Any]]:
    conn = store.connect()
    try:
        yield conn
    finally:
        conn.close()


def _boundary(conn: psycopg.Connection[Any], before_ms: int) -> int:
    """The lowest seq from which events were received at or after `before_ms` (as store/retention.py's)."""
    last = int(_one(conn, "SELECT COALESCE(MAX(seq), 0) FROM events"))
    return first_seq_at(conn, before_ms, last)


def trim_sync(
    store: Store,
    cutoffs: Cutoffs,
    keep: Term,
    below: int | None,
    now_ms: int | None = None,
    limit: int = BATCH_ROWS,
) -> Trimmed:
    """One retention run (see the module's docstring)."""
    total = Trimmed()
    with _connection(store) as conn:
        try:
            ensure_ahead(conn, now_ms)
        except psycopg.errors.LockNotAvailable:  # the appender makes one if it must
            log.info("the next partition of the log waits for a lock; it is made later")
        if cutoffs.dead is not None:
            total += _dead(conn, cutoffs.dead, limit)
        if cutoffs.events is not None:
            before = cutoffs.events
            newest = int(_one(conn, "SELECT COALESCE(MAX(seq), 0) FROM events"))
            ceiling = min(newest, below if below is not None else newest)
            bound = min(_boundary(conn, before), ceiling)
            spans: list[tuple[int, int]] = []  # walked row by row: (after, below)
            for part in partitions(conn):
                if part.low >= bound:
                    break  # (bound <= ceiling: the newest event and what a reader needs stay)
                age = _age(conn, part, before, keep)
                if age == "young":
                    continue  # it goes once all of it is old: at most a span past the window
                if age == "free" and part.high <= ceiling:  # never the newest event's partition
                    # One that cannot be dropped now is next run, not trimmed row by row: its
                    # rows would then wait for a vacuum, which dropping it whole spares.
                    total += _drop(conn, part, limit) or Trimmed()
                    continue
                spans.append((max(part.low, 1) - 1, min(part.high, bound)))
            total += _events(conn, spans, before, keep, limit)
        if cutoffs.delivered is not None:
            total += _settled(conn, _boundary(conn, cutoffs.delivered), cutoffs.delivered, limit)
    return total


async def trim(
    store: Store,
    cutoffs: Cutoffs,
    keep: Term,
    below: int | None,
    now_ms: int | None = None,
    limit: int = BATCH_ROWS,
) -> Trimmed:
    return await asyncio.to_thread(trim_sync, store, cutoffs, keep, below, now_ms, limit)
