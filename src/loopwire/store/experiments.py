"""Store queries of the measurement loop: holdout assignments, log cursors and the lift inputs."""

from __future__ import annotations

from collections.abc import Sequence

from loopwire.store.base import Connection, Store


def cursor(store: Store, name: str) -> int:
    row = store.run(lambda c: c.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone())
    return int(row[0]) if row else 0


def record(store: Store, name: str, seq: int, assignments: Sequence[tuple[str, str, str, int]]) -> None:
    """In one transaction: new assignments (experiment, user, group, ms; existing ones are kept —
    an assignment never changes) and the reader's cursor."""

    def job(conn: Connection) -> None:
        conn.executemany(
            "INSERT INTO assignments (experiment, user_id, grp, assigned_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (experiment, user_id) DO NOTHING",
            assignments,
        )
        conn.execute(
            "INSERT INTO cursors (name, seq) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            (name, seq),
        )

    store.run(job)


def assigned(store: Store, experiment: str, user_ids: Sequence[str]) -> set[str]:
    if not user_ids:
        return set()
    rows = store.run(
        lambda c: c.execute(
            f"SELECT user_id FROM assignments WHERE experiment = ? AND user_id IN ({','.join('?' * len(user_ids))})",
            (experiment, *user_ids),
        ).fetchall()
    )
    return {row[0] for row in rows}


def assignments(store: Store, experiment: str) -> list[tuple[str, str, int]]:
    rows: list[tuple[str, str, int]] = store.run(
        lambda c: c.execute(
            "SELECT user_id, grp, assigned_ms FROM assignments WHERE experiment = ? ORDER BY assigned_ms",
            (experiment,),
        ).fetchall()
    )
    return rows


def events_named(store: Store, name: str, since_ms: int) -> list[tuple[str, int, bytes]]:
    """(user_id, time_ms, encoded Event) of events with this name, from people with an id."""
    rows: list[tuple[str, int, bytes]] = store.run(
        lambda c: c.execute(
            "SELECT user_id, time_ms, body FROM events WHERE name = ? AND time_ms >= ? AND user_id IS NOT NULL",
            (name, since_ms),
        ).fetchall()
    )
    return rows


def channels_reached(store: Store, since_ms: int) -> dict[str, set[str]]:
    """Per person, the Customer.io channels that sent or delivered them a message."""
    rows = store.run(
        lambda c: c.execute(
            "SELECT DISTINCT user_id, channel FROM events WHERE source = 'customerio' AND kind = 'message'"
            " AND metric IN ('sent', 'delivered') AND user_id IS NOT NULL AND time_ms >= ?",
            (since_ms,),
        ).fetchall()
    )
    reached: dict[str, set[str]] = {}
    for user_id, channel in rows:
        reached.setdefault(user_id, set()).add(channel)
    return reached
