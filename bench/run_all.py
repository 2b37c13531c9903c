"""Run every benchmark, bounded in time, print a summary and write bench/out/results.{json,md}.

    python -m bench.run_all            # what `make bench` runs (about 12 minutes)
    python -m bench.run_all --only mapping_throughput

Each benchmark prints its own figures beside its baseline as it finishes; a benchmark that fails is
reported and the others still run. The exit status is 1 if a benchmark failed to run (with `--strict`,
also if one missed its target).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

from bench import (
    audiences_bench,
    batch_ingest,
    console_pages,
    drain_backlog,
    identity_cost,
    large_log,
    lift_bench,
    mapping_throughput,
    polled_ingest,
    status_reads,
    webhook_ingest,
)
from bench.common import OUT, Result, describe_machine, machine, number

BENCHMARKS: dict[str, Callable[[], list[Result]]] = {
    "mapping_throughput": mapping_throughput.run,
    "webhook_ingest": webhook_ingest.run,
    "drain_backlog": drain_backlog.run,
    "batch_ingest": batch_ingest.run,
    "lift": lift_bench.run,
    "audiences": audiences_bench.run,
    "status_reads": status_reads.run,
    "console_pages": console_pages.run,
    "identity_cost": identity_cost.run,
    # a million events in the log for these two here; docs/performance.md has the 10 million
    "large_log": lambda: large_log.run(events=1_000_000),
    "polled_ingest": lambda: polled_ingest.run(events=1_000_000),
}
# `make bench` stays under fifteen minutes, whatever happens. At 720 s the last benchmark
# (polled_ingest, about 65 s) was cut off on a machine where the others took 663 s.
TIME_LIMIT_S = 900


class OutOfTime(Exception):
    pass


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime(f"the benchmarks ran past {TIME_LIMIT_S}s")


def table(results: list[Result]) -> list[list[str]]:
    rows = [["benchmark", "figure", "baseline", "ratio", "target", "met"]]
    for r in results:
        baseline = f"{number(r.baseline)} {r.unit} ({r.baseline_label})" if r.baseline is not None else "—"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        rows.append([r.name, f"{number(r.value)} {r.unit}", baseline, ratio, r.target_text(), met])
    return rows


def as_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def as_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the loopwire benchmarks (loopback only, bounded).")
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="run just this one (repeat)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)

    info = machine()
    print(f"machine: {describe_machine(info)}", flush=True)
    load = info["load_average"][0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before the start — other work shares these cores", flush=True)
    started = time.monotonic()
    results: list[Result] = []
    errors: dict[str, str] = {}
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(TIME_LIMIT_S)
    try:
        for name in chosen:
            print(f"\n== {name}", flush=True)
            began = time.monotonic()
            try:
                found = BENCHMARKS[name]()
            except OutOfTime:
                errors[name] = f"stopped: the benchmarks ran past {TIME_LIMIT_S}s"
                print(errors[name], flush=True)
                break
            except Exception as exc:
                errors[name] = "".join(traceback.format_exception_only(exc)).strip()
                traceback.print_exc()
                continue
            for result in found:
                result.details["benchmark"] = name
                print(result.line(), flush=True)
            print(f"({time.monotonic() - began:.0f}s)", flush=True)
            results.extend(found)
    finally:
        signal.alarm(0)
    elapsed = time.monotonic() - started

    rows = table(results)
    print(f"\nsummary ({elapsed:.0f}s, {info['date']}):\n{as_text(rows)}")
    for name, error in errors.items():
        print(f"FAILED {name}: {error}")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "command": "python -m bench.run_all" + "".join(f" --only {n}" for n in args.only or []),
        "seconds": round(elapsed, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": [r.as_dict() for r in results],
        "errors": errors,
    }
    (OUT / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (OUT / "results.md").write_text(
        f"Measured {info['date']} on {describe_machine(info)}\n\n{as_markdown(rows)}\n"
    )
    print(f"wrote {OUT / 'results.json'} and {OUT / 'results.md'}")
    missed = [r.name for r in results if r.met is False]
    for name in missed:
        print(f"MISSED target: {name}")
    return 1 if errors or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
