"""Per-destination routing and data minimisation (seed 004: send each destination only what it needs).

Every destination's options carry a `route:` block. The router asks `accepts(route, defaults, event)`;
mappings call `allowed_properties` and `hash_email` / `hash_phone` for ad-platform destinations.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from loopwire.model import Event, event_key, event_pattern


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    # Sources whose events this destination takes; None: the destination type's default.
    sources: list[str] | None = None
    # Event kinds (message, subscription, track, identify, page, screen, group, alias); None: all.
    kinds: list[str] | None = None
    # Event keys, shell-style globs: a Customer.io event's key is "<object_type>.<metric>"
    # ("email.*", "sms.clicked"), any other event's key is its name ("Order Completed"). None: all.
    # Only `*` and `?` are wildcards, so "[Amplitude] Page Viewed" is matched as written.
    events: list[str] | None = None
    # Event property keys to send (dotted for nested: "cart.value"); None: all.
    properties: list[str] | None = None
    # Replace email and phone identifiers by SHA-256 of their normalised form (for ad platforms).
    hash_identifiers: bool = False


def accepts(route: Route, default_sources: frozenset[str], event: Event) -> bool:
    sources = default_sources if route.sources is None else route.sources
    if event.source not in sources:
        return False
    if route.kinds is not None and event.kind not in route.kinds:
        return False
    return route.events is None or matches_events(route.events, event)


def matches_events(patterns: list[str], event: Event) -> bool:
    """Does the event's key match any of the patterns (`*` any run of characters, `?` one)?"""
    key = event_key(event)
    return any(event_pattern(pattern).fullmatch(key) is not None for pattern in patterns)


def allowed_properties(properties: dict[str, Any], allow: list[str] | None) -> dict[str, Any]:
    """Keep only the allowlisted keys; a dotted key keeps one nested value."""
    if allow is None:
        return properties
    kept: dict[str, Any] = {}
    for key in allow:
        if key in properties:
            kept[key] = properties[key]
            continue
        head, _, rest = key.partition(".")
        value = properties.get(head)
        if rest and isinstance(value, dict):
            inner = allowed_properties(value, [rest])
            if inner:
                kept.setdefault(head, {}).update(inner)
    return kept


_NON_DIGITS = re.compile(r"[^\d]")


def normalise_email(email: str) -> str:
    return email.strip().lower()


def normalise_phone(phone: str, default_country_code: str = "1") -> str:
    """E.164 without formatting: `+1 (555) 867-5309` → `+15558675309`. A number without a
    country code gets `default_country_code`."""
    text = phone.strip()
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        return f"+{digits}"
    if text.startswith("00"):
        return f"+{digits[2:]}"
    return f"+{default_country_code}{digits}"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_email(email: str) -> str:
    return sha256_hex(normalise_email(email))


def hash_phone(phone: str, default_country_code: str = "1") -> str:
    return sha256_hex(normalise_phone(phone, default_country_code))
