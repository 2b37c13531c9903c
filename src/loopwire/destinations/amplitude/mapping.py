"""Customer.io engagement `Event` → one Amplitude HTTP V2 event, as Customer.io's native integration
maps it (seed 002), plus the options the native one lacks; loopwire's own audience and holdout events
→ `$identify` user properties and events. Pure: options and clock come in as arguments. Every rule
and every choice the seed leaves open is written up in docs/mapping-amplitude.md.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from loopwire.contracts.amplitude import DEFAULT_MIN_ID_LENGTH, INVALID_IDS
from loopwire.destinations.amplitude.api import MAX_STRING_CHARS
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Skip
from loopwire.model import Event

# `data` keys that become top-level Amplitude fields (or are gated) instead of event properties.
_CONSUMED = frozenset({"identifiers", "recipients", "content", "headers"})
# seed 002: "As of March 28, 2024, we capitalize/camel-case these items, e.g. Web, Android, iOS".
_PLATFORMS = {"ios": "iOS", "android": "Android", "web": "Web", "browser": "Web"}
_MACHINE_FLAGS = ("machine", "prefetched", "proxied")  # customerio.md §1.5 (email opened / clicked)
MACHINE_PROPERTY = "machine_activity"  # added by machine_activity: property
_FLAGGED = frozenset({"opened", "clicked"})  # the email metrics that can carry the flags
# Customer.io marks its own namespace with `cio_`; it is not a word of the event's name.
_METRIC_NAMES = {"cio_subscription_preferences_changed": "subscription_preferences_changed"}
# Body Content gates `content` on these metrics: the message on Sent (seed 002), the new topic
# preferences on preferences-changed (customerio.md §1.1 "with_content"); email `headers` on Sent only.
_CONTENT_METRICS = frozenset({"sent", "cio_subscription_preferences_changed"})


@lru_cache(maxsize=4096)
def event_type(channel: str, metric: str, style: str, prefix: str) -> str:
    """`email`, `sent` → "Email Sent" (title) or "<prefix>email_sent" (snake)."""
    metric = _METRIC_NAMES.get(metric, metric)
    if style == "snake":
        return prefix + f"{channel}_{metric}".lower().replace(" ", "_")
    words = f"{channel} {metric}".replace("_", " ").split()
    return prefix + " ".join(word.capitalize() for word in words)


def _clip(value: Any) -> Any:
    """Cut strings to Amplitude's 1,024 characters (§2.2); containers are copied only if changed."""
    kind = type(value)
    if kind is str:
        return value[:MAX_STRING_CHARS] if len(value) > MAX_STRING_CHARS else value
    if kind is dict:
        changed = None
        for key, item in value.items():
            clipped = _clip(item)
            if clipped is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = clipped
        return value if changed is None else changed
    if kind is list:
        items = [_clip(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _id_problem(value: Any, min_length: int) -> str:
    """Why Amplitude would not accept `value` as a user_id/device_id (§2.2, §2.4)."""
    if type(value) is not str:
        return "missing"
    if value.lower() in INVALID_IDS:
        return f"`{value.lower()}` is on Amplitude's invalid-id list"
    if len(value) < min_length:
        return f"shorter than min_id_length {min_length}"
    return f"longer than {MAX_STRING_CHARS} characters"


def _no_id(zero_without_email: bool, user_id: str | None, device_id: Any, min_length: int) -> Skip:
    """The Skip for an event with no id Amplitude accepts; reasons stay few (they are counted)."""
    if zero_without_email:
        user = "0, and the person has no email to use instead"
    else:
        user = _id_problem(user_id, min_length)
    device = _id_problem(device_id, min_length)
    reason = f"no id Amplitude accepts (user id: {user}; device id: {device})"
    if "min_id_length" in user or "min_id_length" in device:
        reason += "; set `min_id_length` to send shorter ids"
    return Skip(reason, "no_identifier")


def forward(event: Event) -> dict[str, Any]:
    """An event an app sent to loopwire's Amplitude-compatible input goes on unchanged; only an
    `insert_id` is added where the SDK sent none, so loopwire's retries cannot double-count."""
    if "insert_id" in event.data:
        return event.data
    return {**event.data, "insert_id": event.id}


def _user_id(event: Event, min_length: int) -> str | Skip:
    """The event's user id when Amplitude would take it, else the Skip the id rules give."""
    user_id = event.user_id
    if (
        user_id is not None
        and min_length <= len(user_id) <= MAX_STRING_CHARS
        and user_id.lower() not in INVALID_IDS
    ):
        return user_id
    return _no_id(False, user_id, None, min_length)


def own_event(event: Event, options: AmplitudeOptions) -> dict[str, Any] | Skip:
    """loopwire's own events (Segment-shaped, written by the audience and holdout engine): an
    identify's traits become user properties (`$set`; a null trait is `$unset`), so Amplitude can
    split any chart by holdout group or audience; a track (Audience Entered, ...) is an event with
    its properties. The Customer.io options (channels, naming, groups, ...) do not apply to them."""
    min_length = DEFAULT_MIN_ID_LENGTH if options.min_id_length is None else options.min_id_length
    user_id = _user_id(event, min_length)
    if isinstance(user_id, Skip):
        return user_id
    data = event.data
    if event.kind == "identify":
        traits = data.get("traits")
        if type(traits) is not dict or not traits:
            return Skip("loopwire identify without traits: no user property to set", "nothing_to_send")
        values = {key: _clip(value) for key, value in traits.items() if value is not None}
        removed = {key: "-" for key, value in traits.items() if value is None}  # the SDKs' `$unset` value
        operations: dict[str, Any] = {}
        if values:
            operations["$set"] = values
        if removed:
            operations["$unset"] = removed
        return {
            "event_type": "$identify",
            "user_id": user_id,
            "user_properties": operations,
            "insert_id": event.id,
            "time": event.time_ms,
        }
    if event.kind == "track":
        name = event.name or data.get("event")
        if type(name) is not str or not name:
            return Skip("loopwire track without an event name: Amplitude requires `event_type`", "incomplete")
        properties = data.get("properties")
        return {
            "event_type": name[:MAX_STRING_CHARS],
            "user_id": user_id,
            "event_properties": _clip(properties) if type(properties) is dict else {},
            "insert_id": event.id,
            "time": event.time_ms,
        }
    return Skip(
        f"loopwire {event.kind} events are not sent to Amplitude (it takes identify and track)", "unsupported"
    )


def map_event(event: Event, options: AmplitudeOptions, now_ms: int) -> dict[str, Any] | Skip:
    """One `Event` → one Amplitude HTTP V2 event object, or `Skip`: a Customer.io reporting webhook
    as the native integration maps it, an Amplitude SDK event forwarded unchanged, or one of
    loopwire's own audience and holdout events (`own_event`).

    `now_ms` is the injected clock every mapping receives; this one reads no clock (the event's own
    timestamp is always present).
    """
    if event.source == "amplitude":
        return forward(event)
    if event.source == "loopwire":
        return own_event(event, options)
    if event.source != "customerio":
        return Skip(
            f"the amplitude destination maps Customer.io, Amplitude and loopwire events, not {event.source} ones",
            "unsupported",
        )
    channel = event.channel or ""
    metric = event.metric or ""
    if options.channels is not None and channel not in options.channels:
        return Skip(f"{channel} {metric}: channel `{channel}` is not selected in `channels`")
    if options.metrics is not None and metric not in options.metrics:
        return Skip(f"{channel} {metric}: metric `{metric}` is not selected in `metrics`")
    data = event.data

    machine: bool | None = None  # set only with machine_activity: property
    if options.machine_activity != "include":
        flag = next((f for f in _MACHINE_FLAGS if data.get(f) is True), None)
        if options.machine_activity == "exclude":
            if flag is not None:
                return Skip(
                    f"{channel} {metric}: machine activity is excluded (`{flag}` is true)", "machine_activity"
                )
        else:
            machine = flag is not None

    # Identity (seed 002): user_id ← identifiers.id, except id 0 → the person's email;
    # device_id and platform ← the first of `recipients`. Ids Amplitude would refuse are left out.
    min_length = DEFAULT_MIN_ID_LENGTH if options.min_id_length is None else options.min_id_length
    user_id = event.user_id
    zero = user_id == "0"
    if zero:
        user_id = event.email
    user_ok = (
        user_id is not None
        and min_length <= len(user_id) <= MAX_STRING_CHARS
        and user_id.lower() not in INVALID_IDS
    )
    recipients: Any = data.get("recipients")
    first: dict[str, Any] | None = None
    device_id: Any = None
    if type(recipients) is list and recipients and type(recipients[0]) is dict:
        first = recipients[0]
        device_id = first.get("device_id")
    device_ok = (
        type(device_id) is str
        and min_length <= len(device_id) <= MAX_STRING_CHARS
        and device_id.lower() not in INVALID_IDS
    )
    if not user_ok and not device_ok:
        return _no_id(zero and user_id is None, user_id, device_id, min_length)

    payload: dict[str, Any] = {}
    if user_ok:
        payload["user_id"] = user_id
    if device_ok:
        payload["device_id"] = device_id
    if first is not None:
        raw_platform = first.get("device_platform")
        if type(raw_platform) is str and raw_platform:
            payload["platform"] = _PLATFORMS.get(raw_platform.lower(), raw_platform)
    naming = options.naming
    payload["event_type"] = event_type(channel, metric, naming.style, naming.prefix)
    payload["time"] = event.time_ms
    payload["insert_id"] = event.id
    if options.account_id is not None or options.workspace_id is not None:
        groups: dict[str, list[str]] = {}
        if options.account_id is not None:
            groups["account_id"] = [options.account_id]
        if options.workspace_id is not None:
            groups["workspace"] = [options.workspace_id]
        payload["groups"] = groups

    # event_properties: every other `data` field, flat; identifiers.email / .cio_id alongside.
    properties: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CONSUMED:
            continue
        kind = type(value)
        if kind is str:
            if len(value) > MAX_STRING_CHARS:
                value = value[:MAX_STRING_CHARS]
        elif kind is dict or kind is list:
            value = _clip(value)
        properties[key] = value
    identifiers = data.get("identifiers")
    if type(identifiers) is dict:
        email = identifiers.get("email")
        if email is not None and "email" not in properties:
            properties["email"] = _clip(email)
        cio_id = identifiers.get("cio_id")
        if cio_id is not None and "cio_id" not in properties:
            properties["cio_id"] = _clip(cio_id)
    if first is not None:
        failure = first.get("failure_message")
        if failure is not None and "failure_message" not in properties:
            properties["failure_message"] = _clip(failure)
        if len(recipients) > 1:  # the first is device_id/platform; keep them all, not just one
            properties["recipients"] = _clip(recipients)
    if options.body_content and metric in _CONTENT_METRICS:
        content = data.get("content")
        if content is not None:
            properties["content"] = _clip(content)
        headers = data.get("headers")
        if headers is not None and metric == "sent":
            properties["headers"] = _clip(headers)
    if machine is not None and (machine or (channel == "email" and metric in _FLAGGED) or _has_flag(data)):
        properties[MACHINE_PROPERTY] = machine
    payload["event_properties"] = properties
    return payload


def _has_flag(data: dict[str, Any]) -> bool:
    return any(flag in data for flag in _MACHINE_FLAGS)


_encode = msgspec.json.Encoder().encode


def envelope(options: AmplitudeOptions) -> tuple[bytes, bytes]:
    """The bytes around the comma-joined events of one HTTP V2 / Batch request (§2.1):
    `options.min_id_length` only when it is set. Delivery joins pre-encoded events between them."""
    head = _encode({"api_key": options.api_key.reveal()})[:-1] + b',"events":['
    tail = b"]"
    if options.min_id_length is not None:
        tail += b',"options":' + _encode({"min_id_length": options.min_id_length})
    return head, tail + b"}"


def request_body(payloads: list[dict[str, Any]], options: AmplitudeOptions) -> bytes:
    head, tail = envelope(options)
    return head + b",".join(_encode(p) for p in payloads) + tail
