"""Signed Customer.io reporting webhooks, as Customer.io sends them (customerio.md §1.2)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import msgspec
from ulid import ULID


def sign(key: str, timestamp: int, body: bytes) -> str:
    return hmac.new(key.encode(), b"v0:" + str(timestamp).encode() + b":" + body, hashlib.sha256).hexdigest()


def signed_headers(key: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {
        "X-CIO-Timestamp": str(ts),
        "X-CIO-Signature": sign(key, ts, body),
        "Content-Type": "application/json",
    }


def webhook(
    object_type: str = "email",
    metric: str = "sent",
    user_id: str | None = "cust_000123",
    email: str | None = "ada@example.com",
    event_id: str | None = None,
    timestamp: int = 1735689600,
    **data: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifiers": {"id": user_id, "email": email, "cio_id": "a3000001"},
        "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
        "campaign_id": 412,
        "action_id": 97,
    }
    if object_type == "email":
        body.update(recipient=email, subject="Your cart is waiting")
    body.update(data)
    return {
        "event_id": event_id or str(ULID()),
        "object_type": object_type,
        "metric": metric,
        "timestamp": timestamp,
        "data": body,
    }


def encode(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)
