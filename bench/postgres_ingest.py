"""Webhook ingest on a PostgreSQL store next to SQLite, same run (issue 11: "when to move").

    python -m bench.postgres_ingest [--duration 8] [--rounds 2]

A throwaway PostgreSQL server in a temp dir (tests/helpers/postgres.py: Debian's binaries, a Unix
socket only; as root it runs as the `postgres` user), a new database per run. The webhook benchmark's
paused run (every request a distinct signed Customer.io webhook, committed and queued for amplitude,
none sent; wrk -t2 -c64) against `loopwire serve` on SQLite as users run it (its ingest process, the
identity graph), on SQLite in one process (`server.ingest_process: false`, `identity.graph: false`:
what PostgreSQL runs today) and on PostgreSQL, interleaved. Each PostgreSQL run is checked as the
SQLite ones are: every 2xx answer is a row of its database. The server and the database share the
machine's two cores with wrk.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    LOOPWIRE_ENV,
    Result,
    WrkRun,
    amplitude_sandbox,
    free_port,
    loopwire_serve,
    pooled_rate,
    report,
    run_wrk,
    write_config,
)
from bench.webhook_ingest import SCRIPT, ingest_counters, loopwire_run, write_requests
from tests.helpers.postgres import Cluster

KINDS = ("sqlite", "sqlite-one-process", "postgres")


def postgres_run(work: Path, name: str, dsn: str, requests_file: Path, wrk_args: dict[str, Any]) -> WrkRun:
    run_dir = work / name
    run_dir.mkdir()
    with amplitude_sandbox(free_port(), run_dir / "sandbox.log") as sandbox:
        config = write_config(
            run_dir / "loopwire.yaml",
            run_dir / "unused.db",
            sandbox.url,
            server={"ingest_process": False},  # (the example turns it on; SQLite's only for now)
            sections={
                "store": {"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"},
                "identity": {"graph": False},
            },
            paused=True,
        )
        port = free_port()
        env = {**LOOPWIRE_ENV, "LOOPWIRE_PG_DSN": dsn}
        with loopwire_serve(config, port, run_dir / "loopwire.log", env) as server:
            args = [str(requests_file), str(wrk_args["threads"])]
            run = run_wrk(f"{server.url}/webhooks/customerio", SCRIPT, args, **wrk_args)
            counters = ingest_counters(server.url)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    stored = int(row[0]) if row else 0
    accepted = int(counters.get("accepted", 0))
    if run.non_2xx or run.repeats or accepted > stored or stored < run.ok - run.warmups:
        raise RuntimeError(
            f"{name}: {run.non_2xx} refusals, {run.repeats} repeats, {accepted} accepted, {stored} stored"
        )
    return run


def run(duration: int = 8, rounds: int = 2, connections: int = 64, count: int = 600_000) -> list[Result]:
    import tempfile

    cluster = Cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="loopwire-bench-pg-") as tmp:
            work = Path(tmp)
            requests_file = work / "requests.tsv"
            write_requests(requests_file, count, time.time())
            wrk_args = {"connections": connections, "threads": 2, "duration": duration}
            runs: dict[str, list[WrkRun]] = {kind: [] for kind in KINDS}
            for number in range(rounds):
                for kind in KINDS if number % 2 == 0 else tuple(reversed(KINDS)):
                    name = f"{kind}-{number}"
                    if kind == "postgres":
                        result = postgres_run(work, name, cluster.create_database(), requests_file, wrk_args)
                    else:
                        one = kind == "sqlite-one-process"
                        sections = {"identity": {"graph": False}} if one else None
                        result, _ = loopwire_run(
                            work,
                            name,
                            requests_file,
                            wrk_args,
                            paused=True,
                            in_process=one,
                            sections=sections,
                        )
                    runs[kind].append(result)
    finally:
        cluster.stop()
    details = {
        "rates_per_run": {k: [round(r.rate) for r in v] for k, v in runs.items()},
        "latency_p99_ms": {k: [round(r.latency_us["p99"] / 1000, 1) for r in v] for k, v in runs.items()},
        "command": "python -m bench.postgres_ingest",
    }
    return [
        Result(
            name="webhook ingest on PostgreSQL (one node, in the server's process)",
            value=pooled_rate(runs["postgres"]),
            unit="req/s",
            baseline=pooled_rate(runs["sqlite"]),
            baseline_label="SQLite as users run it",
            details=details,
        ),
        Result(
            name="the same, next to SQLite in one process (no ingest process, no identity graph)",
            value=pooled_rate(runs["postgres"]),
            unit="req/s",
            baseline=pooled_rate(runs["sqlite-one-process"]),
            baseline_label="SQLite in one process",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Webhook ingest on PostgreSQL vs SQLite.")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = run(args.duration, args.rounds)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
