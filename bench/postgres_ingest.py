"""Ingest on a PostgreSQL store next to SQLite, same run (issue 11: "when to move").

    python -m bench.postgres_ingest [--duration 8] [--rounds 2] [--only webhooks,batch,nodes]

A throwaway PostgreSQL server in a temp dir (tests/helpers/postgres.py: Debian's binaries, a Unix
socket only; as root it runs as the `postgres` user), a new database per run. The webhook benchmark's
paused run (every request a distinct signed Customer.io webhook, committed and queued for amplitude,
none sent; wrk -t2 -c64) against `loopwire serve` on SQLite as users run it (its ingest process, the
identity graph), on SQLite in one process (`server.ingest_process: false`, `identity.graph: false`:
what PostgreSQL runs today) and on PostgreSQL, interleaved. Each PostgreSQL run is checked as the
SQLite ones are: every 2xx answer is a row of its database. The server and the database share the
machine's two cores with wrk.

Batched: `bench.batch_ingest`'s Amplitude `/batch` run (100 events a body, every id fresh, no
destination; wrk -t2 -c64) on SQLite as users run it and on PostgreSQL, interleaved; the same check
(100 stored events per 2xx, none twice).

Nodes: two `loopwire serve` nodes on one PostgreSQL database, each sent half the webhooks by its own
wrk (-t1 -c32, disjoint request files) at once, against one node sent all of them (-t2 -c64): the same
64 connections in all. On one machine the two nodes share its two cores with the database and wrk, so
this shows whether nodes contend in the database (the append lock, the tallies), not what a second
machine adds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import time
from pathlib import Path
from typing import Any

import psycopg
from ulid import ULID

from bench import batch_ingest
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
from bench.webhook_ingest import SCRIPT, ingest_counters, loopwire_run, split, write_requests
from tests.helpers.postgres import Cluster

KINDS = ("sqlite", "sqlite-one-process", "postgres")
PARTS = ("webhooks", "batch", "nodes")
# What a PostgreSQL node runs with: the ingest process and the identity graph are SQLite's only.
PG_SECTIONS: dict[str, Any] = {
    "store": {"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"},
    "identity": {"graph": False},
}
PG_SERVER = {"ingest_process": False}


def pg_counts(dsn: str) -> dict[str, int]:
    """`batch_ingest.store_counts` of a PostgreSQL database."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM events").fetchone()
        found = {"events": int(row[0]), "distinct_ids": int(row[1])} if row else {}
        for state, n in conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            found[f"outbox_{state}"] = int(n)
    return found


def postgres_run(
    work: Path, name: str, dsn: str, requests_file: Path, wrk_args: dict[str, Any], before: int = 0
) -> WrkRun:
    """One node on the database `dsn`, which holds `before` events already (bench/postgres_large_log.py)."""
    run_dir = work / name
    run_dir.mkdir()
    with amplitude_sandbox(free_port(), run_dir / "sandbox.log") as sandbox:
        config = write_config(
            run_dir / "loopwire.yaml",
            run_dir / "unused.db",
            sandbox.url,
            server=PG_SERVER,  # (the example turns it on; SQLite's only for now)
            sections=PG_SECTIONS,
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
    stored = (int(row[0]) if row else 0) - before  # the run's own
    accepted = int(counters.get("accepted", 0))
    duplicates = int(counters.get("duplicate", 0))
    if run.non_2xx or run.repeats or duplicates or accepted > stored or stored < run.ok - run.warmups:
        raise RuntimeError(
            f"{name}: {run.non_2xx} refusals, {run.repeats} repeats, {duplicates} duplicates,"
            f" {accepted} accepted, {stored} stored"
        )
    return run


def nodes_run(
    work: Path, name: str, dsn: str, files: list[Path], wrk_args: dict[str, Any]
) -> tuple[float, list[WrkRun]]:
    """len(files) nodes on one database, node k sent files[k] by a wrk of its own, all at once;
    returns the requests per second of all nodes together and each node's run."""
    run_dir = work / name
    run_dir.mkdir()
    nodes = len(files)
    per_node = {
        **wrk_args,
        "connections": wrk_args["connections"] // nodes,
        "threads": wrk_args["threads"] // nodes,
    }
    env = {**LOOPWIRE_ENV, "LOOPWIRE_PG_DSN": dsn}
    with amplitude_sandbox(free_port(), run_dir / "sandbox.log") as sandbox:
        config = write_config(
            run_dir / "loopwire.yaml",
            run_dir / "unused.db",
            sandbox.url,
            server=PG_SERVER,
            sections=PG_SECTIONS,
            paused=True,
        )
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(loopwire_serve(config, free_port(), run_dir / f"node-{k}.log", env))
                for k in range(nodes)
            ]
            with concurrent.futures.ThreadPoolExecutor(nodes) as pool:
                futures = [
                    pool.submit(
                        run_wrk,
                        f"{server.url}/webhooks/customerio",
                        SCRIPT,
                        [str(file), str(per_node["threads"])],
                        **per_node,
                    )
                    for server, file in zip(servers, files, strict=True)
                ]
                runs = [f.result() for f in futures]
            accepted = sum(int(ingest_counters(server.url).get("accepted", 0)) for server in servers)
    stored = pg_counts(dsn)["events"]
    answered = sum(r.ok - r.warmups for r in runs)
    if any(r.non_2xx or r.repeats for r in runs) or accepted > stored or stored < answered:
        raise RuntimeError(
            f"{name}: {[(r.non_2xx, r.repeats) for r in runs]}, {accepted} accepted, {stored} stored"
        )
    return sum(r.rate for r in runs), runs


def _webhooks(
    work: Path, cluster: Cluster, requests_file: Path, wrk_args: dict[str, Any], rounds: int
) -> list[Result]:
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
                    work, name, requests_file, wrk_args, paused=True, in_process=one, sections=sections
                )
            runs[kind].append(result)
    details = {
        "rates_per_run": {k: [round(r.rate) for r in v] for k, v in runs.items()},
        "latency_p99_ms": {k: [round(r.latency_us["p99"] / 1000, 1) for r in v] for k, v in runs.items()},
        "command": "python -m bench.postgres_ingest --only webhooks",
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


def _batch(work: Path, cluster: Cluster, wrk_args: dict[str, Any], rounds: int) -> list[Result]:
    template = batch_ingest.write_template(
        work / "amplitude.json", batch_ingest.amplitude_body(str(ULID()), int(time.time() * 1000))
    )
    runs: dict[str, list[WrkRun]] = {"sqlite": [], "postgres": []}
    for number in range(rounds):
        for kind in ("sqlite", "postgres") if number % 2 == 0 else ("postgres", "sqlite"):
            name = f"batch-{kind}-{number}"
            if kind == "postgres":
                dsn = cluster.create_database()
                result, _ = batch_ingest.loopwire_run(
                    work,
                    name,
                    "/batch",
                    template,
                    "",
                    wrk_args,
                    delivery=False,
                    sections={**PG_SECTIONS, "server": PG_SERVER},
                    env={"LOOPWIRE_PG_DSN": dsn},
                    count=lambda dsn=dsn: pg_counts(dsn),
                )
            else:
                result, _ = batch_ingest.loopwire_run(
                    work, name, "/batch", template, "", wrk_args, delivery=False
                )
            runs[kind].append(result)
    per_body = batch_ingest.PER_BODY
    return [
        Result(
            name="Amplitude /batch durable ingest on PostgreSQL (one node, 100 events a body)",
            value=pooled_rate(runs["postgres"]) * per_body,
            unit="events/s",
            baseline=pooled_rate(runs["sqlite"]) * per_body,
            baseline_label="SQLite as users run it",
            details={
                "events_per_s_per_run": {k: [round(r.rate * per_body) for r in v] for k, v in runs.items()},
                "latency_p99_ms": {
                    k: [round(r.latency_us["p99"] / 1000, 1) for r in v] for k, v in runs.items()
                },
                "command": "python -m bench.postgres_ingest --only batch",
            },
        )
    ]


def _nodes(
    work: Path, cluster: Cluster, requests_file: Path, wrk_args: dict[str, Any], rounds: int
) -> list[Result]:
    halves = split(requests_file, 2)
    rates: dict[str, list[float]] = {"one": [], "two": []}
    p99: dict[str, list[float]] = {"one": [], "two": []}
    for number in range(rounds):
        for kind in ("one", "two") if number % 2 == 0 else ("two", "one"):
            files = [requests_file] if kind == "one" else halves
            rate, runs = nodes_run(work, f"nodes-{kind}-{number}", cluster.create_database(), files, wrk_args)
            rates[kind].append(rate)
            p99[kind].append(max(r.latency_us["p99"] for r in runs) / 1000)
    return [
        Result(
            name="webhook ingest, two nodes on one PostgreSQL database (32 connections each)",
            value=sum(rates["two"]) / len(rates["two"]),
            unit="req/s",
            baseline=sum(rates["one"]) / len(rates["one"]),
            baseline_label="one node (64 connections)",
            details={
                "rates_per_run": {k: [round(r) for r in v] for k, v in rates.items()},
                "latency_p99_ms": {k: [round(v, 1) for v in vs] for k, vs in p99.items()},
                "command": "python -m bench.postgres_ingest --only nodes",
            },
        )
    ]


def run(
    duration: int = 8,
    rounds: int = 2,
    connections: int = 64,
    count: int = 600_000,
    parts: tuple[str, ...] = PARTS,
) -> list[Result]:
    import tempfile

    cluster = Cluster()
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="loopwire-bench-pg-") as tmp:
            work = Path(tmp)
            requests_file = work / "requests.tsv"
            write_requests(requests_file, count, time.time())
            wrk_args = {"connections": connections, "threads": 2, "duration": duration}
            if "webhooks" in parts:
                results += _webhooks(work, cluster, requests_file, wrk_args, rounds)
            if "batch" in parts:
                results += _batch(work, cluster, wrk_args, rounds)
            if "nodes" in parts:
                results += _nodes(work, cluster, requests_file, wrk_args, rounds)
    finally:
        cluster.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Ingest on PostgreSQL vs SQLite, and two nodes vs one.")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    results = run(args.duration, args.rounds, parts=parts)
    report(results)
    for result in results:
        if result.details:
            print(f"  {result.details}")


if __name__ == "__main__":
    main()
