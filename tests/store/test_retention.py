"""Retention on real SQLite files, at an injected `now`: what goes, what stays, what the tallies and
the status say afterwards, the config's refusals, `loopwire status` and `loopwire vacuum`, and
retention in the background of a served app, counted in /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from loopwire.app import status_report
from loopwire.cli import app as cli
from loopwire.config import parse_config
from loopwire.errors import ConfigError
from loopwire.model import Event
from loopwire.pipeline.retention import Retention, keep_sql
from loopwire.store import Settlement, SQLiteStore
from loopwire.store import identity as identity_graph
from loopwire.store.migrations import MIGRATIONS, migrate
from loopwire.store.retention import Cutoffs, Trimmed, deleted, trim

DAY = 86_400_000
NOW = 1_000 * DAY  # the injected "now" (ms)
runner = CliRunner()


def event(n: int, age_days: float, name: str = "Viewed", user: str | None = "u1", **fields: Any) -> Event:
    at = NOW - int(age_days * DAY)
    return Event(
        id=f"evt-{n:04d}",
        source="segment",
        kind="track",
        name=name,
        user_id=user,
        time_ms=at,
        received_ms=at,
        **fields,
    )


def settle(store: SQLiteStore, dest: str, states: dict[int, str], at_ms: int) -> None:
    """Claim and settle these seqs of `dest` at `at_ms` (pending ones are left alone)."""

    async def run() -> None:
        claimed = await store.claim(dest, 10_000, NOW * 2)
        await store.settle(
            dest,
            [
                Settlement(row.seq, states.get(row.seq, "pending"), at_ms, reason="http_400")
                if states.get(row.seq) == "dead"
                else Settlement(row.seq, states.get(row.seq, "pending"), at_ms)
                for row in claimed
            ],
            at_ms,
        )

    asyncio.run(run())


def seqs(store: SQLiteStore) -> list[int]:
    return [
        seq for (seq,) in store.read(lambda c: c.execute("SELECT seq FROM events ORDER BY seq").fetchall())
    ]


def outbox(store: SQLiteStore) -> dict[tuple[str, int], str]:
    rows = store.read(lambda c: c.execute("SELECT dest, seq, state FROM outbox").fetchall())
    return {(dest, seq): state for dest, seq, state in rows}


def cutoffs(
    events: float | None = None, delivered: float | None = None, dead: float | None = None
) -> Cutoffs:
    def before(days: float | None) -> int | None:
        return None if days is None else NOW - int(days * DAY)

    return Cutoffs(before(events), before(delivered), before(dead))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "log.db")
    yield s
    s.close()


@pytest.fixture
def seeded(store: SQLiteStore) -> SQLiteStore:
    """seq 1-4: 100 days old (delivered, pending, dead, skipped); 5: 100 days old, no destination;
    6: 10 days old, delivered; 7: 1 day old, delivered; 8: newest, 100 days old (a late backfill)."""
    ages = [100, 100, 100, 100, 100, 10, 1, 100]
    routes = [["amplitude"]] * 4 + [[]] + [["amplitude"]] * 2 + [["amplitude"]]
    store.append_sync([event(n, age) for n, age in enumerate(ages, start=1)], routes)
    settled_at = NOW - 99 * DAY
    settle(store, "amplitude", {1: "delivered", 3: "dead", 4: "skipped", 8: "delivered"}, settled_at)
    settle(store, "amplitude", {6: "delivered"}, NOW - 9 * DAY)
    settle(store, "amplitude", {7: "delivered"}, NOW - DAY // 2)
    return store


def test_old_rows_go_recent_and_undelivered_ones_stay(seeded: SQLiteStore) -> None:
    trimmed = asyncio.run(trim(seeded, cutoffs(events=30)))
    # 1 (delivered) and 4 (skipped) go with their rows, 5 had none; 2 is pending, 3 dead, 6 and 7
    # are recent, 8 is the newest event (its seq would be given out again)
    assert seqs(seeded) == [2, 3, 6, 7, 8]
    assert trimmed == Trimmed(events=3, delivered=1, skipped=1, dead=0, freed_pages=trimmed.freed_pages)
    assert outbox(seeded) == {
        ("amplitude", 2): "pending",
        ("amplitude", 3): "dead",
        ("amplitude", 6): "delivered",
        ("amplitude", 7): "delivered",
        ("amplitude", 8): "delivered",
    }
    assert deleted(seeded) == {"events": 3, "delivered": 1, "skipped": 1, "dead": 0}
    assert asyncio.run(trim(seeded, cutoffs(events=30))).rows == 0  # nothing more to do
    # events are deleted with foreign keys unenforced (checked by key instead): back on afterwards
    assert seeded.run(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1


def test_lifetime_counts_do_not_drop_and_the_log_count_stays_exact(seeded: SQLiteStore) -> None:
    before = seeded.counts()
    asyncio.run(trim(seeded, cutoffs(events=30, delivered=5, dead=50)))
    after = seeded.counts()
    # delivered and skipped are lifetime totals; the dead letter expired, so the queue is empty
    assert after["amplitude"] == {**before["amplitude"], "dead": 0}
    assert before["amplitude"]["delivered"] == 4 and before["amplitude"]["dead"] == 1
    assert seeded.reasons("dead") == []
    assert seeded.reasons("skipped") == [("amplitude", "", 1)]
    assert seeded.event_count() == len(seqs(seeded)) == 4  # 2 (pending), 6, 7, 8
    assert seeded.last_seq() == 8
    # 6's delivered row went (settled 9 days ago > 5); its event stays (10 days < 30)
    assert ("amplitude", 6) not in outbox(seeded) and 6 in seqs(seeded)


def test_dead_letters_stay_until_their_own_window(seeded: SQLiteStore) -> None:
    asyncio.run(trim(seeded, cutoffs(events=30)))  # `dead` unset: kept until replayed
    assert outbox(seeded)[("amplitude", 3)] == "dead" and 3 in seqs(seeded)
    asyncio.run(trim(seeded, cutoffs(events=30, dead=120)))  # died 99 days ago: not yet
    assert outbox(seeded)[("amplitude", 3)] == "dead"
    asyncio.run(trim(seeded, cutoffs(events=30, dead=90)))
    assert ("amplitude", 3) not in outbox(seeded)
    assert 3 not in seqs(seeded)  # and its event, 100 days old, went in the same run
    assert deleted(seeded)["dead"] == 1


def test_a_replayed_dead_letter_is_owed_again_and_stays(seeded: SQLiteStore) -> None:
    seeded.replay_dead(NOW, dest="amplitude")
    asyncio.run(trim(seeded, cutoffs(events=30, dead=1)))
    assert outbox(seeded)[("amplitude", 3)] == "pending" and 3 in seqs(seeded)


def test_nothing_after_a_readers_cursor_goes(seeded: SQLiteStore) -> None:
    asyncio.run(trim(seeded, cutoffs(events=30), below=2))  # the reader has read seq 1 only
    assert seqs(seeded) == [2, 3, 4, 5, 6, 7, 8]


def test_small_batches_delete_the_same_rows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    try:
        store.append_sync([event(n, 200 - n) for n in range(1, 181)], [["amplitude"]] * 180)
        settle(store, "amplitude", {seq: "delivered" for seq in range(1, 181)}, NOW - 15 * DAY)
        trimmed = asyncio.run(trim(store, cutoffs(events=30, delivered=10), limit=7))
        # events 1-170 are 30+ days old (170: exactly 30 days: not older than the window)
        assert seqs(store) == list(range(170, 181))
        assert trimmed.events == 169 and trimmed.delivered == 180
        assert store.counts()["amplitude"]["delivered"] == 180
    finally:
        store.close()


def test_an_event_newer_than_the_identity_graphs_cursor_stays(tmp_path: Path) -> None:
    config = parse_config(
        yaml.safe_dump({"store": {"path": str(tmp_path / "log.db"), "retention": {"events": "30d"}}})
    )
    store = SQLiteStore(config.store.path)
    try:
        store.append_sync([event(n, 100) for n in range(1, 7)], [[]] * 6)
        retention = Retention(store, config, clock=lambda: NOW / 1000)
        # identity.graph is on by default: without a graph file the follower has folded nothing
        assert asyncio.run(retention.run_once()).events == 0
        graph = identity_graph.Graph(identity_graph.graph_path(store.path))
        graph.run(lambda c: c.execute("INSERT INTO id_cursor (id, seq) VALUES (1, 3)"))
        graph.close()
        assert asyncio.run(retention.run_once()).events == 3
        assert seqs(store) == [4, 5, 6]
        off = msgspec_replace_identity(config)
        assert asyncio.run(Retention(store, off, clock=lambda: NOW / 1000).run_once()).events == 2  # not 6
        assert seqs(store) == [6]
    finally:
        store.close()


def msgspec_replace_identity(config: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(config, identity=msgspec.structs.replace(config.identity, graph=False))


def test_what_audiences_and_experiments_read_at_any_age_stays(tmp_path: Path) -> None:
    document = {
        "store": {"path": str(tmp_path / "log.db"), "retention": {"events": "30d"}},
        "identity": {"graph": False},
        "audiences": {
            "vip": {"library": "vip", "version": 1},  # sums Order Completed over the lifetime
            "clickers": {"library": "high_intent_engagers", "version": 1},  # clicks within 7d
        },
        "experiments": {
            "cart": {"name": "Cart", "salt": "s1", "holdout_percent": 10, "conversion": "Signed Up"}
        },
    }
    config = parse_config(yaml.safe_dump(document))
    store = SQLiteStore(config.store.path)
    try:
        store.append_sync(
            [
                event(1, 100, "Order Completed"),
                event(2, 100, "Viewed"),
                event(3, 100, "Signed Up"),
                event(4, 100, "Order Completed", user=None),  # no audience reads an event without a user
                event(5, 100, "Viewed"),
                event(6, 1, "Viewed"),
            ],
            [[]] * 6,
        )
        store.run(lambda c: c.execute("INSERT INTO cursors (name, seq) VALUES ('audiences', 6)"))
        assert asyncio.run(Retention(store, config, clock=lambda: NOW / 1000).run_once()).events == 3
        assert seqs(store) == [1, 3, 6]
    finally:
        store.close()


def test_keep_sql_is_nothing_without_audiences_or_experiments() -> None:
    assert keep_sql(parse_config("")) == ("0", ())


def test_a_deleted_event_id_is_taken_again_the_dedupe_horizon(store: SQLiteStore) -> None:
    store.append_sync([event(1, 100), event(2, 1)], [[], []])
    assert store.append_sync([event(1, 100)], [[]]) == [False]  # inside the window: a duplicate
    asyncio.run(trim(store, cutoffs(events=30)))
    assert seqs(store) == [2]
    assert store.append_sync([event(1, 100)], [[]]) == [True]  # past it, the same id is new again
    assert store.last_seq() == 3 and store.event_count() == 2


def checkpoint(store: SQLiteStore) -> None:
    """Copy the WAL into the file (as SQLite does every 1,000 pages), so the file's size tells."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_freed_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    try:
        bulky = {"data": {"blob": "x" * 4_000}}
        store.append_sync([event(n, 100, **bulky) for n in range(1, 2_001)] + [event(9_999, 1)], [[]] * 2_001)
        checkpoint(store)
        full = store.size_on_disk()
        assert full.incremental_vacuum and full.file_bytes > 8_000_000
        trimmed = asyncio.run(trim(store, cutoffs(events=30)))
        assert trimmed.events == 2_000 and trimmed.freed_pages > 1_500
        checkpoint(store)
        small = store.size_on_disk()
        assert small.file_bytes < full.file_bytes / 10 and small.free_bytes == 0
    finally:
        store.close()


def test_migration_11_keeps_the_tallies_of_a_store_with_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:10], start=1):  # a store as the last release left it
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    for n in range(1, 11):
        conn.execute(
            "INSERT INTO events (seq, id, source, kind, time_ms, received_ms, body) VALUES (?, ?, 's', 'track', 0, 0, x'')",
            (n, f"e{n}"),
        )
        conn.execute(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms) VALUES ('a', ?, 'pending', 0, 0, 0)",
            (n,),
        )
        conn.execute("UPDATE outbox SET state = ? WHERE seq = ?", ("delivered" if n % 2 else "dead", n))
    migrate(conn)
    conn.close()
    store = SQLiteStore(path, recover=False)
    try:
        assert store.counts()["a"]["delivered"] == 5 and store.counts()["a"]["dead"] == 5
        assert not store.size_on_disk().incremental_vacuum  # made before: `loopwire vacuum` switches it
        asyncio.run(trim(store, Cutoffs(events=1, delivered=1, dead=1)))
        assert store.counts()["a"] == {"pending": 0, "in_flight": 0, "delivered": 5, "dead": 0, "skipped": 0}
        assert seqs(store) == [10] and store.event_count() == 1
    finally:
        store.close()


# -- the config ----------------------------------------------------------------------------------


def refusal(document: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return str(caught.value)


def test_retention_is_off_by_default() -> None:
    retention = parse_config("").store.retention
    assert not retention.enabled and retention.events is None and retention.dead is None


def test_config_refusals_name_the_key_and_line() -> None:
    assert refusal("store:\n  retention:\n    events: 3d\n") == (
        "store.retention.events (line 3): must be at least 7d (got 3d): the log is loopwire's dedupe of"
        " event ids, and Customer.io retries a webhook for up to 7 days"
    )
    assert refusal("store:\n  retention:\n    events: 30d\n    delivered: 60d\n") == (
        "store.retention.delivered (line 4): 60d is longer than `events` (30d): a delivered row goes with"
        " its event; make it at most that or leave it out"
    )
    assert refusal("store:\n  retention:\n    dead: 0\n") == (
        "store.retention.dead (line 3): must be longer than zero (leave it out to keep these rows)"
    )
    assert refusal("store:\n  retention:\n    interval: 0s\n").startswith(
        "store.retention.interval (line 3): must be longer than zero"
    )
    assert refusal("store:\n  retention:\n    event: 30d\n").startswith(
        "store.retention.event (line 3): unknown key"
    )
    assert refusal("store:\n  retention:\n    events: a month\n").startswith(
        "store.retention.events (line 3): expected a duration"
    )


def test_the_events_window_covers_every_audience_and_experiment_window() -> None:
    audiences = "audiences:\n  tired: {library: fatigue_risk, version: 1, params: {within: 21d}}\n"
    assert refusal("store:\n  retention:\n    events: 14d\n" + audiences) == (
        "store.retention.events (line 3): 14d is shorter than what the log must hold: audience 'tired'"
        " looks back 21d; make it at least 21d"
    )
    experiments = (
        "experiments:\n  cart: {name: Cart, salt: s, holdout_percent: 10, conversion: Order Completed,"
        " window: 30d}\n"
    )
    assert refusal("store:\n  retention:\n    events: 14d\n" + experiments) == (
        "store.retention.events (line 3): 14d is shorter than what the log must hold: experiment 'cart'"
        " has a 30d conversion window; make it at least 30d"
    )
    # a window-less look back (VIP's lifetime sum) is no reason to refuse: its events are kept
    assert parse_config("store: {retention: {events: 7d}}\naudiences: {vip: {library: vip, version: 1}}")


# -- loopwire status and loopwire vacuum ----------------------------------------------------------


def test_status_shows_size_on_disk_the_oldest_event_and_what_was_deleted(tmp_path: Path) -> None:
    config = tmp_path / "loopwire.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "loopwire.db")}}))
    store = SQLiteStore(tmp_path / "loopwire.db")
    store.append_sync([event(1, 100), event(2, 40), event(3, 1)], [[], [], []])
    asyncio.run(trim(store, cutoffs(events=60)))
    report = status_report(store, {})
    store.close()
    assert report["events"] == 2
    assert report["oldest_event_ms"] == NOW - 40 * DAY
    assert report["retention_deleted"] == {"events": 1, "delivered": 0, "skipped": 0, "dead": 0}
    disk = report["store"]
    assert disk["bytes"] == disk["file_bytes"] + disk["wal_bytes"] > 0 and disk["incremental_vacuum"]

    shown = json.loads(runner.invoke(cli, ["status", "--config", str(config), "--json"]).stdout)
    assert shown["oldest_event_ms"] == report["oldest_event_ms"] and shown["events"] == 2
    assert shown["store"]["bytes"] > 0
    table = runner.invoke(cli, ["status", "--config", str(config)])
    assert table.exit_code == 0, table.output
    assert "on disk (WAL" in table.output
    assert "oldest   event received 1972-08-18 00:00:00 UTC" in table.output  # NOW - 40 days
    assert "retention deleted 1 events" in table.output


def test_vacuum_switches_an_old_store_to_giving_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "loopwire.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)  # made as before migration 11's release: auto_vacuum none
    conn.close()
    config = tmp_path / "loopwire.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": str(path)}}))
    store = SQLiteStore(path)
    store.append_sync([event(n, 100, data={"blob": "x" * 4_000}) for n in range(1, 500)], [[]] * 499)
    asyncio.run(trim(store, cutoffs(events=30)))
    footprint = store.size_on_disk()
    store.close()
    assert not footprint.incremental_vacuum and footprint.free_bytes > 1_000_000
    assert "loopwire vacuum" in runner.invoke(cli, ["status", "--config", str(config)]).output

    done = runner.invoke(cli, ["vacuum", "--config", str(config)])
    assert done.exit_code == 0, done.output
    store = SQLiteStore(path)
    try:
        after = store.size_on_disk()
        assert after.incremental_vacuum and after.free_bytes == 0
        assert after.file_bytes < footprint.file_bytes / 10
        assert seqs(store) == [499]
    finally:
        store.close()
