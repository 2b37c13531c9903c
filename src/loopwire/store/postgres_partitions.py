"""The PostgreSQL log's partitions (migration 13): `events` and `outbox` are RANGE-partitioned on seq
with the same bounds, partition n being `events_p<n>` and `outbox_p<n>`, listed in `log_partitions`.

Partitions are sized by time: one should hold about `PARTITION_SPAN_MS` (a day) of the log, so that
retention, which drops a partition whole once everything in it may go, deletes a day's rows at a
time and keeps at most about a day more than its window. The size of the next partition is the
number of events received in the last span (at least `MIN_PARTITION_SEQS`).

Two ways a partition is made, both holding `APPEND_LOCK` (the appender's lock: the bounds are seqs,
and only the appender gives seqs out), so two makers never race for a number:
- `ensure_ahead`, a maintenance step (the node leading retention, and every node as it starts):
  keeps one empty partition after the one being written, with a short `lock_timeout` so it gives up
  rather than queue ingest behind it;
- `cover`, the appender's safety net, in its own transaction: a group whose seqs would pass the last
  bound makes the partitions it needs first, so an append never fails with "no partition of
  relation found".

A partition is made empty, with a CHECK of its bounds, then ATTACHed: ATTACH takes SHARE UPDATE
EXCLUSIVE on the parent, which neither reads nor writes wait for (CREATE TABLE … PARTITION OF
would take ACCESS EXCLUSIVE), and the CHECK spares it a scan.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from loopwire.store.postgres_schema import APPEND_LOCK

PARTITION_SPAN_MS = 86_400_000  # what one partition should hold: a day of the log
MIN_PARTITION_SEQS = 10_000  # a quiet log's partitions: not one per handful of events
DDL_LOCK_TIMEOUT = "200ms"  # maintenance that cannot get its lock by then tries again next round
TABLES = ("events", "outbox")


class Partition(NamedTuple):
    n: int
    low: int  # the first seq it may hold
    high: int  # past the last

    def table(self, parent: str) -> str:
        return f"{parent}_p{self.n}"


def partitions(conn: Any) -> list[Partition]:
    """Every partition, oldest first (`conn`: a psycopg connection)."""
    rows = conn.execute("SELECT n, low, high FROM log_partitions ORDER BY low").fetchall()
    return [Partition(int(n), int(low), int(high)) for n, low, high in rows]


def first_seq_at(conn: Any, received_ms: int, last: int) -> int:
    """The first seq received at or after `received_ms` (`last + 1` if none), by bisection over seq
    (receipt times rise with seq to within a group commit); a missing seq counts as older."""
    lo, hi = 1, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT received_ms FROM events WHERE seq = %s", (mid,)).fetchone()
        if row is not None and row[0] >= received_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


def next_size(conn: Any, last: int, now_ms: int | None, span_ms: int = PARTITION_SPAN_MS) -> int:
    """Seqs for the next partition: the events received in the last `span_ms` before `now_ms` (the
    newest event's receipt when None), and at least `MIN_PARTITION_SEQS`."""
    if last == 0:
        return MIN_PARTITION_SEQS
    if now_ms is None:
        row = conn.execute("SELECT received_ms FROM events WHERE seq = %s", (last,)).fetchone()
        if row is None:
            return MIN_PARTITION_SEQS
        now_ms = int(row[0])
    return max(MIN_PARTITION_SEQS, last + 1 - first_seq_at(conn, now_ms - span_ms, last))


def add_partition(conn: Any, low: int, size: int) -> Partition:
    """Partition the next number, [low, low + size), of both tables. The caller holds APPEND_LOCK in
    the transaction this runs in."""
    (n,) = conn.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM log_partitions").fetchone()
    made = Partition(int(n), low, low + size)
    for parent in TABLES:
        table = made.table(parent)
        conn.execute(f"CREATE TABLE {table} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        conn.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_bounds CHECK (seq >= {made.low} AND seq < {made.high})"
        )
        conn.execute(
            f"ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES FROM ({made.low}) TO ({made.high})"
        )
    conn.execute("INSERT INTO log_partitions (n, low, high) VALUES (%s, %s, %s)", made)
    return made


def top(conn: Any) -> int:
    """Past the highest seq a partition may hold."""
    (high,) = conn.execute("SELECT COALESCE(MAX(high), 1) FROM log_partitions").fetchone()
    return int(high)


def cover(conn: Any, last: int, through: int, now_ms: int | None) -> int:
    """Partitions up to seq `through`, made in the caller's transaction, which holds APPEND_LOCK
    (the appender's safety net; `last`: the newest seq logged); returns the new top bound."""
    bound = top(conn)
    if bound <= through:  # one partition for the whole group, at least (a big first batch: not 10,000s)
        bound = add_partition(conn, bound, max(next_size(conn, last, now_ms), through + 1 - bound)).high
    return bound


def ensure_ahead(conn: Any, now_ms: int | None = None, span_ms: int = PARTITION_SPAN_MS) -> bool:
    """Maintenance: one empty partition after the one the next seq goes to, made in a transaction of
    its own (`conn` in autocommit mode). True if it made one. Raises psycopg's LockNotAvailable when
    the lock did not come within `DDL_LOCK_TIMEOUT`."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        last = int(last)
        made = partitions(conn)
        if made and last + 1 < made[-1].low:
            return False  # the last partition is empty, ahead of the one being written
        bound = made[-1].high if made else 1
        while last + 1 >= bound:  # the log has run past every partition (none was made meanwhile)
            bound = add_partition(conn, bound, next_size(conn, last, now_ms, span_ms)).high
        add_partition(conn, bound, next_size(conn, last, now_ms, span_ms))
        return True
