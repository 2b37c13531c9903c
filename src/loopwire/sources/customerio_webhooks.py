"""`POST /webhooks/customerio`: signed reporting webhooks in, durably committed events out.

Order of checks: size → signature (customerio.md §1.2) → JSON and required fields (§1.3) → commit.
The answer is sent only after the commit is fsync'd; a redelivered `event_id` answers 200 again and is
stored once. Every refusal is a 4xx JSON body `{"error": {"code", "message"}}`, counted by code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, NamedTuple

import msgspec

from loopwire.config import CustomerioWebhooksConfig
from loopwire.errors import InputError
from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.sources.customerio_parse import is_known_pair, parse_webhook

log = logging.getLogger("loopwire.sources.customerio")

SOURCE = "customerio"
_encode = msgspec.json.Encoder().encode


def keyed(keys: Iterable[bytes]) -> list[hmac.HMAC]:
    """An HMAC-SHA256 state per signing key, keyed once: each request copies it instead of setting
    the key up again (half the cost of a one-shot `hmac.digest`)."""
    return [hmac.new(key, digestmod=hashlib.sha256) for key in keys]


def verify_signature(
    keys: Sequence[hmac.HMAC],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    window: float,
) -> None:
    """HMAC-SHA256 over `v0:<timestamp>:<raw body>`, hex, compared in constant time against every key
    (`keys` as `keyed` makes them)."""
    if not signature or not timestamp:
        missing = "X-CIO-Signature" if not signature else "X-CIO-Timestamp"
        raise InputError(401, "missing_signature", f"header {missing} is required on every webhook")
    digits = timestamp.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 15):  # int() takes "1_0", "-5", ...
        raise InputError(401, "invalid_timestamp", "header X-CIO-Timestamp must be unix seconds")
    sent_at = int(digits)
    if abs(now - sent_at) > window:
        raise InputError(
            401,
            "stale_timestamp",
            f"X-CIO-Timestamp is {int(now - sent_at)}s from this server's clock; the replay window is"
            f" {window:g}s (check the server clock, or sources.customerio_webhooks.replay_window)",
        )
    prefix = b"v0:" + timestamp.encode() + b":"
    given = signature.strip().lower().encode()
    matched = False
    for key in keys:  # every key is tried, so timing does not tell which one matched
        mac = key.copy()
        mac.update(prefix)
        mac.update(body)
        matched |= hmac.compare_digest(mac.hexdigest().encode(), given)
    if not matched:
        raise InputError(
            401, "invalid_signature", "X-CIO-Signature does not match the body for any configured signing key"
        )


def error_body(error: InputError) -> bytes:
    return _encode({"error": {"code": error.code, "message": error.message}})


class Verdict(NamedTuple):
    """What the endpoint answers for one webhook, and what it counts."""

    status: int
    outcome: str  # accepted | duplicate | rejected | failed
    code: str  # the error code of a refusal or a failure; "" otherwise
    known: bool  # an accepted event of a documented object_type (customerio.md §1.3)
    body: bytes


def check(
    keys: Sequence[hmac.HMAC],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    window: float,
) -> Event:
    """Signature, then JSON and fields: the event of a webhook loopwire may commit (or `InputError`)."""
    verify_signature(keys, timestamp, signature, body, now, window)
    return parse_webhook(body, int(now * 1000))


def refused(error: InputError) -> Verdict:
    return Verdict(error.status, "rejected", error.code, False, error_body(error))


def answered(event: Event, fresh: bool) -> Verdict:
    status = b"accepted" if fresh else b"duplicate"
    body = b'{"status":"' + status + b'","event_id":' + _encode(event.id) + b"}"
    return Verdict(200, status.decode(), "", fresh and is_known_pair(event), body)


# The commit failed (disk full, I/O error, the ingest process gone): nothing is durable, say so.
FAILED = Verdict(
    503,
    "failed",
    "store_unavailable",
    False,
    error_body(InputError(503, "store_unavailable", "could not commit the event; retry")),
)
# A defect of loopwire's met while checking one webhook (never expected: the fuzz tests look for it).
# 500, so Customer.io sends it again once the defect is fixed; counted as `failed`.
INTERNAL = Verdict(
    500,
    "failed",
    "internal_error",
    False,
    error_body(InputError(500, "internal_error", "loopwire could not check this webhook; see its log")),
)
Forward = Callable[[str | None, str | None, bytes], Awaitable[Verdict]]


JSON_TYPE = (b"content-type", b"application/json")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (declared or streamed)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "body_too_large", f"body is {declared.decode()} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError(400, "incomplete_body", "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InputError(413, "body_too_large", f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [JSON_TYPE, (b"content-length", str(len(body)).encode())]  # no chunked encoding
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CustomerioWebhooks:
    """A bare ASGI endpoint: this is the hottest path in loopwire, so it skips the framework's
    request objects (see docs/performance.md).

    With `forward`, the checks and the commit happen in loopwire's ingest process
    (loopwire/ingest_process.py): this endpoint reads the body and answers what it says. Without,
    they happen here, and the event is committed through `ingest`."""

    def __init__(
        self,
        config: CustomerioWebhooksConfig,
        ingest: Callable[[Event], Awaitable[bool]],
        metrics: Metrics,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
        forward: Forward | None = None,
    ) -> None:
        self._keys = keyed(key.reveal().encode() for key in config.signing_keys)
        self._window = float(config.replay_window)
        self._ingest = ingest
        self._forward = forward
        self._metrics = metrics
        self._limit = max_body_bytes
        self._clock = clock
        self._accepted = metrics.requests.labels(SOURCE, "accepted")
        self._duplicate = metrics.requests.labels(SOURCE, "duplicate")
        self._known = metrics.events.labels(SOURCE, "yes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timestamp = signature = length = None
        for name, value in scope["headers"]:
            if name == b"x-cio-timestamp":
                timestamp = value.decode("latin-1")
            elif name == b"x-cio-signature":
                signature = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        try:
            body = await read_body(receive, length, self._limit)
        except InputError as error:
            verdict = refused(error)
        else:
            if self._forward is not None:
                verdict = await self._forward(timestamp, signature, body)
            else:
                verdict = await self._commit(timestamp, signature, body)
        if verdict.outcome == "accepted":
            self._accepted.inc()
            if verdict.known:
                self._known.inc()
            else:
                self._metrics.events.labels(SOURCE, "no").inc()
        elif verdict.outcome == "duplicate":
            self._duplicate.inc()
        else:
            self._metrics.requests.labels(SOURCE, verdict.outcome).inc()
            if verdict.outcome == "rejected":
                self._metrics.rejected.labels(SOURCE, verdict.code).inc()
                log.info("refused a Customer.io webhook: %s %s", verdict.status, verdict.code)
        await respond(send, verdict.status, verdict.body)

    async def _commit(self, timestamp: str | None, signature: str | None, body: bytes) -> Verdict:
        try:
            event = check(self._keys, timestamp, signature, body, self._clock(), self._window)
        except InputError as error:
            return refused(error)
        except Exception:
            log.exception("could not check a Customer.io webhook")
            return INTERNAL
        try:
            fresh = await self._ingest(event)
        except Exception:
            log.exception("could not commit Customer.io event %s", event.id)
            return FAILED
        return answered(event, fresh)
