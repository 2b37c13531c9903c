"""Prometheus metrics. Names are `loopwire_<noun>_<unit>_total`; labels are bounded: destinations,
audiences and sources are configured, reasons are codes from a fixed list (`REASON_CODES`, or
`http_<status>`), never an id or a free-text reason. The names are stable: docs/operations.md lists
them, and a rename is a breaking change in the CHANGELOG."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Why a row was retried, dead-lettered or skipped (`loopwire_delivery_reasons_total{reason}`).
# Skips carry their mapping's code (destinations/base.py `Skip.code`); dead letters and retries
# the destination's HTTP status as `http_<status>`, or one of these.
REASON_CODES = (
    # skipped
    "not_selected",  # the destination's options leave it out (channels, metrics, route.events, send_*)
    "no_identifier",  # no id the vendor accepts
    "identifier_too_long",  # over the vendor's identifier limit
    "unsupported",  # a kind or source the destination does not take
    "incomplete",  # a field the vendor requires is missing (an event name, a groupId)
    "nothing_to_send",  # nothing changed, or nothing selected, since it was last sent
    "machine_activity",  # opens and clicks by machines, excluded by `machine_activity`
    # dead
    "invalid",  # breaks a vendor limit before sending (fix and replay)
    "mapping_failed",  # loopwire's mapping raised: a bug, reported with the event
    "too_large",  # one event larger than the vendor takes
    "max_age",  # retried for longer than `retry.max_age`
    # retried or dead
    "no_response",  # timeout or connection failure
)


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
        self.identity_restarts = Counter(
            "loopwire_identity_follower_restarts_total",
            "Times the identity graph's follower process stopped unexpectedly and another was started",
            registry=r,
        )
        self.reasons = Counter(
            "loopwire_delivery_reasons_total",
            "Outbox rows retried, dead-lettered or skipped, by outcome and reason code (REASON_CODES)",
            ["destination", "outcome", "reason"],
            registry=r,
        )
        self.store = StoreCollector()  # outbox depth and age, audiences, identity: read at each scrape
        r.register(self.store)


class IdentitySnapshot(msgspec.Struct, frozen=True):
    people: int
    problems: dict[str, int]  # loopwire.identity.PROBLEMS → people or identifiers
    matched: dict[str, int]  # destination → people it can reach
    match_rates: dict[str, float]  # destination → matched / people
    lag_events: int  # logged events the graph has not folded yet


class Snapshot(msgspec.Struct, frozen=True):
    """What the store knows, read (off the event loop) at each scrape; a few indexed rows whatever
    the size of the log (outbox and audience tallies, the identity graph's tallies)."""

    outbox: dict[str, dict[str, int]]  # destination → state → rows
    oldest_pending_age_s: dict[str, float]  # destination → age of its oldest pending/in-flight row
    audiences: dict[str, tuple[int, int, int]]  # audience → (members, entered, exited)
    identity: IdentitySnapshot | None = None  # None: identity.graph is off
    retention: dict[str, int] | None = None  # kind → rows retention deleted (kept in the store)
    store_bytes: dict[str, int] = {}  # file (db, wal) → bytes on disk
    oldest_event_age_s: float = 0.0  # age of the oldest event in the log (by receipt); 0: empty


class StoreCollector(Collector):
    """Exposes the latest `Snapshot`. Families are built from it at each scrape, so a destination
    or audience removed from the config stops being reported (no stale series)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def describe(self) -> list[Metric]:
        return []  # built per scrape: the labels are only known then

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        depth = GaugeMetricFamily(
            "loopwire_outbox_events", "Outbox rows by state", labels=["destination", "state"]
        )
        for dest, states in sorted(snap.outbox.items()):
            for state, count in states.items():
                depth.add_metric([dest, state], count)
        yield depth
        age = GaugeMetricFamily(
            "loopwire_outbox_oldest_pending_age_seconds",
            "Age of the oldest event waiting (pending or in flight) per destination; 0 when none waits",
            labels=["destination"],
        )
        for dest in sorted(snap.outbox):
            age.add_metric([dest], snap.oldest_pending_age_s.get(dest, 0.0))
        yield age
        members = GaugeMetricFamily(
            "loopwire_audience_members", "People in each audience now", labels=["audience"]
        )
        changes = CounterMetricFamily(
            "loopwire_audience_membership_changes",
            "Entries and exits of each audience, as kept in the store (they survive restarts)",
            labels=["audience", "change"],
        )
        for audience, (size, entered, exited) in sorted(snap.audiences.items()):
            members.add_metric([audience], size)
            changes.add_metric([audience, "entered"], entered)
            changes.add_metric([audience, "exited"], exited)
        yield members
        yield changes
        disk = GaugeMetricFamily(
            "loopwire_store_size_bytes", "The store's SQLite file and its WAL on disk", labels=["file"]
        )
        for part, count in sorted(snap.store_bytes.items()):
            disk.add_metric([part], count)
        yield disk
        yield GaugeMetricFamily(
            "loopwire_log_oldest_event_age_seconds",
            "Age of the oldest event still in the log, from its receipt; 0 when the log is empty",
            value=snap.oldest_event_age_s,
        )
        if snap.retention is not None:
            deleted = CounterMetricFamily(
                "loopwire_retention_deleted_rows",
                "Rows retention deleted, as kept in the store (they survive restarts): events, and"
                " outbox rows that were delivered, skipped or dead",
                labels=["kind"],
            )
            for kind, count in snap.retention.items():
                deleted.add_metric([kind], count)
            yield deleted
        ident = snap.identity
        if ident is None:
            return
        yield GaugeMetricFamily(
            "loopwire_identity_people", "People in the identity graph", value=ident.people
        )
        problems = GaugeMetricFamily(
            "loopwire_identity_problems",
            "What breaks attribution: emails on several user ids and user ids with several emails"
            " (collisions), people without the primary identifier, device/anonymous ids never tied to a user",
            labels=["problem"],
        )
        for problem, count in ident.problems.items():
            problems.add_metric([problem], count)
        yield problems
        rate = GaugeMetricFamily(
            "loopwire_identity_match_rate",
            "Share of the graph's people a destination can reach (carrying what it needs), 0 to 1",
            labels=["destination"],
        )
        matched = GaugeMetricFamily(
            "loopwire_identity_matched_people", "People a destination can reach", labels=["destination"]
        )
        for dest in sorted(ident.match_rates):
            rate.add_metric([dest], ident.match_rates[dest])
            matched.add_metric([dest], ident.matched[dest])
        yield rate
        yield matched
        yield GaugeMetricFamily(
            "loopwire_identity_lag_events",
            "Logged events not yet folded into the graph",
            value=ident.lag_events,
        )
