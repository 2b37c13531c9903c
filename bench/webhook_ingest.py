"""Signed-webhook ingest with durable commit, under wrk on loopback.

1. Throughput: `loopwire serve` (the example config, SQLite in a temp dir, `synchronous=FULL`, group
   commit) against the bare hello-world ASGI app on the same stack (bench/hello_app.py), same wrk
   settings, same requests; a Starlette hello-world alongside shows the framework's own share.
   The target figure runs with the amplitude destination paused (`paused: true`): every event is
   committed with its outbox row, as always, but no courier runs — on a two-core machine the
   Amplitude sandbox, which stands in for a remote service, would otherwise take CPU from the server.
   A second loopwire run in each round has delivery running as in production, into a sandbox
   subprocess, and is reported beside it.
2. Latency: a fresh server paced at 2,000 requests/s offered (see bench/webhooks.lua), delivery
   running (the target figure), then the same with the destination paused; the achieved rate and
   wrk's p99.

Every request is a distinct webhook with its own event_id and a valid signature; afterwards the store
is read to check that every 200 is a committed row.

    python -m bench.webhook_ingest [--duration 8] [--connections 64] [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from ulid import ULID

from bench.common import (
    BENCH,
    LOOPWIRE_ENV,
    PYTHON,
    SIGNING_KEY,
    Result,
    WrkRun,
    amplitude_sandbox,
    free_port,
    loopwire_serve,
    personalise,
    pooled_rate,
    report,
    run_wrk,
    serve,
    webhook_mix,
    write_config,
)
from tests.helpers.cio import sign

SCRIPT = BENCH / "webhooks.lua"
OFFERED_RATE = 2_000  # requests/s for the latency run
P99_TARGET_MS = 50.0
RATIO_TARGET = 0.5
USERS = 20_000


def write_requests(path: Path, count: int, now: float) -> int:
    """`count` distinct signed webhooks, one per line, stamped `now` (inside the 900 s window)."""
    templates = webhook_mix()
    timestamp = int(now)
    stamp = str(timestamp)
    with path.open("w") as out:
        for n in range(count):
            doc = personalise(templates[n % len(templates)], str(ULID()), f"user-{n % USERS:05d}", timestamp)
            body = msgspec.json.encode(doc)
            out.write(f"{stamp}\t{sign(SIGNING_KEY, timestamp, body)}\t{body.decode()}\n")
    return len(templates)


def split(requests_file: Path, parts: int) -> list[Path]:
    """Line k of the file goes to part k mod `parts`: no event in two parts (runs that add to one
    store, or two nodes sharing one database, each get a part)."""
    paths = [requests_file.with_name(f"{requests_file.stem}-{k}.tsv") for k in range(parts)]
    outs = [p.open("w") for p in paths]
    try:
        with requests_file.open() as lines:
            for k, line in enumerate(lines):
                outs[k % parts].write(line)
    finally:
        for out in outs:
            out.close()
    return paths


def count_of(requests_file: Path) -> int:
    with requests_file.open("rb") as lines:
        return sum(1 for _ in lines)


def ingest_counters(url: str) -> dict[str, float]:
    """loopwire_ingest_requests_total by outcome, from /metrics; and `identity_lag_events`, how far
    the identity graph is behind the log (when it is kept)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    lag = re.search(r"^loopwire_identity_lag_events (\S+)$", text, re.MULTILINE)
    if lag:
        found["identity_lag_events"] = float(lag.group(1))
    for match in re.finditer(r"^loopwire_ingest_requests_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        outcome = re.search(r'outcome="([^"]*)"', match.group(1))
        if outcome:
            found[outcome.group(1)] = found.get(outcome.group(1), 0.0) + float(match.group(2))
    return found


CATCH_UP_S = 120.0


def catch_up_s(url: str, counters: dict[str, float]) -> float:
    """Seconds from the end of the load until the identity graph had folded the whole log."""
    started = time.monotonic()
    while counters.get("identity_lag_events", 0) > 0:
        if time.monotonic() - started > CATCH_UP_S:
            raise RuntimeError(f"the identity graph did not catch up within {CATCH_UP_S:g}s: {counters}")
        time.sleep(0.25)
        counters = ingest_counters(url)
    return round(time.monotonic() - started, 2)


def store_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = {"events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]}
        for state, n in conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            counts[state] = n
        return counts
    finally:
        conn.close()


def loopwire_run(
    work: Path,
    name: str,
    requests_file: Path,
    wrk_args: dict[str, Any],
    rate: int = 0,
    paused: bool = False,
    in_process: bool = False,
    sections: dict[str, Any] | None = None,
    identity_catch_up: bool = False,
    store: Path | None = None,
) -> tuple[WrkRun, dict[str, Any]]:
    """A fresh store (or `store`, a log built beforehand), a fresh sandbox, one wrk run; then the durability check. `paused`: the amplitude
    destination is paused, so every event is committed and queued for it but none is sent.
    `in_process`: `server.ingest_process: false`, webhooks checked and committed in the server.
    `sections`: more top-level config (`identity`, say). `identity_catch_up`: once the load stops,
    wait (at most `CATCH_UP_S`) until the identity graph has folded the whole log, and say how long."""
    run_dir = work / name
    run_dir.mkdir()
    db = store or run_dir / "loopwire.db"
    before = store_counts(db)["events"] if store is not None else 0
    sandbox_port, port = free_port(), free_port()
    threads, connections = wrk_args["threads"], wrk_args["connections"]
    args = [str(requests_file), str(threads)] + ([str(rate), str(connections)] if rate else [])
    with amplitude_sandbox(sandbox_port, run_dir / "sandbox.log") as sandbox:
        options = {"ingest_process": False} if in_process else {}
        config = write_config(
            run_dir / "loopwire.yaml", db, sandbox.url, server=options, sections=sections, paused=paused
        )
        with loopwire_serve(config, port, run_dir / "loopwire.log", LOOPWIRE_ENV) as server:
            run = run_wrk(f"{server.url}/webhooks/customerio", SCRIPT, args, **wrk_args)
            counters = ingest_counters(server.url)
            if identity_catch_up:
                counters["identity_catch_up_s"] = catch_up_s(server.url, counters)
    counts = store_counts(db)
    counts["events"] -= before  # the run's own
    accepted = int(counters.get("accepted", 0))
    duplicates = int(counters.get("duplicate", 0))
    answered = run.ok - run.warmups  # the warm-up GETs of /healthz are not webhooks
    check = {
        "answered_2xx": answered,
        "answered_non_2xx": run.non_2xx,
        "socket_errors": run.socket_errors,
        "warmups": run.warmups,
        "server_accepted": accepted,
        "server_duplicates": duplicates,
        "server_rejected": int(counters.get("rejected", 0)),
        "events_stored": counts["events"],
        "outbox": {k: v for k, v in counts.items() if k != "events"},
        "repeats_sent": run.repeats,
        "identity_lag_events": int(counters.get("identity_lag_events", 0)),
        "identity_catch_up_s": counters.get("identity_catch_up_s"),
        # Every 2xx wrk saw is a committed row or a duplicate of one. The server may have committed a
        # few more (at most one per connection) whose answers came after wrk and /metrics stopped counting.
        "every_2xx_stored": accepted <= counts["events"] and counts["events"] + duplicates >= answered,
    }
    if not check["every_2xx_stored"] or run.non_2xx:
        raise RuntimeError(f"{name}: a 2xx without a stored row, or a refusal: {check}")
    if run.repeats:  # a repeat is a duplicate, answered without a row: not what this measures
        raise RuntimeError(
            f"{name}: wrk ran out of distinct webhooks and re-sent {run.repeats:,}; raise --requests"
            f" (now {count_of(requests_file):,})"
        )
    if duplicates:  # a store given beforehand already held some: each run needs requests of its own
        raise RuntimeError(f"{name}: {duplicates:,} webhooks were duplicates of events already in the store")
    return run, check


def hello_run(
    work: Path, framework: str, requests_file: Path, wrk_args: dict[str, Any], rate: int = 0
) -> WrkRun:
    port = free_port()
    argv = [PYTHON, "-m", "bench.hello_app", "--port", str(port), "--framework", framework]
    log = work / f"hello-{framework}.log"
    threads, connections = wrk_args["threads"], wrk_args["connections"]
    args = [str(requests_file), str(threads)] + ([str(rate), str(connections)] if rate else [])
    with serve(argv, port=port, log=log) as server:
        return run_wrk(f"{server.url}/webhooks/customerio", SCRIPT, args, **wrk_args)


def run(
    duration: int = 8,
    connections: int = 64,
    threads: int = 2,
    count: int = 400_000,
    rounds: int = 2,
    paced_duration: int = 10,
    paced_connections: int = 128,
    saturation_connections: int = 256,
) -> list[Result]:
    """`rounds` rounds of bare hello → Starlette hello → loopwire, every other round reversed (so a
    drift in the machine's speed falls on both sides alike); one pair more at `saturation_connections`
    (loopwire paused, then hello); then one paced run for latency."""
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-ingest-") as tmp:
        work = Path(tmp)
        requests_file = work / "requests.tsv"
        started = time.monotonic()
        kinds = write_requests(requests_file, count, time.time())
        generated_s = time.monotonic() - started
        wrk_args = {"connections": connections, "threads": threads, "duration": duration}
        runs: dict[str, list[WrkRun]] = {"hello": [], "starlette": [], "loopwire": [], "delivering": []}
        checks = []
        for number in range(rounds):
            order = ["hello", "starlette", "loopwire", "delivering"]
            for kind in order if number % 2 == 0 else reversed(order):
                if kind in ("loopwire", "delivering"):
                    paused = kind == "loopwire"
                    result, check = loopwire_run(
                        work, f"{kind}-{number}", requests_file, wrk_args, paused=paused
                    )
                    checks.append({"run": f"{kind}-{number}", **check})
                else:
                    stack = "none" if kind == "hello" else "starlette"
                    result = hello_run(work, stack, requests_file, wrk_args)
                runs[kind].append(result)
        # At 64 connections each request waits for its group's fsync, so loopwire is partly bound by
        # latency there; with more senders its groups grow and the event loop's CPU is the limit.
        many_args = {**wrk_args, "connections": saturation_connections}
        many, many_check = loopwire_run(work, "saturated", requests_file, many_args, paused=True)
        checks.append({"run": "saturated", **many_check})
        many_hello = hello_run(work, "none", requests_file, many_args)
        single, single_check = loopwire_run(
            work, "in-process", requests_file, wrk_args, paused=True, in_process=True
        )
        checks.append({"run": "in-process", **single_check})
        paced_args = {"connections": paced_connections, "threads": threads, "duration": paced_duration}
        paced, paced_check = loopwire_run(work, "latency", requests_file, paced_args, rate=OFFERED_RATE)
        paced_paused, _ = loopwire_run(
            work, "latency-paused", requests_file, paced_args, rate=OFFERED_RATE, paused=True
        )
        paced_hello = hello_run(work, "none", requests_file, paced_args, rate=OFFERED_RATE)

    common = {"requests_in_file": count, "webhook_kinds": kinds, "generated_in_s": round(generated_s, 1)}
    rates = {kind: [round(r.rate) for r in kind_runs] for kind, kind_runs in runs.items()}
    throughput = Result(
        name="webhook ingest, durable commit (destination paused: every event queued, none sent)",
        value=pooled_rate(runs["loopwire"]),
        unit="req/s",
        baseline=pooled_rate(runs["hello"]),
        baseline_label="hello-world",
        target=RATIO_TARGET,
        details={
            **common,
            "rounds": rounds,
            "rates_per_run": rates,
            "steal_per_run": {kind: [r.steal for r in kind_runs] for kind, kind_runs in runs.items()},
            "command": runs["loopwire"][0].command,
            "baseline_command": runs["hello"][0].command,
            "latency_ms": _ms(runs["loopwire"][-1].latency_us),
            "baseline_latency_ms": _ms(runs["hello"][-1].latency_us),
            "checks": checks,
        },
    )
    delivering = Result(
        name="webhook ingest with delivery running (its sandbox on the same cores)",
        value=pooled_rate(runs["delivering"]),
        unit="req/s",
        baseline=throughput.baseline,
        baseline_label="hello-world",
        details={
            "command": runs["delivering"][0].command,
            "latency_ms": _ms(runs["delivering"][-1].latency_us),
        },
    )
    framework = Result(
        name="webhook ingest vs the framework alone",
        value=throughput.value,
        unit="req/s",
        baseline=pooled_rate(runs["starlette"]),
        baseline_label="Starlette hello-world",
        details={"starlette_vs_bare_ratio": pooled_rate(runs["starlette"]) / pooled_rate(runs["hello"])},
    )
    saturated = Result(
        name=f"the same at {saturation_connections} connections (destination paused)",
        value=many.rate,
        unit="req/s",
        baseline=many_hello.rate,
        baseline_label=f"hello-world at {saturation_connections} connections",
        details={
            "command": many.command,
            "latency_ms": _ms(many.latency_us),
            "baseline_latency_ms": _ms(many_hello.latency_us),
        },
    )
    p99_ms = paced.latency_us["p99"] / 1000
    latency = Result(
        name=f"webhook ingest p99, delivery running, at {paced.rate:,.0f} req/s achieved ({OFFERED_RATE:,} offered)",
        value=p99_ms,
        unit="ms",
        baseline=paced_hello.latency_us["p99"] / 1000,
        baseline_label=f"hello-world at {paced_hello.rate:,.0f} req/s",
        show_ratio=False,
        target=P99_TARGET_MS,
        target_kind="value<=",
        higher_is_better=False,
        details={
            "baseline_latency_ms": _ms(paced_hello.latency_us),
            "baseline_achieved_rps": paced_hello.rate,
            **common,
            "command": paced.command,
            "offered_rps": OFFERED_RATE,
            "achieved_rps": paced.rate,
            "latency_ms": _ms(paced.latency_us),
            "check": paced_check,
        },
    )
    latency_paused = Result(
        name=f"the same p99, destination paused, at {paced_paused.rate:,.0f} req/s achieved",
        value=paced_paused.latency_us["p99"] / 1000,
        unit="ms",
        baseline=latency.baseline,
        baseline_label=latency.baseline_label,
        show_ratio=False,
        higher_is_better=False,
        details={"latency_ms": _ms(paced_paused.latency_us), "achieved_rps": paced_paused.rate},
    )
    in_server = Result(
        name="the same in the server's process (server.ingest_process: false)",
        value=single.rate,
        unit="req/s",
        baseline=throughput.baseline,
        baseline_label="hello-world",
        details={"command": single.command, "latency_ms": _ms(single.latency_us)},
    )
    return [throughput, delivering, framework, saturated, in_server, latency, latency_paused]


def _ms(latency_us: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 1000, 2) for k, v in latency_us.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Signed-webhook ingest benchmark (wrk on loopback).")
    parser.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--requests",
        type=int,
        default=400_000,
        help="distinct signed webhooks generated; a loopwire run that needs more fails (no repeats)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of baseline and loopwire runs")
    args = parser.parse_args()
    results = run(args.duration, args.connections, args.threads, args.requests, args.rounds)
    report(results)
    for result in results:
        print(f"  {result.details}")


if __name__ == "__main__":
    main()
