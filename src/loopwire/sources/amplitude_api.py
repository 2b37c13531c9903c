"""Amplitude-compatible input: `POST /2/httpapi`, `/batch`, `/identify`, `/groupidentify`.

Apps point their Amplitude SDK's server URL at loopwire. Requests are checked with Amplitude's own
contract (`contracts.amplitude`: the same rules the sandbox plays) and answered with Amplitude's
status codes and JSON bodies — the SDKs read `code` in the body, so any other shape silently loses
their data (amplitude.md §5.2). Accepted events are committed before the 200 and then forwarded to
Amplitude unchanged (insert ids kept) and streamed wherever routes take them.

Identify and Group Identify calls become `$identify` / `$groupidentify` events, the form the official
server SDKs use for the same operations (amplitude.md §4, §6.2), so they forward through HTTP V2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from ulid import ULID

from loopwire import jsonsafe
from loopwire.config import AmplitudeApiConfig
from loopwire.contracts.amplitude import (
    BATCH_MAX_BYTES,
    BATCH_MAX_EVENTS,
    GROUPIDENTIFY_MAX_BYTES,
    HTTPAPI_MAX_BYTES,
    HTTPAPI_MAX_EVENTS,
    IDENTIFY_MAX_BYTES,
    Answer,
    check_envelope,
    check_group_identify,
    check_identify,
    decode_body,
    error,
    form_fields,
    invalid_api_key,
    missing_field,
    success,
    too_large,
    undecodable,
)
from loopwire.errors import InputError
from loopwire.httpio import json_response, read_limited
from loopwire.metrics import Metrics
from loopwire.model import Event

log = logging.getLogger("loopwire.sources.amplitude")

SOURCE = "amplitude"


class _Key(msgspec.Struct):
    """Only the api_key of a body: read before the whole body is parsed (msgspec skips the rest)."""

    api_key: object = None


_key_decoder = msgspec.json.Decoder(_Key)
_KINDS = {"$identify": "identify", "$groupidentify": "groupidentify"}

# Browsers call the API cross-origin (the browser SDK, sendBeacon); answer preflights for any origin.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, Accept",
    "Access-Control-Max-Age": "86400",
}


def to_event(item: dict[str, Any], now_ms: int) -> Event:
    """One Amplitude event (as the SDK sent it) → a canonical Event whose `data` is that event."""
    event_type = item.get("event_type")
    insert_id = item.get("insert_id")
    moment = item.get("time")
    user_id = item.get("user_id")
    device_id = item.get("device_id")
    return Event(
        id=insert_id if isinstance(insert_id, str) and insert_id else str(ULID()),
        source=SOURCE,
        kind=_KINDS.get(str(event_type), "track"),
        name=str(event_type),
        time_ms=moment if isinstance(moment, int) else now_ms,
        received_ms=now_ms,
        user_id=user_id if isinstance(user_id, str) else None,
        anonymous_id=device_id if isinstance(device_id, str) else None,
        data=item,
    )


def identify_event(item: dict[str, Any]) -> dict[str, Any]:
    """An Identify API identification as the `$identify` event the SDKs would send (§4.1, §6.2)."""
    return {**item, "event_type": "$identify"}


def group_identify_event(item: dict[str, Any]) -> dict[str, Any]:
    """A Group Identify API identification as a `$groupidentify` event (§4.2, §6.2)."""
    event = {k: v for k, v in item.items() if k not in ("group_type", "group_value")}
    event["event_type"] = "$groupidentify"
    event["groups"] = {item["group_type"]: item["group_value"]}
    return event


class AmplitudeApi:
    def __init__(
        self,
        config: AmplitudeApiConfig,
        ingest: Callable[[Sequence[Event]], Awaitable[list[bool]]],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        max_body_bytes: int | None = None,
    ) -> None:
        self._keys = frozenset(key.reveal() for key in config.api_keys)
        self._max_body = max_body_bytes
        self._ingest = ingest
        self._metrics = metrics
        self._clock = clock

    async def httpapi(self, request: Request) -> Response:
        return await self._events(request, HTTPAPI_MAX_BYTES, HTTPAPI_MAX_EVENTS)

    async def batch(self, request: Request) -> Response:
        return await self._events(request, BATCH_MAX_BYTES, BATCH_MAX_EVENTS)

    async def identify(self, request: Request) -> Response:
        return await self._identifications(request, IDENTIFY_MAX_BYTES, group=False)

    async def groupidentify(self, request: Request) -> Response:
        return await self._identifications(request, GROUPIDENTIFY_MAX_BYTES, group=True)

    async def preflight(self, request: Request) -> Response:
        return Response(status_code=204, headers=CORS)

    def _limit(self, vendor_limit: int) -> int:
        # `server.max_body_bytes` is the operator's memory guard: it caps Amplitude's own limits too
        # (the SDKs answer a 413 by sending smaller batches, amplitude.md §5.2).
        return vendor_limit if self._max_body is None else min(vendor_limit, self._max_body)

    async def _events(self, request: Request, max_bytes: int, max_events: int) -> Response:
        """Size, then the api_key, then the whole body: nobody without a key reaches the parser."""
        limit = self._limit(max_bytes)
        raw, over = await read_limited(request, limit)
        headers = request.headers
        body, problem = decode_body(
            raw, over, headers.get("content-type", ""), headers.get("content-encoding", ""), limit
        )
        if problem is not None:
            return self._refuse(problem)
        envelope = jsonsafe.decode_as(_key_decoder, body)
        if envelope is None:  # not a JSON object: no key to check
            return self._refuse(error(400, "Invalid JSON request body"))
        if envelope.api_key is None or envelope.api_key == "":
            return self._refuse(missing_field("api_key"))
        if type(envelope.api_key) is not str or envelope.api_key not in self._keys:
            return self._refuse(invalid_api_key(envelope.api_key))
        try:
            doc = jsonsafe.decode(body)
        except InputError as refused:
            return self._refuse(undecodable(refused))
        checked = check_envelope(doc, self._keys, max_events)
        if isinstance(checked, Answer):
            return self._refuse(checked)
        return await self._commit(checked.items, len(body))

    async def _identifications(self, request: Request, max_bytes: int, group: bool) -> Response:
        raw, over = await read_limited(request, self._limit(max_bytes))
        if over:
            return self._refuse(too_large())
        query = request.url.query if request.method == "GET" else None
        form = form_fields(request.headers.get("content-type", ""), raw, query)
        checked = check_group_identify(form, self._keys) if group else check_identify(form, self._keys)
        if isinstance(checked, Answer):
            return self._refuse(checked)
        convert = group_identify_event if group else identify_event
        return await self._commit([convert(item) for item in checked.items], len(raw))

    async def _commit(self, items: list[dict[str, Any]], size: int) -> Response:
        now_ms = int(self._clock() * 1000)
        events = [to_event(item, now_ms) for item in items]
        try:
            fresh = await self._ingest(events)
        except Exception:
            log.exception("could not commit %d Amplitude events", len(events))
            self._metrics.requests.labels(SOURCE, "failed").inc()
            # A 5xx makes the SDKs keep the events and retry (amplitude.md §5.2).
            return json_response({"code": 503, "error": "Service unavailable: retry"}, 503, CORS)
        self._metrics.requests.labels(SOURCE, "accepted").inc()
        self._metrics.events.labels(SOURCE, "yes").inc(sum(fresh))
        # Duplicates count as ingested, as Amplitude counts them (§2.4).
        return json_response(success(len(events), size, now_ms).body, 200, CORS)

    def _refuse(self, answer: Answer) -> Response:
        code = str(answer.body.get("error", answer.status)).split(":", 1)[0]
        self._metrics.rejected.labels(SOURCE, code[:40]).inc()
        self._metrics.requests.labels(SOURCE, "rejected").inc()
        body = answer.body
        if str(body.get("error", "")).startswith("Invalid API key"):
            body = {**body, "error": "Invalid API key: ***"}  # never echo a presented key into logs
        return json_response(body, answer.status, CORS)
