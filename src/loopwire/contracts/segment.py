"""Segment's HTTP Tracking API contract as pure functions: limits, auth, message checks and answer
bodies (segment.md §1–§5). No I/O and no clock; the sandbox keeps the state.

Segment answers 200 to almost everything and drops bad messages later, silently (§5). The sandbox
answers the same, and names every message production would have lost with a `Drop(reason)`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import http
import re
import zlib
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec

# Limits (segment.md §4). "KB" is not defined by the docs. The official Python library caps one
# message at 32 << 10 bytes (consumer.py MAX_MSG_SIZE), so a message it sends must pass here; its
# comment says batches must stay "less than 500KB" and it closes them at 475,000 bytes, so the stricter
# decimal reading of 500 KB costs its users nothing.
MESSAGE_MAX_BYTES: Final = 32 * 1024  # one non-batch request body, and each message inside a batch
BATCH_MAX_BYTES: Final = 500_000  # one /v1/batch request body
BATCH_MAX_MESSAGES: Final = 2_500  # over it: 200, and every message of the batch is dropped (§4)
MESSAGE_ID_MAX_CHARS: Final = 99  # "< 100 chars" (§4); the field table's "≤ 100" is the looser reading
DEDUPE_SECONDS: Final = 86_400.0  # "at least ~24 h" of messageIds, global across sources (§5)
RATE_LIMIT: Final = 1_000.0  # requests per second per workspace; a batch counts as one (§4)

CALLS: Final = ("identify", "track", "page", "screen", "group", "alias")

# Reasons a message is dropped behind a 200. `no_user_anon_id` is Segment's own name (§5); the
# others are the sandbox's names for the other documented silent discards.
NO_USER_ANON_ID: Final = "no_user_anon_id"
MISSING_EVENT: Final = "missing_event"
MISSING_GROUP_ID: Final = "missing_group_id"
MISSING_USER_ID: Final = "missing_user_id"
MISSING_PREVIOUS_ID: Final = "missing_previous_id"
INVALID_TYPE: Final = "invalid_type"
INVALID_MESSAGE: Final = "invalid_message"
INVALID_TIMESTAMP: Final = "invalid_timestamp"
INVALID_MESSAGE_ID: Final = "invalid_message_id"
DUPLICATE_MESSAGE_ID: Final = "duplicate_message_id"
TOO_MANY_MESSAGES: Final = "too_many_messages"
INVALID_WRITE_KEY: Final = "invalid_write_key"

_JSON_MEDIA = frozenset({"application/json", "text/plain"})  # text/plain: browser beacons
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)"
)
_encoder = msgspec.json.Encoder()


class Answer(NamedTuple):
    """An HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


class Drop(NamedTuple):
    """Why Segment would accept a message with 200 and then discard it."""

    reason: str
    detail: str


# ---- answers (§5) ----------------------------------------------------------------------------------


def success() -> Answer:
    # The 200 body is not in segment.md; `{"success": true}` is what api.segment.io is seen to answer
    # (segmentio/analytics.js#625, segmentio/analytics-go#205).
    return Answer(200, {"success": True})


def error(status: int, code: str, message: str) -> Answer:
    """`{"code", "message"}`: the shape the official Python library parses into `APIError` (§5)."""
    return Answer(status, {"code": code, "message": message})


def status_answer(status: int, message: str | None = None) -> Answer:
    phrase = http.HTTPStatus(status).phrase
    return error(status, phrase.lower().replace(" ", "_").replace("-", "_"), message or phrase)


def too_large(what: str, limit: int) -> Answer:
    return error(400, "payload_too_large", f"{what} exceeds {limit} bytes")  # 400, not 413 (§5)


def invalid_json(message: str = "Request body is not valid JSON") -> Answer:
    return error(400, "invalid_json", message)


def missing_write_key() -> Answer:
    return error(
        400,
        "missing_write_key",
        "No write key: send writeKey in the body, or HTTP Basic auth with the write key as username",
    )


# ---- wire formats (§1, §2, §6) ---------------------------------------------------------------------


def decode_body(
    raw: bytes, over: bool, content_type: str, content_encoding: str, limit: int, what: str
) -> tuple[bytes, Answer | None]:
    """JSON as `application/json` (required, §1) or `text/plain`, identity or gzip (the library's
    `gzip=True`, §6); `limit` counts decoded bytes, so a small gzip body that inflates past it fails."""
    if over:
        return b"", too_large(what, limit)
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_MEDIA:
        return b"", error(400, "invalid_content_type", "Content-Type must be application/json")
    encoding = content_encoding.strip().lower()
    if encoding not in ("", "identity", "gzip"):
        return b"", error(400, "invalid_content_encoding", "Content-Encoding must be gzip or identity")
    if encoding != "gzip":
        return raw, None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return b"", invalid_json("Request body is not valid gzip")
    if len(body) > limit:
        return b"", too_large(what, limit)
    if not inflater.eof:
        return b"", invalid_json("Request body is truncated gzip")
    return body, None


def write_key_of(body_key: Any, authorization: str) -> str | None:
    """The write key from the body's `writeKey`, else from HTTP Basic (username, empty password), §2.

    The body wins when both are sent (the library sends both, §6). Basic without the trailing colon
    is taken too: the docs say it "might work due to backward compatibility". A Bearer token (OAuth)
    carries no write key, so the body must have one."""
    if type(body_key) is str and body_key:
        return body_key
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username = decoded.split(":", 1)[0]
    return username or None


def write_key_hash(key: str) -> str:
    """What the sandbox stores instead of a write key: enough to tell keys apart, not to use one."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def encoded_size(item: Any) -> int:
    """A message's size inside a batch: its compact JSON encoding (§4: size is the serialized JSON)."""
    return len(_encoder.encode(item))


# ---- messages (§3) ---------------------------------------------------------------------------------


def merge_envelope(item: dict[str, Any], envelope: dict[str, Any]) -> dict[str, Any]:
    """A batch item with the envelope's `context` and `integrations` merged in (§3, Batch). The
    merge is shallow and the item's own keys win; the docs say "merged" without saying how deep.
    With nothing to merge the item itself is returned, not a copy."""
    if type(envelope.get("context")) is not dict and type(envelope.get("integrations")) is not dict:
        return item  # nothing to merge (the usual batch): the item as it is
    merged = dict(item)
    for key in ("context", "integrations"):
        outer = envelope.get(key)
        if type(outer) is not dict:
            continue
        inner = item.get(key)
        if inner is None:
            merged[key] = dict(outer)
        elif type(inner) is dict:
            merged[key] = {**outer, **inner}
    return merged


def _has_id(value: Any) -> bool:
    """An identifier is a non-empty string or a number; JSON null counts as absent (the library
    sends null for the id it wasn't given, §6)."""
    if type(value) is str:
        return value != ""
    return type(value) in (int, float)


@functools.lru_cache(maxsize=4096)  # a batch repeats its sentAt, a storefront its timestamps often
def _iso_ms(value: str) -> int | None:
    if not _ISO_DATETIME.fullmatch(value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace(",", "."))
    except ValueError:
        return None
    return int(moment.timestamp() * 1000)


def iso_ms(value: Any) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 date-time with a timezone; None if it is not one."""
    return _iso_ms(value) if type(value) is str else None


def is_iso8601(value: Any) -> bool:
    """An ISO-8601 date-time with a timezone (§3: "All timestamps are ISO-8601 with a timezone")."""
    return iso_ms(value) is not None


def check_message(message: Any, sent_at: Any = None) -> Drop | None:
    """The silent discards of §3 and §5 for one message (type already set for single calls);
    `sent_at` is the batch envelope's, used when the message has none. First failing rule wins."""
    if type(message) is not dict:
        return Drop(INVALID_MESSAGE, "a message must be a JSON object")
    call = message.get("type")
    if call not in CALLS:
        return Drop(INVALID_TYPE, f"type must be one of {', '.join(CALLS)}")
    if call == "alias":
        if not _has_id(message.get("userId")):
            return Drop(MISSING_USER_ID, "alias needs userId")
        if not _has_id(message.get("previousId")):
            return Drop(MISSING_PREVIOUS_ID, "alias needs previousId")
    elif not (_has_id(message.get("userId")) or _has_id(message.get("anonymousId"))):
        return Drop(NO_USER_ANON_ID, "userId or anonymousId is required")
    if call == "track":
        event = message.get("event")
        if type(event) is not str or not event:
            return Drop(MISSING_EVENT, "track needs an event name")
    if call == "group" and not _has_id(message.get("groupId")):
        return Drop(MISSING_GROUP_ID, "group needs groupId")
    own_sent_at = message.get("sentAt")
    for field, value in (("timestamp", message.get("timestamp")), ("sentAt", own_sent_at or sent_at)):
        if value is not None and not is_iso8601(value):
            return Drop(INVALID_TIMESTAMP, f"{field} is not an ISO-8601 date-time with a timezone")
    message_id = message.get("messageId")
    if message_id is not None:
        if type(message_id) is not str or not message_id:
            return Drop(INVALID_MESSAGE_ID, "messageId must be a non-empty string")
        if len(message_id) > MESSAGE_ID_MAX_CHARS:
            return Drop(INVALID_MESSAGE_ID, f"messageId must be under 100 characters, got {len(message_id)}")
    return None
