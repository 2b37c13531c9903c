"""Draining a backlog of 100,000 events into the Amplitude sandbox.

The events (the webhook mix, spread over 12,000 users so the sandbox's per-user and per-device limit
of 30 events/s over 30 s is never reached) are committed to a fresh store with `Store.append_sync`,
routed to the `amplitude` destination. Then an Amplitude sandbox and `loopwire serve` (the example
config: batches of up to 1,000 events, 4 requests in flight) start as subprocesses and the clock runs
from loopwire's start until the outbox holds no pending or in-flight row, polled read-only from the
SQLite file. Peak memory is each process's VmHWM from /proc.

Baseline: the same events, mapped and encoded beforehand, POSTed straight to a fresh sandbox in the
same batch size by a minimal httpx loop — the ratio is what the log, the outbox and the settling cost.

    python -m bench.drain_backlog [--events 100000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from ulid import ULID

from bench.common import (
    API_KEY,
    LOOPWIRE_ENV,
    Result,
    amplitude_sandbox,
    free_port,
    loopwire_serve,
    memory_kb,
    personalise,
    report,
    webhook_mix,
    write_config,
)
from bench.mapping_throughput import amplitude_options

TIME_TARGET_S = 30.0
MEMORY_TARGET_MB = 300.0
USERS = 12_000
DEADLINE_S = 120.0  # give up (and fail) if the drain takes longer than this
CHUNK = 1_000


def backlog(count: int, now: float) -> tuple[list[Any], int]:
    """`count` Events of the mix that the amplitude mapping sends (skips would not reach the sandbox)."""
    from loopwire.destinations.amplitude.mapping import map_event
    from loopwire.destinations.base import Skip
    from loopwire.sources.customerio_parse import parse_webhook

    options = amplitude_options()
    received_ms = int(now * 1000)
    sendable = []
    for template in webhook_mix():
        probe = parse_webhook(msgspec.json.encode(personalise(template, "probe", "user-probe", 0)), 0)
        if not isinstance(map_event(probe, options, received_ms), Skip):
            sendable.append(template)
    events = []
    for n in range(count):
        doc = personalise(sendable[n % len(sendable)], str(ULID()), f"user-{n % USERS:05d}", int(now))
        events.append(parse_webhook(msgspec.json.encode(doc), received_ms))
    return events, len(sendable)


def fill_store(db: Path, events: list[Any]) -> float:
    from loopwire.store import SQLiteStore

    started = time.monotonic()
    store = SQLiteStore(db)
    try:
        for i in range(0, len(events), CHUNK):
            chunk = events[i : i + CHUNK]
            fresh = store.append_sync(chunk, [["amplitude"]] * len(chunk))
            if not all(fresh):
                raise RuntimeError("an event of the backlog was not new")
    finally:
        store.close()
    return time.monotonic() - started


def outbox_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, COUNT(*) FROM outbox WHERE dest = 'amplitude' GROUP BY state"))


def remaining(conn: sqlite3.Connection) -> int:
    # Two index lookups on outbox (dest, state, next_ms): cheap enough to poll often.
    return int(
        conn.execute(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE dest = 'amplitude' AND state = 'pending')"
            " + (SELECT COUNT(*) FROM outbox WHERE dest = 'amplitude' AND state = 'in_flight')"
        ).fetchone()[0]
    )


def sandbox_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/_sandbox/amplitude/stats", timeout=30).json()
    return stats


def loopwire_drain(work: Path, events: list[Any]) -> dict[str, Any]:
    db = work / "loopwire.db"
    filled_s = fill_store(db, events)
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    sandbox_port, port = free_port(), free_port()
    try:
        with amplitude_sandbox(sandbox_port, work / "sandbox.log") as sandbox:
            config = write_config(work / "loopwire.yaml", db, sandbox.url)
            started = time.monotonic()
            with loopwire_serve(config, port, work / "loopwire.log", LOOPWIRE_ENV) as server:
                healthy_s = time.monotonic() - started
                left = remaining(reader)
                while left:
                    if time.monotonic() - started > DEADLINE_S:
                        raise RuntimeError(f"{left} events still undelivered after {DEADLINE_S:g}s")
                    time.sleep(0.1)
                    left = remaining(reader)
                drained_s = time.monotonic() - started
                loopwire_memory = memory_kb(server.pid)
                sandbox_memory = memory_kb(sandbox.pid)
                stats = sandbox_stats(sandbox.url)
            counts = outbox_counts(reader)
    finally:
        reader.close()
    if counts.get("delivered") != len(events) or stats["events_stored"] != len(events):
        raise RuntimeError(f"not every event was delivered once: outbox {counts}, sandbox {stats}")
    return {
        "seconds": drained_s,
        "startup_s": healthy_s,
        "fill_store_s": filled_s,
        "loopwire_peak_mb": loopwire_memory["VmHWM"] / 1024,
        "sandbox_peak_mb": sandbox_memory["VmHWM"] / 1024,
        "outbox": counts,
        "sandbox": {k: stats[k] for k in ("requests", "statuses", "events_stored", "duplicates")},
    }


def baseline_drain(work: Path, events: list[Any], batch: int) -> dict[str, Any]:
    from loopwire.destinations.amplitude.mapping import map_event

    options = amplitude_options()
    now_ms = int(time.time() * 1000)
    payloads = [map_event(event, options, now_ms) for event in events]
    encode = msgspec.json.Encoder().encode
    bodies = [
        encode({"api_key": API_KEY, "events": payloads[i : i + batch]})
        for i in range(0, len(payloads), batch)
    ]
    with amplitude_sandbox(free_port(), work / "baseline-sandbox.log") as sandbox:
        url = f"{sandbox.url}/2/httpapi"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            for body in bodies:
                answer = client.post(url, content=body, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(
                        f"baseline: the sandbox answered {answer.status_code}: {answer.text[:300]}"
                    )
            seconds = time.monotonic() - started
        stats = sandbox_stats(sandbox.url)
        memory = memory_kb(sandbox.pid)
    if stats["events_stored"] != len(events):
        raise RuntimeError(f"baseline: the sandbox stored {stats['events_stored']} of {len(events)}")
    return {"seconds": seconds, "requests": len(bodies), "sandbox_peak_mb": memory["VmHWM"] / 1024}


def run(count: int = 100_000) -> list[Result]:
    batch = amplitude_options().batching.max_events
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-drain-") as tmp:
        work = Path(tmp)
        events, kinds = backlog(count, time.time())
        drained = loopwire_drain(work, events)
        base = baseline_drain(work, events, batch)
    details = {
        "events": count,
        "webhook_kinds": kinds,
        "users": USERS,
        "batch_size": batch,
        "loopwire": drained,
        "baseline": base,
        "command": "python -m bench.drain_backlog",
    }
    rate = count / drained["seconds"]
    return [
        Result(
            name=f"drain {count:,} events",
            value=drained["seconds"],
            unit="s",
            target=TIME_TARGET_S,
            target_kind="value<=",
            higher_is_better=False,
            details=details,
        ),
        Result(
            name="drain rate",
            value=rate,
            unit="events/s",
            baseline=count / base["seconds"],
            baseline_label="httpx loop straight to the sandbox",
            details={"baseline_seconds": base["seconds"]},
        ),
        Result(
            name="drain peak memory, loopwire",
            value=drained["loopwire_peak_mb"],
            unit="MB",
            target=MEMORY_TARGET_MB,
            target_kind="value<=",
            higher_is_better=False,
            details={"sandbox_peak_mb": drained["sandbox_peak_mb"]},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Drain a backlog into the Amplitude sandbox.")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    results = run(args.events)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
