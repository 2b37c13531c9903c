"""Segment-compatible input: `POST /v1/track|identify|group|page|screen|alias|batch`.

A storefront's Segment library (or any Segment-spec sender) points its host at loopwire. Requests are
checked with Segment's own contract (`contracts.segment`, the rules the Segment sandbox plays):
write key in the body or as the HTTP Basic username, 32 KB per message, 500 KB and 2,500 messages
per batch, `userId` or `anonymousId`, `event` on track, ISO-8601 timestamps (segment.md §2–§5).

Where Segment answers 200 and silently drops a bad message, loopwire answers as it must for the
library (a 4xx on a batch would make the library drop the good messages too) but never silently:
  - a single call with a bad message gets 400 with the reason, and nothing is written;
  - a batch commits its good messages, answers 200, and lists the refused ones with their reasons
    in `rejected` (an extra key the library ignores); each refusal is counted by reason.
An unknown or missing write key gets 401 and writes nothing (loopwire authenticates every input).
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
from loopwire.config import SegmentApiConfig
from loopwire.contracts.segment import (
    BATCH_MAX_BYTES,
    BATCH_MAX_MESSAGES,
    MESSAGE_MAX_BYTES,
    Answer,
    Drop,
    check_message,
    decode_body,
    encoded_size,
    error,
    invalid_json,
    iso_ms,
    merge_envelope,
    too_large,
    write_key_of,
)
from loopwire.errors import InputError
from loopwire.httpio import json_response, read_limited
from loopwire.metrics import Metrics
from loopwire.model import Event

log = logging.getLogger("loopwire.sources.segment")

SOURCE = "segment"
CALLS = ("track", "identify", "group", "page", "screen", "alias")
# Segment documents no length for ids and names; loopwire bounds them by what it forwards them to:
# Amplitude takes strings of at most 1,024 characters (amplitude.md §2.2).
BOUNDED_FIELDS = ("userId", "anonymousId", "previousId", "groupId", "event", "name")
STRING_MAX_CHARS = 1_024


class _Key(msgspec.Struct):
    """Only the writeKey of a body: read before the whole body is parsed (msgspec skips the rest)."""

    writeKey: object = None  # Segment's field name


_key_decoder = msgspec.json.Decoder(_Key)


def too_long(message: dict[str, Any]) -> Drop | None:
    for field in BOUNDED_FIELDS:
        value = message.get(field)
        if type(value) is str and len(value) > STRING_MAX_CHARS:
            return Drop(
                "field_too_long", f"{field} is {len(value)} characters; the limit is {STRING_MAX_CHARS}"
            )
    return None


def _time_ms(value: Any, default: int) -> int:
    moment = iso_ms(value)
    return default if moment is None else moment


def _string(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def to_event(message: dict[str, Any], now_ms: int) -> Event:
    """One Segment message (write key removed) → a canonical Event whose `data` is the message."""
    call = message["type"]
    traits = message.get("traits") if call in ("identify", "group") else None
    context_traits = (message.get("context") or {}).get("traits")
    email = None
    for source in (traits, context_traits):
        if isinstance(source, dict) and isinstance(source.get("email"), str):
            email = source["email"]
            break
    if call == "track":
        name = message.get("event")
    elif call in ("page", "screen"):
        name = message.get("name")
    else:
        name = None
    message_id = message.get("messageId")
    return Event(
        id=message_id if isinstance(message_id, str) and message_id else str(ULID()),
        source=SOURCE,
        kind=call,
        name=name if isinstance(name, str) else None,
        time_ms=_time_ms(message.get("timestamp"), now_ms),
        received_ms=now_ms,
        user_id=_string(message.get("userId")),
        anonymous_id=_string(message.get("anonymousId")),
        email=email,
        data=message,
    )


class SegmentApi:
    def __init__(
        self,
        config: SegmentApiConfig,
        ingest: Callable[[Sequence[Event]], Awaitable[list[bool]]],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        max_body_bytes: int | None = None,
    ) -> None:
        self._keys = frozenset(key.reveal() for key in config.write_keys)
        self._max_body = max_body_bytes
        self._ingest = ingest
        self._metrics = metrics
        self._clock = clock

    def endpoint(self, call: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await self._handle(request, call)

        return handle

    async def _handle(self, request: Request, call: str) -> Response:
        batch = call == "batch"
        limit = BATCH_MAX_BYTES if batch else MESSAGE_MAX_BYTES
        if self._max_body is not None:  # the operator's memory guard caps Segment's limits too
            limit = min(limit, self._max_body)
        headers = request.headers
        encoding = headers.get("content-encoding", "")
        raw, over = await read_limited(request, limit * 2 if "gzip" in encoding.lower() else limit)
        what = "Batch request" if batch else "Request body"
        body, problem = decode_body(raw, over, headers.get("content-type", ""), encoding, limit, what)
        if problem is not None:
            return self._refuse(problem)
        # The key before the body: the writeKey alone is read (a body that does not decode has
        # none), then HTTP Basic; nobody without a key reaches the parser.
        envelope = jsonsafe.decode_as(_key_decoder, body)
        key = write_key_of(envelope.writeKey if envelope else None, headers.get("authorization", ""))
        if key is None or key not in self._keys:
            code = "missing_write_key" if key is None else "invalid_write_key"
            return self._refuse(error(401, code, "Send a write key listed in sources.segment_api.write_keys"))
        try:
            doc = jsonsafe.decode(body)
        except InputError as refused:
            return self._refuse(error(400, refused.code, refused.message))
        if type(doc) is not dict:
            return self._refuse(invalid_json("Request body must be a JSON object"))
        if not batch:
            message = {k: v for k, v in doc.items() if k != "writeKey"}
            message["type"] = call  # the path decides the call (§1)
            drop = check_message(message) or too_long(message)
            if drop is not None:
                return self._refuse(error(400, drop.reason, drop.detail))
            return await self._commit([message], [])
        items = doc.get("batch")
        if type(items) is not list:
            return self._refuse(invalid_json("batch must be an array of messages"))
        if len(items) > BATCH_MAX_MESSAGES:
            return self._refuse(
                error(400, "too_many_messages", f"a batch takes at most {BATCH_MAX_MESSAGES} messages")
            )
        good: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if type(item) is dict and encoded_size(item) > MESSAGE_MAX_BYTES:
                return self._refuse(too_large(f"Message {index} of the batch", MESSAGE_MAX_BYTES))
            message = merge_envelope(item, doc) if type(item) is dict else item
            drop = check_message(message, doc.get("sentAt"))
            if drop is None and type(message) is dict:
                drop = too_long(message)
            if drop is not None:
                rejected.append({"index": index, "reason": drop.reason, "message": drop.detail})
                self._metrics.rejected.labels(SOURCE, drop.reason).inc()
                continue
            message.pop("writeKey", None)
            good.append(message)
        return await self._commit(good, rejected)

    async def _commit(self, messages: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Response:
        now_ms = int(self._clock() * 1000)
        events = [to_event(message, now_ms) for message in messages]
        try:
            fresh = await self._ingest(events) if events else []
        except Exception:
            log.exception("could not commit %d Segment messages", len(events))
            self._metrics.requests.labels(SOURCE, "failed").inc()
            return json_response({"code": "unavailable", "message": "could not commit; retry"}, 503)
        self._metrics.requests.labels(SOURCE, "accepted").inc()
        self._metrics.events.labels(SOURCE, "yes").inc(sum(fresh))
        body: dict[str, Any] = {"success": True}
        if rejected:
            body["rejected"] = rejected
        return json_response(body)

    def _refuse(self, answer: Answer) -> Response:
        self._metrics.rejected.labels(SOURCE, str(answer.body.get("code", answer.status))).inc()
        self._metrics.requests.labels(SOURCE, "rejected").inc()
        return json_response(answer.body, answer.status)
