"""SQLite store: WAL, fsync on every commit, and one writer thread that groups concurrent writes.

Every write is a job run by the writer thread. It takes all jobs waiting (up to `group_max`), runs
each inside its own SAVEPOINT of one transaction and commits once, so fifty concurrent webhook
requests cost one fsync, and a failing job rolls back alone. A job's future resolves only after
COMMIT returned: that is the moment a source may answer 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from itertools import chain
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from loopwire.model import Event, encode_event
from loopwire.store.base import STATES, Claimed, Footprint, ScanTarget, Settlement
from loopwire.store.migrations import migrate

log = logging.getLogger("loopwire.store")
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
# Who waits for a job: a thread (concurrent Future) or a coroutine (its loop and asyncio Future).
Sink = Future[Any] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _fail_all(batch: list[tuple[Any, Sink]], exc: Exception) -> None:
    for _, sink in batch:
        if isinstance(sink, Future):
            if not sink.done():
                sink.set_exception(exc)
        else:
            loop, future = sink
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_futures, [(future, False, exc)])


def _settle_futures(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():  # cancelled by its waiter, or already failed
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# The destinations with outbox rows, one B-tree descent each (a skip-scan over the primary key)
# rather than a scan of every row as `SELECT DISTINCT dest` would be.
_DESTS_SQL = """
WITH RECURSIVE d(dest) AS (
    SELECT MIN(dest) FROM outbox
    UNION ALL
    SELECT (SELECT MIN(dest) FROM outbox WHERE dest > d.dest) FROM d WHERE d.dest IS NOT NULL
)
SELECT dest FROM d WHERE dest IS NOT NULL
"""


BUSY_TIMEOUT_S = 30.0  # how long a writer waits for the other writer before its write fails
_BUSY_POLL_S = 0.0001


def _locked(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    """`BEGIN IMMEDIATE` (or a write in autocommit) once the write lock is free. The serving process
    has two writers, the `Store`'s thread and the ingest process's `Appender`; SQLite's own busy
    handler would sleep 1, 2, 5, 10 … ms at a time when the other one holds the lock for well under
    one, so the writers' connections turn it off (`busy_timeout=0`) and poll every 0.1 ms here. A
    failed attempt has written nothing, so it is simply made again."""
    return when_unlocked(lambda: conn.execute(sql, params))


def when_unlocked(write: Callable[[], T]) -> T:
    """Make `write` (one statement or script in autocommit) once the write lock is free (`_locked`)."""
    deadline = 0.0
    while True:
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            now = time.monotonic()
            deadline = deadline or now + BUSY_TIMEOUT_S
            if now > deadline:
                raise
            time.sleep(_BUSY_POLL_S)


_warned: set[str] = set()


def _private(path: str) -> None:
    """The log holds emails: create it readable by its owner only. SQLite gives the -wal and -shm
    files it creates beside it the mode of the database file. An existing file that others can read
    is left as it is (it is the operator's), with a warning saying how to fix it."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if os.stat(path).st_mode & 0o077 and path not in _warned:
            _warned.add(path)
            log.warning(
                "the store %s can be read by other users; `chmod 600` it and its -wal/-shm files", path
            )


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after a failed write. On a full disk or an I/O error the ROLLBACK itself may fail;
    the writer must go on (the next write reports its own error), so that failure is only logged."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.error("could not roll back a failed write: %s", exc)


T_Job = TypeVar("T_Job")


def take_group(jobs: queue.SimpleQueue[T_Job | None], most: int) -> tuple[list[T_Job], bool] | None:
    """A writer's next group: the first job waited for, then whatever else is queued, up to `most`.
    None: told to stop with nothing to do; (group, True): do this group, then stop."""
    first = jobs.get()
    if first is None:
        return None
    group = [first]
    while len(group) < most:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return group, True
        group.append(item)
    return group, False


def connect(path: str | Path) -> sqlite3.Connection:
    _private(str(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        # A new file: pages that retention frees go back to the file system at once
        # (`PRAGMA incremental_vacuum`). It can only be chosen before the first table, or (later)
        # with a VACUUM of the whole file: `loopwire vacuum` (docs/operations.md#retention).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: in WAL mode the log is fsync'd at every commit, so a committed event survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
    """The embedded store (`loopwire.store.base.Store`): one SQLite file in WAL mode."""

    @property
    def dialect(self) -> Literal["sqlite"]:
        return "sqlite"

    def __init__(self, path: str | Path, group_max: int = 512, *, recover: bool = True) -> None:
        """Open (creating and migrating) the store. Only the serving process recovers: a CLI
        command opened beside a running server passes `recover=False`."""
        self.path = str(path)
        self._group_max = group_max
        conn = connect(self.path)
        migrate(conn)
        self._recovered = 0
        if recover:  # in flight when the last process stopped: send again (insert ids make it idempotent)
            self._recovered = conn.execute(
                "UPDATE outbox SET state = 'pending' WHERE state = 'in_flight'"
            ).rowcount
        conn.execute("PRAGMA busy_timeout=0")  # from here on, writes wait in `_locked`
        self._conn = conn
        # Reads go to a connection of their own (WAL: they see committed data and never wait for,
        # nor delay, the writer).
        self._reader = connect(self.path)
        self._read_lock = threading.Lock()
        self._duplicates = _prepare_ingest(conn)
        self._jobs: queue.SimpleQueue[tuple[Job | _Append | _Alone, Sink] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="loopwire-store-writer", daemon=True)
        self._thread.start()
        self.commits = 0  # transactions committed (each one fsync)
        # files kept beside the log and closed with it (the identity graph, store/identity.py)
        self.companions: dict[str, Any] = {}

    @property
    def recovered(self) -> int:
        """Outbox rows that were in flight when the previous process stopped."""
        return self._recovered

    # -- the writer thread -------------------------------------------------------------------
    def _writer(self) -> None:
        conn = self._conn
        while True:
            taken = take_group(self._jobs, self._group_max)
            if taken is None:
                return
            batch, stop = taken
            alone: list[tuple[_Alone, Sink]] = []
            group: list[tuple[Job | _Append, Sink]] = []
            for work, sink in batch:
                if isinstance(work, _Alone):
                    alone.append((work, sink))
                else:
                    group.append((work, sink))
            try:
                if group:
                    self._run_group(conn, group)
            except Exception as exc:  # a defect: the writer must outlive it, and nobody wait forever
                log.exception("the store writer failed on a group of %d writes", len(group))
                _fail_all(group, exc)
            for lone, waiter in alone:
                _run_alone(conn, lone, waiter)
            if stop:
                return

    def _run_group(self, conn: sqlite3.Connection, batch: list[tuple[Job | _Append, Sink]]) -> None:
        results: list[tuple[bool, Any]] = []
        appends = [job for job, _ in batch if isinstance(job, _Append)]
        try:
            # A few appends alone need no BEGIN and no COMMIT of their own: in autocommit the INSERT
            # into the ingest view is its own transaction, fsync'd before it returns, and the writer
            # makes one call into SQLite (one GIL hand-off) for the whole group.
            if len(appends) < len(batch) or _rows(appends) > _VIEW_MAX_ROWS:
                _locked(conn, "BEGIN IMMEDIATE")
            merged = iter(_append(conn, appends, self._duplicates))
            for job, _ in batch:
                if isinstance(job, _Append):
                    results.append((True, next(merged)))
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job(conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((False, exc))
            if conn.in_transaction:
                conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed (disk full, I/O error): nobody is durable
            _rollback(conn)
            if len(batch) > 1:  # one job may be what failed: each alone, so it fails by itself
                for item in batch:
                    self._run_group(conn, [item])
                return
            results = [(False, exc)]
        # Waiters on an event loop are woken with one call per loop per group, not one per job.
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
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle_futures, items)

    async def write_alone(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """A write the writer makes by itself in autocommit, after the group it arrives with, for
        what cannot run inside a transaction of Python's sqlite3: a script, such as `PRAGMA
        incremental_vacuum(N)`, which frees one page per step where `execute` makes one step
        (`executescript` runs it to the end, and would commit a group's transaction first). The
        job takes the write lock itself, through `when_unlocked`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((_Alone(job), (loop, future)))
        return await future

    async def write_unenforced(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """A write in one transaction of its own with foreign keys not enforced, for deleting
        events: the outbox is keyed by destination, then seq, so SQLite could only look for the
        rows referencing an event by scanning the whole outbox, once per event deleted. The job
        checks them itself, by key, in the same transaction (store/retention.py)."""

        def alone(conn: sqlite3.Connection) -> T:
            conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before BEGIN
            try:
                _locked(conn, "BEGIN IMMEDIATE")
                try:
                    result = job(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                conn.execute("PRAGMA foreign_keys=ON")
            self.commits += 1
            return result

        return await self.write_alone(alone)

    def vacuum(self) -> None:
        """`loopwire vacuum`: rewrite the file with `auto_vacuum=INCREMENTAL` (a store made before
        migration 11 has `none`, which only a VACUUM can change) and checkpoint the WAL into it."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            when_unlocked(lambda: conn.execute("VACUUM"))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        future: Future[None] = Future()
        self._jobs.put((_Alone(job), future))
        future.result()

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, (loop, future)))
        return await future

    def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Synchronous write, for the CLI and tests."""
        return self.submit(job).result()

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """A read on the read connection (committed data only)."""
        with self._read_lock:
            return query(self._reader)

    def reader(self) -> sqlite3.Connection:
        """A read connection of its own (WAL: it never waits for the writer)."""
        return connect(self.path)

    def scan_target(self) -> ScanTarget:
        return ScanTarget("sqlite", self.path)

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._conn.close()
        self._reader.close()
        for companion in self.companions.values():
            companion.close()
        self.companions.clear()

    # -- the log -------------------------------------------------------------------------------
    async def append(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        """Commit events to the log and enqueue each for its destinations; True where new."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._jobs.put((_Append(events, routes), (loop, future)))
        return await future

    def append_sync(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        future: Future[list[bool]] = Future()
        self._jobs.put((_Append(events, routes), future))
        return future.result()

    # -- outboxes ------------------------------------------------------------------------------
    async def claim(self, dest: str, limit: int, now_ms: int) -> list[Claimed]:
        return await self.write(_claim_job(dest, limit, now_ms))

    async def settle(self, dest: str, settlements: Iterable[Settlement], now_ms: int) -> None:
        rows = list(settlements)
        if rows:
            await self.write(_settle_job(dest, rows, now_ms))

    async def probe(self, now_ms: int) -> None:
        """One durable write through the writer, as an append would make: raises if the store cannot
        take writes (disk full, read-only, I/O error)."""
        await self.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO ready_probe (id, at_ms) VALUES (1, ?)", (now_ms,)
            )
        )

    def oldest_undelivered_ms(self, dests: Iterable[str] | None = None) -> dict[str, int]:
        """Per destination (`dests`, or every one with rows), when its oldest pending or in-flight
        row was enqueued: one descent of `outbox_waiting` (migration 12) per destination."""

        def query(conn: sqlite3.Connection) -> dict[str, int]:
            names = list(dests) if dests is not None else [d for (d,) in conn.execute(_DESTS_SQL)]
            found: dict[str, int] = {}
            for dest in names:
                (oldest,) = conn.execute(
                    "SELECT MIN(enqueued_ms) FROM outbox INDEXED BY outbox_waiting"
                    " WHERE dest = ? AND state IN ('pending', 'in_flight')",
                    (dest,),
                ).fetchone()
                if oldest is not None:
                    found[dest] = int(oldest)
            return found

        return self.read(query)

    def next_due_ms(self, dest: str) -> int | None:
        due: int | None = self.read(
            lambda c: c.execute(
                "SELECT MIN(next_ms) FROM outbox WHERE dest = ? AND state = 'pending'", (dest,)
            ).fetchone()[0]
        )
        return due

    def counts(self, dests: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """Rows per state, per destination with rows (and each of `dests`). Final states come from
        `outbox_tally`; pending and in-flight rows are counted through `outbox_ready`, so the cost
        is the size of the backlog, not of the log."""

        def query(c: sqlite3.Connection) -> dict[str, dict[str, int]]:
            result: dict[str, dict[str, int]] = {dest: dict.fromkeys(STATES, 0) for dest in dests}
            for (dest,) in c.execute(_DESTS_SQL):
                result.setdefault(dest, dict.fromkeys(STATES, 0))
            for dest, state, count in c.execute(
                "SELECT dest, state, SUM(n) FROM outbox_tally GROUP BY dest, state"
            ).fetchall():
                result.setdefault(dest, dict.fromkeys(STATES, 0))[state] = count
            for states_of, states in result.items():
                for state in ("pending", "in_flight"):
                    states[state] = c.execute(
                        "SELECT COUNT(*) FROM outbox WHERE dest = ? AND state = ?", (states_of, state)
                    ).fetchone()[0]
            return result

        return self.read(query)

    def reasons(self, state: str) -> list[tuple[str, str, int]]:
        """(destination, reason, count) for dead or skipped rows, most frequent first."""
        return self.read(
            lambda c: c.execute(
                "SELECT dest, reason, n FROM outbox_tally WHERE state = ? AND n > 0 ORDER BY n DESC, dest, reason",
                (state,),
            ).fetchall()
        )

    def last_seq(self) -> int:
        """The seq of the newest event: how many were ever logged. `seq` is a rowid without
        AUTOINCREMENT (max + 1, reused after a rollback), and retention never deletes the newest
        event (store/retention.py), so no seq is ever given out twice."""
        return int(self.read(lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]))

    def event_count(self) -> int:
        """Events in the log now: every seq up to the newest was taken by one event, and the only
        deletes are retention's, counted in `retention_tally` (migration 11) in the same
        transaction; so two B-tree descents instead of a count of every row."""

        def query(c: sqlite3.Connection) -> int:
            (last,) = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            (trimmed,) = c.execute(
                "SELECT COALESCE(SUM(n), 0) FROM retention_tally WHERE kind = 'events'"
            ).fetchone()
            return int(last - trimmed)

        return self.read(query)

    def oldest_event_ms(self) -> int | None:
        """When the oldest event still in the log was received: the first row by primary key."""
        row = self.read(lambda c: c.execute("SELECT received_ms FROM events ORDER BY seq LIMIT 1").fetchone())
        return None if row is None else int(row[0])

    def size_on_disk(self) -> Footprint:
        """Two stats and three pragmas, whatever the size of the log."""

        def size(path: str) -> int:
            try:
                return os.stat(path).st_size
            except OSError:  # no WAL (yet), or an in-memory store
                return 0

        def pragmas(c: sqlite3.Connection) -> list[int]:
            return [
                int(c.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("freelist_count", "page_size", "auto_vacuum")
            ]

        free, page, auto_vacuum = self.read(pragmas)
        return Footprint(size(self.path), size(f"{self.path}-wal"), free * page, auto_vacuum == 2)

    def dead_letters(self, dest: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT o.dest, e.id, e.channel, e.metric, e.name, o.attempts, o.updated_ms, o.reason, o.response"
            " FROM outbox o JOIN events e ON e.seq = o.seq WHERE o.state = 'dead'"
        )
        args: tuple[Any, ...] = ()
        if dest is not None:
            sql += " AND o.dest = ?"
            args = (dest,)
        sql += " ORDER BY o.updated_ms DESC LIMIT ?"
        rows = self.read(lambda c: c.execute(sql, (*args, limit)).fetchall())
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
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def scan_events(self, since_ms: int, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, encoded Event) of logged events that happened at or after `since_ms`, in log order."""
        rows: list[tuple[int, bytes]] = self.read(
            lambda c: c.execute(
                "SELECT seq, body FROM events WHERE seq > ? AND time_ms >= ? ORDER BY seq LIMIT ?",
                (after_seq, since_ms, limit),
            ).fetchall()
        )
        return rows

    def lead(self, role: str) -> bool:
        return True  # one server per SQLite file

    def requeue_in_flight(self, dest: str) -> int:
        # one process sends from a SQLite store: every row in flight is this one's
        return int(
            self.run(
                lambda c: (
                    c.execute(
                        "UPDATE outbox SET state = 'pending' WHERE dest = ? AND state = 'in_flight'", (dest,)
                    ).rowcount
                )
            )
        )

    def enqueue(self, dest: str, seqs: Sequence[int], now_ms: int, resend: bool) -> int:
        """Put logged events into a destination's outbox (backfill). Rows already there are left as
        they are unless `resend`, which makes them pending again with fresh attempts."""

        def job(conn: sqlite3.Connection) -> int:
            rows = [(dest, seq, now_ms, now_ms, now_ms) for seq in seqs]
            sql = "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms) VALUES (?, ?, 'pending', ?, ?, ?)"
            if resend:
                sql += (
                    " ON CONFLICT (dest, seq) DO UPDATE SET state = 'pending', attempts = 0,"
                    " enqueued_ms = excluded.enqueued_ms, next_ms = excluded.next_ms, updated_ms = excluded.updated_ms"
                    " WHERE state != 'in_flight'"
                )
            else:
                sql += " ON CONFLICT (dest, seq) DO NOTHING"
            return conn.executemany(sql, rows).rowcount  # rows changed, not counting triggers

        return self.run(job)

    def replay_dead(
        self,
        now_ms: int,
        dest: str | None = None,
        event_ids: Sequence[str] | None = None,
        reason: str | None = None,
    ) -> int:
        """Move dead letters (of `dest`, among `event_ids`, with `reason`) back to pending with fresh
        attempts and age; returns how many."""

        def job(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE outbox SET state = 'pending', attempts = 0, enqueued_ms = ?, next_ms = ?, updated_ms = ?"
                " WHERE state = 'dead'"
            )
            args: list[Any] = [now_ms, now_ms, now_ms]
            if dest is not None:
                sql += " AND dest = ?"
                args.append(dest)
            if reason is not None:
                sql += " AND COALESCE(reason, '') = ?"
                args.append(reason)
            if event_ids:
                sql += f" AND seq IN (SELECT seq FROM events WHERE id IN ({','.join('?' * len(event_ids))}))"
                args.extend(event_ids)
            return int(conn.execute(sql, args).rowcount)

        return self.run(job)


_HEAD = msgspec.json.Encoder().encode
_EVENT_INSERT = "INSERT INTO events (id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body) VALUES "
_OUTBOX_INSERT = "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms) VALUES "
_ROWS_PER_INSERT = 3_000  # 30,000 bound values: one statement for most groups (SQLite allows 32,766)

# Appends reach the log in one of two ways, both one multi-row statement per table, nothing fetched:
#
# - A group of up to `_VIEW_MAX_ROWS` events (webhooks arrive one per request) is one INSERT into the
#   `ingest` view below, which writes each event and, only if it is new, its outbox rows. Alone in a
#   group it runs in autocommit: one call into SQLite for the whole commit. Each call lets go of the
#   GIL and waits for the event loop to hand it back, so that is what keeps a commit short under load.
# - A bigger group (batched inputs) is one INSERT into `events` and one into `outbox` inside BEGIN
#   … COMMIT: the view's trigger costs 4–6 µs more per event, more than the two hand-offs it saves.
#
# In the view's trigger, `changes()` is the row count of the body's last INSERT: 1 if the event was
# inserted, 0 if its id was already in the log (or earlier in the same statement). A duplicate is
# reported through `loopwire_duplicate(id)`, a Python function that runs (and takes the GIL) only then.
# The outbox has no rowid, so `last_insert_rowid()` is still the new event's seq during its inserts.
# The view and trigger are TEMP objects of the writer's connection: nothing in the file changes.
_VIEW_MAX_ROWS = 128
_INGEST_SQL = """
CREATE TEMP VIEW ingest AS
    SELECT id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body, '[]' AS dests
    FROM events;
CREATE TEMP TRIGGER ingest_row INSTEAD OF INSERT ON ingest BEGIN
    INSERT INTO events (id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body)
        VALUES (NEW.id, NEW.source, NEW.kind, NEW.channel, NEW.metric, NEW.name, NEW.user_id,
                NEW.time_ms, NEW.received_ms, NEW.body)
        ON CONFLICT (id) DO NOTHING;
    SELECT loopwire_duplicate(NEW.id) WHERE changes() = 0;
    INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)
        SELECT value, last_insert_rowid(), 'pending', NEW.received_ms, NEW.received_ms, NEW.received_ms
        FROM json_each(NEW.dests) WHERE changes() = 1;
END;
"""
_DESTS: dict[tuple[str, ...], str] = {}  # a route's destinations as JSON text, by route


def _prepare_ingest(conn: sqlite3.Connection) -> list[str]:
    """Make the ingest view on the writer's connection; the list it returns collects the ids of the
    duplicates an INSERT into it finds."""
    duplicates: list[str] = []
    conn.create_function("loopwire_duplicate", 1, duplicates.append)
    conn.executescript(_INGEST_SQL)
    return duplicates


def _dests_json(dests: Sequence[str]) -> str:
    key = tuple(dests)
    found = _DESTS.get(key)
    if found is None:
        found = _DESTS[key] = _HEAD(list(key)).decode()
    return found


def _rows_per_insert(conn: sqlite3.Connection) -> int:
    """Rows of 10 values per statement, within this SQLite build's limit of bound values."""
    return max(1, min(_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 10))


def _rows_sql(head: str, row: str, count: int, tail: str = "") -> str:
    return head + ",".join([row] * count) + tail


class _Alone:
    """A job the writer runs by itself, outside any transaction (`Store.write_alone`)."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


def _run_alone(conn: sqlite3.Connection, alone: _Alone, sink: Sink) -> None:
    try:
        ok, value = True, alone.job(conn)
    except Exception as exc:
        _rollback(conn)
        ok, value = False, exc
    if isinstance(sink, Future):
        if ok:
            sink.set_result(value)
        else:
            sink.set_exception(value)
    else:
        loop, future = sink
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_futures, [(future, ok, value)])


class _Append:
    """An append job: the writer merges every append waiting in a group into a statement or two (see
    above). The row values are built here, on the caller's thread, so the writer thread spends its
    time in SQLite (which lets go of the GIL) rather than in Python."""

    def __init__(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> None:
        self.ids = [e.id for e in events]
        self.routes = routes
        self.received = [e.received_ms for e in events]
        self.params: list[Any] = []
        for e in events:
            self.params += (e.id, e.source, e.kind, e.channel, e.metric, e.name, e.user_id, e.time_ms)
            self.params += (e.received_ms, encode_event(e))


def _rows(appends: Sequence[_Append]) -> int:
    return sum(len(append.ids) for append in appends)


def _append(conn: sqlite3.Connection, appends: Sequence[_Append], duplicates: list[str]) -> list[list[bool]]:
    """Append (inside the caller's transaction, or alone in autocommit through the view); per
    append, True where the event is new."""
    if _rows(appends) <= _VIEW_MAX_ROWS:
        return _append_by_view(conn, appends, duplicates)
    return _append_many(conn, appends)


class Appender:
    """Appends to the log of `path` from another process than the `Store`'s, in the calling thread:
    the ingest process of `loopwire serve` (loopwire/ingest_process.py) commits webhooks with it
    while the server's `Store` writes everything else. SQLite's write lock orders the two writers
    (`_locked`); each commit is fsync'd before `append` returns, as with `Store.append`."""

    def __init__(self, path: str | Path) -> None:
        self._conn = connect(path)
        self._conn.execute("PRAGMA busy_timeout=0")  # writes wait in `_locked`
        # Otherwise each group's INSERT makes SQLite create, unlink and close a temporary file (its
        # statement journal): seven system calls per commit on the webhooks' path. This connection
        # only appends groups (at most `ingest_process.GROUP_MAX` webhooks), so what it keeps in
        # memory is small; the Store's writer, which also runs VACUUM and migrations, keeps files.
        self._conn.execute("PRAGMA temp_store=MEMORY")

    def append(self, groups: Sequence[tuple[Sequence[Event], Sequence[Sequence[str]]]]) -> list[list[bool]]:
        """Commit several appends as one transaction; per append, True where the event is new. No
        other thread waits for the interpreter lock here, so the two INSERTs (cheaper per event than
        the ingest view's trigger) are the way for every group."""
        appends = [_Append(events, routes) for events, routes in groups]
        conn = self._conn
        _locked(conn, "BEGIN IMMEDIATE")
        try:
            fresh = _append_many(conn, appends)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return fresh

    def close(self) -> None:
        self._conn.close()


def _append_by_view(
    conn: sqlite3.Connection, appends: Sequence[_Append], duplicates: list[str]
) -> list[list[bool]]:
    params: list[Any] = []
    for append in appends:
        values = append.params
        for row, dests in enumerate(append.routes):
            params += values[row * 10 : row * 10 + 10]
            params.append(_dests_json(dests))
    if not params:  # appends of no events
        return [[] for _ in appends]
    duplicates.clear()
    _locked(
        conn, _rows_sql("INSERT INTO ingest VALUES ", "(?,?,?,?,?,?,?,?,?,?,?)", len(params) // 11), params
    )
    if not duplicates:  # the usual case
        return [[True] * len(append.ids) for append in appends]
    # An id reported n times was a duplicate n times. Only the first copy of an id in the group can
    # have been inserted, and it was if the id was reported fewer times than it occurs.
    reported: dict[str, int] = {}
    for ident in duplicates:
        reported[ident] = reported.get(ident, 0) + 1
    occurs: dict[str, int] = {}
    for append in appends:
        for ident in append.ids:
            occurs[ident] = occurs.get(ident, 0) + 1
    seen: set[str] = set()
    results: list[list[bool]] = []
    for append in appends:
        fresh: list[bool] = []
        for ident in append.ids:
            fresh.append(ident not in seen and reported.get(ident, 0) < occurs[ident])
            seen.add(ident)
        results.append(fresh)
    return results


def _append_many(conn: sqlite3.Connection, appends: Sequence[_Append]) -> list[list[bool]]:
    """New events take consecutive seqs (max + 1 each, in the transaction of the only writer), which
    `lastrowid` and the count of changes give."""
    params = list(chain.from_iterable(append.params for append in appends))
    submitted = len(params) // 10
    before = conn.total_changes
    last = 0
    per_insert = _rows_per_insert(conn)
    for start in range(0, submitted, per_insert):
        count = min(per_insert, submitted - start)
        sql = _rows_sql(_EVENT_INSERT, "(?,?,?,?,?,?,?,?,?,?)", count, " ON CONFLICT (id) DO NOTHING")
        last = conn.execute(sql, params[start * 10 : (start + count) * 10]).lastrowid or last
    inserted = conn.total_changes - before
    first = last - inserted + 1  # the seq of the first new event
    if inserted == submitted:  # the usual case: every event is new, in order
        seqs: list[int | None] = list(range(first, first + submitted))
    else:  # some were duplicates (of older events, or of another copy in this group)
        found = (
            dict(conn.execute("SELECT id, seq FROM events WHERE seq >= ?", (first,)).fetchall())
            if inserted
            else {}
        )
        seqs = [found.pop(ident, None) for append in appends for ident in append.ids]
    outbox: list[Any] = []
    position = 0
    results: list[list[bool]] = []
    for append in appends:
        fresh: list[bool] = []
        for dests, received in zip(append.routes, append.received, strict=True):
            seq = seqs[position]
            position += 1
            fresh.append(seq is not None)
            if seq is not None:
                for dest in dests:
                    outbox += (dest, seq, received, received, received)
        results.append(fresh)
    rows = len(outbox) // 5
    for start in range(0, rows, per_insert):
        count = min(per_insert, rows - start)
        conn.execute(
            _rows_sql(_OUTBOX_INSERT, "(?,?,'pending',?,?,?)", count), outbox[start * 5 : (start + count) * 5]
        )
    return results


# Claims and settlements, like appends, are a statement or two whatever their size: the
# claimed rows come back as one JSON value, the settled seqs go in as one.
_CLAIM_SELECT = (
    "SELECT json_group_array(json_array(o.seq, o.attempts + 1, o.enqueued_ms, json(CAST(e.body AS TEXT))))"
    " FROM (SELECT seq, attempts, enqueued_ms FROM outbox WHERE dest = ?1 AND state = 'pending'"
    " AND next_ms <= ?2 ORDER BY next_ms, seq LIMIT ?3) AS o JOIN events AS e ON e.seq = o.seq"
)
_CLAIM_UPDATE = (
    "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1, updated_ms = ?1"
    " WHERE dest = ?2 AND seq IN (SELECT value FROM json_each(?3))"
)
_SETTLE = (
    "UPDATE outbox SET state = ?1, next_ms = ?2, updated_ms = ?3, reason = ?4, response = ?5"
    " WHERE dest = ?6 AND seq IN (SELECT value FROM json_each(?7))"
)
_claimed_rows = msgspec.json.Decoder(list[tuple[int, int, int, msgspec.Raw]])


def _claim_job(dest: str, limit: int, now_ms: int) -> Callable[[sqlite3.Connection], list[Claimed]]:
    def job(conn: sqlite3.Connection) -> list[Claimed]:
        (found,) = conn.execute(_CLAIM_SELECT, (dest, now_ms, limit)).fetchone()
        rows = sorted(_claimed_rows.decode(found))
        if not rows:
            return []
        conn.execute(_CLAIM_UPDATE, (now_ms, dest, _HEAD([row[0] for row in rows]).decode()))
        return [Claimed(seq, attempts, enqueued, bytes(body)) for seq, attempts, enqueued, body in rows]

    return job


def _settle_job(dest: str, rows: list[Settlement], now_ms: int) -> Callable[[sqlite3.Connection], None]:
    # Settlements sharing an outcome (most often all of them: delivered) are one statement.
    alike: dict[tuple[str, int, str | None, str | None], list[int]] = {}
    for r in rows:
        alike.setdefault((r.state, r.next_ms, r.reason, r.response), []).append(r.seq)
    statements = [
        (state, next_ms, now_ms, reason, response, dest, _HEAD(seqs).decode())
        for (state, next_ms, reason, response), seqs in alike.items()
    ]

    def job(conn: sqlite3.Connection) -> None:
        for values in statements:
            conn.execute(_SETTLE, values)

    return job
