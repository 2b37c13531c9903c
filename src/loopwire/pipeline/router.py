"""Which destinations take an event, and the one door into the log for every source."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.store import Store


def route(event: Event, takes: Mapping[str, Callable[[Event], bool]]) -> list[str]:
    """Destinations (by name) whose route takes the event."""
    return [name for name, accepts in takes.items() if accepts(event)]


class Ingest:
    """Commits events durably, enqueues them for their destinations and wakes those destinations."""

    def __init__(
        self,
        store: Store,
        takes: Mapping[str, Callable[[Event], bool]],
        metrics: Metrics,
        wake: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._store = store
        self._takes = dict(takes)
        self._metrics = metrics
        self._wake = wake

    async def __call__(self, events: Sequence[Event]) -> list[bool]:
        routes = [route(event, self._takes) for event in events]
        fresh = await self._store.append(events, routes)
        woken: set[str] = set()
        for event, dests, new in zip(events, routes, fresh, strict=True):
            if not new:
                self._metrics.duplicates.labels(event.source).inc()
                continue
            if not dests:
                self._metrics.unrouted.labels(event.source).inc()
            woken.update(dests)
        for name in woken:
            self._wake(name)
        return fresh
