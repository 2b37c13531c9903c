"""Ingest: the one door into the log. The webhook path's single-event `one` must keep exactly the
books the batch path keeps (outbox rows, duplicates, unrouted events, wake-ups)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.pipeline.router import Ingest
from loopwire.store import SQLiteStore


def _event(ident: str, name: str) -> Event:
    return Event(
        id=ident, source="storefront", kind="track", name=name, time_ms=1, received_ms=2, user_id="u1"
    )


def _takes_orders(event: Event) -> bool:
    return event.name == "Order Completed"


def _value(metrics: Metrics, family: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(family, labels) or 0.0


@pytest.mark.parametrize("path", ["one", "batch"])
def test_one_and_batch_keep_the_same_books(tmp_path: Path, path: str) -> None:
    store = SQLiteStore(tmp_path / "loopwire.db")
    metrics = Metrics()
    woken: list[str] = []
    ingest = Ingest(store, {"orders": _takes_orders, "everything": lambda e: True}, metrics, woken.append)
    nobody = Ingest(store, {"orders": _takes_orders}, metrics, woken.append)

    async def send(via: Ingest, event: Event) -> bool:
        if path == "one":
            return await via.one(event)
        (fresh,) = await via([event])
        return fresh

    async def scenario() -> list[bool]:
        return [
            await send(ingest, _event("e1", "Order Completed")),  # both destinations
            await send(ingest, _event("e1", "Order Completed")),  # the same event again
            await send(nobody, _event("e2", "Product Viewed")),  # no destination takes it
        ]

    try:
        assert asyncio.run(scenario()) == [True, False, True]
        assert sorted(woken) == ["everything", "orders"]  # once, for the first copy only
        pending = {dest: states["pending"] for dest, states in store.counts().items()}
        assert pending == {"orders": 1, "everything": 1}  # one row each: the duplicate queued nothing
        assert store.event_count() == 2
        assert _value(metrics, "loopwire_ingest_duplicate_events_total", source="storefront") == 1
        assert _value(metrics, "loopwire_router_unrouted_events_total", source="storefront") == 1
    finally:
        store.close()
