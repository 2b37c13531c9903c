"""Customer.io reporting webhook body → canonical `Event` (pure; customerio.md §1.3–1.6)."""

from __future__ import annotations

from typing import Any

import msgspec

from loopwire.errors import InputError
from loopwire.model import Event

# Customer.io documents these object types (customerio.md §1.3); others are stored and counted too.
KNOWN_OBJECT_TYPES = frozenset({"customer", "email", "push", "sms", "in_app", "slack", "webhook", "whatsapp"})
SUBSCRIPTION_METRICS = frozenset({"subscribed", "unsubscribed", "cio_subscription_preferences_changed"})

_decoder = msgspec.json.Decoder()


def _timestamp_seconds(value: Any) -> float:
    # Lenient on type, strict on meaning: integers, floats and numeric strings are seconds (§1.3).
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(type(value).__name__)


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
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InputError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(400, "invalid_json", "body must be a JSON object (one event per request)")
    for field in ("event_id", "object_type", "metric"):
        value = doc.get(field)
        if value is None or value == "":
            raise InputError(400, "missing_field", f"required field `{field}` is missing")
        if not isinstance(value, str):
            raise InputError(400, "invalid_field", f"field `{field}` must be a string")
    if "timestamp" not in doc:
        raise InputError(400, "missing_field", "required field `timestamp` is missing")
    try:
        seconds = _timestamp_seconds(doc["timestamp"])
    except ValueError:
        raise InputError(
            400, "invalid_field", "field `timestamp` must be unix seconds (a number or numeric string)"
        ) from None
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise InputError(400, "invalid_field", "field `data` must be an object")
    identifiers = data.get("identifiers")
    identifiers = identifiers if isinstance(identifiers, dict) else {}
    raw_id = identifiers.get("id")
    user_id = None if raw_id is None or raw_id == "" else str(raw_id)
    email = identifiers.get("email") or data.get("email_address")
    object_type: str = doc["object_type"]
    metric: str = doc["metric"]
    return Event(
        id=doc["event_id"],
        source="customerio",
        kind=_kind(object_type, metric, data),
        channel=object_type,
        metric=metric,
        time_ms=round(seconds * 1000),
        received_ms=received_ms,
        user_id=user_id,
        email=email if isinstance(email, str) else None,
        data=data,
    )


def is_known_pair(event: Event) -> bool:
    return event.channel in KNOWN_OBJECT_TYPES
