"""What the overview's delivery charts are drawn from: every `INTERVAL_S` the per-destination counts
(the trigger-kept tally and the live backlog) and the delivery counters and latency histogram are
sampled into memory, and kept for `KEEP_S`. Differences between samples give delivered, failures
and mean latency per interval. The samples live as long as the server: after a restart the charts
start again (the log's volume-in chart does not depend on them)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from loopwire.store import Store

log = logging.getLogger("loopwire.console")

INTERVAL_S = 30.0
KEEP_S = 24 * 3600.0


@dataclass(frozen=True)
class Sample:
    at_ms: int
    states: dict[str, dict[str, int]]  # destination → state → rows
    retried: dict[str, float]  # destination → retries counted since start
    latency: dict[str, tuple[float, float]]  # destination → (sum of seconds, deliveries)


def read_counters(registry: CollectorRegistry) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    retried: dict[str, float] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in registry.collect():
        if family.name not in ("loopwire_delivery_events", "loopwire_delivery_latency_seconds"):
            continue
        for sample in family.samples:
            dest = sample.labels.get("destination", "")
            if sample.name == "loopwire_delivery_events_total" and sample.labels.get("outcome") == "retried":
                retried[dest] = retried.get(dest, 0.0) + sample.value
            elif sample.name == "loopwire_delivery_latency_seconds_sum":
                sums[dest] = sample.value
            elif sample.name == "loopwire_delivery_latency_seconds_count":
                counts[dest] = sample.value
    return retried, {dest: (sums.get(dest, 0.0), counts.get(dest, 0.0)) for dest in counts}


def latency_quantiles(
    registry: CollectorRegistry, quantiles: Iterable[float]
) -> dict[str, dict[float, float]]:
    """Per destination, upper bounds of the histogram bucket each quantile falls in (since start)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in registry.collect():
        if family.name != "loopwire_delivery_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets.setdefault(sample.labels["destination"], []).append((bound, sample.value))
    wanted = list(quantiles)
    result: dict[str, dict[float, float]] = {}
    for dest, rows in buckets.items():
        rows.sort()
        total = rows[-1][1] if rows else 0.0
        if not total:
            continue
        result[dest] = {q: next(bound for bound, seen in rows if seen >= q * total) for q in wanted}
    return result


class Trend:
    def __init__(
        self,
        store: Store,
        destinations: Iterable[str],
        registry: CollectorRegistry,
        clock: Callable[[], float],
        interval: float = INTERVAL_S,
    ) -> None:
        self._store = store
        self._destinations = list(destinations)
        self._registry = registry
        self._clock = clock
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=max(2, int(KEEP_S / interval)))
        self.started_ms = int(clock() * 1000)
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def take(self) -> Sample:
        states = self._store.counts(self._destinations)
        retried, latency = read_counters(self._registry)
        sample = Sample(int(self._clock() * 1000), states, retried, latency)
        with self._lock:  # pages copy the samples from other threads
            self.samples.append(sample)
        return sample

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="console-trend")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.take)
            except Exception:  # a failed read (disk trouble) leaves a gap in the charts, nothing more
                log.exception("the console could not sample the outbox counts")
            await asyncio.sleep(self.interval)

    def series(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """Per chart, per destination, (time ms, value): delivered, failed (dead + retries) per
        interval, the backlog (pending + in flight), and the mean delivery latency in seconds."""
        charts: dict[str, dict[str, list[tuple[int, float]]]] = {
            "delivered": {},
            "failed": {},
            "backlog": {},
            "latency": {},
        }
        with self._lock:
            samples = list(self.samples)
        for sample in samples:
            for dest, states in sample.states.items():
                charts["backlog"].setdefault(dest, []).append(
                    (sample.at_ms, float(states.get("pending", 0) + states.get("in_flight", 0)))
                )
        for before, after in itertools.pairwise(samples):
            for dest, states in after.states.items():
                old = before.states.get(dest, {})
                delivered = states.get("delivered", 0) - old.get("delivered", 0)
                dead = states.get("dead", 0) - old.get("dead", 0)
                retries = after.retried.get(dest, 0.0) - before.retried.get(dest, 0.0)
                charts["delivered"].setdefault(dest, []).append((after.at_ms, float(max(delivered, 0))))
                charts["failed"].setdefault(dest, []).append(
                    (after.at_ms, float(max(dead, 0)) + max(retries, 0.0))
                )
                total, n = after.latency.get(dest, (0.0, 0.0))
                old_total, old_n = before.latency.get(dest, (0.0, 0.0))
                if n > old_n:
                    charts["latency"].setdefault(dest, []).append(
                        (after.at_ms, (total - old_total) / (n - old_n))
                    )
        return charts
