"""Status counts come from `outbox_tally` (kept by triggers) and from the live backlog: they must equal
a full count of the outbox after any mix of writes, and a store migrated with rows in it starts right."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from loopwire.model import Event
from loopwire.store import Settlement, SQLiteStore, Store
from loopwire.store.base import Connection
from loopwire.store.migrations import MIGRATIONS, migrate
from loopwire.store.sqlite import STATES

DESTS = ("amplitude", "segment", "customerio")
REASONS = ("invalid_email", "no_user_id", "http_400", None)


def _event(n: int) -> Event:
    return Event(id=f"evt-{n:06d}", source="segment", kind="track", name="Viewed", time_ms=n, received_ms=n)


def _counted(store: Store) -> tuple[dict[str, dict[str, int]], list[tuple[str, str, str, int]]]:
    """The slow, obviously right answer: every row counted."""

    def query(conn: Connection) -> tuple[dict[str, dict[str, int]], list[tuple[str, str, str, int]]]:
        counts: dict[str, dict[str, int]] = {}
        for dest, state, n in conn.execute("SELECT dest, state, COUNT(*) FROM outbox GROUP BY 1, 2"):
            counts.setdefault(dest, dict.fromkeys(STATES, 0))[state] = n
        reasons = conn.execute(
            "SELECT dest, state, COALESCE(reason, ''), COUNT(*) FROM outbox WHERE state IN ('dead', 'skipped')"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        return counts, [tuple(row) for row in reasons]

    return store.read(query)


def _tallied(store: Store) -> tuple[dict[str, dict[str, int]], list[tuple[str, str, str, int]]]:
    reasons = sorted(
        (dest, state, reason, n) for state in ("dead", "skipped") for dest, reason, n in store.reasons(state)
    )
    return store.counts(), reasons


def test_counts_and_reasons_match_a_full_count_after_random_writes(store: Store) -> None:
    rng = random.Random(12)
    try:
        seq = 0
        for _ in range(60):
            batch = [_event(seq + n) for n in range(rng.randint(1, 20))]
            seq += len(batch)
            store.append_sync(batch, [rng.sample(DESTS, rng.randint(0, 3)) for _ in batch])
            dest = rng.choice(DESTS)
            now = 1_000 + seq
            claimed = asyncio.run(store.claim(dest, rng.randint(0, 15), now))
            settlements = [
                Settlement(row.seq, state, now, reason=rng.choice(REASONS) if state != "delivered" else None)
                for row in claimed
                for state in [rng.choice(["delivered", "dead", "skipped", "pending"])]
            ]
            asyncio.run(store.settle(dest, settlements, now))
            if rng.random() < 0.2:
                store.replay_dead(now, dest=rng.choice([*DESTS, None]))
            if rng.random() < 0.2:
                seqs = [s for s, _ in store.scan_events(0, 0, 1_000)]
                store.enqueue(
                    rng.choice(DESTS), rng.sample(seqs, min(5, len(seqs))), now, resend=rng.random() < 0.5
                )
            counts, reasons = _counted(store)
            tallied_counts, tallied_reasons = _tallied(store)
            assert {d: c for d, c in tallied_counts.items() if any(c.values())} == counts
            assert tallied_reasons == reasons
        assert store.event_count() == seq
    finally:
        store.close()


def test_a_store_migrated_with_rows_in_it_starts_with_the_right_tally(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:6], start=1):  # a store as the last release left it
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    for n in range(1, 31):
        conn.execute(
            "INSERT INTO events (seq, id, source, kind, time_ms, received_ms, body) VALUES (?, ?, 's', 'track', 0, 0, x'')",
            (n, f"e{n}"),
        )
        state = ("pending", "delivered", "dead", "skipped", "in_flight")[n % 5]
        conn.execute(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms, reason) VALUES (?, ?, ?, 0, 0, 0, ?)",
            ("amplitude", n, state, "http_400" if state == "dead" else None),
        )
    migrate(conn)
    conn.close()
    store = SQLiteStore(path, recover=False)
    try:
        assert _tallied(store) == _counted(store)
        assert store.counts()["amplitude"] == {
            "pending": 6,
            "in_flight": 6,
            "delivered": 6,
            "dead": 6,
            "skipped": 6,
        }
        assert store.reasons("dead") == [("amplitude", "http_400", 6)]
        assert store.event_count() == 30
    finally:
        store.close()
