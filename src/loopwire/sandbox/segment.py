"""A local Segment HTTP Tracking API that keeps Segment's documented contract, with fault controls.

    sb = SegmentSandbox(write_keys=frozenset({"demo-key"}))
    uvicorn.run(sb.app, port=8788)   # then Client("demo-key", host="http://127.0.0.1:8788")

Segment answers 200 to nearly everything and discards bad messages afterwards (segment.md §5). The
sandbox answers the same way, but keeps what production would have lost silently in `dropped`, each
with its reason, so staging shows it. The rules live in `contracts.segment`; this module holds the state
(accepted and dropped messages, messageId memory, the request-rate window, queued faults) and the HTTP
layer. See docs/sandbox.md, "Segment sandbox", for every endpoint and fault.
"""

from __future__ import annotations

import asyncio
import http
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loopwire import jsonsafe
from loopwire.contracts.segment import (
    BATCH_MAX_BYTES,
    BATCH_MAX_MESSAGES,
    DEDUPE_SECONDS,
    DUPLICATE_MESSAGE_ID,
    INVALID_WRITE_KEY,
    MESSAGE_MAX_BYTES,
    RATE_LIMIT,
    TOO_MANY_MESSAGES,
    Answer,
    Drop,
    check_message,
    decode_body,
    encoded_size,
    invalid_json,
    merge_envelope,
    missing_write_key,
    status_answer,
    success,
    too_large,
    write_key_hash,
    write_key_of,
)
from loopwire.errors import InputError
from loopwire.httpio import json_response, read_limited
from loopwire.sandbox.amplitude import _AbortResponse
from loopwire.sandbox.control import fault_queue

CONTROL = "/_sandbox/segment"
Endpoint = Literal["identify", "track", "page", "screen", "group", "alias", "batch"]
ENDPOINTS: tuple[Endpoint, ...] = ("identify", "track", "page", "screen", "group", "alias", "batch")
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


def _is_error_status(status: int) -> bool:
    try:
        http.HTTPStatus(status)  # known statuses only: the body's `message` is its reason phrase
    except ValueError:
        return False
    return 400 <= status <= 599


class FaultRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One queued fault; the first pending rule matching a request is used, `times` times."""

    status: int | None = None
    close_connection: bool = False
    slow_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    times: Annotated[int, msgspec.Meta(ge=1)] = 1
    endpoint: Literal["identify", "track", "page", "screen", "group", "alias", "batch", "any"] = "any"
    retry_after: NonNegative | None = None  # 429 defaults to 1: Segment's 429 carries it (§4)
    message: str | None = None  # replaces the `message` text of a status answer

    def problem(self) -> str | None:
        if self.status is not None and self.close_connection:
            return "a rule takes one of status, close_connection"
        if self.status is None and not self.close_connection and self.slow_ms is None:
            return "a rule needs status, close_connection or slow_ms"
        if self.status is not None and not _is_error_status(self.status):
            return "status must be an HTTP error status (400-599)"
        if (self.retry_after is not None or self.message is not None) and self.status is None:
            return "retry_after and message go with status"
        return None

    def matches(self, endpoint: Endpoint) -> bool:
        return self.endpoint in ("any", endpoint)


def _count(doc: Any, endpoint: Endpoint) -> int:
    """How many messages a request carries, for the request log: best effort, 0 when unreadable."""
    if type(doc) is not dict:
        return 0
    if endpoint != "batch":
        return 1
    items = doc.get("batch")
    return len(items) if type(items) is list else 0


class SegmentSandbox:
    """Segment's `/v1/{identify,track,page,screen,group,alias,batch}`, in memory.

    `messages`, `dropped` and `requests` are appended from the server's event loop; tests in another
    thread may read them at any time.
    """

    def __init__(
        self,
        write_keys: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        rate_limit: float | None = RATE_LIMIT,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (or None for no limit)")
        self.write_keys = None if write_keys is None else frozenset(write_keys)
        self.clock = clock
        self.rate_limit = rate_limit
        self.messages: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._faults: list[FaultRule] = []
        self._seen: dict[str, float] = {}  # messageId → when first stored
        self._seen_order: deque[tuple[float, str]] = deque()
        self._recent: deque[float] = deque()  # times of requests in the last second (rate limit)
        self._statuses: dict[int, int] = {}
        self._reasons: dict[str, int] = {}
        self._closed = 0
        self._received = 0
        self.app = self._build_app()

    # ---- public helpers ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: messages, drops, request log, stats, faults, dedupe and rate state."""
        for store in (self.messages, self.dropped, self.requests, self._faults):
            store.clear()
        self._seen.clear()
        self._seen_order.clear()
        self._recent.clear()
        self._statuses.clear()
        self._reasons.clear()
        self._closed = self._received = 0

    def add_fault(self, **rule: Any) -> None:
        """Queue a fault in-process, same keys as `POST /_sandbox/segment/faults`."""
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
            "messages_received": self._received,
            "messages_stored": len(self.messages),
            "messages_dropped": len(self.dropped),
            "dropped_by_reason": dict(sorted(self._reasons.items())),
            "faults_pending": len(self._faults),
        }

    # ---- the Tracking API --------------------------------------------------------------------

    async def _ingest(self, request: Request, endpoint: Endpoint) -> Response:
        batch = endpoint == "batch"
        limit = BATCH_MAX_BYTES if batch else MESSAGE_MAX_BYTES
        headers = request.headers
        encoding = headers.get("content-encoding", "")
        # A gzip body is limited on its decoded size; its raw size only guards memory.
        raw, over = await read_limited(request, limit * 2 if "gzip" in encoding.lower() else limit)
        what = "Batch request" if batch else "Request body"
        body, problem = decode_body(raw, over, headers.get("content-type", ""), encoding, limit, what)
        doc: Any = None
        if problem is None:
            try:
                doc = jsonsafe.decode(body)
            except InputError:
                problem = invalid_json()
        n = _count(doc, endpoint)
        faulted = await self._fault(endpoint, n)
        if faulted is not None:
            return faulted
        now = self.clock()
        wait = self._rate_limited(now)
        if wait is not None:
            return self._answer(endpoint, status_answer(429), n, self._retry_headers(429, wait))
        if problem is None and type(doc) is not dict:
            problem = invalid_json("Request body must be a JSON object")
        items: list[Any] = [doc]
        if problem is None and batch:
            found = doc.get("batch")
            if type(found) is not list:
                problem = invalid_json("batch must be an array of messages")
            else:
                items = found
                problem = self._oversized(items)
        key = None if problem else write_key_of(doc.get("writeKey"), headers.get("authorization", ""))
        if key is None:
            return self._answer(endpoint, problem or missing_write_key(), n)
        self._take(endpoint, doc, items, key, now)
        return self._answer(endpoint, success(), n)

    @staticmethod
    def _oversized(items: list[Any]) -> Answer | None:
        # One message over 32 KB fails the whole batch with 400: the docs don't say whether only
        # that message goes, so the stricter reading is kept (segment.md §5 [unconfirmed]).
        for index, item in enumerate(items):
            if encoded_size(item) > MESSAGE_MAX_BYTES:
                return too_large(f"Message {index} of the batch", MESSAGE_MAX_BYTES)
        return None

    def _take(self, endpoint: Endpoint, doc: dict[str, Any], items: list[Any], key: str, now: float) -> None:
        """Store or drop each message of an accepted (200) request."""
        hashed = write_key_hash(key)
        if endpoint == "batch":
            messages = [merge_envelope(item, doc) if type(item) is dict else item for item in items]
            sent_at = doc.get("sentAt")
        else:
            messages = [{**doc, "type": endpoint}]  # the path decides the call (§1)
            sent_at = None
        for message in messages:
            if type(message) is dict:
                message.pop("writeKey", None)  # never keep a key; `_write_key_hash` tells them apart
                message["_write_key_hash"] = hashed
        self._received += len(messages)
        whole: Drop | None = None
        if self.write_keys is not None and key not in self.write_keys:
            # An unknown key still gets 200: the edge does not validate keys (segment.md §5; the
            # maintainers in segmentio/analytics-node#59 and analytics-ruby#136).
            whole = Drop(INVALID_WRITE_KEY, "the write key is not one of this sandbox's write_keys")
        elif len(messages) > BATCH_MAX_MESSAGES:
            # "Segment returns a 200 response but rejects the event when the number of batched events
            # exceeds the limit" (§4): which events is unsaid, so all of them (the stricter reading).
            whole = Drop(TOO_MANY_MESSAGES, f"a batch takes at most {BATCH_MAX_MESSAGES} messages")
        self._expire(now)
        for index, message in enumerate(messages):
            drop = whole or check_message(message, sent_at) or self._duplicate(message)
            if drop is not None:
                self._drop(endpoint, index, message, drop, now)
                continue
            message_id = message.get("messageId")
            if message_id is None:
                message["messageId"] = message_id = str(uuid.uuid4())  # the API mints one (§3)
            self._seen[message_id] = now
            self._seen_order.append((now, message_id))
            self.messages.append(message)

    def _expire(self, now: float) -> None:
        cutoff = now - DEDUPE_SECONDS
        seen, order = self._seen, self._seen_order
        while order and order[0][0] <= cutoff:
            first, message_id = order.popleft()
            if seen.get(message_id) == first:
                del seen[message_id]

    def _duplicate(self, message: dict[str, Any]) -> Drop | None:
        """Dedupe on messageId alone, across write keys, for 24 h (§5). Only stored messages count,
        so a corrected resend of a dropped message is taken."""
        message_id = message.get("messageId")
        if message_id is not None and message_id in self._seen:
            return Drop(DUPLICATE_MESSAGE_ID, f"messageId {message_id} was already received")
        return None

    def _drop(self, endpoint: Endpoint, index: int, message: Any, drop: Drop, now: float) -> None:
        record = {"reason": drop.reason, "detail": drop.detail, "path": f"/v1/{endpoint}", "index": index}
        self.dropped.append({**record, "time": now, "message": message})
        self._reasons[drop.reason] = self._reasons.get(drop.reason, 0) + 1

    # ---- rate limit, faults, request log -------------------------------------------------------

    def _rate_limited(self, now: float) -> int | None:
        """Seconds to wait when this request is past `rate_limit` requests in the last second, for
        the whole sandbox (one workspace, §4); a refused request does not count, so waiting
        `Retry-After` is enough."""
        if self.rate_limit is None:
            return None
        recent = self._recent
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) + 1 > self.rate_limit:
            return max(1, math.ceil(recent[0] + 1.0 - now))
        recent.append(now)
        return None

    @staticmethod
    def _retry_headers(status: int, retry_after: int | None) -> dict[str, str] | None:
        if retry_after is None:
            return None
        if status == 429:  # "Retry-After and X-RateLimit-Reset ... the number of seconds" (§4)
            return {"Retry-After": str(retry_after), "X-RateLimit-Reset": str(retry_after)}
        return {"Retry-After": str(retry_after)}

    async def _fault(self, endpoint: Endpoint, n: int) -> Response | None:
        rule = next((r for r in self._faults if r.matches(endpoint)), None)
        if rule is None:
            return None
        rule.times -= 1
        if rule.times == 0:
            self._faults.remove(rule)
        if rule.slow_ms:
            await asyncio.sleep(rule.slow_ms / 1000)
        if rule.close_connection:
            self._record(endpoint, 0, n)
            return _AbortResponse()
        if rule.status is None:
            return None  # slow_ms only: now answer normally
        retry_after = rule.retry_after
        if rule.status == 429 and retry_after is None:
            retry_after = 1
        answer = status_answer(rule.status, rule.message)
        return self._answer(endpoint, answer, n, self._retry_headers(rule.status, retry_after))

    def _record(self, endpoint: Endpoint, status: int, n: int) -> None:
        self.requests.append(
            {"path": f"/v1/{endpoint}", "status": status, "messages": n, "time": self.clock()}
        )
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

    async def _get_messages(self, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit")
        if limit is not None and not limit.isdigit():
            return json_response(
                {"code": "bad_request", "message": "limit must be a non-negative integer"}, 400
            )
        filters = [(k, query[k]) for k in _MESSAGE_FILTERS if k in query]
        found = [m for m in self.messages if all(m.get(k) == v for k, v in filters)]
        shown = found if limit is None else found[: int(limit)]
        return json_response({"count": len(found), "messages": shown})

    async def _get_dropped(self, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit")
        if limit is not None and not limit.isdigit():
            return json_response(
                {"code": "bad_request", "message": "limit must be a non-negative integer"}, 400
            )
        reason, call = query.get("reason"), query.get("type")
        found = [
            d
            for d in self.dropped
            if (reason is None or d["reason"] == reason)
            and (call is None or (type(d["message"]) is dict and d["message"].get("type") == call))
        ]
        shown = found if limit is None else found[: int(limit)]
        return json_response({"count": len(found), "dropped": shown})

    async def _get_requests(self, request: Request) -> Response:
        return json_response({"count": len(self.requests), "requests": self.requests})

    async def _get_stats(self, request: Request) -> Response:
        return json_response(self.stats())

    async def _faults_endpoint(self, request: Request) -> Response:
        return await fault_queue(
            request, self._faults, FaultRule, lambda text: {"code": "bad_request", "message": text}
        )

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"reset": True})

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return json_response(status_answer(status).body, status)

    def _endpoint(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await self._ingest(request, endpoint)

        return handle

    def _build_app(self) -> Starlette:
        routes = [Route(f"/v1/{name}", self._endpoint(name), methods=["POST"]) for name in ENDPOINTS]
        routes += [
            Route(f"{CONTROL}/messages", self._get_messages, methods=["GET"]),
            Route(f"{CONTROL}/dropped", self._get_dropped, methods=["GET"]),
            Route(f"{CONTROL}/requests", self._get_requests, methods=["GET"]),
            Route(f"{CONTROL}/stats", self._get_stats, methods=["GET"]),
            Route(f"{CONTROL}/faults", self._faults_endpoint, methods=["GET", "POST", "DELETE"]),
            Route(f"{CONTROL}/reset", self._reset, methods=["POST"]),
        ]
        # analytics.js posts to the Tracking API from browsers, cross-origin.
        cors = Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
        app = Starlette(
            routes=routes, middleware=[cors], exception_handlers={404: self._no_route, 405: self._no_route}
        )
        app.router.redirect_slashes = False  # Segment's paths are exact
        return app


_MESSAGE_FILTERS = ("type", "event", "userId", "anonymousId", "messageId")
