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
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loopwire.config import CustomerioWebhooksConfig
from loopwire.errors import InputError
from loopwire.httpio import read_limited
from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.sources.customerio_parse import is_known_pair, parse_webhook

log = logging.getLogger("loopwire.sources.customerio")

SOURCE = "customerio"
_encode = msgspec.json.Encoder().encode


def verify_signature(
    keys: Sequence[bytes],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    window: float,
) -> None:
    """HMAC-SHA256 over `v0:<timestamp>:<raw body>`, hex, compared in constant time against every key."""
    if not signature or not timestamp:
        missing = "X-CIO-Signature" if not signature else "X-CIO-Timestamp"
        raise InputError(401, "missing_signature", f"header {missing} is required on every webhook")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InputError(401, "invalid_timestamp", "header X-CIO-Timestamp must be unix seconds") from None
    if abs(now - sent_at) > window:
        raise InputError(
            401,
            "stale_timestamp",
            f"X-CIO-Timestamp is {int(now - sent_at)}s from this server's clock; the replay window is"
            f" {window:g}s (check the server clock, or sources.customerio_webhooks.replay_window)",
        )
    signed = b"v0:" + timestamp.encode() + b":" + body
    given = signature.strip().lower().encode()
    matched = False
    for key in keys:  # every key is tried, so timing does not tell which one matched
        expected = hmac.new(key, signed, hashlib.sha256).hexdigest().encode()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InputError(
            401, "invalid_signature", "X-CIO-Signature does not match the body for any configured signing key"
        )


def error_response(error: InputError) -> Response:
    body = _encode({"error": {"code": error.code, "message": error.message}})
    return Response(body, status_code=error.status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    body, over = await read_limited(request, limit)
    if over:
        raise InputError(413, "body_too_large", f"body is over the {limit}-byte limit")
    return body


class CustomerioWebhooks:
    def __init__(
        self,
        config: CustomerioWebhooksConfig,
        ingest: Callable[[Sequence[Event]], Awaitable[list[bool]]],
        metrics: Metrics,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = [key.reveal().encode() for key in config.signing_keys]
        self._window = float(config.replay_window)
        self._ingest = ingest
        self._metrics = metrics
        self._limit = max_body_bytes
        self._clock = clock

    async def handle(self, request: Request) -> Response:
        try:
            body = await read_body(request, self._limit)
            headers = request.headers
            now = self._clock()
            verify_signature(
                self._keys,
                headers.get("x-cio-timestamp"),
                headers.get("x-cio-signature"),
                body,
                now,
                self._window,
            )
            event = parse_webhook(body, int(now * 1000))
        except InputError as error:
            self._metrics.rejected.labels(SOURCE, error.code).inc()
            self._metrics.requests.labels(SOURCE, "rejected").inc()
            log.info("refused a Customer.io webhook: %s %s", error.status, error.code)
            return error_response(error)
        try:
            (fresh,) = await self._ingest([event])
        except Exception:  # the commit failed (disk full, I/O error): nothing is durable, say so
            log.exception("could not commit Customer.io event %s", event.id)
            self._metrics.requests.labels(SOURCE, "failed").inc()
            return error_response(InputError(503, "store_unavailable", "could not commit the event; retry"))
        if fresh:
            self._metrics.events.labels(SOURCE, "yes" if is_known_pair(event) else "no").inc()
        self._metrics.requests.labels(SOURCE, "accepted" if fresh else "duplicate").inc()
        status = b"accepted" if fresh else b"duplicate"
        return Response(
            b'{"status":"' + status + b'","event_id":' + _encode(event.id) + b"}",
            status_code=200,
            media_type="application/json",
        )
