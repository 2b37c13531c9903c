"""Store queries of the console. None reads the whole log: each goes through an index to a bounded
set of rows (one person's events, the dead letters, the backlog, one audience's changes), and volume
over time is read from where seqs cross bucket edges (the log's seqs run 1..MAX(seq) in commit
order), a few B-tree descents a bucket whatever the log's size."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from loopwire.store.base import Connection, Store, newest_seqs


def _indexed(store: Store, index: str) -> str:
    """SQLite's `INDEXED BY` where its planner needs telling (PostgreSQL has no such clause, and its
    planner reads the partial indexes' conditions itself)."""
    return f" INDEXED BY {index}" if store.dialect == "sqlite" else ""


# -- volume in --------------------------------------------------------------------------------------


# Per edge, the first seq received at or after it (`last + 1` if none), by bisection over seq, every
# edge in one statement: one call into SQLite, not one per step (a page's read runs in a thread that
# must take the interpreter back after each call, which under load costs more than the read).
# `received_ms` rises with seq up to the few milliseconds concurrent commits can reorder: a bucket edge
# is as exact. A missing seq (a row trimmed by retention) counts as older than every edge.
_FIRST_SEQS_SQL = """
WITH RECURSIVE b(edge, lo, hi) AS (
    SELECT value, 1, ? + 1 FROM json_each(?)
    UNION ALL
    SELECT edge,
           CASE WHEN (SELECT received_ms FROM events WHERE seq = (lo + hi) / 2) >= edge
                THEN lo ELSE (lo + hi) / 2 + 1 END,
           CASE WHEN (SELECT received_ms FROM events WHERE seq = (lo + hi) / 2) >= edge
                THEN (lo + hi) / 2 ELSE hi END
    FROM b WHERE lo < hi
)
SELECT edge, lo FROM b WHERE lo >= hi
"""


def _first_seq_at(conn: Connection, received_ms: int, last: int) -> int:
    """The same bisection for one edge, a statement a step (PostgreSQL: no `json_each`)."""
    lo, hi = 1, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT received_ms FROM events WHERE seq = ?", (mid,)).fetchone()
        if row is not None and row[0] >= received_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


def received_per_bucket(store: Store, edges: Sequence[int]) -> list[int]:
    """Events logged between consecutive `edges` (ms, ascending): len(edges) - 1 counts."""

    def query(conn: Connection) -> list[int]:
        last = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        if store.dialect != "sqlite":
            seqs = [_first_seq_at(conn, edge, last) for edge in edges]
        else:
            found = dict(conn.execute(_FIRST_SEQS_SQL, (last, json.dumps(list(edges)))).fetchall())
            seqs = [found[edge] for edge in edges]
        return [b - a for a, b in itertools.pairwise(seqs)]

    return store.read(query)


# -- dead letters and retries --------------------------------------------------------------------

_DEAD_KEYS = (
    "destination",
    "event_id",
    "kind",
    "channel",
    "metric",
    "name",
    "user_id",
    "attempts",
    "dead_ms",
    "reason",
    "response",
)


def dead_letters(
    store: Store, dest: str | None = None, reason: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first, through the partial index of dead rows."""
    # INDEXED BY: with a destination given, SQLite would rather walk that destination's primary-key
    # range (every row it ever had) and sort; the partial index holds the dead rows only, newest last.
    sql = (
        "SELECT o.dest, e.id, e.kind, e.channel, e.metric, e.name, e.user_id, o.attempts, o.updated_ms, o.reason,"
        f" o.response FROM outbox o{_indexed(store, 'outbox_dead')} JOIN events e ON e.seq = o.seq"
        " WHERE o.state = 'dead'"
    )
    args: list[Any] = []
    if dest is not None:
        sql += " AND o.dest = ?"
        args.append(dest)
    if reason is not None:
        sql += " AND COALESCE(o.reason, '') = ?"
        args.append(reason)
    sql += " ORDER BY o.updated_ms DESC LIMIT ?"
    args.append(limit)
    rows = store.read(lambda c: c.execute(sql, args).fetchall())
    return [dict(zip(_DEAD_KEYS, row, strict=True)) for row in rows]


def event_body(store: Store, event_id: str) -> bytes | None:
    # PostgreSQL's partitioned log has no index on id: `event_ids` maps ids to seqs (its migration 13)
    sql = (
        "SELECT body FROM events WHERE id = ?"
        if store.dialect == "sqlite"
        else "SELECT body FROM events WHERE seq = (SELECT seq FROM event_ids WHERE id = ?)"
    )
    row = store.read(lambda c: c.execute(sql, (event_id,)).fetchone())
    return bytes(row[0]) if row is not None else None


def retrying(store: Store, dest: str, limit: int = 10) -> list[dict[str, Any]]:
    """Pending rows that failed at least once, with the destination's last answer (the backlog only)."""
    indexed = _indexed(store, "outbox_ready")
    rows = store.read(
        lambda c: c.execute(
            "SELECT e.id, o.attempts, o.next_ms, o.updated_ms, o.reason, o.response FROM outbox o"
            f"{indexed} JOIN events e ON e.seq = o.seq"
            " WHERE o.dest = ? AND o.state = 'pending' AND o.reason IS NOT NULL ORDER BY o.updated_ms DESC LIMIT ?",
            (dest, limit),
        ).fetchall()
    )
    keys = ("event_id", "attempts", "next_ms", "updated_ms", "reason", "response")
    return [dict(zip(keys, row, strict=True)) for row in rows]


# -- pausing ---------------------------------------------------------------------------------------


def paused(store: Store) -> dict[str, int]:
    """Destinations paused from the console (or `/api`), with when."""
    rows = store.read(lambda c: c.execute("SELECT dest, changed_ms FROM paused_destinations").fetchall())
    return {dest: at for dest, at in rows}


def set_paused(store: Store, dest: str, pause: bool, now_ms: int) -> None:
    if pause:
        store.run(
            lambda c: c.execute(
                "INSERT INTO paused_destinations (dest, changed_ms) VALUES (?, ?) ON CONFLICT (dest) DO NOTHING",
                (dest, now_ms),
            )
        )
    else:
        store.run(lambda c: c.execute("DELETE FROM paused_destinations WHERE dest = ?", (dest,)))


def requeue_in_flight(store: Store, dest: str) -> int:
    """Rows a stopped courier left in flight, pending again (only while no courier runs for `dest`)."""
    return store.requeue_in_flight(dest)


# -- audiences -------------------------------------------------------------------------------------

# the audience a membership event (audiences.engine) names, read from its stored body
_AUDIENCE = {
    "sqlite": "json_extract(CAST(body AS TEXT), '$.data.properties.audience')",
    "postgres": "(convert_from(body, 'UTF8')::jsonb #>> '{data,properties,audience}')",
}


def audience_size(store: Store, audience: str) -> int:
    return int(
        store.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM members WHERE audience = ? AND member = 1", (audience,)
            ).fetchone()[0]
        )
    )


def audience_changes(
    store: Store, audience: str, entered: str, exited: str, since_ms: int, limit: int = 20
) -> tuple[list[tuple[int, int, int]], list[tuple[str, str, int, str]]]:
    """Per hour since `since_ms`: (hour start ms, entries, exits); and the newest `limit` changes as
    (user id, "entered" | "exited", time ms, event id). loopwire's own events only, by name (index)."""

    named = _AUDIENCE[store.dialect]

    def query(conn: Connection) -> tuple[list[tuple[int, int, int]], list[tuple[str, str, int, str]]]:
        hourly = conn.execute(
            "SELECT time_ms / 3600000 * 3600000 AS hour, SUM(CASE WHEN name = ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN name = ? THEN 1 ELSE 0 END) FROM events"
            f" WHERE name IN (?, ?) AND source = 'loopwire' AND time_ms >= ? AND {named} = ?"
            " GROUP BY hour ORDER BY hour",
            (entered, exited, entered, exited, since_ms, audience),
        ).fetchall()
        recent = conn.execute(
            "SELECT user_id, CASE WHEN name = ? THEN 'entered' ELSE 'exited' END, time_ms, id FROM events"
            f" WHERE name IN (?, ?) AND source = 'loopwire' AND {named} = ? ORDER BY seq DESC LIMIT ?",
            (entered, entered, exited, audience, limit),
        ).fetchall()
        return [tuple(row) for row in hourly], [tuple(row) for row in recent]

    return store.read(query)


# -- one person ------------------------------------------------------------------------------------


def person_events(
    store: Store, user_id: str, limit: int = 200
) -> list[tuple[int, str, str, str, str | None, str | None, str | None, int, bytes]]:
    """A person's newest events: (seq, id, source, kind, channel, metric, name, time_ms, body)."""
    rows: list[Any] = store.read(
        lambda c: c.execute(
            "SELECT seq, id, source, kind, channel, metric, name, time_ms, body FROM events WHERE seq IN"
            f" ({newest_seqs(store.dialect)}) ORDER BY time_ms DESC, seq DESC",
            (user_id, limit),
        ).fetchall()
    )
    return rows


def deliveries(
    store: Store, dests: Sequence[str], seqs: Sequence[int]
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per seq, per destination: state, attempts, when it last changed, reason (primary-key lookups)."""
    found: dict[int, dict[str, dict[str, Any]]] = {}
    if not seqs or not dests:
        return found

    def query(conn: Connection) -> list[Any]:
        rows: list[Any] = []
        for start in range(0, len(seqs), 500):
            chunk = list(seqs[start : start + 500])
            rows += conn.execute(
                f"SELECT seq, dest, state, attempts, updated_ms, reason, response FROM outbox"
                f" WHERE dest IN ({','.join('?' * len(dests))}) AND seq IN ({','.join('?' * len(chunk))})",
                [*dests, *chunk],
            ).fetchall()
        return rows

    for seq, dest, state, attempts, updated, reason, response in store.read(query):
        found.setdefault(seq, {})[dest] = {
            "state": state,
            "attempts": attempts,
            "updated_ms": updated,
            "reason": reason,
            "response": response,
        }
    return found


def memberships(store: Store, user_id: str, audiences: Sequence[str]) -> dict[str, tuple[bool, int, int]]:
    """Per audience: (member, version, since ms), by primary key."""

    def query(conn: Connection) -> dict[str, tuple[bool, int, int]]:
        result = {}
        for audience in audiences:
            row = conn.execute(
                "SELECT member, version, since_ms FROM members WHERE audience = ? AND user_id = ?",
                (audience, user_id),
            ).fetchone()
            if row is not None:
                result[audience] = (bool(row[0]), int(row[1]), int(row[2]))
        return result

    return store.read(query)


def person_assignments(store: Store, user_id: str, experiments: Sequence[str]) -> dict[str, tuple[str, int]]:
    def query(conn: Connection) -> dict[str, tuple[str, int]]:
        result = {}
        for experiment in experiments:
            row = conn.execute(
                "SELECT grp, assigned_ms FROM assignments WHERE experiment = ? AND user_id = ?",
                (experiment, user_id),
            ).fetchone()
            if row is not None:
                result[experiment] = (str(row[0]), int(row[1]))
        return result

    return store.read(query)
