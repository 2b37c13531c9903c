"""The identity graph's file and its queries: the follower's lookups and its one write per batch, the
tallies the report and /metrics read, and one person's events and deliveries.

The graph lives in a SQLite file of its own beside the log (`<store>.identity`, `graph_path`), not
in the log: it is derived from the log, and its writes must not take the log's write lock or add to
its fsyncs while webhooks are being committed (they cost ingest a third of its rate when they did,
bench/identity_cost.py). Its cursor (the last log seq folded) is in the same file, written in the same
transaction as what it folded, so the two never disagree; `synchronous=NORMAL` there (atomic, not
durable at once): a power cut may lose the last batches, and the follower folds them again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from loopwire.store.base import BY_USER, Connection, Store, newest_seqs
from loopwire.store.sqlite import connect

T = TypeVar("T")
_JSON = msgspec.json.Encoder().encode
_CHUNK = 500  # identifiers per lookup statement
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE id_nodes (
    kind     TEXT NOT NULL,
    value    TEXT NOT NULL,
    person   INTEGER NOT NULL,
    partners INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX id_nodes_person ON id_nodes (person);
CREATE INDEX id_nodes_split ON id_nodes (kind, value) WHERE partners >= 2;
CREATE TABLE id_pairs (
    email   TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (email, user_id)
) WITHOUT ROWID;
CREATE INDEX id_pairs_user ON id_pairs (user_id);
CREATE TABLE id_people (
    person INTEGER PRIMARY KEY,
    mask   INTEGER NOT NULL,
    size   INTEGER NOT NULL
);
CREATE INDEX id_people_mask ON id_people (mask);
CREATE TABLE id_tally (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE id_events (
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (kind, value, seq)
) WITHOUT ROWID;
CREATE TABLE id_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE id_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
"""
# What the tables hold. `id_nodes`: every identifier, the person (connected component) it belongs
# to, and how many of the other kind it was seen with (emails of a user id, user ids of an email).
# `id_people`: per person, the kinds it carries (a bit mask) and its size. `id_tally`: people per
# mask and the split identifiers, so the report and /metrics read a few rows. `id_events`: events
# without a user id, by an identifier they carry (events with one are found through the log's
# `events_user`). `id_cursor`: the last log seq folded.


def graph_path(store_path: str) -> str:
    return f"{store_path}.identity"


def _connect(path: str) -> sqlite3.Connection:
    """Owner-only (it holds emails), WAL, 30 s busy timeout. Making a new file WAL takes a lock
    SQLite does not wait for: a second process opening it at that moment is told "locked" at once."""
    for attempt in range(50):
        try:
            return connect(path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


class Graph:
    """The graph's file: one connection, used under a lock (the follower writes a batch at a time;
    the console and /metrics read a few rows)."""

    def __init__(self, path: str) -> None:
        self.path = path
        conn = _connect(path)
        conn.execute("PRAGMA synchronous=NORMAL")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            # read again under the write lock: the follower's process and the server (a console
            # view, a scrape) may open a new file at once, and only the first may create the tables
            conn.execute("BEGIN IMMEDIATE")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in SCHEMA.split(";"):  # (executescript would commit first)
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
                version = SCHEMA_VERSION
            else:
                conn.execute("COMMIT")
        if version != SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(f"{path} has identity schema {version}, this loopwire knows {SCHEMA_VERSION}")
        self._conn = conn
        self._lock = threading.Lock()

    def read(self, query: Callable[[Connection], T]) -> T:
        with self._lock:
            return query(self._conn)

    def run(self, job: Callable[[Connection], T]) -> T:
        """One write transaction (another process's follower waits for it, then sees it)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = job(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def close(self) -> None:
        self._conn.close()


_opening = threading.Lock()


def of(store: Store) -> Graph:
    """The graph beside `store` (opened, and created, the first time it is asked for; closed with it)."""
    graph = store.companions.get("identity")
    if graph is None:
        with _opening:
            graph = store.companions.get("identity")
            if graph is None:
                # On PostgreSQL the graph is not kept yet (issue 11; config.py turns `identity.graph`
                # off there): an empty one, so a lookup falls back to the user id it is given.
                where = graph_path(store.path) if store.dialect == "sqlite" else ":memory:"
                graph = store.companions["identity"] = Graph(where)
    assert isinstance(graph, Graph)
    return graph


class Conflict(Exception):
    """The cursor moved since the batch was read: another follower folded it. Nothing was written."""


class Tally(NamedTuple):
    cursor: int  # the last log seq folded into the graph
    masks: dict[int, int]  # mask of identifier kinds → people carrying exactly those kinds
    split_emails: int  # emails seen with two or more user ids
    split_users: int  # user ids seen with two or more emails
    identifiers: dict[str, int]  # kind → distinct identifiers

    @property
    def people(self) -> int:
        return sum(self.masks.values())


class Fold(NamedTuple):
    """Everything one batch changes, written in one transaction with the cursor."""

    after: int  # the cursor the batch was read from (checked: compare and set)
    cursor: int  # the last seq of the batch
    new_nodes: list[tuple[str, str, int, int]]  # kind, value, person, partners
    partners: list[tuple[int, str, str]]  # partners, kind, value (existing nodes)
    merges: list[tuple[int, int]]  # person → the person it joins
    people: list[tuple[int, int, int]]  # person, mask, size (inserted or replaced)
    pairs: list[tuple[str, str]]  # email, user_id
    tally: dict[str, int]  # name → change
    events: list[tuple[str, str, int]]  # kind, value, seq of events without a user id
    meta: dict[str, str] | None = None


def _cursor(conn: Connection) -> int:
    row = conn.execute("SELECT seq FROM id_cursor WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def cursor(store: Store) -> int:
    return of(store).read(_cursor)


def folded_through(store_path: str) -> int | None:
    """The graph's cursor, read from its file without creating it (retention keeps what the graph
    has not folded yet): None when there is no graph file, 0 while it is being created."""
    path = Path(graph_path(store_path))
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return _cursor(conn)
    except sqlite3.Error:  # no schema yet
        return 0
    finally:
        conn.close()


def meta(store: Store) -> dict[str, str]:
    return dict(of(store).read(lambda c: c.execute("SELECT key, value FROM id_meta").fetchall()))


def read_batch(store: Store, after: int, limit: int) -> list[tuple[int, bytes]]:
    rows: list[tuple[int, bytes]] = store.read(
        lambda c: c.execute(
            "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()
    )
    return rows


def nodes(store: Store, idents: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, value) → (person, partners) of those already in the graph."""

    def query(c: Connection) -> dict[tuple[str, str], tuple[int, int]]:
        found: dict[tuple[str, str], tuple[int, int]] = {}
        for start in range(0, len(idents), _CHUNK):
            chunk = _JSON([list(i) for i in idents[start : start + _CHUNK]]).decode()
            for kind, value, person, partners in c.execute(
                "SELECT n.kind, n.value, n.person, n.partners FROM json_each(?) AS j"
                " JOIN id_nodes AS n ON n.kind = j.value ->> 0 AND n.value = j.value ->> 1",
                (chunk,),
            ):
                found[(kind, value)] = (person, partners)
        return found

    return of(store).read(query)


def people(store: Store, persons: Sequence[int]) -> dict[int, tuple[int, int]]:
    """person → (mask, size)."""

    def query(c: Connection) -> dict[int, tuple[int, int]]:
        found: dict[int, tuple[int, int]] = {}
        for start in range(0, len(persons), _CHUNK):
            chunk = _JSON(list(persons[start : start + _CHUNK])).decode()
            for person, mask, size in c.execute(
                "SELECT person, mask, size FROM id_people WHERE person IN (SELECT value FROM json_each(?))",
                (chunk,),
            ):
                found[person] = (mask, size)
        return found

    return of(store).read(query)


def known_pairs(store: Store, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    def query(c: Connection) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for start in range(0, len(pairs), _CHUNK):
            chunk = _JSON([list(p) for p in pairs[start : start + _CHUNK]]).decode()
            for email, user_id in c.execute(
                "SELECT p.email, p.user_id FROM json_each(?) AS j"
                " JOIN id_pairs AS p ON p.email = j.value ->> 0 AND p.user_id = j.value ->> 1",
                (chunk,),
            ):
                found.add((email, user_id))
        return found

    return of(store).read(query)


def last_person(store: Store) -> int:
    return int(
        of(store).read(lambda c: c.execute("SELECT COALESCE(MAX(person), 0) FROM id_people").fetchone()[0])
    )


def apply(store: Store, fold: Fold) -> None:
    """Write one batch, cursor included, in one transaction; `Conflict` (nothing written) if the
    cursor is no longer where the batch was read from."""

    def job(conn: Connection) -> None:
        if _cursor(conn) != fold.after:
            raise Conflict(f"the identity cursor moved from {fold.after}")
        conn.execute(
            "INSERT INTO id_cursor (id, seq) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
            (fold.cursor,),
        )
        for old, new in fold.merges:
            conn.execute("UPDATE id_nodes SET person = ? WHERE person = ?", (new, old))
            conn.execute("DELETE FROM id_people WHERE person = ?", (old,))
        conn.executemany(
            "INSERT INTO id_nodes (kind, value, person, partners) VALUES (?, ?, ?, ?)", fold.new_nodes
        )
        conn.executemany("UPDATE id_nodes SET partners = ? WHERE kind = ? AND value = ?", fold.partners)
        conn.executemany(
            "INSERT OR REPLACE INTO id_people (person, mask, size) VALUES (?, ?, ?)", fold.people
        )
        conn.executemany("INSERT OR IGNORE INTO id_pairs (email, user_id) VALUES (?, ?)", fold.pairs)
        conn.executemany(
            "INSERT INTO id_tally (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
            [(name, n) for name, n in fold.tally.items() if n],
        )
        conn.executemany("INSERT OR IGNORE INTO id_events (kind, value, seq) VALUES (?, ?, ?)", fold.events)
        if fold.meta is not None:
            conn.executemany(
                "INSERT OR REPLACE INTO id_meta (key, value) VALUES (?, ?)", list(fold.meta.items())
            )

    of(store).run(job)


def reset(store: Store, settings: dict[str, str]) -> None:
    """Forget the graph (its settings changed): the follower folds the log again from the start."""

    def job(conn: Connection) -> None:
        for table in ("id_nodes", "id_pairs", "id_people", "id_tally", "id_events", "id_meta"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM id_cursor")
        conn.executemany("INSERT INTO id_meta (key, value) VALUES (?, ?)", list(settings.items()))

    of(store).run(job)


# --- what the report reads ------------------------------------------------------------------------


def tally(store: Store) -> Tally:
    def query(c: Connection) -> Tally:
        masks: dict[int, int] = {}
        kinds: dict[str, int] = {}
        split = {"email": 0, "user_id": 0}
        for name, n in c.execute("SELECT name, n FROM id_tally WHERE n != 0"):
            group, _, key = name.partition(":")
            if group == "mask":
                masks[int(key)] = n
            elif group == "kind":
                kinds[key] = n
            elif group == "split":
                split[key] = n
        return Tally(_cursor(c), masks, split["email"], split["user_id"], kinds)

    return of(store).read(query)


def _members(c: Connection, person: int, limit: int) -> list[tuple[str, str]]:
    rows = c.execute(
        "SELECT kind, value FROM id_nodes WHERE person = ? ORDER BY kind, value LIMIT ?", (person, limit)
    ).fetchall()
    return [(kind, value) for kind, value in rows]


def split_examples(store: Store, kind: str, limit: int, width: int = 10) -> list[list[tuple[str, str]]]:
    """Emails with several user ids (kind `email`) or user ids with several emails: each with the
    identifiers of the other kind it was seen with."""
    other, column, by = ("user_id", "user_id", "email") if kind == "email" else ("email", "email", "user_id")

    def query(c: Connection) -> list[list[tuple[str, str]]]:
        groups: list[list[tuple[str, str]]] = []
        for (value,) in c.execute(
            "SELECT value FROM id_nodes WHERE kind = ? AND partners >= 2 ORDER BY value LIMIT ?",
            (kind, limit),
        ).fetchall():
            partners = c.execute(
                f"SELECT {column} FROM id_pairs WHERE {by} = ? ORDER BY {column} LIMIT ?", (value, width)
            ).fetchall()
            groups.append([(kind, value), *((other, p) for (p,) in partners)])
        return groups

    return of(store).read(query)


def people_with_masks(
    store: Store, masks: Sequence[int], limit: int, width: int = 10
) -> list[list[tuple[str, str]]]:
    def query(c: Connection) -> list[list[tuple[str, str]]]:
        persons = c.execute(
            "SELECT person FROM id_people WHERE mask IN (SELECT value FROM json_each(?)) ORDER BY person LIMIT ?",
            (_JSON(list(masks)).decode(), limit),
        ).fetchall()
        return [_members(c, person, width) for (person,) in persons]

    return of(store).read(query)


# --- one person -----------------------------------------------------------------------------------


class EventRow(NamedTuple):
    seq: int
    time_ms: int
    source: str
    key: str
    event_id: str


class Delivery(NamedTuple):
    state: str
    attempts: int
    updated_ms: int
    reason: str | None
    response: str | None


def component(
    store: Store, candidates: Sequence[tuple[str, str]], limit: int = 1000
) -> list[tuple[str, str]]:
    """Every identifier of the person one of `candidates` belongs to (the first found)."""

    def query(c: Connection) -> list[tuple[str, str]]:
        for kind, value in candidates:
            row = c.execute(
                "SELECT person FROM id_nodes WHERE kind = ? AND value = ?", (kind, value)
            ).fetchone()
            if row is not None:
                return _members(c, row[0], limit)
        return []

    return of(store).read(query)


def user_has_events(store: Store, user_id: str) -> bool:
    return bool(
        store.read(
            lambda c: c.execute(
                f"SELECT 1 FROM events WHERE {BY_USER[store.dialect]} = ? LIMIT 1", (user_id,)
            ).fetchone()
        )
    )


# The integers of a JSON array bound as one parameter (one statement whatever their number).
_JSON_INTS = {
    "sqlite": "SELECT value FROM json_each(?)",
    "postgres": "SELECT value::bigint FROM json_array_elements_text(?::json)",
}


def _key(source: str, kind: str, channel: str | None, metric: str | None, name: str | None) -> str:
    # model.event_key on the columns
    if source == "customerio" and channel is not None:
        return f"{channel}.{metric}"
    return name or kind


def person_events(store: Store, idents: Sequence[tuple[str, str]], limit: int) -> list[EventRow]:
    """The newest `limit` events of these identifiers: by user id through `events_user`, the others
    through `id_events`."""
    columns = "seq, time_ms, source, kind, channel, metric, name, id"

    def seqs_of(c: Connection) -> list[int]:
        found: list[int] = []
        for kind, value in idents:
            if kind != "user_id":
                found += [
                    seq
                    for (seq,) in c.execute(
                        "SELECT seq FROM id_events WHERE kind = ? AND value = ? ORDER BY seq DESC LIMIT ?",
                        (kind, value, limit),
                    )
                ]
        return found

    seqs = of(store).read(seqs_of)
    json_ints = _JSON_INTS[store.dialect]
    user_seqs = newest_seqs(store.dialect)

    def query(c: Connection) -> list[EventRow]:
        rows: dict[int, Any] = {}
        for kind, value in idents:
            if kind == "user_id":
                for row in c.execute(
                    f"SELECT {columns} FROM events WHERE seq IN ({user_seqs})", (value, limit)
                ):
                    rows[row[0]] = row
        for row in c.execute(
            f"SELECT {columns} FROM events WHERE seq IN ({json_ints})", (_JSON(seqs).decode(),)
        ):
            rows[row[0]] = row
        newest = sorted(rows.values(), key=lambda r: (r[1], r[0]), reverse=True)[:limit]
        return [
            EventRow(seq, t, source, _key(source, k, ch, m, n), ident)
            for seq, t, source, k, ch, m, n, ident in newest
        ]

    return store.read(query)


def deliveries(store: Store, seqs: Sequence[int], dests: Sequence[str]) -> dict[int, dict[str, Delivery]]:
    """seq → destination → its outbox row (the outbox is keyed by destination, then seq)."""
    if not seqs:
        return {}
    chunk = _JSON(list(seqs)).decode()
    json_ints = _JSON_INTS[store.dialect]

    def query(c: Connection) -> dict[int, dict[str, Delivery]]:
        found: dict[int, dict[str, Delivery]] = {}
        for dest in dests:
            for seq, state, attempts, updated, reason, response in c.execute(
                "SELECT seq, state, attempts, updated_ms, reason, response FROM outbox"
                f" WHERE dest = ? AND seq IN ({json_ints})",
                (dest, chunk),
            ):
                found.setdefault(seq, {})[dest] = Delivery(state, attempts, updated, reason, response)
        return found

    return store.read(query)


# --- audiences (tally kept by triggers, migration 8) --------------------------------------------------
