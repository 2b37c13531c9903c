"""Store queries of the audience engine: people's histories, memberships, timers and versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loopwire.store.base import BY_USER, Connection, Store


class Membership(NamedTuple):
    member: bool
    version: int
    state: str | None
    changes: int  # how many times membership changed: makes the change events' ids deterministic
    since_ms: int


class Reader:
    """A read connection of its own, so the engine's reads never queue behind the writer."""

    def __init__(self, store: Store) -> None:
        self._conn = store.reader()
        self._by_user = BY_USER[store.dialect]

    def histories(self, user_ids: Sequence[str]) -> dict[str, list[bytes]]:
        found: dict[str, list[bytes]] = {user: [] for user in user_ids}
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            rows = self._conn.execute(
                f"SELECT user_id, body FROM events WHERE {self._by_user} IN ({','.join('?' * len(chunk))})"
                " AND source != 'loopwire' ORDER BY user_id, time_ms",
                chunk,
            ).fetchall()
            for user_id, body in rows:
                found[user_id].append(body)
        return found

    def memberships(self, user_ids: Sequence[str]) -> dict[str, dict[str, Membership]]:
        found: dict[str, dict[str, Membership]] = {user: {} for user in user_ids}
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            rows = self._conn.execute(
                "SELECT user_id, audience, member, version, state, changes, since_ms FROM members"
                f" WHERE user_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for user_id, audience, member, version, state, changes, since in rows:
                found[user_id][audience] = Membership(bool(member), version, state, changes, since)
        return found

    def due(self, now_ms: int, limit: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT user_id FROM timers WHERE due_ms <= ? ORDER BY due_ms LIMIT ?", (now_ms, limit)
        ).fetchall()
        return [row[0] for row in rows]

    def sizes(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT audience, COUNT(*) FROM members WHERE member = 1 GROUP BY audience")
        return {audience: count for audience, count in rows}

    def close(self) -> None:
        self._conn.close()


def save(
    store: Store,
    members: Sequence[tuple[str, str, Membership]],
    timers: dict[str, int | None],
    assignments: Sequence[tuple[str, str, str, int]],
    cursor: tuple[str, int] | None,
) -> None:
    """One transaction: membership rows, timers (None removes), new holdout assignments, the cursor."""

    def job(conn: Connection) -> None:
        conn.executemany(
            "INSERT INTO members (audience, user_id, member, version, state, changes, since_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (audience, user_id) DO UPDATE SET member = excluded.member,"
            " version = excluded.version, state = excluded.state, changes = excluded.changes,"
            " since_ms = excluded.since_ms",
            [(a, u, int(m.member), m.version, m.state, m.changes, m.since_ms) for a, u, m in members],
        )
        conn.executemany(
            "DELETE FROM timers WHERE user_id = ?", [(u,) for u, due in timers.items() if due is None]
        )
        conn.executemany(
            "INSERT INTO timers (user_id, due_ms) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET due_ms = excluded.due_ms",
            [(u, due) for u, due in timers.items() if due is not None],
        )
        conn.executemany(
            "INSERT INTO assignments (experiment, user_id, grp, assigned_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (experiment, user_id) DO NOTHING",
            assignments,
        )
        if cursor is not None:
            conn.execute(
                "INSERT INTO cursors (name, seq) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                cursor,
            )

    store.run(job)


def versions(store: Store) -> list[tuple[str, int, str, str, int]]:
    rows: list[tuple[str, int, str, str, int]] = store.run(
        lambda c: c.execute(
            "SELECT name, version, fingerprint, definition, recorded_ms FROM audience_versions ORDER BY recorded_ms"
        ).fetchall()
    )
    return rows


def record_versions(store: Store, rows: Sequence[tuple[str, int, str, str, int]]) -> None:
    store.run(
        lambda c: c.executemany(
            "INSERT INTO audience_versions (name, version, fingerprint, definition, recorded_ms)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )
    )


def audience_tally(store: Store) -> dict[str, tuple[int, int, int]]:
    """audience → (members, entered, exited), kept by triggers on `members` (migration 8)."""
    rows = store.read(
        lambda c: c.execute("SELECT audience, members, entered, exited FROM audience_tally").fetchall()
    )
    return {audience: (members, entered, exited) for audience, members, entered, exited in rows}
