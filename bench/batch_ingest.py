"""Batched ingest with durable commit: Amplitude `/batch` and Segment `/v1/batch`, 100 events a body.

`loopwire serve` runs as a subprocess with a config file in a temp dir: the store and server sections
of examples/loopwire.yaml (SQLite there, WAL, `synchronous=FULL`, group commit), the `amplitude_api`
and `segment_api` sources, and no destination — so this measures durable ingest alone (parse, check,
commit and fsync before the 200); delivery is measured by bench/drain_backlog.py. With `--delivery`
(or `run(delivery=True)`; off by default, to stay under a minute) a third figure runs `/batch` again
with the example's amplitude destination pointed at an Amplitude sandbox subprocess, so the courier
maps, sends and settles while events arrive.

wrk (bench/batch.lua) sends one body template per endpoint and writes a fresh id into every event of
every request (`<run>-<thread>-<request>-<index>`), so no event id repeats within a run; afterwards the
SQLite file is read and must hold exactly 100 events per 2xx the server answered, none duplicated, and
at least 100 per 2xx wrk saw (wrk stops with up to one request per connection in flight, which the
server still commits and answers to a closed socket).

Baseline: the bare hello-world ASGI app (bench/hello_app.py, the webhook benchmark's baseline) on the
same stack, the same wrk settings and the same bodies; it reads each body and answers 200. The figure
is events/s (2xx requests/s × 100); the baseline is shown as the same 100 events a request, so the
printed ratio is loopwire's requests/s over hello-world's.

    python -m bench.batch_ingest [--duration 8] [--connections 64] [--threads 2] [--delivery]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml
from ulid import ULID

from bench.common import (
    API_KEY,
    BENCH,
    PYTHON,
    ROOT,
    Result,
    WrkRun,
    amplitude_sandbox,
    describe_machine,
    free_port,
    loopwire_serve,
    machine,
    report,
    run_wrk,
    serve,
)

SCRIPT = BENCH / "batch.lua"
MARKER = "@R@"  # replaced by bench/batch.lua with "<thread>-<request number>"
PER_BODY = 100
TARGET_EVENTS_S = 50_000.0
WRITE_KEY = "bench-write-key-0001"
ENV = {"AMPLITUDE_API_KEY": API_KEY, "STOREFRONT_WRITE_KEY": WRITE_KEY}
SOURCES = {"amplitude_api": "amplitude", "segment_api": "segment"}
DESTINATIONS_NONE = "none: durable ingest alone; delivery is measured by bench/drain_backlog.py"
EVENT_TYPES = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Search")


# ---- the bodies -------------------------------------------------------------------------------------


def _properties(k: int) -> dict[str, Any]:
    return {"product_id": f"sku-{k % 37:04d}", "price": 19.99 + k, "currency": "USD", "position": k}


def amplitude_body(run_id: str, now_ms: int) -> bytes:
    """An Amplitude Batch API body of PER_BODY events; ids and users carry the marker."""
    events = [
        {
            "event_type": EVENT_TYPES[k % len(EVENT_TYPES)],
            "user_id": f"user-{MARKER}-{k // 4:02d}",  # 25 users a body, 4 events each
            "insert_id": f"{run_id}-{MARKER}-{k:03d}",
            "time": now_ms + k,
            "event_properties": _properties(k),
        }
        for k in range(PER_BODY)
    ]
    return msgspec.json.encode({"api_key": API_KEY, "events": events})


def segment_body(run_id: str, now_ms: int) -> bytes:
    """A Segment batch of PER_BODY track messages (write key sent as HTTP Basic, not in the body)."""

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")

    batch = [
        {
            "type": "track",
            "userId": f"user-{MARKER}-{k // 4:02d}",
            "event": EVENT_TYPES[k % len(EVENT_TYPES)],
            "messageId": f"{run_id}-{MARKER}-{k:03d}",
            "timestamp": iso(now_ms + k),
            "properties": _properties(k),
        }
        for k in range(PER_BODY)
    ]
    return msgspec.json.encode({"batch": batch, "sentAt": iso(now_ms)})


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def write_template(path: Path, body: bytes) -> Path:
    # Every event id holds the marker exactly once, so every request carries PER_BODY fresh ids.
    ids = re.findall(rb'"(?:insert_id|messageId)":"([^"]*)"', body)
    if len(ids) != PER_BODY or any(i.count(MARKER.encode()) != 1 for i in ids) or len(set(ids)) != PER_BODY:
        raise RuntimeError(f"{path.name}: every one of {PER_BODY} event ids must hold {MARKER} once")
    path.write_bytes(body)
    return path


# ---- servers -----------------------------------------------------------------------------------------


def write_config(
    path: Path, store: Path, sandbox_url: str | None, sections: dict[str, Any] | None = None
) -> Path:
    """The example's store and server sections, the two API sources, and no destination — or, given a
    sandbox URL, the example's amplitude destination pointed at it. `sections` replace top-level
    sections, but for `server`, whose keys amend the example's (bench/postgres_ingest.py: a
    PostgreSQL `store`, `identity` off, no ingest process)."""
    example = yaml.safe_load((ROOT / "examples" / "loopwire.yaml").read_text())
    extra = dict(sections or {})
    destinations: dict[str, Any] = {}
    if sandbox_url is not None:
        destinations["amplitude"] = {**example["destinations"]["amplitude"], "base_url": sandbox_url}
    document = {
        "store": {**example.get("store", {}), "path": str(store)},
        "server": {**example.get("server", {}), **extra.pop("server", {})},
        "sources": {
            "amplitude_api": {"api_keys": ["${AMPLITUDE_API_KEY}"]},
            "segment_api": {"write_keys": ["${STOREFRONT_WRITE_KEY}"]},
        },
        "destinations": destinations,
        **extra,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def counters(url: str) -> dict[str, float]:
    """The ingest counters of /metrics, keyed "<metric>{<labels>}"."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = r"loopwire_(?:ingest_\w+|delivery_events)_total"
    return {
        f"{m.group(1)}{{{m.group(2)}}}": float(m.group(3))
        for m in re.finditer(rf"^({wanted})\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE)
    }


def settled_counters(url: str, timeout: float = 10.0) -> dict[str, float]:
    """/metrics once two reads 200 ms apart agree: the requests wrk left in flight have finished."""
    deadline = time.monotonic() + timeout
    last = counters(url)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = counters(url)
        if now == last:
            return now
        last = now
    return last


def _sum(found: dict[str, float], metric: str, **labels: str) -> int:
    total = 0.0
    for key, value in found.items():
        name, _, rest = key.partition("{")
        if name == metric and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return int(total)


def store_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = {"events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]}
        found["distinct_ids"] = conn.execute("SELECT COUNT(DISTINCT id) FROM events").fetchone()[0]
        for state, n in conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            found[f"outbox_{state}"] = n
        return found
    finally:
        conn.close()


def loopwire_run(
    work: Path,
    name: str,
    path: str,
    template: Path,
    auth: str,
    wrk_args: dict[str, Any],
    delivery: bool,
    sections: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    count: Callable[[], dict[str, int]] | None = None,
) -> tuple[WrkRun, dict[str, Any]]:
    """A fresh store (and, with `delivery`, a fresh sandbox), one wrk run, then the durability check.
    `sections`, `env`: another store (a PostgreSQL database, its DSN in `env`); `count`: its
    `store_counts` (events, distinct ids, outbox rows by state)."""
    run_dir = work / name
    run_dir.mkdir()
    db = run_dir / "loopwire.db"
    source = SOURCES["segment_api" if path.startswith("/v1/") else "amplitude_api"]
    script_args = [str(template)] + ([auth] if auth else [])
    sandbox_stats: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        sandbox = (
            stack.enter_context(amplitude_sandbox(free_port(), run_dir / "sandbox.log")) if delivery else None
        )
        config = write_config(run_dir / "loopwire.yaml", db, sandbox.url if sandbox else None, sections)
        with loopwire_serve(config, free_port(), run_dir / "loopwire.log", {**ENV, **(env or {})}) as server:
            load = os.getloadavg()[0]
            run = run_wrk(server.url + path, SCRIPT, script_args, **wrk_args)
            found = settled_counters(server.url)
        if sandbox is not None:  # loopwire has stopped: what reached Amplitude by then
            sandbox_stats = httpx.get(f"{sandbox.url}/_sandbox/amplitude/stats", timeout=10).json()
    counts = count() if count is not None else store_counts(db)
    accepted = _sum(found, "loopwire_ingest_requests_total", source=source, outcome="accepted")
    check: dict[str, Any] = {
        "wrk_2xx": run.ok,
        "wrk_non_2xx": run.non_2xx,
        "socket_errors": run.socket_errors,
        "server_2xx": accepted,
        "server_rejected": _sum(found, "loopwire_ingest_requests_total", source=source, outcome="rejected"),
        "server_fresh_events": _sum(found, "loopwire_ingest_events_total", source=source),
        "server_duplicate_events": _sum(found, "loopwire_ingest_duplicate_events_total", source=source),
        "events_stored": counts["events"],
        "distinct_ids_stored": counts["distinct_ids"],
        "outbox": {k.removeprefix("outbox_"): v for k, v in counts.items() if k.startswith("outbox_")},
        "load_average_1m_before": round(load, 2),
    }
    if sandbox_stats:
        check["sandbox"] = {
            k: sandbox_stats[k] for k in ("requests", "statuses", "events_stored", "duplicates")
        }
    stored = counts["events"]
    check["durable"] = (
        stored == PER_BODY * accepted  # every 2xx the server sent is 100 committed rows …
        and stored == check["server_fresh_events"] == counts["distinct_ids"]
        and check["server_duplicate_events"] == 0  # … none of them a repeat …
        and PER_BODY * run.ok <= stored <= PER_BODY * (run.ok + wrk_args["connections"])  # … wrk agrees
        and run.non_2xx == 0
        and check["server_rejected"] == 0
    )
    if not check["durable"]:
        raise RuntimeError(f"{name}: the store does not hold 100 events per 2xx: {check}")
    return run, check


def hello_run(
    work: Path, name: str, path: str, template: Path, auth: str, wrk_args: dict[str, Any]
) -> WrkRun:
    port = free_port()
    argv = [PYTHON, "-m", "bench.hello_app", "--port", str(port), "--framework", "none"]
    script_args = [str(template)] + ([auth] if auth else [])
    with serve(argv, port=port, log=work / f"{name}.log") as server:
        return run_wrk(server.url + path, SCRIPT, script_args, **wrk_args)


# ---- the benchmark -------------------------------------------------------------------------------------


def run(duration: int = 8, connections: int = 64, threads: int = 2, delivery: bool = False) -> list[Result]:
    """Per endpoint one hello-world run and one loopwire run with the same wrk settings and bodies, in
    the order hello(amplitude), loopwire(amplitude), loopwire(segment), hello(segment), so a drift in
    the machine's speed falls on both sides alike; then, with `delivery`, /batch with a destination."""
    wrk_args = {"connections": connections, "threads": threads, "duration": duration}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-batch-") as tmp:
        work = Path(tmp)
        now_ms = int(time.time() * 1000)
        endpoints = {
            "amplitude": (
                "/batch",
                write_template(work / "amplitude.json", amplitude_body(str(ULID()), now_ms)),
                "",
            ),
            "segment": (
                "/v1/batch",
                write_template(work / "segment.json", segment_body(str(ULID()), now_ms)),
                basic_auth(WRITE_KEY),
            ),
        }
        hello: dict[str, WrkRun] = {}
        hello_load: dict[str, float] = {}
        loopwire: dict[str, tuple[WrkRun, dict[str, Any]]] = {}
        for kind, which in (
            ("hello", "amplitude"),
            ("loopwire", "amplitude"),
            ("loopwire", "segment"),
            ("hello", "segment"),
        ):
            path, template, auth = endpoints[which]
            if kind == "hello":
                hello_load[which] = round(os.getloadavg()[0], 2)
                hello[which] = hello_run(work, f"hello-{which}", path, template, auth, wrk_args)
            else:
                loopwire[which] = loopwire_run(work, which, path, template, auth, wrk_args, delivery=False)
        if delivery:
            path, template, auth = endpoints["amplitude"]
            loopwire["amplitude+delivery"] = loopwire_run(
                work, "amplitude-delivery", path, template, auth, wrk_args, delivery=True
            )
        sizes = {which: template.stat().st_size for which, (_, template, _) in endpoints.items()}

    labels = {
        "amplitude": "Amplitude /batch durable ingest (no destination)",
        "segment": "Segment /v1/batch durable ingest (no destination)",
        "amplitude+delivery": "Amplitude /batch durable ingest, delivering to the Amplitude sandbox",
    }
    for which, (wrk_run, check) in loopwire.items():
        endpoint = which.split("+")[0]
        base = hello[endpoint]
        rps = wrk_run.ok / wrk_run.duration_s
        base_rps = base.ok / base.duration_s
        results.append(
            Result(
                name=labels[which],
                value=rps * PER_BODY,
                unit="events/s",
                baseline=base_rps * PER_BODY,
                baseline_label=f"hello-world ({base_rps:,.0f} req/s × {PER_BODY})",
                target=TARGET_EVENTS_S,
                target_kind="value>=",
                details={
                    "requests_per_s": round(rps, 1),
                    "baseline_requests_per_s": round(base_rps, 1),
                    "ratio_requests_per_s": round(rps / base_rps, 4),
                    "events_per_body": PER_BODY,
                    "body_bytes": sizes[endpoint],
                    "destinations": "amplitude → Amplitude sandbox" if "+" in which else DESTINATIONS_NONE,
                    "command": wrk_run.command,
                    "baseline_command": base.command,
                    "latency_ms": _ms(wrk_run.latency_us),
                    "baseline_latency_ms": _ms(base.latency_us),
                    "baseline_load_average_1m_before": hello_load[endpoint],
                    "check": check,
                },
            )
        )
    return results


def _ms(latency_us: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 1000, 2) for k, v in latency_us.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Batched ingest benchmark: /batch and /v1/batch (wrk on loopback)."
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--delivery",
        action="store_true",
        help="also /batch with an amplitude destination (Amplitude sandbox)",
    )
    args = parser.parse_args()
    info = machine()
    print(f"machine: {describe_machine(info)}", flush=True)
    if info["load_average"][0] > 0.5:
        print(
            f"note: load average {info['load_average'][0]:.2f} before the start: other work shares these cores"
        )
    started = time.monotonic()
    results = run(args.duration, args.connections, args.threads, args.delivery)
    report(results)
    for result in results:
        d, check = result.details, result.details["check"]
        print(
            f"  {d['requests_per_s']:,.0f} req/s vs hello-world {d['baseline_requests_per_s']:,.0f} req/s"
            f" (ratio {d['ratio_requests_per_s']:.3f}); p50 {d['latency_ms']['p50']:,.0f} ms,"
            f" p99 {d['latency_ms']['p99']:,.0f} ms; stored {check['events_stored']:,} events ="
            f" {PER_BODY} × {check['server_2xx']:,} 2xx sent (wrk read {check['wrk_2xx']:,}),"
            f" 0 duplicates; destinations: {d['destinations']}"
        )
        if "sandbox" in check:
            print(f"  outbox at stop: {check['outbox']}; sandbox: {check['sandbox']}")
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
