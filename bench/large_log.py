"""Webhook ingest into a big log next to an empty one (issue 13, item 3: ≥ 0.85 with 10 M events).

    python -m bench.large_log                      # 2 million events in the log (what `make bench` runs)
    python -m bench.large_log --events 10000000    # the issue's 10 million (builds for several minutes)
    python -m bench.large_log --events 10000000 --log /var/tmp/big.db   # built once, then reused

The big log is built through loopwire's schema, indexes and triggers in large transactions (not through
the server, which would take an hour): `--events` Customer.io message events of the same 20,000 users
the load sends (so `events_user` is as deep and as spread as in production), ULID-ordered ids older
than the load's, received over the last 30 days, 550-byte bodies (the load's mean), and one amplitude
outbox row each, delivered (settled by `UPDATE`, so the tally triggers run as a courier's would). Its
identity graph is marked as folded to the end (its cost is bench/identity_cost.py's subject).

Then `bench.webhook_ingest`'s paused run (`loopwire serve`, amplitude destination paused: every event
committed and queued, none sent; wrk -t2 -c64 -d8s; every request a distinct signed webhook) against
a fresh store and against the big log, interleaved (empty, big, big, empty); the big log's runs add to
the same file, so it only grows. The durability check counts each run's own rows.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, WrkRun, mark_identity_folded, pooled_rate, report
from bench.webhook_ingest import USERS, loopwire_run, split, write_requests
from loopwire.store import SQLiteStore

RATIO_TARGET = 0.85
BODY_BYTES = 550
DAY_MS = 86_400_000


def build(path: Path, events: int, now_ms: int) -> None:
    SQLiteStore(path).close()  # loopwire's schema, indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    start_ms = now_ms - 30 * DAY_MS
    step = max(1, (30 * DAY_MS) // max(1, events))
    chunk = 250_000
    for first in range(1, events + 1, chunk):
        last = min(events, first + chunk - 1)
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
            " INSERT INTO events (seq, id, source, kind, channel, metric, user_id, time_ms, received_ms, body)"
            " SELECT x, printf('01H%023d', x), 'customerio', 'message', 'email',"
            " CASE x % 4 WHEN 0 THEN 'sent' WHEN 1 THEN 'delivered' WHEN 2 THEN 'opened' ELSE 'clicked' END,"
            " printf('user-%05d', (x * 7919) % ?), ? + x * ?, ? + x * ?, randomblob(?) FROM c",
            (first, last, USERS, start_ms, step, start_ms, step, BODY_BYTES),
        )
        conn.execute(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
            " SELECT 'amplitude', seq, 'pending', received_ms, received_ms, received_ms FROM events"
            " WHERE seq BETWEEN ? AND ?",
            (first, last),
        )
        conn.execute(
            "UPDATE outbox SET state = 'delivered', attempts = 1 WHERE dest = 'amplitude' AND seq BETWEEN ? AND ?",
            (first, last),
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def prepare(path: Path, events: int) -> tuple[int, float]:
    """The big log at `path`: built if missing, else reused (it holds `events` or more: the runs of
    an earlier benchmark added theirs, whose queued rows are settled here). Its identity graph is
    marked as folded to its end.
    Returns (events in it, seconds the build took; 0 if reused)."""
    built_s = 0.0
    if not path.exists():
        started = time.perf_counter()
        build(path, events, int(time.time() * 1000))
        built_s = time.perf_counter() - started
    SQLiteStore(path, recover=False).close()  # loopwire's migrations, if it is older
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        held = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        # what earlier runs queued (their destination was paused) is settled as the build settles
        # rows, so every run starts from the same state: a log of delivered events, no backlog
        conn.execute("BEGIN")
        conn.execute(
            "UPDATE outbox SET state = 'delivered', attempts = 1 WHERE dest = 'amplitude' AND state = 'pending'"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # not left for the server's first commits
    finally:
        conn.close()
    if held < events:
        raise RuntimeError(f"{path} holds {held:,} events, fewer than the {events:,} asked for")
    mark_identity_folded(path, held)
    return held, built_s


def run(
    events: int = 2_000_000,
    duration: int = 8,
    connections: int = 64,
    count: int = 500_000,
    log: Path | None = None,
) -> list[Result]:
    """`log`: where the big log is kept between runs (built there if missing); else a temp dir."""
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-large-") as tmp:
        work = Path(tmp)
        big = log or work / "big.db"
        events, built_s = prepare(big, events)
        size_gb = sum(p.stat().st_size for p in big.parent.glob(big.name + "*")) / 1e9
        requests_file = work / "requests.tsv"
        write_requests(requests_file, count, time.time())
        # the big runs add to one store: each sends its own half (else the second re-sends the
        # first's webhooks, answered as duplicates without a row); an empty run uses its pair's half
        halves = split(requests_file, 2)
        wrk_args = {"connections": connections, "threads": 2, "duration": duration}
        runs: dict[str, list[WrkRun]] = {"empty": [], "big": []}
        for number, kind in enumerate(("empty", "big", "big", "empty")):
            result, _ = loopwire_run(
                work,
                f"{kind}-{number}",
                halves[number // 2],
                wrk_args,
                paused=True,
                store=big if kind == "big" else None,
            )
            runs[kind].append(result)
    return [
        big_log_result(
            f"webhook ingest into a log of {events:,} events ({size_gb:.1f} GB)",
            runs,
            {
                "events": events,
                "build_s": round(built_s, 1) if built_s else "reused",
                "store_gb": round(size_gb, 2),
                "command": f"python -m bench.large_log --events {events}",
            },
            RATIO_TARGET,
        )
    ]


def big_log_result(
    name: str, runs: dict[str, list[WrkRun]], details: dict[str, Any], target: float
) -> Result:
    """The big log's pooled rate next to the empty log's, with each run, pair and p99 (also
    bench/postgres_large_log.py's)."""
    paired = [b.rate / e.rate for b, e in zip(runs["big"], runs["empty"], strict=True)]
    return Result(
        name=name,
        value=pooled_rate(runs["big"]),
        unit="req/s",
        baseline=pooled_rate(runs["empty"]),
        baseline_label="an empty log",
        target=target,
        details={
            **details,
            "rates_per_run": {k: [round(r.rate) for r in v] for k, v in runs.items()},
            "ratio_per_pair": [round(r, 3) for r in paired],
            "steal_per_run": {k: [r.steal for r in v] for k, v in runs.items()},
            "latency_p99_ms": {k: [round(r.latency_us["p99"] / 1000, 1) for r in v] for k, v in runs.items()},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Webhook ingest into a big log vs an empty one.")
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the big log")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--log", type=Path, default=None, help="keep the big log here (reused if present)")
    args = parser.parse_args()
    results = run(args.events, args.duration, log=args.log)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
