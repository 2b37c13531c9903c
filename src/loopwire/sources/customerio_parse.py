"""Customer.io reporting webhook body → canonical `Event` (pure; customerio.md §1.3–1.6)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from loopwire import jsonsafe
from loopwire.errors import InputError
from loopwire.model import TIME_MAX_MS, Event

# Customer.io documents these object types (customerio.md §1.3); others are stored and counted too.
KNOWN_OBJECT_TYPES = frozenset({"customer", "email", "push", "sms", "in_app", "slack", "webhook", "whatsapp"})
SUBSCRIPTION_METRICS = frozenset({"subscribed", "unsubscribed", "cio_subscription_preferences_changed"})

# Bounds (customerio.md §2.5 and what the ids become downstream). A value past one is refused with
# 400, never stored cut or as is: Customer.io sends none of these, so only a forged or broken
# sender can.
# event_id: Customer.io's are ULIDs (26 characters, customerio.md §1.3). It becomes Amplitude's
# insert_id, a string of at most 1,024 characters (amplitude.md §2.2); Segment's messageId (< 100)
# and Customer.io's event id (a ULID) are derived from it by hashing where it does not fit.
EVENT_ID_MAX_CHARS = 1_024
NAME_MAX_BYTES = 100  # object_type and metric: Customer.io's event-name limit, 100 bytes (§2.5)
PERSON_ID_MAX_BYTES = 150  # identifiers.id: Customer.io's person id limit (§2.5)
EMAIL_MAX_BYTES = 1_000  # an attribute value (§2.5); RFC 5321 addresses are far shorter


class Bound(NamedTuple):
    """A field's size limit, as refused with 400 `field_too_long`."""

    field: str
    limit: int
    unit: str  # "bytes" or "characters"
    short: int  # a value this long or shorter is within the limit (a character is at most 4 bytes)


def _bound(field: str, limit: int, unit: str = "bytes") -> Bound:
    return Bound(field, limit, unit, limit if unit == "characters" else limit // 4)


_REQUIRED = (
    _bound("event_id", EVENT_ID_MAX_CHARS, "characters"),
    _bound("object_type", NAME_MAX_BYTES),
    _bound("metric", NAME_MAX_BYTES),
)
_PERSON_ID = _bound("data.identifiers.id", PERSON_ID_MAX_BYTES)
_EMAIL = _bound("data.identifiers.email", EMAIL_MAX_BYTES)


def _timestamp_ms(value: Any) -> int:
    # Lenient on type, strict on meaning: integers, floats and numeric strings are seconds (§1.3),
    # of a moment between 1970 and the end of year 9999.
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        seconds = float(value.strip())
    else:
        raise ValueError(type(value).__name__)
    if not math.isfinite(seconds) or not 0 <= seconds * 1000 <= TIME_MAX_MS:
        raise ValueError("out of range")
    return round(seconds * 1000)


def _too_long(bound: Bound, value: str) -> None:
    """Raise if `value` is past its bound. Called only for a value longer than `bound.short` (the
    callers compare first: most values are short, and a call for each would cost more than the check)."""
    size = len(value) if bound.unit == "characters" else len(value.encode("utf-8", "surrogatepass"))
    if size > bound.limit:
        raise InputError(
            400, "field_too_long", f"field `{bound.field}` is {size} {bound.unit}; the limit is {bound.limit}"
        )


def _kind(object_type: str, metric: str, data: dict[str, Any]) -> str:
    # A person-level subscription change carries `email_address`; the message-level
    # email/unsubscribed event carries `recipient`/`subject` instead (§1.6).
    if object_type == "customer":
        return "subscription"
    if metric in SUBSCRIPTION_METRICS and "email_address" in data:
        return "subscription"
    return "message"


def parse_webhook(body: bytes, received_ms: int) -> Event:
    """Validate one webhook body and build its Event; raises `InputError` naming what is wrong."""
    doc = jsonsafe.decode(body)
    if not isinstance(doc, dict):
        raise InputError(400, "invalid_json", "body must be a JSON object (one event per request)")
    for bound in _REQUIRED:
        field = bound.field
        value = doc.get(field)
        if value is None or value == "":
            raise InputError(400, "missing_field", f"required field `{field}` is missing")
        if type(value) is not str:
            raise InputError(400, "invalid_field", f"field `{field}` must be a string")
        if len(value) > bound.short:
            _too_long(bound, value)
    if "timestamp" not in doc:
        raise InputError(400, "missing_field", "required field `timestamp` is missing")
    try:
        time_ms = _timestamp_ms(doc["timestamp"])
    except ValueError:
        raise InputError(
            400,
            "invalid_field",
            "field `timestamp` must be unix seconds between 1970 and 9999 (a number or numeric string)",
        ) from None
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise InputError(400, "invalid_field", "field `data` must be an object")
    identifiers = data.get("identifiers")
    identifiers = identifiers if isinstance(identifiers, dict) else {}
    raw_id = identifiers.get("id")
    user_id = None if raw_id is None or raw_id == "" else str(raw_id)
    if user_id is not None and len(user_id) > _PERSON_ID.short:
        _too_long(_PERSON_ID, user_id)
    email = identifiers.get("email") or data.get("email_address")
    if isinstance(email, str) and len(email) > _EMAIL.short:
        _too_long(_EMAIL, email)
    object_type: str = doc["object_type"]
    metric: str = doc["metric"]
    return Event(
        id=doc["event_id"],
        source="customerio",
        kind=_kind(object_type, metric, data),
        channel=object_type,
        metric=metric,
        time_ms=time_ms,
        received_ms=received_ms,
        user_id=user_id,
        email=email if isinstance(email, str) else None,
        data=data,
    )


def is_known_pair(event: Event) -> bool:
    return event.channel in KNOWN_OBJECT_TYPES
