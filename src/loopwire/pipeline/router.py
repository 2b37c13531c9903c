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

    async def one(self, event: Event) -> bool:
        """`ingest([event])` for the webhook path, without the bookkeeping a batch needs."""
        dests = [name for name, accepts in self._takes.items() if accepts(event)]
        (fresh,) = await self._store.append((event,), (dests,))
        if not fresh:
            self._metrics.duplicates.labels(event.source).inc()
        elif not dests:
            self._metrics.unrouted.labels(event.source).inc()
        for name in dests if fresh else ():
            self._wake(name)
        return fresh

    async def __call__(self, events: Sequence[Event]) -> list[bool]:
        takes = self._takes
        routes: Sequence[Sequence[str]] = (
            [[name for name, accepts in takes.items() if accepts(event)] for event in events]
            if takes
            else [()] * len(events)
        )
        fresh = await self._store.append(events, routes)
        woken: set[str] = set()
        duplicates: dict[str, int] = {}
        unrouted: dict[str, int] = {}
        for event, dests, new in zip(events, routes, fresh, strict=True):
            if not new:
                duplicates[event.source] = duplicates.get(event.source, 0) + 1
            elif dests:
                woken.update(dests)
            else:
                unrouted[event.source] = unrouted.get(event.source, 0) + 1
        # Counted once per source and request, not once per event (a batch holds up to 2,000).
        for source, count in duplicates.items():
            self._metrics.duplicates.labels(source).inc(count)
        for source, count in unrouted.items():
            self._metrics.unrouted.labels(source).inc(count)
        for name in woken:
            self._wake(name)
        return fresh
