"""The store's interface: what every module above `store/` may ask of it, whichever database it is.

Two kinds of names make it up. The methods of `Store` below are the log and the outboxes (append,
claim, settle, replay, counts …): each backend's own code, because that is where backends differ
(group commit, locking). The named functions of `store.audiences` (audience state),
`store.experiments` (holdouts, cursors, the lift's inputs), `store.console` (the console's reads) and
`store.memory` (what a destination last sent) hand their SQL to `Store.run` / `Store.read` as jobs
over a `Connection`; `store.scans` is the full recompute's reads, opened in worker processes from a
`ScanTarget`; `store.identity` keeps the identity graph in a SQLite file of its own beside the log.

`run`, `write`, `read` and `reader` exist for those modules: nothing above `store/` passes SQL or
touches a connection (tests/test_layering.py fails if it does), so nothing above `store/` knows
which database it runs on (DESIGN.md, "Storage"; issue 11).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from loopwire.model import Event

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]
STATES = ("pending", "in_flight", "delivered", "dead", "skipped")

# SQLite's `events_user` is keyed first by the part of the log an event is in, `seq >> PART_BITS`
# (migration 14, which spells the 20 out), so that new entries go into the newest part's leaves.
PART_BITS = 20
# The left side of a lookup of people's events by user id (`f"WHERE {BY_USER[d]} = ?"`, `… IN (…)`)
# that seeks `events_user`: on SQLite once per part, from the first seq's to the last's; PostgreSQL's
# log is partitioned by seq, each partition with its own (user_id, time_ms) index.
BY_USER: dict[Dialect, str] = {
    "sqlite": f"(seq >> {PART_BITS}) IN (WITH RECURSIVE part(n) AS (SELECT (SELECT MIN(seq) FROM events)"
    f" >> {PART_BITS} UNION ALL SELECT n + 1 FROM part WHERE n < (SELECT MAX(seq) FROM events) >> {PART_BITS})"
    " SELECT n FROM part) AND user_id",
    "postgres": "user_id",
}


def newest_seqs(dialect: Dialect) -> str:
    """The seqs of a person's newest events (parameters: user id, how many), from the index alone:
    for a `WHERE seq IN (…)`, so that only those rows are read, however long the history."""
    return f"SELECT seq FROM events WHERE {BY_USER[dialect]} = ? ORDER BY time_ms DESC, seq DESC LIMIT ?"


class Footprint(msgspec.Struct, frozen=True):
    """The store on disk: the file, its WAL, and how much of them is free pages (freed by deletes
    and not yet given back to the file system)."""

    file_bytes: int
    wal_bytes: int
    free_bytes: int
    # Free pages are given back after each retention run: new stores are made so (migration 11's
    # release); an older one until `loopwire vacuum` (docs/operations.md#retention).
    incremental_vacuum: bool


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
    code: str = ""  # the reason's code, for metrics only (loopwire.metrics.REASON_CODES); not stored


class Cursor(Protocol):
    """The part of a DB-API cursor the store's modules use (sqlite3's, or psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a job of the store's modules runs its SQL on: `?` placeholders, in a transaction the
    store opened (a write) or on committed data (a read)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class Reader(Connection, Protocol):
    """A read connection of its own (for a reader that must never queue behind the others)."""

    def close(self) -> None: ...


class ScanTarget(NamedTuple):
    """Where a process of its own (a recompute worker) opens the log to scan it: picklable, and a
    secret in the case of a DSN (never logged)."""

    dialect: Dialect
    where: str  # a SQLite file, or a PostgreSQL connection string


class Store(Protocol):
    """The durable log, the per-destination outboxes, and what is kept beside them."""

    @property
    def dialect(self) -> Dialect: ...

    # Where it is, for messages and for files kept beside it: a SQLite path, or a PostgreSQL
    # database named without its credentials.
    path: str
    # files kept beside the log and closed with it (the identity graph, store/identity.py)
    companions: dict[str, Any]
    commits: int  # transactions committed (each one durable)

    @property
    def recovered(self) -> int:
        """Outbox rows that were in flight when the previous process stopped."""
        ...

    def close(self) -> None: ...

    # -- the log --------------------------------------------------------------------------------
    async def append(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]:
        """Commit events to the log and enqueue each for its destinations; True where new. Returns
        only once the commit is durable (group commit across concurrent callers)."""
        ...

    def append_sync(self, events: Sequence[Event], routes: Sequence[Sequence[str]]) -> list[bool]: ...

    def event_count(self) -> int: ...

    def last_seq(self) -> int:
        """The seq of the newest event (how many were ever logged)."""
        ...

    def oldest_event_ms(self) -> int | None:
        """When the oldest event still in the log was received (None: an empty log)."""
        ...

    def size_on_disk(self) -> Footprint: ...

    def scan_events(self, since_ms: int, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, encoded Event) of logged events that happened at or after `since_ms`, in log order."""
        ...

    def scan_target(self) -> ScanTarget: ...

    def lead(self, role: str) -> bool:
        """Whether this process is the one that does `role` (the audience engine follows the log
        once, not once per node). Once true it stays true while the store is open; a node that
        stops or dies hands it on to the next to ask."""
        ...

    # -- outboxes -------------------------------------------------------------------------------
    async def claim(self, dest: str, limit: int, now_ms: int) -> list[Claimed]:
        """Up to `limit` due rows of `dest`, oldest due first, now in flight (no other claim, in
        this process or another, gets them until they are settled)."""
        ...

    async def settle(self, dest: str, settlements: Iterable[Settlement], now_ms: int) -> None: ...

    async def probe(self, now_ms: int) -> None:
        """One durable write, as an append would make: raises if the store cannot take writes."""
        ...

    def next_due_ms(self, dest: str) -> int | None: ...

    def oldest_undelivered_ms(self, dests: Iterable[str] | None = None) -> dict[str, int]:
        """Per destination (`dests`, or every one with rows), when its oldest waiting row was enqueued."""
        ...

    def counts(self, dests: Iterable[str] = ()) -> dict[str, dict[str, int]]: ...

    def reasons(self, state: str) -> list[tuple[str, str, int]]: ...

    def dead_letters(self, dest: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    def requeue_in_flight(self, dest: str) -> int:
        """The rows of `dest` this process's couriers left in flight (a courier stopped: the
        destination was paused), pending again; rows in flight at other nodes are theirs."""
        ...

    def enqueue(self, dest: str, seqs: Sequence[int], now_ms: int, resend: bool) -> int: ...

    def replay_dead(
        self,
        now_ms: int,
        dest: str | None = None,
        event_ids: Sequence[str] | None = None,
        reason: str | None = None,
    ) -> int: ...

    # -- for the store's own modules (see the docstring above) ------------------------------------
    def run(self, job: Callable[[Connection], T]) -> T:
        """A write job, in its own savepoint of the writer's next transaction; returns after commit."""
        ...

    async def write(self, job: Callable[[Connection], T]) -> T: ...

    def read(self, query: Callable[[Connection], T]) -> T:
        """A read of committed data."""
        ...

    def reader(self) -> Reader: ...
