"""What keeping the identity graph costs webhook ingest (issue 10: less than 5 %).

    python -m bench.identity_cost [--duration 8] [--rounds 2]

`loopwire serve` as users run it (the server and its ingest process, the amplitude destination
paused so every event is committed and queued but none sent) under the same wrk load as
`bench.webhook_ingest`, with `identity.graph: true` (the default: the follower folds the log into
the graph while webhooks arrive) and `identity.graph: false`, interleaved (off, on, on, off, …).
Every request is a distinct signed webhook; a run that would repeat one fails. When wrk stops, each
"on" run reads how far the graph is behind the log (`loopwire_identity_lag_events`, /metrics) and
then waits until it has folded everything: at saturation the follower gives way to ingest
(pipeline/identity_graph.py, `Follower.follow`), so the share folded under load and the seconds it
took to catch up afterwards are printed beside the ratio; a graph that does not catch up within
two minutes fails the run.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, WrkRun, pooled_rate, report
from bench.webhook_ingest import loopwire_run, write_requests
from loopwire.store.identity import graph_path

RATIO_TARGET = 0.95  # the graph may cost ingest less than 5 %


def folded_share(db: Path) -> tuple[int, int]:
    """(events in the log, events the follower had folded) once the server has stopped."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    finally:
        conn.close()
    side = Path(graph_path(str(db)))
    if not side.exists():
        return int(events), 0
    conn = sqlite3.connect(f"file:{side}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT seq FROM id_cursor").fetchone()
        return int(events), int(row[0]) if row else 0
    finally:
        conn.close()


def run(
    duration: int = 8, connections: int = 64, threads: int = 2, count: int = 400_000, rounds: int = 2
) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-identity-") as tmp:
        work = Path(tmp)
        requests_file = work / "requests.tsv"
        write_requests(requests_file, count, time.time())
        wrk_args = {"connections": connections, "threads": threads, "duration": duration}
        runs: dict[str, list[WrkRun]] = {"off": [], "on": []}
        folded: list[dict[str, Any]] = []
        for number in range(rounds):
            order = ["off", "on"] if number % 2 == 0 else ["on", "off"]
            for kind in order:
                name = f"{kind}-{number}"
                sections = {"identity": {"graph": kind == "on"}}
                result, check = loopwire_run(
                    work,
                    name,
                    requests_file,
                    wrk_args,
                    paused=True,
                    sections=sections,
                    identity_catch_up=kind == "on",
                )
                runs[kind].append(result)
                if kind == "on":
                    events, cursor = folded_share(work / name / "loopwire.db")
                    folded.append(
                        {
                            "run": name,
                            "events": events,
                            "lag_when_load_stopped": check["identity_lag_events"],
                            "caught_up_after_s": check["identity_catch_up_s"],
                            "folded_when_server_stopped": cursor,
                        }
                    )
    on, off = pooled_rate(runs["on"]), pooled_rate(runs["off"])
    # each round's own ratio too: a drift in the machine's speed between rounds falls on both sides
    paired = sorted(a.rate / b.rate for a, b in zip(runs["on"], runs["off"], strict=True))
    events = max(1, sum(f["events"] for f in folded))
    share = 1 - sum(f["lag_when_load_stopped"] for f in folded) / events
    catch_up = max(f["caught_up_after_s"] for f in folded)
    return [
        Result(
            name=(
                f"webhook ingest with the identity graph kept ({share:.0%} of the log folded under load,"
                f" all of it {catch_up:g} s after)"
            ),
            value=on,
            unit="req/s",
            baseline=off,
            baseline_label="identity.graph: false",
            target=RATIO_TARGET,
            details={
                "rounds": rounds,
                "ratio_per_round": [round(r, 3) for r in paired],
                "median_ratio_of_rounds": round(statistics.median(paired), 3),
                "rates_per_run": {k: [round(r.rate) for r in v] for k, v in runs.items()},
                "command": runs["on"][0].command,
                "folded": folded,
                "latency_p99_ms": {k: round(v[-1].latency_us["p99"] / 1000, 2) for k, v in runs.items()},
            },
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The identity graph's cost to webhook ingest (wrk on loopback)."
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (off/on, then on/off, …)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=400_000, help="distinct signed webhooks generated")
    parser.add_argument("--details", action="store_true", help="print each run's figures (JSON) too")
    args = parser.parse_args()
    results = run(args.duration, args.connections, count=args.requests, rounds=args.rounds)
    report(results)
    if args.details:
        print(json.dumps([r.details for r in results], indent=2))


if __name__ == "__main__":
    main()
