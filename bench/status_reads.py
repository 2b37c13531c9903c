"""What status, the console and `/metrics` cost on a big log (issue 13, item 2).

    python -m bench.status_reads                     # 2 million events (what `make bench` runs)
    python -m bench.status_reads --events 10000000   # the issue's 10 million (builds for ~2 minutes)

Builds a store with `--events` events, one outbox row each over three destinations (98 % delivered,
1 % dead with four reasons, 1 % skipped, a thousand pending), through loopwire's own schema and
triggers. Then times, median of 20, the status read loopwire makes now (`app.status_report`: the
tally and the live backlog) next to the full counts it made before (the baseline, same store, same
run), what a `/metrics` scrape reads from the store (`app.monitoring_snapshot`) and the newest 100 dead
letters (`loopwire dlq list`). The console's pages have a benchmark of their own
(bench/console_pages.py).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Result, report
from loopwire.app import monitoring_snapshot, status_report
from loopwire.config import parse_config
from loopwire.store import SQLiteStore

DESTS = ("amplitude", "segment", "customerio")
TARGET_MS = 50.0
REPEAT = 20
CONFIG = """
destinations:
  amplitude: {type: amplitude, api_key: k, region: us}
  segment: {type: segment, write_key: k, region: us}
  customerio: {type: customerio, site_id: s, api_key: k, region: us, identifier: user_id}
"""


def build(path: Path, events: int) -> None:
    SQLiteStore(path).close()  # loopwire's schema, tally and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    chunk = 500_000
    for start in range(1, events + 1, chunk):
        end = min(events, start + chunk - 1)
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
            " INSERT INTO events (seq, id, source, kind, name, user_id, time_ms, received_ms, body)"
            " SELECT x, printf('evt-%010d', x), 'segment', 'track', 'Viewed', printf('user-%d', x % 50000),"
            " x, x, x'00' FROM c",
            (start, end),
        )
        conn.execute(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
            " SELECT CASE seq % 3 WHEN 0 THEN 'amplitude' WHEN 1 THEN 'segment' ELSE 'customerio' END,"
            " seq, 'pending', seq, seq, seq FROM events WHERE seq BETWEEN ? AND ?",
            (start, end),
        )
        # settled as a courier would (UPDATE, so the triggers keep the tally), the last 1,000 left pending
        conn.execute(
            "UPDATE outbox SET state = CASE WHEN seq % 100 = 7 THEN 'dead' WHEN seq % 100 = 8 THEN 'skipped'"
            " ELSE 'delivered' END,"
            " reason = CASE WHEN seq % 100 = 7 THEN 'http_400_' || (seq % 4) WHEN seq % 100 = 8 THEN 'no_user_id' END"
            " WHERE seq BETWEEN ? AND ? AND seq <= ?",
            (start, end, events - 1_000),
        )
        conn.execute("COMMIT")
    conn.close()


def full_counts(store: SQLiteStore) -> dict[str, Any]:
    """The status read as it was before the tally: every row counted."""

    def query(c: sqlite3.Connection) -> dict[str, Any]:
        return {
            "events": c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            "states": c.execute("SELECT dest, state, COUNT(*) FROM outbox GROUP BY dest, state").fetchall(),
            "reasons": c.execute(
                "SELECT dest, state, COALESCE(reason, ''), COUNT(*) FROM outbox"
                " WHERE state IN ('dead', 'skipped') GROUP BY 1, 2, 3"
            ).fetchall(),
        }

    return store.read(query)


def median_ms(work: Callable[[], Any], repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(events: int = 2_000_000) -> list[Result]:
    config = parse_config(CONFIG, env={})
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-status-") as tmp:
        path = Path(tmp) / "loopwire.db"
        started = time.perf_counter()
        build(path, events)
        built_s = time.perf_counter() - started
        store = SQLiteStore(path, recover=False)
        try:
            status = status_report(store, config.destinations)
            full = full_counts(store)
            assert status["events"] == full["events"] == events, (status["events"], full["events"])
            for dest, state, n in full["states"]:
                assert status["destinations"][dest][state] == n, (dest, state)
            now_ms = median_ms(lambda: status_report(store, config.destinations))
            # what a /metrics scrape reads: outbox depth and oldest waiting age, audiences, identity
            metrics_ms = median_ms(lambda: monitoring_snapshot(store, config, int(time.time() * 1000)))
            dlq_ms = median_ms(lambda: store.dead_letters(limit=100))
            before_ms = median_ms(lambda: full_counts(store), repeat=3)
        finally:
            store.close()
    details = {"events": events, "build_s": round(built_s, 1), "command": "python -m bench.status_reads"}
    return [
        Result(
            name=f"status read, {events:,} events",
            value=now_ms,
            unit="ms",
            baseline=before_ms,
            baseline_label="full counts",
            target=TARGET_MS,
            target_kind="value<=",
            higher_is_better=False,
            details=details,
        ),
        *(
            Result(
                name=name,
                value=value,
                unit="ms",
                target=TARGET_MS,
                target_kind="value<=",
                higher_is_better=False,
            )
            for name, value in (
                ("/metrics store snapshot", metrics_ms),
                ("dead letters, newest 100", dlq_ms),
            )
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Status, console and /metrics reads on a big log.")
    parser.add_argument("--events", type=int, default=2_000_000)
    args = parser.parse_args()
    results = run(args.events)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
