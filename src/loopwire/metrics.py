"""Prometheus metrics. Names are `loopwire_<noun>_<unit>_total`; labels are bounded (no ids, no reasons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loopwire_ingest_requests_total",
            "Requests received by a source, by outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "loopwire_ingest_rejected_requests_total",
            "Requests refused with a 4xx, by error code",
            ["source", "code"],
            registry=r,
        )
        self.events = Counter(
            "loopwire_ingest_events_total",
            "Events committed to the log, by source and pair kind",
            ["source", "known"],
            registry=r,
        )
        self.duplicates = Counter(
            "loopwire_ingest_duplicate_events_total",
            "Events received again and stored once",
            ["source"],
            registry=r,
        )
        self.unrouted = Counter(
            "loopwire_router_unrouted_events_total", "Events no destination takes", ["source"], registry=r
        )
        self.delivery = Counter(
            "loopwire_delivery_events_total",
            "Outbox rows settled, by outcome",
            ["destination", "outcome"],
            registry=r,
        )
        self.responses = Counter(
            "loopwire_delivery_requests_total",
            "Requests sent to a destination, by HTTP status (0: no answer)",
            ["destination", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "loopwire_delivery_latency_seconds",
            "From receipt to delivery",
            ["destination"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
        )
        self.ingest_restarts = Counter(
            "loopwire_ingest_process_restarts_total",
            "Times the ingest process stopped unexpectedly and another was started",
            registry=r,
        )
        self.backlog = Gauge(
            "loopwire_outbox_events", "Outbox rows by state", ["destination", "state"], registry=r
        )
