"""Paced webhook ingest on a big log while the console, `/api/status` and `/metrics` are polled
every second (issue 13, item 2: the polls cost ingest nothing measurable; p99 under 50 ms).

    python -m bench.polled_ingest                     # 2 million events in the log
    python -m bench.polled_ingest --events 10000000 --log /var/tmp/big.db   # the issue's 10 million

The log is `bench.large_log`'s (the load's 20,000 users, 550-byte bodies, one delivered outbox row
each; built once at `--log` and reused), its identity graph marked as folded to the end (what the
polls read of the graph is its tally, whose cost does not depend on its size). Then one `loopwire serve` on it, the amplitude destination paused (every
webhook committed and queued, nothing sent), and interleaved runs (quiet, polled, polled, quiet) of
`wrk` pacing distinct signed Customer.io webhooks at `--rate` requests/s (bench/webhooks.lua,
128 connections, 10 s). In a polled run an operator's session (logged in with the console token)
GETs `/`, `/api/status` and `/metrics` once a second each; their answer times are reported too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    LOOPWIRE_ENV,
    Result,
    WrkRun,
    amplitude_sandbox,
    free_port,
    loopwire_serve,
    report,
    run_wrk,
    write_config,
)
from bench.large_log import prepare
from bench.webhook_ingest import SCRIPT, write_requests

TOKEN = "bench-console-token-0123456789"
POLLED = ("/", "/api/status", "/metrics")
P99_TARGET_MS = 50.0
READ_TARGET_MS = 50.0


class Poller(threading.Thread):
    """GETs each of `POLLED` once a second until stopped; keeps every answer's time."""

    def __init__(self, url: str) -> None:
        super().__init__(name="poller", daemon=True)
        self.client = httpx.Client(base_url=url, timeout=30)
        if self.client.post("/login", data={"token": TOKEN}).status_code != 303:
            raise RuntimeError("the console refused the benchmark's token")
        self.times: dict[str, list[float]] = {path: [] for path in POLLED}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            tick = time.monotonic()
            for path in POLLED:
                started = time.perf_counter()
                answer = self.client.get(path)
                self.times[path].append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:200]}")
            self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - tick)))

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.client.close()


def idle_reads(url: str, repeat: int = 10) -> dict[str, float]:
    """Each polled path's median answer time with no load (after one warm-up): the reads' baseline."""
    poller = Poller(url)
    try:
        for _ in range(repeat + 1):
            for path in POLLED:
                started = time.perf_counter()
                poller.client.get(path)
                poller.times[path].append((time.perf_counter() - started) * 1000)
    finally:
        poller.client.close()
    return {path: statistics.median(times[1:]) for path, times in poller.times.items()}


def run(
    events: int = 2_000_000,
    rate: int = 2_000,
    duration: int = 10,
    connections: int = 128,
    log: Path | None = None,
) -> list[Result]:
    runs: dict[str, list[WrkRun]] = {"quiet": [], "polled": []}
    reads: dict[str, list[float]] = {path: [] for path in POLLED}
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-polled-") as tmp:
        work = Path(tmp)
        db = log or work / "loopwire.db"
        events, built_s = prepare(db, events)
        with amplitude_sandbox(free_port(), work / "sandbox.log") as sandbox:
            config = write_config(work / "loopwire.yaml", db, sandbox.url, paused=True)
            port = free_port()
            env = {**LOOPWIRE_ENV, "LOOPWIRE_CONSOLE_TOKEN": TOKEN}
            with loopwire_serve(config, port, work / "loopwire.log", env) as server:
                idle = idle_reads(server.url)
                for number, kind in enumerate(("quiet", "polled", "polled", "quiet")):
                    requests_file = work / f"requests-{number}.tsv"  # fresh ids, stamped now
                    write_requests(requests_file, rate * (duration + 5), time.time())
                    poller = Poller(server.url) if kind == "polled" else None
                    if poller is not None:
                        poller.start()
                    try:
                        result = run_wrk(
                            f"{server.url}/webhooks/customerio",
                            SCRIPT,
                            [str(requests_file), "2", str(rate), str(connections)],
                            connections=connections,
                            threads=2,
                            duration=duration,
                        )
                    finally:
                        if poller is not None:
                            poller.stop()
                            for path, times in poller.times.items():
                                reads[path].extend(times)
                    if result.non_2xx or result.repeats:
                        raise RuntimeError(f"{kind}: {result.non_2xx} refusals, {result.repeats} repeats")
                    runs[kind].append(result)

    def p99_ms(kind: str) -> float:
        return max(r.latency_us["p99"] for r in runs[kind]) / 1000  # the worse of the two runs

    def achieved(kind: str) -> float:
        return sum(r.requests - r.warmups for r in runs[kind]) / sum(r.duration_s for r in runs[kind])

    details: dict[str, Any] = {
        "events_in_log": events,
        "build_s": round(built_s, 1) if built_s else "reused",
        "rate_offered": rate,
        "achieved_rate": {kind: round(achieved(kind)) for kind in runs},
        "p99_ms_per_run": {
            kind: [round(r.latency_us["p99"] / 1000, 2) for r in v] for kind, v in runs.items()
        },
        "polls": {path: len(times) for path, times in reads.items()},
        "command": f"python -m bench.polled_ingest --events {events}",
    }
    results = [
        Result(
            name=f"paced webhook ingest p99 at {rate:,} req/s, {events:,} events in the log, polled every second",
            value=p99_ms("polled"),
            unit="ms",
            baseline=p99_ms("quiet"),
            baseline_label="not polled",
            target=P99_TARGET_MS,
            target_kind="value<=",
            higher_is_better=False,
            details=details,
        )
    ]
    for path, times in reads.items():
        results.append(
            Result(
                name=f"GET {path} under that load (median; max {max(times):,.1f} ms)",
                value=statistics.median(times),
                unit="ms",
                baseline=idle[path],
                baseline_label="with no load",
                show_ratio=False,
                target=READ_TARGET_MS,
                target_kind="value<=",
                higher_is_better=False,
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Paced webhook ingest while status reads are polled.")
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the log before the load")
    parser.add_argument("--rate", type=int, default=2_000, help="requests/s offered")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--log", type=Path, default=None, help="keep the big log here (reused if present)")
    args = parser.parse_args()
    results = run(args.events, args.rate, args.duration, log=args.log)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
