"""Webhook ingest on PostgreSQL into a big log next to an empty one (issue 11: "store size and ingest
rate with 10 M events in the log vs an empty log; the rate must not fall more than 20 %").

    python -m bench.postgres_large_log                        # 1 million events in the log
    python -m bench.postgres_large_log --events 10000000 --cluster /var/tmp/loopwire-pg
                                                              # the issue's 10 million, kept for reuse

The big log is built by SQL in loopwire's schema, indexes and triggers (as bench/large_log.py builds
SQLite's; through the store's appends it took 11 minutes for 2 million): Customer.io message events
of the webhook benchmark's 20,000 users, received over the last 30 days, 544-byte bodies (the load's
mean is 550), in partitions of about a day each with their ids in `event_ids` (as the appends would
leave them), one amplitude outbox row each, then settled as delivered by `UPDATE` in chunks (the
tally triggers run as a courier's settlements would). With `--cluster` the
PostgreSQL cluster and its `loopwire_big` database are kept in that directory and reused.

Then bench/postgres_ingest.py's PostgreSQL run (one `loopwire serve` node, amplitude paused: every
event committed and queued, none sent; wrk -t2 -c64; every request a distinct signed webhook) against
a new database and against the big log, interleaved (empty, big, big, empty). What each big run
queued is settled before the next, so every run starts from a log of delivered events.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import Result, WrkRun, report
from bench.large_log import big_log_result
from bench.postgres_ingest import postgres_run
from bench.webhook_ingest import USERS, split, write_requests
from loopwire.store import postgres_partitions as partitions
from loopwire.store.postgres import Store
from loopwire.store.postgres_schema import APPEND_LOCK
from tests.helpers.postgres import Cluster

RATIO_TARGET = 0.80  # "must not fall more than 20 %"
BIG = "loopwire_big"
DAY_MS = 86_400_000
CHUNK = 250_000  # events a transaction of the build
BODY_BYTES = 550  # the load's mean


def build(dsn: str, events: int, now_ms: int) -> None:
    Store(dsn, recover=False).close()  # loopwire's schema, indexes and triggers
    start_ms = now_ms - 30 * DAY_MS
    step = max(1, (30 * DAY_MS) // max(1, events))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # a build, not ingest: no fsync per chunk
        with conn.transaction():  # partitions of about a day of the log each, as a node would make them
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            bound = partitions.top(conn)
            while bound <= events:
                bound = partitions.add_partition(
                    conn, bound, max(partitions.MIN_PARTITION_SEQS, events // 30)
                ).high
        for first in range(1, events + 1, CHUNK):
            last = min(events, first + CHUNK - 1)
            with conn.transaction():
                conn.execute(
                    "INSERT INTO events (seq, id, source, kind, channel, metric, user_id, time_ms, received_ms, body)"
                    " SELECT x, '01H' || lpad(x::text, 23, '0'), 'customerio', 'message', 'email',"
                    " (ARRAY['sent', 'delivered', 'opened', 'clicked'])[x %% 4 + 1],"
                    " 'user-' || lpad(((x * 7919) %% %s)::text, 5, '0'), %s + x * %s, %s + x * %s,"
                    " decode(repeat(md5(x::text), %s), 'hex') FROM generate_series(%s::bigint, %s::bigint) AS x",
                    (USERS, start_ms, step, start_ms, step, BODY_BYTES // 16, first, last),
                )
                conn.execute(  # the append's dedupe on id (PostgreSQL's migration 13)
                    "INSERT INTO event_ids (id, seq) SELECT id, seq FROM events WHERE seq BETWEEN %s AND %s",
                    (first, last),
                )
                conn.execute(
                    "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
                    " SELECT 'amplitude', seq, 'pending', received_ms, received_ms, received_ms FROM events"
                    " WHERE seq BETWEEN %s AND %s",
                    (first, last),
                )
            if last % 1_000_000 == 0:
                print(f"  built {last:,} of {events:,} events", flush=True)
        conn.execute("VACUUM ANALYZE events, event_ids")
    settle(dsn)


def settle(dsn: str) -> None:
    """Every pending amplitude row delivered, in chunks of 200,000 seqs (as a courier would settle)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT MIN(seq), MAX(seq) FROM outbox WHERE state = 'pending'").fetchone()
        if row is None or row[0] is None:
            return
        low, high = int(row[0]), int(row[1])
        for first in range(low, high + 1, 200_000):
            conn.execute(
                "UPDATE outbox SET state = 'delivered', attempts = 1"
                " WHERE dest = 'amplitude' AND state = 'pending' AND seq BETWEEN %s AND %s",
                (first, first + 199_999),
            )
        conn.execute("VACUUM ANALYZE outbox")


def held(dsn: str) -> tuple[int, float]:
    """(events in the log, the database's size in GB)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0), pg_database_size(current_database()) FROM events"
        ).fetchone()
    return (int(row[0]), int(row[1]) / 1e9) if row else (0, 0.0)


def run(
    events: int = 1_000_000,
    duration: int = 8,
    connections: int = 64,
    count: int = 400_000,
    cluster_dir: Path | None = None,
) -> list[Result]:
    cluster = Cluster(cluster_dir)
    try:
        built_s = 0.0
        if not cluster.has_database(BIG):
            started = time.perf_counter()
            build(cluster.create_database(BIG), events, int(time.time() * 1000))
            built_s = time.perf_counter() - started
        big = cluster.dsn(BIG)
        started = time.perf_counter()
        Store(big, recover=False).close()  # loopwire's migrations, if the kept log is older
        migrated_s = time.perf_counter() - started
        if migrated_s > 1:
            print(f"  {BIG} migrated in {migrated_s:.0f} s", flush=True)
        with tempfile.TemporaryDirectory(prefix="loopwire-bench-pg-large-") as tmp:
            work = Path(tmp)
            requests_file = work / "requests.tsv"
            write_requests(requests_file, count, time.time())
            halves = split(requests_file, 2)  # the big runs add to one log: each its own webhooks
            wrk_args = {"connections": connections, "threads": 2, "duration": duration}
            runs: dict[str, list[WrkRun]] = {"empty": [], "big": []}
            sizes: list[float] = []
            big_events = 0
            for number, kind in enumerate(("empty", "big", "big", "empty")):
                if kind == "big":
                    settle(big)
                    before, size = held(big)
                    if before < events:
                        raise RuntimeError(
                            f"{BIG} holds {before:,} events, fewer than the {events:,} asked for"
                        )
                    sizes.append(size)
                    big_events = max(big_events, before)
                    dsn = big
                else:
                    before, dsn = 0, cluster.create_database()
                result = postgres_run(
                    work, f"{kind}-{number}", dsn, halves[number // 2], wrk_args, before=before
                )
                runs[kind].append(result)
    finally:
        cluster.stop()
    return [
        big_log_result(
            f"webhook ingest on PostgreSQL into a log of {big_events:,} events ({sizes[0]:.1f} GB)",
            runs,
            {
                "events": big_events,
                "build_s": round(built_s, 1) if built_s else "reused",
                "database_gb": round(sizes[0], 2),
                "command": f"python -m bench.postgres_large_log --events {events}",
            },
            RATIO_TARGET,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Webhook ingest on PostgreSQL into a big log vs an empty one."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the big log")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument(
        "--cluster", type=Path, default=None, help="keep the PostgreSQL cluster here (its big log reused)"
    )
    args = parser.parse_args()
    results = run(args.events, args.duration, cluster_dir=args.cluster)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
