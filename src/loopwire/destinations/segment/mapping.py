"""Canonical `Event` → the Segment messages of one outbox row, `{"batch": [message, ...]}`.

Customer.io engagement becomes a `track` named as Customer.io's Segment source names it (segment.md
§8, customerio.md §4), plus an `identify` for subscription changes when `send_identify` is on. Events
from other sources (Segment, Amplitude, loopwire's own) pass through as the Segment call of their
kind. Pure: options and clock come in as arguments. Every rule and every choice the references leave
open is written up in docs/mapping-segment.md.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import msgspec

from loopwire import __version__
from loopwire.destinations.amplitude.mapping import event_type as amplitude_event_type
from loopwire.destinations.base import Invalid, Skip
from loopwire.destinations.routing import allowed_properties, hash_email, hash_phone, sha256_hex
from loopwire.destinations.segment.api import MESSAGE_ID_MAX_CHARS, MESSAGE_MAX_BYTES
from loopwire.destinations.segment.options import Naming, SegmentOptions
from loopwire.model import Event

LIBRARY: dict[str, str] = {"name": "loopwire", "version": __version__}

# Event names (docs/mapping-segment.md "Event names"). segment.md §8 documents the six email names;
# the rest follow the same "<Channel> <Metric>" pattern with the words Customer.io and the
# RudderStack Customer.io source use (customerio.md §4).
_CHANNELS = {
    "email": "Email",
    "push": "Push",
    "sms": "SMS",
    "whatsapp": "WhatsApp",
    "in_app": "In-App Message",
    "slack": "Slack Message",
    "webhook": "Webhook Message",
    "customer": "Customer",
}
_METRICS = {
    "clicked": "Link Clicked",
    "spammed": "Marked as Spam",
    "dropped": "Suppressed",  # customerio.md §1.5: email dropped = "Email Suppressed" (segment.md §8.3)
    "cio_subscription_preferences_changed": "Subscription Preferences Changed",
}

# `data` keys that are not event properties: identity goes to userId / context.traits, `customer_id`
# is the deprecated copy of the id (customerio.md §1.4), body content is gated by `body_content`.
_CONSUMED = frozenset({"identifiers", "customer_id", "content", "headers"})
# Body Content gates `content` on these metrics (customerio.md §1.1 `with_content`); `headers` on sent.
_CONTENT_METRICS = frozenset({"sent", "cio_subscription_preferences_changed"})
_PHONE_CHANNELS = frozenset({"sms", "whatsapp"})  # their `recipient` is an MSISDN (customerio.md §1.5)
_SUBSCRIPTION_TRAIT = {"subscribed": False, "unsubscribed": True}  # customerio.md §1.6

# Calls passed through from other sources (segment.md §1: what /v1/batch takes).
_FORWARDED = frozenset({"track", "identify", "page", "screen", "group"})
# Set per request or by Segment itself (§3): never forwarded from a received message.
_NOT_FORWARDED = frozenset(
    {"writeKey", "sentAt", "receivedAt", "originalTimestamp", "version", "type", "messageId", "timestamp"}
)
_EMAIL_KEYS = frozenset({"email", "email_address"})
_PHONE_KEYS = frozenset({"phone"})

_encode = msgspec.json.Encoder().encode


# --- names, ids, times ------------------------------------------------------------------------


def _words(text: str) -> str:
    return " ".join(word.capitalize() for word in text.replace("_", " ").split())


@lru_cache(maxsize=4096)
def segment_name(channel: str, metric: str) -> str:
    """`email`, `clicked` → "Email Link Clicked" (Customer.io's Segment source style)."""
    return f"{_CHANNELS.get(channel) or _words(channel)} {_METRICS.get(metric) or _words(metric)}"


def event_name(channel: str, metric: str, naming: Naming) -> str:
    exact = naming.events.get(f"{channel}.{metric}")
    if exact is not None:
        return exact
    if naming.style == "segment":
        return naming.prefix + segment_name(channel, metric)
    return amplitude_event_type(channel, metric, naming.style, naming.prefix)


def message_id(prefix: str, event_id: str, suffix: str = "") -> str:
    """`prefix + event id (+ suffix)`; over Segment's 99 characters (§4), a SHA-256 of it, so every
    retry still carries the same id."""
    value = f"{prefix}{event_id}{suffix}"
    return value if len(value) <= MESSAGE_ID_MAX_CHARS else "lw-" + sha256_hex(value)


@lru_cache(maxsize=1024)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch → `2025-01-01T00:02:00.000Z` (§3: ISO-8601 with a timezone).
    Events come in bursts of the same second, so the formatted second is cached."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


# --- hashing (route.hash_identifiers) ---------------------------------------------------------


def _looks_like_email(value: Any) -> bool:
    return type(value) is str and "@" in value


def _hash_ids(ids: dict[str, Any]) -> dict[str, Any]:
    """userId / anonymousId that are email addresses become their SHA-256 (never sent raw)."""
    return {k: hash_email(v) if _looks_like_email(v) else v for k, v in ids.items()}


def _hash_keys(values: dict[str, Any], country: str, recipient: str | None = None) -> dict[str, Any]:
    """`email`, `email_address`, `phone` (and `recipient` as `recipient` says: "email" or "phone")
    → `<key>_sha256`. A value that is not a string cannot be hashed and is left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = "email" if key in _EMAIL_KEYS else "phone" if key in _PHONE_KEYS else None
        if key == "recipient":
            kind = recipient
        if kind is None:
            out[key] = value
        elif type(value) is str and value:
            out[f"{key}_sha256"] = hash_email(value) if kind == "email" else hash_phone(value, country)
    return out


# --- Customer.io engagement -------------------------------------------------------------------


def _person_email(event: Event) -> str | None:
    """identifiers.email / email_address (the parser's `email`), else an email's `recipient`."""
    if event.email:
        return event.email
    recipient = event.data.get("recipient")
    if event.channel == "email" and type(recipient) is str and recipient:
        return recipient
    return None


def _recipient_kind(channel: str, recipient: Any) -> str | None:
    if channel in _PHONE_CHANNELS:
        return "phone"
    if channel == "email" or _looks_like_email(recipient):
        return "email"
    return None  # a push/slack/webhook target, or an in-app recipient that is an id


def _no_identity(source: str) -> Skip:
    return Skip(
        f"no userId or anonymousId: the {source} event names no id and no email "
        "(Segment would drop it, segment.md §5)",
        "no_identifier",
    )


def _customerio(event: Event, options: SegmentOptions) -> list[dict[str, Any]] | Skip:
    channel = event.channel or ""
    metric = event.metric or ""
    data = event.data
    hashing = options.route.hash_identifiers
    country = options.default_country_code

    # Identity (customerio.md §4): the person's id → userId; no id but an email → anonymousId.
    email = _person_email(event)
    ids: dict[str, Any]
    if event.user_id is not None:
        ids = {"userId": event.user_id}
    elif email is not None:
        ids = {"anonymousId": email}
    else:
        return _no_identity("Customer.io")

    # context.traits: the recipient, where Segment's email spec puts it (context.traits.email).
    traits: dict[str, Any] = {}
    if email is not None:
        traits["email"] = email
    recipient = data.get("recipient")
    if channel in _PHONE_CHANNELS and type(recipient) is str and recipient:
        traits["phone"] = recipient
    identifiers = data.get("identifiers")
    if type(identifiers) is dict and identifiers.get("cio_id") is not None:
        traits["cio_id"] = identifiers["cio_id"]

    properties = {key: value for key, value in data.items() if key not in _CONSUMED}
    if options.body_content and metric in _CONTENT_METRICS:
        for key in ("content", "headers") if metric == "sent" else ("content",):
            if data.get(key) is not None:
                properties[key] = data[key]
    properties = allowed_properties(properties, options.route.properties)
    if hashing:
        ids = _hash_ids(ids)
        traits = _hash_keys(traits, country)
        properties = _hash_keys(properties, country, _recipient_kind(channel, recipient))

    context: dict[str, Any] = {"library": LIBRARY}
    if traits:
        context["traits"] = traits
    timestamp = iso_ms(event.time_ms)
    track: dict[str, Any] = {
        "type": "track",
        "event": event_name(channel, metric, options.naming),
        **ids,
        "properties": properties,
        "context": context,
    }
    if options.integrations is not None:
        track["integrations"] = dict(options.integrations)
    track["messageId"] = message_id(options.message_id_prefix, event.id)
    track["timestamp"] = timestamp

    unsubscribed = _SUBSCRIPTION_TRAIT.get(metric)
    if not (options.send_identify and event.kind == "subscription" and unsubscribed is not None):
        return [track]
    person: dict[str, Any] = {"unsubscribed": unsubscribed}
    if email is not None:
        person["email"] = email
    if hashing:
        person = _hash_keys(person, country)
    identify: dict[str, Any] = {"type": "identify", **ids, "traits": person, "context": {"library": LIBRARY}}
    if options.integrations is not None:
        identify["integrations"] = dict(options.integrations)
    identify["messageId"] = message_id(options.message_id_prefix, event.id, "-identify")
    identify["timestamp"] = timestamp
    return [identify, track]  # the profile first, so the track reaches destinations with it


# --- other sources: pass through --------------------------------------------------------------


def _amplitude_traits(user_properties: Any) -> dict[str, Any]:
    """Amplitude user properties → Segment traits: plain keys, then `$set` on top. A Segment trait
    always overwrites, so `$setOnce` (the SDKs send `initial_referrer` that way on every session)
    would turn "first" into "latest": it is left out, as are `$unset`, `$add`, `$append`..."""
    if type(user_properties) is not dict:
        return {}
    traits = {k: v for k, v in user_properties.items() if not k.startswith("$")}
    values = user_properties.get("$set")
    if type(values) is dict:
        traits.update(values)
    return traits


def _body_of(event: Event) -> dict[str, Any]:
    """The received message in Segment's shape: Segment (and loopwire's own) events already are;
    an Amplitude event's properties and user properties are moved to properties / traits."""
    data = event.data
    if event.source != "amplitude":
        return {k: v for k, v in data.items() if k not in _NOT_FORWARDED}
    body: dict[str, Any] = {}
    if type(data.get("event_properties")) is dict:
        body["properties"] = data["event_properties"]
    traits = _amplitude_traits(data.get("user_properties"))
    if traits:
        body["traits"] = traits
    return body


def _some_id(*candidates: Any) -> Any:
    for value in candidates:
        if (type(value) is str and value) or type(value) in (int, float):
            return value
    return None


def _forwarded(event: Event, options: SegmentOptions) -> list[dict[str, Any]] | Skip:
    kind = event.kind
    if kind not in _FORWARDED:
        return Skip(
            f"{event.source} {kind} events are not sent to Segment (it takes {', '.join(sorted(_FORWARDED))})",
            "unsupported",
        )
    body = _body_of(event)
    hashing = options.route.hash_identifiers
    country = options.default_country_code
    user_id = _some_id(event.user_id, body.pop("userId", None))
    anonymous_id = _some_id(event.anonymous_id, body.pop("anonymousId", None))
    if user_id is None and anonymous_id is None:
        return _no_identity(event.source)
    message: dict[str, Any] = {"type": kind}
    if kind == "track":
        name = event.name or body.pop("event", None)
        if type(name) is not str or not name:
            return Skip("track without an event name (Segment would drop it, segment.md §5)", "incomplete")
        body.pop("event", None)
        message["event"] = name
    elif kind in ("page", "screen"):
        name = body.pop("name", None) or event.name
        if type(name) is str and name:
            message["name"] = name
    elif kind == "group" and _some_id(body.get("groupId")) is None:
        return Skip("group without a groupId (Segment would drop it, segment.md §3)", "incomplete")
    ids = {"userId": user_id} if user_id is not None else {}
    if anonymous_id is not None:
        ids["anonymousId"] = anonymous_id
    message.update(_hash_ids(ids) if hashing else ids)

    field = "traits" if kind in ("identify", "group") else "properties"
    values = body.pop(field, None)
    body.pop("properties" if field == "traits" else "traits", None)  # not part of this call
    values = allowed_properties(values if type(values) is dict else {}, options.route.properties)
    message[field] = _hash_keys(values, country) if hashing else values
    context = body.pop("context", None)
    context = dict(context) if type(context) is dict else {}
    context.setdefault("library", LIBRARY)
    if hashing and type(context.get("traits")) is dict:
        context["traits"] = _hash_keys(context["traits"], country)
    message["context"] = context
    integrations = body.pop("integrations", None)
    if options.integrations is not None or type(integrations) is dict:
        own = integrations if type(integrations) is dict else {}
        message["integrations"] = {**own, **(options.integrations or {})}  # the config wins
    message.update(body)  # any other field of the call (groupId, category, ...) as received
    message["messageId"] = message_id(options.message_id_prefix, event.id)
    message["timestamp"] = iso_ms(event.time_ms)  # the source decided when it happened
    return [message]


# --- the mapping ------------------------------------------------------------------------------


def map_event(event: Event, options: SegmentOptions, now_ms: int) -> dict[str, Any] | Skip | Invalid:
    """One `Event` → `{"batch": [Segment message, ...]}` (one outbox row), `Skip` or `Invalid`.

    `now_ms` is the injected clock every mapping receives; this one reads no clock (the event carries
    its own time, and `sentAt` is set when the request is sent).
    """
    if event.source == "customerio" and event.kind in ("message", "subscription"):
        messages = _customerio(event, options)
    else:
        messages = _forwarded(event, options)
    if isinstance(messages, Skip):
        return messages
    for message in messages:
        size = len(_encode(message))
        if size > MESSAGE_MAX_BYTES:
            return Invalid(
                f"the Segment {message['type']} message is {size:,} bytes; Segment takes at most 32 KB "
                f"({MESSAGE_MAX_BYTES:,} bytes) per message (segment.md §4): turn `body_content` off "
                "or keep fewer properties with `route.properties`"
            )
    return {"batch": messages}


def encode_payload(payload: dict[str, Any]) -> bytes:
    """One row's messages, comma-joined: the batch array is the concatenation of every row's part."""
    return b",".join(_encode(message) for message in payload["batch"])


def envelope(sent_at: str) -> tuple[bytes, bytes]:
    """The bytes around the comma-joined parts of one /v1/batch body (§3 Batch, §6): `sentAt` is the
    send time, never the event time (§3 "Timestamp correction"). The write key travels in the
    Authorization header, not in the body."""
    return b'{"batch":[', b'],"sentAt":' + _encode(sent_at) + b"}"


def request_body(payloads: list[dict[str, Any]], sent_at: str) -> bytes:
    head, tail = envelope(sent_at)
    return head + b",".join(encode_payload(p) for p in payloads) + tail
