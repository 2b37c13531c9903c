"""Retention on a real PostgreSQL database (the session's throwaway server), at an injected `now`:
old partitions dropped whole, the rest trimmed row by row by SQLite's rules, dedupe across
partitions, migration 13 of a database with rows, partitions the appender makes, the lock a drop
gives up on, one node trimming for all, and `loopwire status` / `loopwire vacuum` afterwards.

Partitions are made small here (`MIN_PARTITION_SEQS` = 10) so that a handful of events spans
several of them; what decides a partition's size is tested apart."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from loopwire.app import status_report
from loopwire.cli import app as cli
from loopwire.config import parse_config
from loopwire.pipeline.retention import Retention
from loopwire.store import Settlement, postgres_partitions, postgres_retention
from loopwire.store.postgres import Store as PostgresStore
from loopwire.store.postgres_schema import MIGRATIONS
from loopwire.store.retention import Trimmed, deleted, trim
from tests.conftest import wait_until
from tests.store.test_retention import DAY, NOW, cutoffs, event

runner = CliRunner()


@pytest.fixture(autouse=True)
def small_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_partitions, "MIN_PARTITION_SEQS", 10)


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_dsn)
    yield s
    s.close()


def settle(store: PostgresStore, states: dict[int, str], at_ms: int) -> None:
    """Claim every due row of amplitude and settle these seqs at `at_ms` (others: pending again)."""

    async def run() -> None:
        claimed = await store.claim("amplitude", 10_000, NOW * 2)
        await store.settle(
            "amplitude",
            [
                Settlement(row.seq, states.get(row.seq, "pending"), at_ms, reason="http_400")
                for row in claimed
            ],
            at_ms,
        )

    asyncio.run(run())


def seqs(store: PostgresStore) -> list[int]:
    return store.read(lambda c: [seq for (seq,) in c.execute("SELECT seq FROM events ORDER BY seq")])


def outbox(store: PostgresStore) -> dict[int, str]:
    rows = store.read(lambda c: c.execute("SELECT seq, state FROM outbox").fetchall())
    return dict(rows)


def tables(store: PostgresStore) -> set[str]:
    rows = store.read(
        lambda c: c.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ '^(events|outbox)_p[0-9]+$'"
        ).fetchall()
    )
    return {name for (name,) in rows}


def bounds(store: PostgresStore) -> list[tuple[int, int, int]]:
    return store.read(lambda c: c.execute("SELECT n, low, high FROM log_partitions ORDER BY n").fetchall())


def ids(store: PostgresStore) -> dict[str, int]:
    return dict(store.read(lambda c: c.execute("SELECT id, seq FROM event_ids").fetchall()))


def test_an_old_partition_with_owed_rows_is_trimmed_by_sqlites_rules_and_a_young_one_waits(
    store: PostgresStore,
) -> None:
    # partition 2 (seqs 1-10), all 100 days old: 1 delivered, 2 pending, 3 dead, 4 skipped, 5 for no
    # destination, 6-10 delivered; partition 3: 11 (100 days old, delivered), 12 (a day old)
    routes = [["amplitude"]] * 4 + [[]] + [["amplitude"]] * 5
    store.append_sync([event(n, 100) for n in range(1, 11)], routes)
    store.append_sync([event(11, 100), event(12, 1)], [["amplitude"], ["amplitude"]])
    states = {1: "delivered", 3: "dead", 4: "skipped"} | {seq: "delivered" for seq in range(6, 12)}
    settle(store, states, NOW - 99 * DAY)
    before = store.counts()["amplitude"]

    trimmed = asyncio.run(trim(store, cutoffs(events=30, delivered=5)))
    # partition 2 stays for 2 (pending) and 3 (dead); its other events went one by one, with their
    # rows. 11 is old but waits for its partition, which holds a young event; its delivered row,
    # settled 99 days ago, went (`delivered` is 5 days).
    assert seqs(store) == [2, 3, 11, 12] and "events_p2" in tables(store)
    assert trimmed == Trimmed(events=8, delivered=7, skipped=1, dead=0)
    assert outbox(store) == {2: "pending", 3: "dead", 12: "pending"}
    assert deleted(store) == {"events": 8, "delivered": 7, "skipped": 1, "dead": 0}
    assert store.counts()["amplitude"] == before  # lifetime totals; the dead letter is still there
    assert store.event_count() == 4 and store.last_seq() == 12
    assert set(ids(store)) == {"evt-0002", "evt-0003", "evt-0011", "evt-0012"}
    assert asyncio.run(trim(store, cutoffs(events=30, delivered=5))).rows == 0

    asyncio.run(trim(store, cutoffs(events=30, dead=90)))  # the dead letter died 99 days ago
    assert 3 not in outbox(store) and seqs(store) == [2, 11, 12]
    assert store.counts()["amplitude"]["dead"] == 0


def fill(store: PostgresStore) -> None:
    """Partition 2: seqs 1-10, 100 days old, all delivered 99 days ago. Partition 3: seqs 11-20,
    100 days old, delivered except 15 (pending). Then seq 21, a day old (the newest)."""
    store.append_sync([event(n, 100) for n in range(1, 11)], [["amplitude"]] * 10)
    store.append_sync([event(n, 100) for n in range(11, 21)], [["amplitude"]] * 10)
    store.append_sync([event(21, 1)], [["amplitude"]])
    states = {seq: "delivered" for seq in range(1, 21) if seq != 15}
    settle(store, states, NOW - 99 * DAY)


def test_an_old_delivered_partition_is_dropped_whole_and_one_with_an_owed_row_is_trimmed(
    store: PostgresStore,
) -> None:
    fill(store)
    assert [(n, high) for n, _, high in bounds(store)][:3] == [(1, 1), (2, 11), (3, 21)]
    assert {"events_p2", "outbox_p2", "events_p3", "outbox_p3"} <= tables(store)
    delivered = store.counts()["amplitude"]["delivered"]

    trimmed = asyncio.run(trim(store, cutoffs(events=30)))

    # partitions 1 (empty) and 2 are gone whole, tables and all
    assert not {"events_p1", "outbox_p1", "events_p2", "outbox_p2"} & tables(store)
    assert [n for n, _, _ in bounds(store)][:2] == [3, 4]
    # partition 3 stays for its pending row (15); its other events went one by one
    assert "events_p3" in tables(store)
    assert seqs(store) == [15, 21]
    assert outbox(store) == {15: "pending", 21: "pending"}
    assert trimmed == Trimmed(events=19, delivered=19, skipped=0, dead=0)
    assert deleted(store) == {"events": 19, "delivered": 19, "skipped": 0, "dead": 0}
    assert store.counts()["amplitude"]["delivered"] == delivered == 19  # a lifetime total
    assert store.event_count() == 2 and store.last_seq() == 21
    assert ids(store) == {"evt-0015": 15, "evt-0021": 21}
    report = status_report(store, {})
    assert report["events"] == 2 and report["oldest_event_ms"] == NOW - 100 * DAY  # seq 15's

    # a dropped event's id is new again (past the dedupe horizon); a kept one is still a duplicate
    assert store.append_sync([event(3, 100), event(15, 100)], [[], []]) == [True, False]
    assert store.last_seq() == 22 and store.event_count() == 3


def test_dedupe_holds_across_partitions(store: PostgresStore) -> None:
    fill(store)
    assert seqs(store)[-1] == 21  # in partition 4 now; ids of partitions 2 and 3 are still known
    assert store.append_sync([event(2, 100), event(12, 100), event(22, 1)], [["amplitude"]] * 3) == [
        False,
        False,
        True,
    ]
    assert store.last_seq() == 22 and ids(store)["evt-0022"] == 22


def test_nothing_kept_or_newer_than_a_readers_cursor_goes(store: PostgresStore) -> None:
    fill(store)
    keep = ("name = ?", ("Viewed",))  # every event of the fixture is a "Viewed"
    assert asyncio.run(trim(store, cutoffs(events=30), keep)).events == 0
    assert seqs(store) == list(range(1, 22)) and "events_p2" in tables(store)
    asyncio.run(trim(store, cutoffs(events=30), below=11))  # the reader has read seqs 1-10 only
    assert seqs(store) == list(range(11, 22)) and "events_p2" not in tables(store)
    assert "events_p3" in tables(store)


def test_the_newest_events_partition_is_never_dropped(store: PostgresStore) -> None:
    store.append_sync([event(n, 100) for n in range(1, 11)], [[]] * 10)  # fills partition 2 exactly
    asyncio.run(trim(store, cutoffs(events=30)))
    # seq 10, the newest, stays (its seq would be given out again), and so does its partition
    assert seqs(store) == [10] and "events_p2" in tables(store)
    assert store.append_sync([event(11, 1)], [[]]) == [True] and store.last_seq() == 11


def test_a_drop_that_cannot_get_its_locks_gives_up_and_puts_the_ids_back(
    store: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_retention, "DROP_PAUSE_S", 0.01)
    fill(store)
    with psycopg.connect(pg_dsn) as reader:  # a long read of the log holds a lock on every partition
        reader.execute("SELECT COUNT(*) FROM events").fetchone()
        trimmed = asyncio.run(trim(store, cutoffs(events=30)))
        assert "events_p2" in tables(store) and set(range(1, 11)) <= set(seqs(store))  # not dropped …
        assert set(range(1, 11)) <= set(ids(store).values())  # … and its ids are known again
        assert store.append_sync([event(4, 100)], [[]]) == [False]  # so its events are duplicates
        # partition 3's rows went one by one meanwhile (row locks only); 2's wait to go whole
        assert trimmed.events == 9
    asyncio.run(trim(store, cutoffs(events=30)))  # the reader is done: the next run drops it
    assert "events_p2" not in tables(store)
    assert seqs(store) == [15, 21]


def test_the_appender_makes_the_partitions_a_group_needs(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks: list[int] = []  # the seqs the appender asked partitions through
    cover = postgres_partitions.cover

    def looking(conn: psycopg.Connection[Any], last: int, through: int, now_ms: int | None) -> int:
        looks.append(through)
        return cover(conn, last, through, now_ms)

    monkeypatch.setattr(postgres_partitions, "cover", looking)
    # made at start: 2 for the first seqs, 3 ahead
    assert [(low, high) for _, low, high in bounds(store)][1:] == [(1, 11), (11, 21)]
    store.append_sync([event(n, 1) for n in range(1, 36)], [["amplitude"]] * 35)  # past the last bound
    assert seqs(store) == list(range(1, 36)) and len(outbox(store)) == 35
    made = bounds(store)
    assert [(low, high) for _, low, high in made][3:] == [(21, 36)]  # one for the rest of the group
    assert all(a[2] == b[1] for a, b in itertools.pairwise(made))
    assert looks == [35]
    # past it again, with a duplicate: written once, the second time, after the partition is made
    fresh = store.append_sync([event(n, 1) for n in (5, 36, 37)], [["amplitude"]] * 3)
    assert fresh == [False, True, True] and seqs(store) == list(range(1, 38)) and len(outbox(store)) == 37
    assert looks == [35, 38] and set(ids(store)) == {f"evt-{n:04d}" for n in range(1, 38)}
    _, low, high = bounds(store)[-1]
    assert low == 36 and high > 38
    store.append_sync([event(38, 1)], [["amplitude"]])  # below the bound it knows: no look
    assert looks == [35, 38] and seqs(store) == list(range(1, 39))


def test_a_partition_made_by_a_group_that_failed_is_made_again(store: PostgresStore) -> None:
    # The group that makes a partition dies before COMMIT (its connection is cut by a job after the
    # appends): the partition goes with its transaction, so the writer must not count on it when it
    # runs that group's append again alone.
    entered, gate = threading.Event(), threading.Event()
    blocker = store.submit(lambda c: entered.set() or gate.wait(10))
    assert entered.wait(10)  # the writer is busy: what comes next is queued as one group
    with ThreadPoolExecutor(1) as pool:
        appended = pool.submit(store.append_sync, [event(n, 1) for n in range(1, 26)], [["amplitude"]] * 25)
        wait_until(lambda: store._jobs.qsize() == 1, what="the append queued")
        cut = store.submit(lambda c: c.raw.execute("SELECT pg_terminate_backend(pg_backend_pid())"))
        gate.set()
        assert appended.result(30) == [True] * 25
    blocker.result(10)
    with pytest.raises(psycopg.OperationalError):
        cut.result(10)
    assert seqs(store) == list(range(1, 26)) and len(outbox(store)) == 25
    assert bounds(store)[-1][1] == 21 and bounds(store)[-1][2] > 25


def test_the_next_partition_holds_about_a_day_of_the_log(store: PostgresStore, pg_dsn: str) -> None:
    # 50 events an hour for two days: the last day's rate is 1,200 events a partition
    hours = [event(n, 2 - n / 50 / 24) for n in range(1, 2_401)]
    store.append_sync(hours, [[]] * len(hours))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert postgres_partitions.ensure_ahead(conn, NOW)
        low, high = conn.execute("SELECT low, high FROM log_partitions ORDER BY n DESC LIMIT 1").fetchone()
        assert 1_150 <= high - low <= 1_250
        assert not postgres_partitions.ensure_ahead(conn, NOW)  # one ahead is enough


def test_enqueue_does_not_queue_an_event_that_is_gone(store: PostgresStore) -> None:
    store.append_sync([event(n, 100) for n in range(1, 11)], [[]] * 9 + [["amplitude"]])
    store.append_sync([event(11, 1)], [[]])
    asyncio.run(trim(store, cutoffs(events=30)))
    assert seqs(store) == [10, 11]  # partition 2 stays for 10 (pending): 1-9 went one by one
    # a backfill of seq 1 (trimmed) queues nothing: no outbox row without its event
    assert store.enqueue("amplitude", [1, 10, 11], NOW, resend=False) == 1
    assert outbox(store) == {10: "pending", 11: "pending"}


def test_migration_13_keeps_the_rows_and_seqs_of_a_version_12_database(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE loopwire_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO loopwire_schema (version) VALUES (12)")
        for script in MIGRATIONS[:12]:  # a database as the last release left it
            conn.execute(script)
        for n in range(1, 41):
            conn.execute(
                "INSERT INTO events (seq, id, source, kind, time_ms, received_ms, body)"
                " VALUES (%s, %s, 's', 'track', 0, 0, '\\x00')",
                (n, f"e{n}"),
            )
            conn.execute(
                "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
                " VALUES ('a', %s, 'pending', 0, 0, 0)",
                (n,),
            )
        conn.execute("UPDATE outbox SET state = 'delivered' WHERE seq <= 30")
        (before,) = conn.execute("SELECT pg_relation_filenode('events')").fetchone()
    store = PostgresStore(pg_dsn)
    try:
        assert seqs(store) == list(range(1, 41))
        assert store.counts()["a"] == {
            "pending": 10,
            "in_flight": 0,
            "delivered": 30,
            "dead": 0,
            "skipped": 0,
        }
        # the old table is partition 1 as it was (the same file: not rewritten), the next one follows
        assert (
            store.read(lambda c: c.execute("SELECT pg_relation_filenode('events_p1')").fetchone()[0])
            == before
        )
        assert bounds(store)[0][::2] == (1, 41) and bounds(store)[1][1] == 41
        assert len(ids(store)) == 40
        old_id = msgspec.structs.replace(event(0, 1), id="e7")
        assert store.append_sync([event(1, 1), old_id], [["a"], ["a"]]) == [True, False]
        assert store.last_seq() == 41 and store.event_count() == 41
    finally:
        store.close()


def test_one_node_trims_a_shared_database(pg_dsn: str) -> None:
    document = {
        "store": {"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}", "retention": {"events": "30d"}},
    }
    config = parse_config(yaml.safe_dump(document), env={"LOOPWIRE_PG_DSN": pg_dsn})
    first, second = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    try:
        fill(first)
        here = Retention(first, config, clock=lambda: NOW / 1000)
        there = Retention(second, config, clock=lambda: NOW / 1000)
        assert asyncio.run(here.run_once()).events == 19
        assert asyncio.run(there.run_once()) == Trimmed() and not second.lead("retention")
        assert seqs(first) == [15, 21]
    finally:
        first.close()
        second.close()


def test_status_after_a_drop_and_vacuum_says_there_is_nothing_to_do(
    tmp_path: Path, store: PostgresStore, pg_dsn: str
) -> None:
    bulky = {"data": {"blob": os.urandom(50_000).hex()}}  # 100 kB a row, that compresses little
    store.append_sync([event(n, 100, **bulky) for n in range(1, 21)], [[]] * 20)
    store.append_sync([event(21, 1)], [[]])
    size = store.size_on_disk().file_bytes
    asyncio.run(trim(store, cutoffs(events=30)))
    assert not {"events_p2", "events_p3"} & tables(store)
    assert store.size_on_disk().file_bytes < size - 500_000  # the partition's files went with it

    config = tmp_path / "loopwire.yaml"
    config.write_text(yaml.safe_dump({"store": {"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"}}))
    env = {"LOOPWIRE_PG_DSN": pg_dsn}
    shown = runner.invoke(cli, ["status", "--config", str(config)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "1 events in" in shown.output and "retention deleted 20 events" in shown.output
    assert "oldest   event received 1972-09-26" in shown.output  # NOW - 1 day: seq 21
    done = runner.invoke(cli, ["vacuum", "--config", str(config)], env=env)
    assert done.exit_code == 0, done.output
    assert "nothing to do" in done.output
