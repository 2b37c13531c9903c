"""The `loopwire serve` application: sources, the log, the couriers, health, metrics and the console."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loopwire import identity
from loopwire.audiences.engine import Engine, check_and_record_versions
from loopwire.config import Config, DestinationOptions
from loopwire.destinations.base import Destination
from loopwire.destinations.registry import build_destination
from loopwire.errors import ConfigError
from loopwire.identity import external_attribute
from loopwire.ingest_process import IngestProcess, Spec
from loopwire.metrics import IdentitySnapshot, Metrics, Snapshot
from loopwire.pipeline.delivery import Courier
from loopwire.pipeline.identity_graph import FollowerProcess
from loopwire.pipeline.retention import Retention
from loopwire.pipeline.router import Ingest
from loopwire.sources.amplitude_api import AmplitudeApi
from loopwire.sources.customerio_webhooks import CustomerioWebhooks
from loopwire.sources.segment_api import SegmentApi
from loopwire.store import SentMemory, Store, open_store, retention
from loopwire.store import audiences as audience_store
from loopwire.store import console as console_store
from loopwire.store import identity as identity_graph
from loopwire.web.auth import refusal
from loopwire.web.context import Console
from loopwire.web.openapi import openapi_document
from loopwire.web.routes import console_routes

log = logging.getLogger("loopwire.app")

READY_PROBE_TIMEOUT_S = 2.0  # a store write slower than this counts as failing
# Several nodes on one PostgreSQL database: how often each reads which destinations the console
# paused or resumed (on any node), so a pause acts on every node within this, not at their restart.
PAUSES_FOLLOW_S = 2.0
READY_CACHE_S = 1.0  # readiness is worked out at most once a second, however often it is asked


class Runtime:
    """Everything one server process owns, built from the config."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store = open_store(config.store)
        if config.audiences:
            try:
                check_and_record_versions(self.store, config.audiences, int(clock() * 1000))
            except Exception:
                self.store.close()
                raise
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        self.memories = {name: SentMemory(self.store, name) for name in config.destinations}
        self.destinations: dict[str, Destination] = {
            name: build_destination(name, options, self.http, self.memories[name])
            for name, options in config.destinations.items()
        }
        self.couriers: dict[str, Courier] = {}
        # paused now: by the config, or from the console (kept in the store; read at start)
        self.paused: set[str] = {name for name, options in config.destinations.items() if options.paused}
        self.engine: Engine | None = None
        # the identity graph follows the log in the background (identity.graph: false → not kept)
        self.identity: FollowerProcess | None = None
        if config.identity.graph:
            self.identity = FollowerProcess(
                config.store.path, external_attribute(config), self.metrics.identity_restarts.inc
            )
        # old rows of the log and the outboxes trimmed in the background (store.retention; off by default)
        self.retention: Retention | None = None
        if config.store.retention.enabled:
            self.retention = Retention(self.store, config, clock)
        self._ready: tuple[float, int, dict[str, Any]] | None = None
        self._pauses: asyncio.Task[None] | None = None
        self._ready_lock = asyncio.Lock()
        self.ingest = Ingest(
            self.store,
            {name: dest.accepts for name, dest in self.destinations.items()},
            self.metrics,
            wake=self._wake,
        )
        webhooks = config.sources.customerio_webhooks
        self.ingest_process: IngestProcess | None = None
        if webhooks is not None and config.server.ingest_process:
            spec = Spec(
                store=config.store.path,
                signing_keys=[key.reveal() for key in webhooks.signing_keys],
                replay_window=float(webhooks.replay_window),
                destinations=dict(config.destinations),
            )
            self.ingest_process = IngestProcess(spec, self.metrics, self._wake)

    def _wake(self, name: str) -> None:
        courier = self.couriers.get(name)
        if courier is not None:
            courier.wake()

    async def start(self) -> None:
        if self.ingest_process is not None:
            await self.ingest_process.start()
        if self.config.experiments or self.config.audiences:
            self.engine = Engine(
                self.store, self.config.experiments, self.ingest, self.config.audiences, clock=self.clock
            )
            self.engine.start()
        if self.identity is not None:
            # the graph's file exists (schema, WAL) before its follower's process opens it too
            await asyncio.to_thread(identity_graph.of, self.store)
            await self.identity.start()
        if self.retention is not None:
            self.retention.start()
        self.paused |= set(await asyncio.to_thread(console_store.paused, self.store)) & set(self.destinations)
        for name in self.destinations:
            if name in self.paused:
                log.warning("destination %s is paused: its events are queued, not sent", name)
                continue
            self._start_courier(name)
        if self.store.dialect == "postgres":  # other nodes may pause and resume (one node per SQLite file)
            self._pauses = asyncio.create_task(self._follow_pauses(), name="loopwire-pauses")

    async def _follow_pauses(self) -> None:
        """Apply here what the console of another node paused or resumed (kept in the store)."""
        while True:
            await asyncio.sleep(PAUSES_FOLLOW_S)
            try:
                stored = set(await asyncio.to_thread(console_store.paused, self.store)) & set(
                    self.destinations
                )
                for name in sorted(stored - self.paused):
                    await self._pause_here(name)
                    log.warning("destination %s paused from another node's console", name)
                for name in sorted(self.paused - stored):
                    if not self.config.destinations[name].paused:  # (the config's pause stays)
                        await self._resume_here(name)
                        log.warning("destination %s resumed from another node's console", name)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away for a moment: the next round reads again
                log.exception("could not read which destinations are paused")

    async def _pause_here(self, name: str) -> None:
        self.paused.add(name)
        courier = self.couriers.pop(name, None)
        if courier is not None:
            await courier.stop()  # rows it had in flight are settled or sent again at resume

    async def _resume_here(self, name: str) -> None:
        self.paused.discard(name)
        if name not in self.couriers:
            await asyncio.to_thread(console_store.requeue_in_flight, self.store, name)
            self._start_courier(name)

    def _start_courier(self, name: str) -> None:
        courier = Courier(self.destinations[name], self.store, self.metrics, clock=self.clock)
        self.couriers[name] = courier
        courier.start()

    async def set_paused(self, name: str, pause: bool) -> None:
        """Pause (stop sending; keep queueing) or resume a destination now, and keep that in the store
        so it outlasts a restart. `paused: true` in the config cannot be resumed from here."""
        await asyncio.to_thread(console_store.set_paused, self.store, name, pause, int(self.clock() * 1000))
        if pause:
            await self._pause_here(name)
            log.warning("destination %s paused from the console: its events are queued, not sent", name)
        elif not self.config.destinations[name].paused:
            await self._resume_here(name)
            log.warning("destination %s resumed from the console", name)

    async def stop(self) -> None:
        if self._pauses is not None:
            self._pauses.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pauses
        if self.ingest_process is not None:
            await self.ingest_process.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.identity is not None:
            await self.identity.stop()
        for courier in self.couriers.values():
            await courier.stop()
        for dest in self.destinations.values():
            await dest.aclose()
        await self.http.aclose()
        for memory in self.memories.values():
            memory.close()
        self.store.close()

    def status(self) -> dict[str, Any]:
        return status_report(self.store, self.config.destinations)

    def snapshot(self) -> Snapshot:
        """What `/metrics` reports from the store (sync: run it in a thread)."""
        return monitoring_snapshot(self.store, self.config, int(self.clock() * 1000))

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """`GET /readyz`: 200 when loopwire can take data now, else 503 with the failing checks.
        Liveness (`/healthz`) only says the process answers; this says the store takes a durable
        write, the ingest process is up, and (with `server.ready_max_backlog_age`) no destination
        is further behind than allowed. Cached for a second: a probe costs an fsync."""
        async with self._ready_lock:
            if self._ready is not None and time.monotonic() - self._ready[0] < READY_CACHE_S:
                return self._ready[1], self._ready[2]
            status, body = await self._check_ready()
            self._ready = (time.monotonic(), status, body)
            return status, body

    async def _check_ready(self) -> tuple[int, dict[str, Any]]:
        now_ms = int(self.clock() * 1000)
        failing: list[str] = []
        checks: dict[str, Any] = {}
        try:
            await asyncio.wait_for(self.store.probe(now_ms), READY_PROBE_TIMEOUT_S)
            checks["store"] = {"ok": True}
        except TimeoutError:
            checks["store"] = {"ok": False, "error": f"a write took over {READY_PROBE_TIMEOUT_S:g}s"}
            failing.append("store")
        except Exception as exc:  # disk full, read-only file system, I/O error
            checks["store"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failing.append("store")
        if self.ingest_process is not None:
            checks["ingest_process"] = {"ok": self.ingest_process.up}
            if not self.ingest_process.up:
                failing.append("ingest_process")
        limit = self.config.server.ready_max_backlog_age
        oldest = await asyncio.to_thread(self.store.oldest_undelivered_ms)
        backlog: dict[str, Any] = {}
        for name in self.config.destinations:
            age = max(0.0, (now_ms - oldest[name]) / 1000) if name in oldest else 0.0
            ok = limit is None or name in self.paused or age <= float(limit)
            backlog[name] = {"ok": ok, "oldest_age_seconds": round(age, 3)}
            if not ok:
                failing.append(f"backlog:{name}")
        checks["backlog"] = backlog
        body = {"status": "ready" if not failing else "not_ready", "failing": failing, "checks": checks}
        return (200 if not failing else 503), body


def status_report(store: Store, destinations: Mapping[str, DestinationOptions]) -> dict[str, Any]:
    """Events in the log; outbox rows per state, per destination; which destinations are paused; the
    reasons for dead and skipped rows; the store's size on disk, its oldest event and what retention
    deleted (the console, `/api/status` and `loopwire status`). Delivered and skipped counts are
    lifetime totals: retention's deletes leave them (migration 11); pending, in flight and dead are
    the rows there now. Every figure is a tally, an index descent or a stat: no full scan."""
    counts = store.counts(destinations)
    footprint = store.size_on_disk()
    return {
        "events": store.event_count(),
        "oldest_event_ms": store.oldest_event_ms(),
        "store": {
            "path": store.path,
            "bytes": footprint.file_bytes + footprint.wal_bytes,
            "file_bytes": footprint.file_bytes,
            "wal_bytes": footprint.wal_bytes,
            "free_bytes": footprint.free_bytes,
            "incremental_vacuum": footprint.incremental_vacuum,
        },
        "retention_deleted": retention.deleted(store),
        "destinations": counts,
        "paused": sorted(
            {name for name, options in destinations.items() if options.paused}
            | (set(console_store.paused(store)) & set(destinations))
        ),
        "dead_reasons": [{"destination": d, "reason": r, "count": n} for d, r, n in store.reasons("dead")],
        "skip_reasons": [{"destination": d, "reason": r, "count": n} for d, r, n in store.reasons("skipped")],
    }


def monitoring_snapshot(store: Store, config: Config, now_ms: int) -> Snapshot:
    """Outbox depth and the age of each destination's oldest waiting event, audience sizes and
    changes, and the identity graph's problems and match rates: each from a tally or an index."""
    oldest = store.oldest_undelivered_ms()
    ident: IdentitySnapshot | None = None
    if config.identity.graph:
        tally = identity_graph.tally(store)
        matched, match_rates = identity.rates(tally, config)
        ident = IdentitySnapshot(
            people=tally.people,
            problems=identity.problems(tally, identity.primary_kind(config)),
            matched=matched,
            match_rates=match_rates,
            lag_events=max(0, store.last_seq() - tally.cursor),
        )
    footprint = store.size_on_disk()
    first = store.oldest_event_ms()
    return Snapshot(
        outbox=store.counts(config.destinations),
        oldest_pending_age_s={dest: max(0.0, (now_ms - ms) / 1000) for dest, ms in oldest.items()},
        audiences=audience_store.audience_tally(store),
        identity=ident,
        retention=retention.deleted(store) if config.store.retention.enabled else None,
        store_bytes={"db": footprint.file_bytes, "wal": footprint.wal_bytes},
        oldest_event_age_s=0.0 if first is None else max(0.0, (now_ms - first) / 1000),
    )


def create_app(config: Config, clock: Callable[[], float] = time.time) -> LoopwireApp:
    why = refusal(config.server.host) if config.console.token is None else None
    if why is not None:  # the console and /api/* would be open to the network, or locked for good
        raise ConfigError(why, key="server.host")
    runtime = Runtime(config, clock)
    console: Console | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        if console is not None:
            console.trend.start()
        try:
            yield
        finally:
            if console is not None:
                await console.trend.stop()
                await console.lifts.stop()
            await runtime.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, body = await runtime.readiness()
        return Response(msgspec.json.encode(body), status, media_type="application/json")

    # Reads run in a thread: SQLite lets go of the interpreter while it reads, so a scrape or a
    # console view never holds up the requests being ingested (issue 13).
    async def metrics(request: Request) -> Response:
        runtime.metrics.store.snapshot = await asyncio.to_thread(runtime.snapshot)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    # The console, /api/* and /metrics, each behind its guard (web/auth.py); ingest, health and
    # readiness keep their own authentication, or none.
    guarded, console = console_routes(runtime, metrics)
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/openapi.json", openapi),
        *guarded,
    ]
    fast: dict[tuple[str, str], Any] = {}
    webhook_config = config.sources.customerio_webhooks
    if webhook_config is not None:
        handler = CustomerioWebhooks(
            webhook_config,
            runtime.ingest.one,
            runtime.metrics,
            config.server.max_body_bytes,
            clock,
            forward=runtime.ingest_process,
        )
        fast[("POST", "/webhooks/customerio")] = handler
    amplitude_config = config.sources.amplitude_api
    if amplitude_config is not None:
        amplitude = AmplitudeApi(
            amplitude_config, runtime.ingest, runtime.metrics, clock, config.server.max_body_bytes
        )
        for path, endpoint in (
            ("/2/httpapi", amplitude.httpapi),
            ("/batch", amplitude.batch),
            ("/identify", amplitude.identify),
            ("/groupidentify", amplitude.groupidentify),
        ):
            routes.append(Route(path, endpoint, methods=["POST", "GET"] if path == "/identify" else ["POST"]))
            routes.append(Route(path, amplitude.preflight, methods=["OPTIONS"]))
    segment_config = config.sources.segment_api
    if segment_config is not None:
        segment = SegmentApi(
            segment_config, runtime.ingest, runtime.metrics, clock, config.server.max_body_bytes
        )
        for call in ("track", "identify", "group", "page", "screen", "alias", "batch"):
            routes.append(Route(f"/v1/{call}", segment.endpoint(call), methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.console = console
    return LoopwireApp(app, fast)


class LoopwireApp:
    """The Starlette app, with the hottest endpoints answered before its routing (bare ASGI)."""

    def __init__(self, app: Starlette, fast: dict[tuple[str, str], Any]) -> None:
        self.app = app
        self.state = app.state
        self._fast = fast

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = self._fast.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)
