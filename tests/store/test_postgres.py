"""What only a shared database has to prove: several nodes (stores of one database) at once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import psycopg

from loopwire.store import Settlement, SQLiteStore
from loopwire.store.postgres import Store as PostgresStore
from loopwire.store.postgres import describe
from loopwire.store.postgres_schema import MIGRATIONS
from tests.store.conftest import event


def test_two_nodes_never_claim_one_row_and_each_claims_in_order(pg_dsn: str) -> None:
    nodes = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    nodes[0].append_sync([event(n) for n in range(600)], [["amplitude"]] * 600)
    claimed: list[list[int]] = [[], []]

    def drain(index: int) -> None:
        async def loop() -> None:
            while rows := await nodes[index].claim("amplitude", 25, now_ms=10_000):
                seqs = [row.seq for row in rows]
                assert seqs == sorted(seqs)
                claimed[index] += seqs
                await nodes[index].settle("amplitude", [Settlement(s, "delivered") for s in seqs], 10_001)

        asyncio.run(loop())

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == list(range(1, 601))
    assert claimed[0] and claimed[1]  # both took part
    assert nodes[1].counts()["amplitude"]["delivered"] == 600
    for node in nodes:
        node.close()


def test_a_starting_node_recovers_only_the_rows_of_nodes_that_are_gone(pg_dsn: str) -> None:
    first = PostgresStore(pg_dsn)
    first.append_sync([event(n) for n in range(5)], [["amplitude"]] * 5)
    assert len(asyncio.run(first.claim("amplitude", 3, now_ms=10_000))) == 3
    second = PostgresStore(pg_dsn)  # a second node starts while the first still sends
    assert second.recovered == 0 and second.counts()["amplitude"]["in_flight"] == 3
    assert [row.seq for row in asyncio.run(second.claim("amplitude", 10, now_ms=10_000))] == [4, 5]
    first.close()  # the first node stops (or dies: its connections close with it)
    third = PostgresStore(pg_dsn)
    assert third.recovered == 3
    assert [row.seq for row in asyncio.run(third.claim("amplitude", 10, now_ms=10_000))] == [1, 2, 3]
    second.close()
    third.close()


def test_nodes_appending_at_once_dedupe_and_keep_seqs_consecutive_in_commit_order(pg_dsn: str) -> None:
    nodes = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    fresh: list[list[bool]] = [[], []]

    def append(index: int) -> None:
        async def burst() -> list[list[bool]]:
            # both nodes send the same 200 ids, one request each, concurrently
            return await asyncio.gather(
                *(nodes[index].append([event(n)], [["amplitude"]]) for n in range(200))
            )

        fresh[index] = [new for (new,) in asyncio.run(burst())]

    threads = [threading.Thread(target=append, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a + b for a, b in zip(fresh[0], fresh[1], strict=True)] == [1] * 200  # each id new once
    assert nodes[0].event_count() == 200
    seqs = nodes[0].read(lambda c: [row[0] for row in c.execute("SELECT seq FROM outbox ORDER BY seq")])
    assert seqs == list(range(1, 201))
    for node in nodes:
        node.close()


def test_the_schema_is_sqlites_table_for_table_and_column_for_column(pg_dsn: str, tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "log.db").close()
    lite = sqlite3.connect(tmp_path / "log.db")
    tables = [name for (name,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    expected = {table: {row[1] for row in lite.execute(f"PRAGMA table_info({table})")} for table in tables}
    PostgresStore(pg_dsn).close()
    with psycopg.connect(pg_dsn) as conn:
        found: dict[str, set[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)"
        ):
            found.setdefault(table, set()).add(column)
        assert conn.execute("SELECT version FROM loopwire_schema").fetchone() == (len(MIGRATIONS),)
        partitioned = conn.execute("SELECT relname FROM pg_class WHERE relkind = 'p' ORDER BY relname")
        assert [name for (name,) in partitioned] == ["events", "outbox"]  # migration 13
    assert found.pop("loopwire_schema") == {"version"}  # SQLite's PRAGMA user_version
    assert found.pop("event_ids") == {"id", "seq"}  # the dedupe on id, off the partitioned log
    assert found.pop("log_partitions") == {"n", "low", "high"}
    assert found.pop("outbox") - expected.pop("outbox") == {"claimed_by"}  # which node has it in flight
    assert found == expected


def test_a_second_open_migrates_nothing_and_the_dsn_is_never_its_name(pg_dsn: str) -> None:
    PostgresStore(pg_dsn).close()
    store = PostgresStore(pg_dsn + " password=hunter2")
    assert "hunter2" not in store.path and store.path.startswith("loopwire_")
    assert describe("postgresql://ops:s3cret@db.internal:6432/loopwire") == "loopwire@db.internal:6432"
    store.close()


def test_a_resumed_destination_puts_back_only_this_nodes_rows(pg_dsn: str) -> None:
    here, there = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    here.append_sync([event(n) for n in range(4)], [["amplitude"]] * 4)
    asyncio.run(here.claim("amplitude", 1, now_ms=10_000))
    asyncio.run(there.claim("amplitude", 2, now_ms=10_000))
    assert here.requeue_in_flight("amplitude") == 1
    assert there.counts()["amplitude"] == {
        "pending": 2,
        "in_flight": 2,
        "delivered": 0,
        "dead": 0,
        "skipped": 0,
    }
    here.close()
    there.close()


def test_one_node_at_a_time_leads_and_a_stopped_leader_hands_on(pg_dsn: str) -> None:
    from collections.abc import Sequence

    from loopwire.audiences.engine import Engine
    from loopwire.audiences.holdouts import Experiment
    from loopwire.model import Event

    first, second = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    assert first.lead("audiences") and first.lead("audiences")
    assert not second.lead("audiences")
    assert second.lead("identity")  # another role, another lock

    def engine(store: PostgresStore) -> Engine:
        async def ingest(events: Sequence[Event]) -> list[bool]:
            return await store.append(events, [[] for _ in events])

        return Engine(store, {"cart": Experiment(name="Cart", salt="s", holdout_percent=10)}, ingest)

    second.append_sync([event(n) for n in range(3)], [[]] * 3)
    assert asyncio.run(engine(second).run_once()) == 0  # not the leader: leaves the log alone
    assert asyncio.run(engine(first).run_once()) > 0
    first.close()
    third = PostgresStore(pg_dsn)
    assert second.lead("audiences") and not third.lead("audiences")
    second.close()
    third.close()


def test_a_young_log_is_analyzed_each_time_it_has_doubled(pg_dsn: str) -> None:
    # A new database's plans are made for empty tables until its statistics exist; a node runs
    # ANALYZE from 1,000 events and again whenever the log has doubled (store/postgres.py). Only
    # that ANALYZE sets the partitioned parent's `reltuples`: autovacuum never analyzes it.
    store = PostgresStore(pg_dsn, recover=False)  # (no reaper thread: the rounds are called here)

    def reltuples(table: str = "events") -> float:
        sql = "SELECT reltuples FROM pg_class WHERE relname = ?"
        return float(store.read(lambda c: c.execute(sql, (table,)).fetchone()[0]))

    def round_() -> None:
        with store._raw() as conn:
            store._analyze_young_log(conn)

    try:
        store.append_sync([event(n) for n in range(999)], [["amplitude"]] * 999)
        round_()
        assert reltuples() == -1  # never analyzed: under 1,000 events
        store.append_sync([event(n) for n in range(999, 1_200)], [["amplitude"]] * 201)
        round_()
        assert reltuples() == 1_200 and reltuples("outbox") == 1_200 and reltuples("event_ids") == 1_200
        store.append_sync([event(n) for n in range(1_200, 2_000)], [["amplitude"]] * 800)
        round_()
        assert reltuples() == 1_200  # not doubled yet
        store.append_sync([event(n) for n in range(2_000, 2_400)], [["amplitude"]] * 400)
        round_()
        assert reltuples() == 2_400
    finally:
        store.close()
