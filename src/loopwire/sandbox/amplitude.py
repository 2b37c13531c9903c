"""A local Amplitude API that keeps Amplitude's documented contract, with fault controls.

    sb = AmplitudeSandbox(api_keys=frozenset({"demo-key"}))
    uvicorn.run(sb.app, port=8787)   # then point an SDK at http://127.0.0.1:8787/2/httpapi

The rules (limits, validation, answer bodies) live in `contracts.amplitude`; this module holds the
state (accepted events, insert_id memory, per-id rate windows, queued faults) and the HTTP layer.
See docs/sandbox.md for every endpoint and fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loopwire import jsonsafe
from loopwire.contracts.amplitude import (
    BATCH_EPS_LIMIT,
    BATCH_MAX_BYTES,
    BATCH_MAX_EVENTS,
    DEDUPE_SECONDS,
    GROUPIDENTIFY_MAX_BYTES,
    HTTPAPI_MAX_BYTES,
    HTTPAPI_MAX_EVENTS,
    IDENTIFY_MAX_BYTES,
    Accepted,
    Answer,
    check_envelope,
    check_group_identify,
    check_identify,
    decode_body,
    eps,
    error,
    form_fields,
    ids_of,
    parse_identifications,
    status_answer,
    success,
    throttled,
    throttled_indexes,
    too_large,
)
from loopwire.errors import InputError
from loopwire.httpio import json_response, read_limited
from loopwire.sandbox.control import fault_queue

CONTROL = "/_sandbox/amplitude"
Endpoint = Literal["httpapi", "batch", "identify", "groupidentify"]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


def _is_error_status(status: int) -> bool:
    try:
        http.HTTPStatus(status)  # known statuses only: the body's `error` is its reason phrase
    except ValueError:
        return False
    return 400 <= status <= 599


class FaultRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One queued fault; the first pending rule matching a request is used, `times` times."""

    status: int | None = None
    throttle_ids: list[str] | None = None
    close_connection: bool = False
    slow_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    times: Annotated[int, msgspec.Meta(ge=1)] = 1
    endpoint: Literal["httpapi", "batch", "identify", "groupidentify", "any"] = "any"
    retry_after: NonNegative | None = None
    invalid_indexes: list[NonNegative] | None = None  # 400 only
    invalid_field: str | None = None  # 400 only, default "time"
    error: str | None = None  # replaces the `error` text of a status answer

    def problem(self) -> str | None:
        actions = (self.status is not None) + (self.throttle_ids is not None) + self.close_connection
        if actions > 1:
            return "a rule takes one of status, throttle_ids, close_connection"
        if actions == 0 and self.slow_ms is None:
            return "a rule needs status, throttle_ids, close_connection or slow_ms"
        if self.status is not None and not _is_error_status(self.status):
            return "status must be an HTTP error status (400-599)"
        if self.throttle_ids is not None and not self.throttle_ids:
            return "throttle_ids must name at least one user_id or device_id"
        if self.retry_after is not None and self.status is None and self.throttle_ids is None:
            return "retry_after goes with status or throttle_ids"
        if (self.invalid_indexes is not None or self.invalid_field is not None) and self.status != 400:
            return "invalid_indexes and invalid_field go with status 400"
        return None

    def matches(self, endpoint: Endpoint, items: list[Any]) -> bool:
        if self.endpoint != "any" and self.endpoint != endpoint:
            return False
        if self.throttle_ids is None:
            return True
        wanted = set(self.throttle_ids)
        users, devices = ids_of(items)
        return not wanted.isdisjoint(users) or not wanted.isdisjoint(devices)


class _RateWindow:
    """Accepted items per (project, kind, id) over the last `seconds` (amplitude.md §2.5)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._hits: dict[tuple[str, str, str], deque[tuple[float, int]]] = {}
        self._totals: dict[tuple[str, str, str], int] = {}
        self._swept = -math.inf

    def count(self, key: tuple[str, str, str], now: float) -> int:
        hits = self._hits.get(key)
        if hits is None:
            return 0
        edge = now - self.seconds
        total = self._totals[key]
        while hits and hits[0][0] <= edge:
            total -= hits.popleft()[1]
        if not hits:
            del self._hits[key], self._totals[key]
            return 0
        self._totals[key] = total
        return total

    def add(self, key: tuple[str, str, str], now: float, n: int) -> None:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            self._totals[key] = 0
        hits.append((now, n))
        self._totals[key] += n

    def sweep(self, now: float) -> None:
        """Forget ids that went quiet, at most once per window, so memory tracks active ids only."""
        if now - self._swept < self.seconds:
            return
        self._swept = now
        for key in list(self._hits):
            self.count(key, now)

    def clear(self) -> None:
        self._hits.clear()
        self._totals.clear()
        self._swept = -math.inf


class _AbortResponse(Response):
    """Close the connection without writing a byte (fault `close_connection`).

    ASGI has no abort. A response start carrying an invalid header value makes uvicorn (httptools and
    h11 alike) mark the response started and raise before writing anything; returning without a body
    then makes it close the transport. Another ASGI server may answer 500 or a truncated response.
    """

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(Exception):
            await send({"type": "http.response.start", "status": 500, "headers": [(b"x-abort", b"\n")]})


class AmplitudeSandbox:
    """Amplitude's HTTP V2, Batch, Identify and Group Identify APIs, in memory.

    `events`, `identifies`, `group_identifies` and `requests` are appended from the server's event
    loop; tests in another thread may read them at any time.
    """

    def __init__(
        self,
        api_keys: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
        eps_limit: float = 30.0,
        throttle_window: float = 30.0,
        *,
        batch_eps_limit: float = BATCH_EPS_LIMIT,
    ) -> None:
        if eps_limit <= 0 or batch_eps_limit <= 0 or throttle_window <= 0:
            raise ValueError("eps limits and throttle_window must be positive")
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.clock = clock
        self.eps_limits: dict[Endpoint, float] = {
            "httpapi": eps_limit,
            "batch": batch_eps_limit,
            "identify": eps_limit,  # "Throttled with 429 like HTTP V2" (§4.1)
        }
        self._windows = {name: _RateWindow(throttle_window) for name in self.eps_limits}
        self.events: list[dict[str, Any]] = []
        self.identifies: list[dict[str, Any]] = []
        self.group_identifies: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._faults: list[FaultRule] = []
        self._seen: dict[tuple[str, str, Any], float] = {}  # (api_key, insert_id, device_id) → time
        self._seen_order: deque[tuple[float, tuple[str, str, Any]]] = deque()
        self._statuses: dict[int, int] = {}
        self._closed = 0
        self._ingested = 0
        self._duplicates = 0
        self.app = self._build_app()

    # ---- public helpers ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: stored events, request log, stats, faults, dedupe and rate state."""
        for store in (self.events, self.identifies, self.group_identifies, self.requests, self._faults):
            store.clear()
        self._seen.clear()
        self._seen_order.clear()
        for window in self._windows.values():
            window.clear()
        self._statuses.clear()
        self._closed = self._ingested = self._duplicates = 0

    def add_fault(self, **rule: Any) -> None:
        """Queue a fault in-process, same keys as `POST /_sandbox/amplitude/faults`."""
        parsed = msgspec.convert(rule, FaultRule)
        problem = parsed.problem()
        if problem:
            raise ValueError(problem)
        self._faults.append(parsed)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "statuses": {str(status): n for status, n in sorted(self._statuses.items())},
            "connections_closed": self._closed,
            "events_ingested": self._ingested,
            "events_stored": len(self.events),
            "duplicates": self._duplicates,
            "identifies": len(self.identifies),
            "group_identifies": len(self.group_identifies),
            "faults_pending": len(self._faults),
        }

    # ---- Amplitude endpoints -----------------------------------------------------------------

    async def _httpapi(self, request: Request) -> Response:
        return await self._ingest(request, "httpapi", HTTPAPI_MAX_BYTES, HTTPAPI_MAX_EVENTS)

    async def _batch(self, request: Request) -> Response:
        return await self._ingest(request, "batch", BATCH_MAX_BYTES, BATCH_MAX_EVENTS)

    async def _ingest(
        self, request: Request, endpoint: Endpoint, max_bytes: int, max_events: int
    ) -> Response:
        raw, over = await read_limited(request, max_bytes)
        headers = request.headers
        body, problem = decode_body(
            raw, over, headers.get("content-type", ""), headers.get("content-encoding", ""), max_bytes
        )
        doc: Any = None
        if problem is None:
            try:
                doc = jsonsafe.decode(body)
            except InputError:
                problem = error(400, "Invalid JSON request body")
        events = doc.get("events") if type(doc) is dict else None
        items: list[Any] = events if type(events) is list else []
        faulted = await self._fault(endpoint, items)
        if faulted is not None:
            return faulted
        checked = problem or check_envelope(doc, self.api_keys, max_events)
        if isinstance(checked, Answer):
            return self._answer(endpoint, checked, len(items))
        now = self.clock()
        limited = self._throttle(endpoint, checked, now)
        if limited is not None:
            return self._answer(endpoint, limited, len(items))
        self._store_events(endpoint, checked, now)
        return self._answer(endpoint, success(len(checked.items), len(body), int(now * 1000)), len(items))

    async def _identify(self, request: Request) -> Response:
        return await self._identify_like(request, "identify", IDENTIFY_MAX_BYTES)

    async def _groupidentify(self, request: Request) -> Response:
        return await self._identify_like(request, "groupidentify", GROUPIDENTIFY_MAX_BYTES)

    async def _identify_like(self, request: Request, endpoint: Endpoint, max_bytes: int) -> Response:
        raw, over = await read_limited(request, max_bytes)
        content_type = request.headers.get("content-type", "")
        query = request.url.query if request.method == "GET" else None
        form = {} if over else form_fields(content_type, raw, query)
        items = parse_identifications(form.get("identification"))
        faulted = await self._fault(endpoint, items)
        if faulted is not None:
            return faulted
        if over:
            return self._answer(endpoint, too_large(), 0)
        if endpoint == "identify":
            checked = check_identify(form, self.api_keys)
        else:
            checked = check_group_identify(form, self.api_keys)
        if isinstance(checked, Answer):
            return self._answer(endpoint, checked, len(items))
        now = self.clock()
        if endpoint == "identify":
            limited = self._throttle(endpoint, checked, now)
            if limited is not None:
                return self._answer(endpoint, limited, len(items))
        # Amplitude's 200 body here is unconfirmed (§4.1, §11.3): the HTTP V2 success shape is used.
        store = self.identifies if endpoint == "identify" else self.group_identifies
        for item in checked.items:
            item["_endpoint"] = endpoint
            store.append(item)
        self._ingested += len(checked.items)
        size = len(raw) or len(request.url.query)
        return self._answer(endpoint, success(len(checked.items), size, int(now * 1000)), len(items))

    # ---- state: throttling, dedupe, faults, request log ----------------------------------------

    def _throttle(self, endpoint: Endpoint, accepted: Accepted, now: float) -> Answer | None:
        """429 when an id's accepted items in the window plus this request exceed the limit (§2.5).
        Only accepted items count, and a throttled request is ingested in no part."""
        window = self._windows[endpoint]
        limit = self.eps_limits[endpoint]
        window.sweep(now)
        users, devices = ids_of(accepted.items)
        project = accepted.api_key
        over: tuple[dict[str, int], dict[str, int]] = ({}, {})
        for kind, counts, hot in (("user", users, over[0]), ("device", devices, over[1])):
            for ident, n in counts.items():
                total = window.count((project, kind, ident), now) + n
                if total / window.seconds > limit:
                    hot[ident] = eps(total, window.seconds)
        if over[0] or over[1]:
            return throttled(limit, over[0], over[1], throttled_indexes(accepted.items, *over))
        for kind, counts in (("user", users), ("device", devices)):
            for ident, n in counts.items():
                window.add((project, kind, ident), now, n)
        return None

    def _store_events(self, endpoint: Endpoint, accepted: Accepted, now: float) -> None:
        """Keep each event once per (insert_id, device_id) for 7 days (§2.4); duplicates still count
        in `events_ingested` (§11.2, believed behaviour)."""
        cutoff = now - DEDUPE_SECONDS
        seen, order = self._seen, self._seen_order
        while order and order[0][0] <= cutoff:
            first, key = order.popleft()
            if seen.get(key) == first:
                del seen[key]
        for event in accepted.items:
            insert_id = event.get("insert_id")
            if insert_id:
                key = (accepted.api_key, insert_id, event.get("device_id"))
                first_seen = seen.get(key)
                if first_seen is not None and first_seen > cutoff:
                    self._duplicates += 1
                    continue
                seen[key] = now
                order.append((now, key))
            event["_endpoint"] = endpoint
            self.events.append(event)
            event_type = event["event_type"]
            if event_type == "$identify":
                self.identifies.append(event)
            elif event_type == "$groupidentify":
                self.group_identifies.append(event)
        self._ingested += len(accepted.items)

    async def _fault(self, endpoint: Endpoint, items: list[Any]) -> Response | None:
        rule = next((r for r in self._faults if r.matches(endpoint, items)), None)
        if rule is None:
            return None
        rule.times -= 1
        if rule.times == 0:
            self._faults.remove(rule)
        if rule.slow_ms:
            await asyncio.sleep(rule.slow_ms / 1000)
        if rule.close_connection:
            self._record(endpoint, 0, len(items))
            return _AbortResponse()
        if rule.throttle_ids is not None:
            answer = self._fake_throttle(endpoint, items, set(rule.throttle_ids))
        elif rule.status == 429:
            answer = self._fake_throttle(endpoint, items, None)
        elif rule.status == 400:
            indexes = list(range(len(items))) if rule.invalid_indexes is None else rule.invalid_indexes
            lists = {"events_with_invalid_fields": {rule.invalid_field or "time": indexes}} if indexes else {}
            answer = error(400, rule.error or "Invalid field values on some events", **lists)
        elif rule.status is not None:
            answer = status_answer(rule.status)
            if rule.error:
                answer.body["error"] = rule.error
        else:
            return None  # slow_ms only: now answer normally
        headers = None if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
        return self._answer(endpoint, answer, len(items), headers)

    def _fake_throttle(self, endpoint: Endpoint, items: list[Any], only: Iterable[str] | None) -> Answer:
        limit = self.eps_limits.get(endpoint, self.eps_limits["httpapi"])
        reported = math.floor(limit) + 1
        users, devices = ids_of(items)
        if only is not None:
            wanted = set(only)
            users = {u: n for u, n in users.items() if u in wanted}
            devices = {d: n for d, n in devices.items() if d in wanted}
        hot_users = dict.fromkeys(users, reported)
        hot_devices = dict.fromkeys(devices, reported)
        return throttled(limit, hot_users, hot_devices, throttled_indexes(items, hot_users, hot_devices))

    def _record(self, endpoint: Endpoint, status: int, n: int) -> None:
        self.requests.append({"endpoint": endpoint, "status": status, "events": n, "time": self.clock()})
        if status:
            self._statuses[status] = self._statuses.get(status, 0) + 1
        else:
            self._closed += 1

    def _answer(
        self, endpoint: Endpoint, answer: Answer, n: int, headers: Mapping[str, str] | None = None
    ) -> Response:
        self._record(endpoint, answer.status, n)
        return json_response(answer.body, answer.status, headers)

    # ---- control API ---------------------------------------------------------------------------

    async def _get_events(self, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit")
        if limit is not None and not limit.isdigit():
            return json_response({"code": 400, "error": "limit must be a non-negative integer"}, 400)
        filters = [(f"_{k}" if k == "endpoint" else k, query[k]) for k in _EVENT_FILTERS if k in query]
        found = [e for e in self.events if all(e.get(k) == v for k, v in filters)]
        shown = found if limit is None else found[: int(limit)]
        return json_response({"count": len(found), "events": shown})

    async def _get_identifies(self, request: Request) -> Response:
        user_id = request.query_params.get("user_id")
        found = [i for i in self.identifies if user_id is None or i.get("user_id") == user_id]
        return json_response({"count": len(found), "identifies": found})

    async def _get_group_identifies(self, request: Request) -> Response:
        return json_response({"count": len(self.group_identifies), "group_identifies": self.group_identifies})

    async def _get_requests(self, request: Request) -> Response:
        return json_response({"count": len(self.requests), "requests": self.requests})

    async def _get_stats(self, request: Request) -> Response:
        return json_response(self.stats())

    async def _faults_endpoint(self, request: Request) -> Response:
        return await fault_queue(request, self._faults, FaultRule, lambda text: {"code": 400, "error": text})

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"reset": True})

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if status == 404 and not request.url.path.startswith(CONTROL):
            return json_response(error(400, "Invalid request path").body, 400)  # §2.6 error text
        return json_response({"code": status, "error": http.HTTPStatus(status).phrase}, status)

    def _build_app(self) -> Starlette:
        routes = [
            Route("/2/httpapi", self._httpapi, methods=["POST"]),
            Route("/batch", self._batch, methods=["POST"]),
            Route("/identify", self._identify, methods=["GET", "POST"]),
            Route("/groupidentify", self._groupidentify, methods=["POST"]),
            Route(f"{CONTROL}/events", self._get_events, methods=["GET"]),
            Route(f"{CONTROL}/identifies", self._get_identifies, methods=["GET"]),
            Route(f"{CONTROL}/group_identifies", self._get_group_identifies, methods=["GET"]),
            Route(f"{CONTROL}/requests", self._get_requests, methods=["GET"]),
            Route(f"{CONTROL}/stats", self._get_stats, methods=["GET"]),
            Route(f"{CONTROL}/faults", self._faults_endpoint, methods=["GET", "POST", "DELETE"]),
            Route(f"{CONTROL}/reset", self._reset, methods=["POST"]),
        ]
        # Browsers post to Amplitude cross-origin, so preflights are answered (§5.2).
        cors = Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
        app = Starlette(
            routes=routes, middleware=[cors], exception_handlers={404: self._no_route, 405: self._no_route}
        )
        app.router.redirect_slashes = False  # Amplitude's paths are exact
        return app


_EVENT_FILTERS = ("user_id", "device_id", "event_type", "insert_id", "endpoint")
