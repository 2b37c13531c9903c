"""PostgreSQL store: several `loopwire serve` nodes share one database (`store: {type: postgres}`).

The same guarantees as the SQLite store (store/sqlite.py), the same shape:
- **Acknowledge after commit, group commit.** Each node has one writer thread with a connection of
  its own; it takes every write waiting (up to `group_max`), runs each job in its own SAVEPOINT of
  one transaction and commits once (`synchronous_commit` is the server's: on, by default, so a
  commit has reached the server's WAL on disk). A job's future resolves only after COMMIT.
- **Dedupe on event id; seqs in commit order.** The appends of a group take one transaction-level
  advisory lock (`APPEND_LOCK`) shared by every node, then one statement (`_APPEND`) leaves out the
  ids the log already holds (in `event_ids`: the log is partitioned by seq, migration 13, so it
  cannot hold a unique index on id) and inserts the new events with consecutive seqs after
  MAX(seq), their ids and their outbox rows, whatever the group's size (`event_ids`' key is the
  last word: it raises, as only appends write events and they hold the lock). Holding the lock
  until commit makes seqs consecutive and in commit order across nodes, as SQLite's single writer
  does: the log's readers (the audience engine's cursor) follow it by seq and never skip a row
  committed late. A group whose seqs would pass the last partition makes the partitions it needs
  first (store/postgres_partitions.py).
- **Claims never overlap.** A claim is `FOR UPDATE SKIP LOCKED` over the destination's due rows in
  (next_ms, seq) order, the order of SQLite's claims, and marks them in flight with the node's id.
- **One leader per role.** The audience engine follows the log on one node at a time: the first to
  take a session advisory lock for it (`lead`), until that node stops or dies.
- **Recovery only of the dead.** Each node holds a session advisory lock on its own id for as long
  as it runs (a connection of its own); a node that starts puts back to pending only the in-flight
  rows whose node's lock is free (a node that crashed or was killed: its connection went with it).

Reads go to a pool (psycopg_pool) of autocommit connections. SQL from the store's modules comes with
SQLite's `?` placeholders (store/base.py) and is rewritten for psycopg once per statement text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.numeric import Int8
from psycopg_pool import ConnectionPool

from loopwire.model import Event, encode_event
from loopwire.store import postgres_partitions as partitions
from loopwire.store.base import STATES, Claimed, Footprint, ScanTarget, Settlement
from loopwire.store.postgres_schema import APPEND_LOCK, lead_lock, migrate

# the SQLite writer's helpers that hand results to waiting threads and event loops
from loopwire.store.sqlite import Sink, _fail_all, _settle_futures, take_group

log = logging.getLogger("loopwire.store")
T = TypeVar("T")
Job = Callable[["PgConnection"], Any]

_PLACEHOLDER = re.compile(r"\?(\d*)")


@functools.lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (and a literal `%` as `%%`). Numbered ones (`?1`)
    are not rewritten: SQL written for both databases uses plain `?` only."""
    if _PLACEHOLDER.search(sql) and any(m.group(1) for m in _PLACEHOLDER.finditer(sql)):
        raise ValueError("numbered placeholders (?1) are SQLite's only: use plain ? in shared SQL")
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


def describe(dsn: str) -> str:
    """The database a DSN names, without its password (for messages): `dbname@host:port`."""
    parts = conninfo_to_dict(dsn)
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{parts.get('dbname') or parts.get('user') or 'postgres'}@{host}{port}"


class PgConnection:
    """A psycopg connection as the store's modules use one (base.Connection): `?` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(pg_sql(sql), parameters or None)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(pg_sql(sql), list(parameters))
        return cursor

    def close(self) -> None:
        self.raw.close()


class _ScanConnection(PgConnection):
    """The full recompute's connection (store/scans.py): one read-only snapshot for all of a worker's
    reads, each streamed through a server-side cursor instead of fetched whole."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._cursors = itertools.count(1)

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor(name=f"loopwire_scan_{next(self._cursors)}")
        cursor.itersize = 10_000
        cursor.execute(pg_sql(sql), parameters or None)
        return cursor


def scan_connection(dsn: str) -> PgConnection:
    conn = psycopg.connect(dsn, autocommit=False)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return _ScanConnection(conn)


class _Append:
    """An append job; the writer merges every append of a group into one statement (`_APPEND`)."""

    def __init__(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> None:
        self.events = list(events)
        self.routes = routes
        self.bodies = [encode_event(e) for e in events]  # encoded on the caller's thread


class _Top:
    """What this node's writer last knew of the partitions' top bound (past the highest seq a
    partition may hold): it only grows, so a group below it needs no look at `log_partitions`."""

    bound = 0


# One statement for a group's appends, after the append lock (a statement of its own, sent in the
# same pipeline): the group's events as columns, `ord` their place in the group. Those whose id the
# log does not hold (in `event_ids`; the first copy of an id the group holds twice) get the seqs
# after MAX(seq) in the group's order; the events, their ids and their outbox rows (`routes`: pairs
# of place and destination) are written by the statement's three data-modifying CTEs. It returns
# each new place with its seq and whether it was written: only if the group's last seq is below
# the bound in `fits`, the top of the partitions the writer knows of (`_Top`). A group that would
# pass it writes nothing (an insert past the last partition fails: "no partition of relation found
# for row"), and the writer makes the partitions first and sends it again, under the same lock: so
# the usual group is still one round trip, the lock and this statement.
# Parameters go in binary (`%b`): psycopg's text format escapes every array element with a regex,
# which cost 1.1 ms of the 2.4 ms a group of 32 took (docs/performance.md, PostgreSQL).
_APPEND = """
WITH input AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
        %b::text[], %b::int8[], %b::int8[], %b::bytea[])
        WITH ORDINALITY AS i (id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body, ord)
), fresh AS (
    SELECT DISTINCT ON (i.id) i.* FROM input AS i
    WHERE NOT EXISTS (SELECT 1 FROM event_ids AS k WHERE k.id = i.id)
    ORDER BY i.id, i.ord
), numbered AS (
    SELECT f.*, (SELECT COALESCE(MAX(seq), 0) FROM events) + row_number() OVER (ORDER BY f.ord) AS seq
    FROM fresh AS f
), fits AS (
    SELECT COALESCE(MAX(seq), 0) < %b::int8 AS ok FROM numbered
), written AS (
    SELECT * FROM numbered WHERE (SELECT ok FROM fits)
), added AS (
    INSERT INTO events (seq, id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body)
    SELECT seq, id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body FROM written
), known AS (
    INSERT INTO event_ids (id, seq) SELECT id, seq FROM written
), queued AS (
    INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)
    SELECT r.dest, w.seq, 'pending', w.received_ms, w.received_ms, w.received_ms
    FROM unnest(%b::int8[], %b::text[]) AS r (ord, dest) JOIN written AS w ON w.ord = r.ord
)
SELECT ord, seq, (SELECT ok FROM fits) FROM numbered
"""


def _append(conn: psycopg.Connection[Any], appends: Sequence[_Append], top: _Top) -> list[list[bool]]:
    """Inside the writer's transaction: per append, True where the event is new."""
    events = [e for a in appends for e in a.events]
    if not events:
        return [[] for _ in appends]
    rows = [
        (e.id, e.source, e.kind, e.channel, e.metric, e.name, e.user_id, e.time_ms, e.received_ms)
        for e in events
    ]
    columns = [list(column) for column in zip(*rows, strict=True)]
    columns.append([body for a in appends for body in a.bodies])
    places: list[int] = []
    dests: list[str] = []
    place = 0
    for append in appends:
        for routes in append.routes:
            place += 1
            for dest in routes:
                places.append(place)
                dests.append(dest)
    with conn.pipeline():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        numbered = conn.execute(_APPEND, (*columns, Int8(top.bound), places, dests)).fetchall()
    if numbered and not numbered[0][2]:
        # Past the partitions this node knew of, so nothing was written: look, make what is
        # missing, and send the group again (the lock is still held: its seqs start where they
        # did). The partitions go through the seq of the group's last event as if all of them were
        # new: retention takes ids out of `event_ids` without the lock (before it drops a
        # partition), so more of the group may be new the second time.
        last = min(seq for _, seq, _ in numbered) - 1
        received = max(events[at - 1].received_ms for at, _, _ in numbered)
        top.bound = partitions.cover(conn, last, last + len(events), received)
        numbered = conn.execute(_APPEND, (*columns, Int8(top.bound), places, dests)).fetchall()
        if numbered and not numbered[0][2]:  # cover() makes partitions through the seq it is given
            raise RuntimeError(f"no partition of the log for seq {last + len(events)} after making them")
    new = {at for at, _, _ in numbered}
    results: list[list[bool]] = []
    place = 0
    for append in appends:
        results.append([place + i + 1 in new for i in range(len(append.events))])
        place += len(append.events)
    return results


_CLAIM = """
WITH picked AS (
    SELECT seq FROM outbox WHERE dest = %(dest)s AND state = 'pending' AND next_ms <= %(now)s
    ORDER BY next_ms, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outbox AS o SET state = 'in_flight', attempts = o.attempts + 1, updated_ms = %(now)s,
        claimed_by = %(node)s
    FROM picked WHERE o.dest = %(dest)s AND o.seq = picked.seq
    RETURNING o.seq, o.attempts, o.enqueued_ms
)
SELECT c.seq, c.attempts, c.enqueued_ms, e.body FROM claimed AS c JOIN events AS e ON e.seq = c.seq ORDER BY c.seq
"""
_SETTLE = (
    "UPDATE outbox SET state = %s, next_ms = %s, updated_ms = %s, reason = %s, response = %s, claimed_by = NULL"
    " WHERE dest = %s AND seq = ANY(%s)"
)
# In-flight rows of nodes that are gone: a node's session lock is free once its connection closed.
_RECOVER = """
UPDATE outbox SET state = 'pending', claimed_by = NULL
WHERE state = 'in_flight' AND (claimed_by IS NULL OR claimed_by IN (
    SELECT node FROM (
        SELECT DISTINCT claimed_by AS node FROM outbox WHERE state = 'in_flight' AND claimed_by IS NOT NULL
    ) AS nodes
    WHERE pg_try_advisory_lock(node) AND pg_advisory_unlock(node)
))
"""
_DESTS = """
WITH RECURSIVE d(dest) AS (
    SELECT MIN(dest) FROM outbox
    UNION ALL
    SELECT (SELECT MIN(dest) FROM outbox WHERE dest > d.dest) FROM d WHERE d.dest IS NOT NULL
)
SELECT dest FROM d WHERE dest IS NOT NULL
"""


RECOVER_EVERY_S = 5.0


class Store:
    """The PostgreSQL store (`loopwire.store.base.Store`)."""

    def __init__(self, dsn: str, group_max: int = 512, *, recover: bool = True, pool_max: int = 8) -> None:
        self.path = describe(dsn)  # never the DSN: it may hold a password
        self._dsn = dsn
        self._group_max = group_max
        self._node = secrets.randbits(62) + 1  # this process's id on in-flight rows (never 0)
        # A session lock on the node's id, held as long as this store is open (see the docstring).
        self._lease = psycopg.connect(dsn, autocommit=True)
        try:
            self._lease.execute("SELECT pg_advisory_lock(%s)", (self._node,))
            migrate(self._lease)
            self._ahead(None)
            self._top = _Top()
            self._top.bound = partitions.top(self._lease)  # else the first group would look
            self._recovered = self._lease.execute(_RECOVER).rowcount if recover else 0
            self._conn = psycopg.connect(dsn, autocommit=False)
        except BaseException:
            self._lease.close()
            raise
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn, min_size=1, max_size=pool_max, kwargs={"autocommit": True}, name="loopwire-read", open=True
        )
        self._jobs: queue.SimpleQueue[tuple[Job | _Append, Sink] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="loopwire-store-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.companions: dict[str, Any] = {}
        self._leading: set[str] = set()
        self._analyzed_at = 0  # the log's size when this node last ran ANALYZE (`_analyze_young_log`)
        # A serving node also puts back, every `RECOVER_EVERY_S`, what a node that died while it
        # runs left in flight: else those rows would wait for a node to start (the issue's "one node
        # SIGKILLed mid-run": the other delivers them; tests/test_nodes.py).
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None
        if recover:
            self._reaper = threading.Thread(target=self._reap, name="loopwire-store-reaper", daemon=True)
            self._reaper.start()

    def _ahead(self, now_ms: int | None) -> None:
        try:
            partitions.ensure_ahead(self._lease, now_ms)
        except psycopg.errors.LockNotAvailable:  # DDL or a long reader in the way: the appender
            log.info("the next partition of the log waits for a lock; it is made later")  # covers it

    def _reap(self) -> None:
        while not self._stopping.wait(RECOVER_EVERY_S):
            try:
                with self._raw() as conn:
                    count = conn.execute(_RECOVER).rowcount
                    self._analyze_young_log(conn)
            except Exception:  # the database is away for a moment: the next round tries again
                log.exception("could not look for the in-flight rows of nodes that are gone")
                continue
            if count:
                self._recovered += count
                log.warning("%d in-flight rows of a node that is gone are pending again", count)

    def _analyze_young_log(self, conn: psycopg.Connection[Any]) -> None:
        """ANALYZE the log's tables whenever the log has doubled since this node last did (from
        1,000 events). Autovacuum analyzes `event_ids` and the partitions, but at most once a minute
        and only after a tenth of a table changed, and never the partitioned parents `events` and
        `outbox` themselves: PostgreSQL's manual ("Updating Planner Statistics") says to ANALYZE a
        partitioned table when it is first populated and again when its partitions' data changes
        significantly. Until then a new database's plans (the append's lookup in `event_ids`, the
        status triggers') are made for empty tables: a group of 32 appends took 2.9–3.3 ms instead
        of 2.2–2.7 analyzed (docs/performance.md, PostgreSQL; 14 ms before the append was one
        statement). The size is the newest seq, not `reltuples` (which
        retention's drops lower): past the first doublings this is rare. ANALYZE of a parent samples
        each of its partitions too, and blocks no writes (SHARE UPDATE EXCLUSIVE)."""
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        size = int(row[0]) if row else 0
        if size >= max(1_000, 2 * self._analyzed_at):
            conn.execute("ANALYZE events, outbox, event_ids")
            self._analyzed_at = size

    @property
    def dialect(self) -> Literal["postgres"]:
        return "postgres"

    @property
    def recovered(self) -> int:
        return self._recovered

    # -- the writer thread (as the SQLite store's) ------------------------------------------------
    def _writer(self) -> None:
        while True:
            taken = take_group(self._jobs, self._group_max)
            if taken is None:
                return
            batch, stop = taken
            try:
                self._run_group(batch)
            except Exception as exc:  # a defect: the writer must outlive it, and nobody wait forever
                log.exception("the store writer failed on a group of %d writes", len(batch))
                _fail_all(batch, exc)
            if stop:
                return

    def _run_group(self, batch: list[tuple[Job | _Append, Sink]]) -> None:
        conn = self._conn
        results: list[tuple[bool, Any]] = []
        bound = self._top.bound
        try:
            if conn.closed:  # the server closed it (a restart): a new one, or this group fails
                self._conn = conn = psycopg.connect(self._dsn, autocommit=False)
            # Appends first: the append lock is then the first lock of the transaction, as on
            # every node, and held the shortest time.
            merged = iter(_append(conn, [job for job, _ in batch if isinstance(job, _Append)], self._top))
            wrapped = PgConnection(conn)
            for job, _ in batch:
                if isinstance(job, _Append):
                    results.append((True, next(merged)))
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job(wrapped)))
                    conn.execute("RELEASE SAVEPOINT job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO SAVEPOINT job")
                    conn.execute("RELEASE SAVEPOINT job")
                    results.append((False, exc))
            conn.commit()
            self.commits += 1
        except Exception as exc:  # the commit itself failed (or the connection): nobody is durable
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            self._top.bound = bound  # a partition the group made went with it
            if len(batch) > 1:  # one job may be what failed: each alone, so it fails by itself
                for item in batch:
                    self._run_group([item])
                return
            results = [(False, exc)]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (ok, value), (_, sink) in zip(results, batch, strict=True):
            if isinstance(sink, Future):
                if ok:
                    sink.set_result(value)
                else:
                    sink.set_exception(value)
            else:
                loop, future = sink
                by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_futures, items)

    def submit(self, job: Callable[[PgConnection], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future

    async def write(self, job: Callable[[PgConnection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, (loop, future)))
        return await future

    def run(self, job: Callable[[PgConnection], T]) -> T:
        return self.submit(job).result()

    def read(self, query: Callable[[PgConnection], T]) -> T:
        with self._pool.connection() as conn:
            return query(PgConnection(conn))

    @contextlib.contextmanager
    def _raw(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            yield conn

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own in autocommit mode, for maintenance that runs transactions of its
        own beside the writer's (retention, store/postgres_retention.py): the caller closes it."""
        return psycopg.connect(self._dsn, autocommit=True)

    def reader(self) -> PgConnection:
        return PgConnection(psycopg.connect(self._dsn, autocommit=True))

    def scan_target(self) -> ScanTarget:
        return ScanTarget("postgres", self._dsn)

    def close(self) -> None:
        self._stopping.set()
        if self._reaper is not None:
            self._reaper.join()
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._conn.close()
        self._pool.close()
        self._lease.close()  # and with it the node's lock: its in-flight rows may now be recovered
        for companion in self.companions.values():
            companion.close()
        self.companions.clear()

    # -- the log -------------------------------------------------------------------------------
    async def append(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._jobs.put((_Append(events, routes), (loop, future)))
        return await future

    def append_sync(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        future: Future[list[bool]] = Future()
        self._jobs.put((_Append(events, routes), future))
        return future.result()

    def last_seq(self) -> int:
        with self._raw() as conn:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0]) if row is not None else 0

    def oldest_event_ms(self) -> int | None:
        with self._raw() as conn:
            row = conn.execute("SELECT received_ms FROM events ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def size_on_disk(self) -> Footprint:
        """The database's size as PostgreSQL counts it (its WAL and free space are the server's)."""
        with self._raw() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row is not None else 0
        return Footprint(file_bytes=size, wal_bytes=0, free_bytes=0, incremental_vacuum=False)

    def event_count(self) -> int:
        # seqs are consecutive from 1 (see `_append`): MAX is the count, one index descent, less
        # the events a SQLite store's retention had trimmed before it was migrated here
        with self._raw() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) - COALESCE("
                "(SELECT SUM(n) FROM retention_tally WHERE kind = 'events'), 0) FROM events"
            ).fetchone()
        return int(row[0]) if row else 0

    def scan_events(self, since_ms: int, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        with self._raw() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM events WHERE seq > %s AND time_ms >= %s ORDER BY seq LIMIT %s",
                (after_seq, since_ms, limit),
            ).fetchall()
        return [(int(seq), bytes(body)) for seq, body in rows]

    def lead(self, role: str) -> bool:
        # a session lock of the lease connection: freed when this node stops or dies
        if role not in self._leading:
            row = self._lease.execute("SELECT pg_try_advisory_lock(%s)", (lead_lock(role),)).fetchone()
            if row is not None and row[0]:
                self._leading.add(role)
                log.info("this node now runs the %s (it holds the lead on %s)", role, self.path)
        return role in self._leading

    # -- outboxes ------------------------------------------------------------------------------
    async def claim(self, dest: str, limit: int, now_ms: int) -> list[Claimed]:
        args = {"dest": dest, "now": now_ms, "limit": limit, "node": self._node}

        def job(conn: PgConnection) -> list[Claimed]:
            rows = conn.raw.execute(_CLAIM, args).fetchall()
            return [Claimed(seq, attempts, enqueued, bytes(body)) for seq, attempts, enqueued, body in rows]

        return await self.write(job)

    async def settle(self, dest: str, settlements: Iterable[Settlement], now_ms: int) -> None:
        alike: dict[tuple[str, int, str | None, str | None], list[int]] = {}
        for r in settlements:
            alike.setdefault((r.state, r.next_ms, r.reason, r.response), []).append(r.seq)
        if not alike:
            return
        # in a fixed order: the tally rows they update are then locked in the same order by every node
        statements = [
            (state, next_ms, now_ms, reason, response, dest, seqs)
            for (state, next_ms, reason, response), seqs in sorted(
                alike.items(), key=lambda item: (item[0][0], item[0][2] or "", item[0][1])
            )
        ]

        def job(conn: PgConnection) -> None:
            for values in statements:
                conn.raw.execute(_SETTLE, values)

        await self.write(job)

    async def probe(self, now_ms: int) -> None:
        await self.write(
            lambda conn: conn.raw.execute(
                "INSERT INTO ready_probe (id, at_ms) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET at_ms = EXCLUDED.at_ms",
                (now_ms,),
            )
        )

    def oldest_undelivered_ms(self, dests: Iterable[str] | None = None) -> dict[str, int]:
        names = None if dests is None else list(dests)
        with self._raw() as conn:
            rows = conn.execute(
                "SELECT dest, MIN(enqueued_ms) FROM outbox WHERE state IN ('pending', 'in_flight')"
                + ("" if names is None else " AND dest = ANY(%s)")
                + " GROUP BY dest",
                () if names is None else (names,),
            ).fetchall()
        return {dest: int(oldest) for dest, oldest in rows}

    def next_due_ms(self, dest: str) -> int | None:
        with self._raw() as conn:
            row = conn.execute(
                "SELECT MIN(next_ms) FROM outbox WHERE dest = %s AND state = 'pending'", (dest,)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def counts(self, dests: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {dest: dict.fromkeys(STATES, 0) for dest in dests}
        with self._raw() as conn:
            for (dest,) in conn.execute(_DESTS):
                result.setdefault(dest, dict.fromkeys(STATES, 0))
            for dest, state, count in conn.execute(
                "SELECT dest, state, SUM(n)::bigint FROM outbox_tally GROUP BY dest, state"
            ):
                result.setdefault(dest, dict.fromkeys(STATES, 0))[state] = int(count)
            for dest, states in result.items():
                for state in ("pending", "in_flight"):
                    row = conn.execute(
                        "SELECT COUNT(*) FROM outbox WHERE dest = %s AND state = %s", (dest, state)
                    ).fetchone()
                    states[state] = int(row[0]) if row else 0
        return result

    def reasons(self, state: str) -> list[tuple[str, str, int]]:
        with self._raw() as conn:
            rows = conn.execute(
                "SELECT dest, reason, n FROM outbox_tally WHERE state = %s AND n > 0 ORDER BY n DESC, dest, reason",
                (state,),
            ).fetchall()
        return [(dest, reason, int(n)) for dest, reason, n in rows]

    def dead_letters(self, dest: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT o.dest, e.id, e.channel, e.metric, e.name, o.attempts, o.updated_ms, o.reason, o.response"
            " FROM outbox o JOIN events e ON e.seq = o.seq WHERE o.state = 'dead'"
        )
        args: list[Any] = []
        if dest is not None:
            sql += " AND o.dest = %s"
            args.append(dest)
        sql += " ORDER BY o.updated_ms DESC LIMIT %s"
        args.append(limit)
        keys = (
            "destination",
            "event_id",
            "channel",
            "metric",
            "name",
            "attempts",
            "dead_ms",
            "reason",
            "response",
        )
        with self._raw() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def requeue_in_flight(self, dest: str) -> int:
        return int(
            self.run(
                lambda conn: (
                    conn.raw.execute(
                        "UPDATE outbox SET state = 'pending', claimed_by = NULL"
                        " WHERE dest = %s AND state = 'in_flight' AND claimed_by = %s",
                        (dest, self._node),
                    ).rowcount
                )
            )
        )

    def enqueue(self, dest: str, seqs: Sequence[int], now_ms: int, resend: bool) -> int:
        # The events are locked as the outbox's foreign key did before migration 13 (FOR KEY SHARE):
        # retention deletes an event only with FOR UPDATE and a look at its rows after it, so it
        # either waits for this row and keeps the event, or has deleted it and no row is queued.
        sql = (
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
            " SELECT %s, e.seq, 'pending', %s, %s, %s FROM events AS e WHERE e.seq = ANY(%s::bigint[])"
            " FOR KEY SHARE OF e"
        )
        if resend:
            sql += (
                " ON CONFLICT (dest, seq) DO UPDATE SET state = 'pending', attempts = 0, claimed_by = NULL,"
                " enqueued_ms = EXCLUDED.enqueued_ms, next_ms = EXCLUDED.next_ms, updated_ms = EXCLUDED.updated_ms"
                " WHERE outbox.state != 'in_flight'"
            )
        else:
            sql += " ON CONFLICT (dest, seq) DO NOTHING"
        unique = sorted(set(seqs))
        return int(
            self.run(lambda conn: conn.raw.execute(sql, (dest, now_ms, now_ms, now_ms, unique)).rowcount)
        )

    def replay_dead(
        self,
        now_ms: int,
        dest: str | None = None,
        event_ids: Sequence[str] | None = None,
        reason: str | None = None,
    ) -> int:
        sql = (
            "UPDATE outbox SET state = 'pending', attempts = 0, enqueued_ms = %s, next_ms = %s, updated_ms = %s"
            " WHERE state = 'dead'"
        )
        args: list[Any] = [now_ms, now_ms, now_ms]
        if dest is not None:
            sql += " AND dest = %s"
            args.append(dest)
        if reason is not None:
            sql += " AND COALESCE(reason, '') = %s"
            args.append(reason)
        if event_ids:
            sql += " AND seq IN (SELECT seq FROM event_ids WHERE id = ANY(%s))"
            args.append(list(event_ids))
        return int(self.run(lambda conn: conn.raw.execute(sql, args).rowcount))
