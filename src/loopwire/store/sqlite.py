"""SQLite store: WAL, fsync on every commit, and one writer thread that groups concurrent writes.

Every write is a job run by the writer thread. It takes all jobs waiting (up to `group_max`), runs
each inside its own SAVEPOINT of one transaction and commits once, so fifty concurrent webhook
requests cost one fsync, and a failing job rolls back alone. A job's future resolves only after
COMMIT returned: that is the moment a source may answer 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from loopwire.model import Event, encode_event
from loopwire.store.migrations import migrate

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
# Who waits for a job: a thread (concurrent Future) or a coroutine (its loop and asyncio Future).
Sink = Future[Any] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _settle_futures(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


STATES = ("pending", "in_flight", "delivered", "dead", "skipped")


class Claimed(msgspec.Struct, frozen=True):
    seq: int
    attempts: int  # including the one now starting
    enqueued_ms: int
    body: bytes  # the encoded Event


class Settlement(msgspec.Struct, frozen=True):
    seq: int
    state: str  # delivered | pending | dead | skipped
    next_ms: int = 0
    reason: str | None = None
    response: str | None = None


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: in WAL mode the log is fsync'd at every commit, so a committed event survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
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
        self._conn = conn
        # Reads go to a connection of their own (WAL: they see committed data and never wait for,
        # nor delay, the writer).
        self._reader = connect(self.path)
        self._read_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Job, Sink] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="loopwire-store-writer", daemon=True)
        self._thread.start()
        self.commits = 0  # transactions committed (each one fsync)

    @property
    def recovered(self) -> int:
        """Outbox rows that were in flight when the previous process stopped."""
        return self._recovered

    # -- the writer thread -------------------------------------------------------------------
    def _writer(self) -> None:
        conn = self._conn
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._group_max:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_group(conn, batch)
            if stop:
                return

    def _run_group(self, conn: sqlite3.Connection, batch: list[tuple[Job, Sink]]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            appends = [job for job, _ in batch if isinstance(job, _Append)]
            merged = iter(_append_many(conn, appends)) if appends else iter(())
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
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed (disk full, I/O error): nobody is durable
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(batch)
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

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._conn.close()
        self._reader.close()

    # -- the log -------------------------------------------------------------------------------
    async def append(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        """Commit events to the log and enqueue each for its destinations; True where new."""
        return await self.write(_append_job(events, routes))

    def append_sync(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        return self.run(_append_job(events, routes))

    # -- outboxes ------------------------------------------------------------------------------
    async def claim(self, dest: str, limit: int, now_ms: int) -> list[Claimed]:
        return await self.write(_claim_job(dest, limit, now_ms))

    async def settle(self, dest: str, settlements: Iterable[Settlement], now_ms: int) -> None:
        rows = list(settlements)
        if rows:
            await self.write(_settle_job(dest, rows, now_ms))

    def next_due_ms(self, dest: str) -> int | None:
        due: int | None = self.read(
            lambda c: c.execute(
                "SELECT MIN(next_ms) FROM outbox WHERE dest = ? AND state = 'pending'", (dest,)
            ).fetchone()[0]
        )
        return due

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per state, per destination."""
        rows = self.read(
            lambda c: c.execute("SELECT dest, state, COUNT(*) FROM outbox GROUP BY dest, state").fetchall()
        )
        result: dict[str, dict[str, int]] = {}
        for dest, state, count in rows:
            result.setdefault(dest, dict.fromkeys(STATES, 0))[state] = count
        return result

    def reasons(self, state: str) -> list[tuple[str, str, int]]:
        """(destination, reason, count) for dead or skipped rows, most frequent first."""
        return self.read(
            lambda c: c.execute(
                "SELECT dest, COALESCE(reason, ''), COUNT(*) AS n FROM outbox WHERE state = ?"
                " GROUP BY dest, reason ORDER BY n DESC",
                (state,),
            ).fetchall()
        )

    def event_count(self) -> int:
        return int(self.read(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0]))

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
            before = conn.total_changes
            conn.executemany(sql, rows)
            return conn.total_changes - before

        return self.run(job)

    def replay_dead(
        self, now_ms: int, dest: str | None = None, event_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead letters back to pending with fresh attempts and age; returns how many."""

        def job(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE outbox SET state = 'pending', attempts = 0, enqueued_ms = ?, next_ms = ?, updated_ms = ?"
                " WHERE state = 'dead'"
            )
            args: list[Any] = [now_ms, now_ms, now_ms]
            if dest is not None:
                sql += " AND dest = ?"
                args.append(dest)
            if event_ids:
                sql += f" AND seq IN (SELECT seq FROM events WHERE id IN ({','.join('?' * len(event_ids))}))"
                args.extend(event_ids)
            return int(conn.execute(sql, args).rowcount)

        return self.run(job)


class SentMemory:
    """A destination's memory of what it last sent per key (a person, say): `recall` reads it (sync, from
    a read connection, cheap), `remember` writes it after the destination confirmed delivery."""

    def __init__(self, store: Store, dest: str) -> None:
        self._store = store
        self._dest = dest
        self._reader = connect(store.path)
        self._lock = threading.Lock()

    def recall(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._reader.execute(
                "SELECT value FROM sent_state WHERE dest = ? AND key = ?", (self._dest, key)
            ).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = msgspec.json.decode(row[0])
        return value

    async def remember(self, items: dict[str, dict[str, Any]], now_ms: int) -> None:
        if not items:
            return
        rows = [(self._dest, key, msgspec.json.encode(value), now_ms) for key, value in items.items()]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO sent_state (dest, key, value, updated_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (dest, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                rows,
            )

        await self._store.write(job)

    def close(self) -> None:
        self._reader.close()


_EVENT_COLUMNS = "(id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body)"
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ROWS_PER_INSERT = 400  # 4,000 bound values per statement, well under SQLite's limit


class _Append:
    """An append job. The writer merges every append waiting in a group into one multi-row INSERT
    per 400 events and one outbox insert: a burst of webhooks costs a few statements, not two each."""

    cannot_fail = True  # only an I/O error can fail these statements, and that fails the group anyway

    def __init__(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> None:
        self.events = events
        self.routes = routes
        # The row values are built here, on the caller's thread, so the writer thread spends its
        # time in SQLite (which lets go of the GIL) rather than in Python.
        self.params: list[Any] = []
        for e in events:
            self.params += (
                e.id,
                e.source,
                e.kind,
                e.channel,
                e.metric,
                e.name,
                e.user_id,
                e.time_ms,
                e.received_ms,
            )
            self.params.append(encode_event(e))

    def __call__(self, conn: sqlite3.Connection) -> list[bool]:
        return _append_many(conn, [self])[0]


def _append_many(conn: sqlite3.Connection, appends: Sequence[_Append]) -> list[list[bool]]:
    params = [value for append in appends for value in append.params]
    width = len(params) // 10 if params else 0
    inserted: dict[str, int] = {}
    for start in range(0, width, _ROWS_PER_INSERT):
        count = min(_ROWS_PER_INSERT, width - start)
        rows = conn.execute(
            f"INSERT INTO events {_EVENT_COLUMNS} VALUES {','.join([_EVENT_ROW] * count)}"
            " ON CONFLICT (id) DO NOTHING RETURNING seq, id",
            params[start * 10 : (start + count) * 10],
        ).fetchall()
        inserted.update((ident, seq) for seq, ident in rows)
    outbox: list[tuple[str, int, int, int, int]] = []
    results: list[list[bool]] = []
    for append in appends:
        fresh: list[bool] = []
        for event, dests in zip(append.events, append.routes, strict=True):
            seq = inserted.pop(event.id, None)  # popped: a second copy in the same group is a duplicate
            fresh.append(seq is not None)
            if seq is not None:
                now = event.received_ms
                outbox.extend((dest, seq, now, now, now) for dest in dests)
        results.append(fresh)
    if outbox:
        conn.executemany(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms) VALUES (?, ?, 'pending', ?, ?, ?)",
            outbox,
        )
    return results


def _append_job(events: Sequence[Event], routes: Sequence[Sequence[str]]) -> _Append:
    return _Append(events, routes)


def _claim_job(dest: str, limit: int, now_ms: int) -> Callable[[sqlite3.Connection], list[Claimed]]:
    def job(conn: sqlite3.Connection) -> list[Claimed]:
        rows = conn.execute(
            "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1, updated_ms = ?"
            " WHERE dest = ? AND seq IN (SELECT seq FROM outbox WHERE dest = ? AND state = 'pending'"
            " AND next_ms <= ? ORDER BY next_ms, seq LIMIT ?)"
            " RETURNING seq, attempts, enqueued_ms",
            (now_ms, dest, dest, now_ms, limit),
        ).fetchall()
        if not rows:
            return []
        rows.sort()
        bodies = dict(
            conn.execute(
                f"SELECT seq, body FROM events WHERE seq IN ({','.join('?' * len(rows))})",
                [row[0] for row in rows],
            ).fetchall()
        )
        return [Claimed(seq, attempts, enqueued, bodies[seq]) for seq, attempts, enqueued in rows]

    return job


def _settle_job(dest: str, rows: list[Settlement], now_ms: int) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "UPDATE outbox SET state = ?, next_ms = ?, updated_ms = ?, reason = ?, response = ?"
            " WHERE dest = ? AND seq = ?",
            [(r.state, r.next_ms, now_ms, r.reason, r.response, dest, r.seq) for r in rows],
        )

    return job
