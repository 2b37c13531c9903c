"""A paced soak: does the memory of every loopwire process level off? (issue 13, item 4)

    make soak                                        # 15 minutes at 2,000 webhooks/s
    python -m bench.soak --minutes 3 --rate 1000     # a shorter look

`loopwire serve` (its server and its ingest process) takes distinct signed webhooks from wrk at a
paced rate, delivering to the Amplitude sandbox (another process, not counted). The resident set of
each loopwire process is sampled every 10 s and printed at the start (after 30 s of load, once
startup allocations are done), at a third of the run and at its end: a leak shows as growth between
the last two. The webhooks are signed when generated, so the source's replay window is raised to
cover the run. Not part of `make bench` (it takes as long as it runs).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.common import (
    LOOPWIRE_ENV,
    Result,
    amplitude_sandbox,
    free_port,
    loopwire_serve,
    memory_kb,
    report,
    run_wrk,
    write_config,
)
from bench.webhook_ingest import SCRIPT, write_requests

SAMPLE_S = 10.0
GROWTH_TARGET = 1.10  # RSS at the end ≤ 1.1 × RSS at a third of the run


def _role(pid: int) -> str:
    """What a child of `loopwire serve` is, by its command line."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    return "identity follower" if b"identity_graph" in command else "ingest process"


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def run(minutes: float = 15.0, rate: int = 2_000, connections: int = 64, threads: int = 2) -> list[Result]:
    duration = int(minutes * 60)
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-soak-") as tmp:
        work = Path(tmp)
        requests_file = work / "requests.tsv"
        write_requests(requests_file, int(rate * duration * 1.05) + 1_000, time.time())
        with amplitude_sandbox(free_port(), work / "sandbox.log") as sandbox:
            config = write_config(work / "loopwire.yaml", work / "loopwire.db", sandbox.url)
            document = yaml.safe_load(config.read_text())
            document["sources"]["customerio_webhooks"]["replay_window"] = "6h"  # signed before the run
            config.write_text(yaml.safe_dump(document, sort_keys=False))
            port = free_port()
            with loopwire_serve(config, port, work / "loopwire.log", LOOPWIRE_ENV) as server:
                time.sleep(1.0)  # the identity follower starts beside the ingest process
                pids = {"server": server.pid, **{_role(child): child for child in _children(server.pid)}}
                samples: list[tuple[float, dict[str, int]]] = []
                stop = threading.Event()

                def sample() -> None:
                    started = time.monotonic()
                    while not stop.wait(SAMPLE_S):
                        rss = {name: memory_kb(pid)["VmRSS"] // 1024 for name, pid in pids.items()}
                        samples.append((time.monotonic() - started, rss))
                        print(
                            f"  {samples[-1][0]:6.0f} s  " + "  ".join(f"{k} {v} MB" for k, v in rss.items()),
                            flush=True,
                        )

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                args = [str(requests_file), str(threads), str(rate), str(connections)]
                wrk = run_wrk(
                    f"{server.url}/webhooks/customerio",
                    SCRIPT,
                    args,
                    connections=connections,
                    threads=threads,
                    duration=duration,
                )
                stop.set()
                sampler.join()
    if wrk.repeats or wrk.non_2xx:
        raise RuntimeError(f"soak: {wrk.repeats} repeats, {wrk.non_2xx} refusals")

    def at(seconds: float) -> dict[str, int]:
        return min(samples, key=lambda s: abs(s[0] - seconds))[1]

    start, third, end = at(30), at(duration / 3), at(duration)
    results = []
    for name in pids:
        results.append(
            Result(
                name=f"{name} RSS at the end, {wrk.rate:,.0f} webhooks/s for {minutes:g} min",
                value=end[name],
                unit="MB",
                baseline=third[name],
                baseline_label=f"at {duration / 180:g} min",
                target=round(third[name] * GROWTH_TARGET, 1),  # levels off: ≤ 10 % growth after a third
                target_kind="value<=",
                higher_is_better=False,
                show_ratio=False,
                details={"start_mb": start[name], "third_mb": third[name], "end_mb": end[name]},
            )
        )
    print(
        f"  latency p99 {wrk.latency_us['p99'] / 1000:.1f} ms, {wrk.requests:,} requests, command: {wrk.command}"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="A paced soak of loopwire serve; RSS of every process.")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=2_000)
    args = parser.parse_args()
    results = run(args.minutes, args.rate)
    report(results)
    for result in results:
        d = result.details
        print(
            f"  {result.name.split(' RSS')[0]}: start {d['start_mb']} MB / {d['third_mb']} MB / end {d['end_mb']} MB"
        )


if __name__ == "__main__":
    main()
