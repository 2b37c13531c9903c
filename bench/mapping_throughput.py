"""Mapping throughput on one thread: webhook bytes → `parse_webhook` → `map_event` → JSON bytes.

The subject is the Customer.io → Amplitude path every webhook takes, with the options of
examples/loopwire.yaml; the baseline is a plain parse-and-serialize of the same bytes (orjson when it
is installed, else msgspec's JSON decode + encode — it is not a loopwire dependency). Both run over
the same mix — every valid webhook among the golden mapping inputs and the reference fixtures, each
made a distinct event — in alternating rounds, and each side keeps its best round (the one the shared
machine disturbed least), as `timeit` does.

    python -m bench.mapping_throughput [--rounds 15] [--events 20000]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from ulid import ULID

from bench.common import API_KEY, SIGNING_KEY, Result, personalise, report, webhook_mix, write_config

RATIO_TARGET = 0.25


def baseline_codec() -> tuple[str, Callable[[bytes], Any], Callable[[Any], bytes]]:
    try:
        import orjson  # type: ignore[import-not-found]
    except ImportError:
        return "msgspec.json decode + encode", msgspec.json.decode, msgspec.json.encode
    return "orjson loads + dumps", orjson.loads, orjson.dumps


def amplitude_options() -> Any:
    from loopwire.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "loopwire.yaml", Path(tmp) / "x.db", "http://127.0.0.1:9")
        env = {"CIO_WEBHOOK_SIGNING_KEY": SIGNING_KEY, "AMPLITUDE_API_KEY": API_KEY}
        return load_config(config, env).destinations["amplitude"]


def bodies(count: int) -> tuple[list[bytes], int]:
    templates = webhook_mix()
    now = int(time.time())
    out = [
        msgspec.json.encode(personalise(templates[n % len(templates)], str(ULID()), f"user-{n:06d}", now))
        for n in range(count)
    ]
    return out, len(templates)


def run(rounds: int = 15, count: int = 20_000) -> list[Result]:
    from loopwire.destinations.amplitude.mapping import map_event
    from loopwire.destinations.base import Skip
    from loopwire.sources.customerio_parse import parse_webhook

    options = amplitude_options()
    payload_bodies, kinds = bodies(count)
    label, loads, dumps = baseline_codec()
    encode = msgspec.json.Encoder().encode
    now_ms = int(time.time() * 1000)

    def loopwire_pass() -> int:
        skipped = 0
        for body in payload_bodies:
            mapped = map_event(parse_webhook(body, now_ms), options, now_ms)
            if type(mapped) is Skip:
                skipped += 1
            else:
                encode(mapped)
        return skipped

    def baseline_pass() -> int:
        for body in payload_bodies:
            dumps(loads(body))
        return 0

    best = {"loopwire": float("inf"), "baseline": float("inf")}
    every: dict[str, list[float]] = {"loopwire": [], "baseline": []}
    skipped = loopwire_pass()  # warm-up (caches, allocator) and the skip count
    baseline_pass()
    for number in range(rounds):
        order = [("baseline", baseline_pass), ("loopwire", loopwire_pass)]
        for name, work in order if number % 2 == 0 else reversed(order):
            gc.collect()
            started = time.perf_counter()
            work()
            elapsed = time.perf_counter() - started
            every[name].append(round(count / elapsed))
            best[name] = min(best[name], elapsed)

    return [
        Result(
            name="mapping throughput",
            value=count / best["loopwire"],
            unit="events/s",
            baseline=count / best["baseline"],
            baseline_label=label,
            target=RATIO_TARGET,
            details={
                "events_per_round": count,
                "webhook_kinds": kinds,
                "skipped_by_mapping": skipped,
                "rounds": rounds,
                "rates_per_round": every,
                "baseline": label,
                "command": "python -m bench.mapping_throughput",
            },
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Mapping throughput (one thread) against parse+serialize.")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    results = run(args.rounds, args.events)
    report(results)
    for result in results:
        print(f"  {result.details}")


if __name__ == "__main__":
    main()
