"""Amplitude (or Segment) `Event` → Customer.io Track API v2 person operations, as Amplitude's
Customer.io event stream promises (seed 003); loopwire's own audience and holdout events → person
attributes and events. Pure: options, clock and what was last sent to the person come in as
arguments. Every rule and every choice the seed leaves open is written up in
docs/mapping-customerio.md.

One event becomes one payload `{"ops": [...], "remember": {...}}`: up to two operations (the event,
and an identify when a selected user property changed) and what the destination should remember
once Customer.io has accepted them. The destination joins the operations of many payloads into one
`/api/v2/batch` request.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, NamedTuple

import msgspec
from ulid import ULID

from loopwire.destinations.base import Invalid, Skip
from loopwire.destinations.customerio import api
from loopwire.destinations.customerio.options import USER_ID, CustomerioOptions
from loopwire.destinations.routing import matches_events
from loopwire.model import Event

_encode = msgspec.json.Encoder().encode
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
CIO_PREFIX = "cio_"

# Kinds that carry no person event and no user update Customer.io can take.
_UNSUPPORTED = {
    "groupidentify": "Amplitude group identifies are not streamed to Customer.io (no person to update)",
    "group": "Segment group calls are not streamed to Customer.io (no person to update)",
    "alias": "Segment alias calls are not streamed to Customer.io",
}
# Where a page or screen view keeps what Customer.io wants as its `name` (customerio.md §2.2: the URL
# of a page, the name of a screen), first match wins; the event name is the last resort.
_AMPLITUDE_PAGE_KEYS = (
    "[Amplitude] Page URL",
    "[Amplitude] Page Location",
    "[Amplitude] Page Path",
    "url",
    "path",
)
_AMPLITUDE_SCREEN_KEYS = ("[Amplitude] Screen Name", "screen_name", "name")
_SEGMENT_PAGE_KEYS = ("url", "path")

SKIP_ANONYMOUS = "events without a user are never sent: no Customer.io identifier (seed 003)"
SKIP_NO_CIO_ID = "the Customer.io User Identifier is `cio_` with no cio_id after the prefix (seed 003)"
SKIP_NO_OWN_TRAITS = "loopwire identify without traits: no attribute to set"
SKIP_OWN_UNCHANGED = "none of loopwire's attributes changed since they were last sent"
SKIP_TOO_LONG = (
    f"the Customer.io User Identifier is over {api.IDENTIFIER_MAX_BYTES} bytes, the limit Customer.io "
    "sets on identifiers (seed 003)"
)


def skip_unknown_identifier(prop: str) -> str:
    return (
        f"no Customer.io identifier known yet for this user: loopwire's own events are addressed by the "
        f"`{prop}` learned from the user's Amplitude or Segment events, and none has been seen (seed 003)"
    )


class Known(NamedTuple):
    """What the destination remembers, recalled before mapping (see `memory_keys`)."""

    identifier: str | None = None  # the identifier value last seen for this Amplitude user or device
    sent: dict[str, str] | None = None  # selected user properties as last sent to this person
    # `identifier` was seen in an event mapped moments ago but is not yet stored: an event that sets
    # it again carries it to the store.
    unsaved: bool = False


class Person(NamedTuple):
    identifiers: dict[str, str]  # exactly one of id, email, cio_id (customerio.md §2.3)
    key: str  # memory key of what was sent to this person


class Updates(NamedTuple):
    """User-property changes an event carries, in Amplitude's terms (`$set`, `$setOnce`, `$unset`)."""

    set: dict[str, Any]
    set_once: dict[str, Any]
    unset: frozenset[str]


_NO_UPDATES = Updates({}, {}, frozenset())


# --- reading the event -------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


LOOPWIRE = "loopwire"  # the source of loopwire's own events (audience and holdout engine)
# Segment-spec messages: the Segment input's, and loopwire's own (audience and holdout events).
SEGMENT_SHAPED = frozenset({"segment", LOOPWIRE})


def user_updates(event: Event) -> Updates:
    """Amplitude: `user_properties`, plain (= `$set`) or operations. Segment: `traits` of an identify,
    `context.traits` of any other call (the user's traits as the SDK knows them).

    loopwire's own events carry none: their traits are loopwire's attributes, not the app user's
    properties, so `user_properties` does not select them and they never set the identifier (see
    `own_traits`)."""
    data = event.data
    if event.source == LOOPWIRE:
        return _NO_UPDATES
    if event.source in SEGMENT_SHAPED:
        traits = data.get("traits") if event.kind == "identify" else _dict(data.get("context")).get("traits")
        return Updates(_dict(traits), {}, frozenset()) if type(traits) is dict and traits else _NO_UPDATES
    props = data.get("user_properties")
    if type(props) is not dict or not props:
        return _NO_UPDATES
    if not any(type(k) is str and k.startswith("$") for k in props):
        return Updates(props, {}, frozenset())
    # amplitude.md §2.3. The other operations ($add, $append, $prepend, $preInsert, $postInsert,
    # $remove, $clearAll) compute values from state loopwire cannot see: they are not forwarded.
    unset = _dict(props.get("$unset"))
    return Updates(_dict(props.get("$set")), _dict(props.get("$setOnce")), frozenset(unset))


def own_traits(event: Event) -> dict[str, Any]:
    """The traits of a loopwire identify (audience membership, holdout group, lifecycle state): every
    one of them is a Customer.io attribute, sent when it changed."""
    if event.source != LOOPWIRE or event.kind != "identify":
        return {}
    return _dict(event.data.get("traits"))


def recalls_sent(event: Event, options: CustomerioOptions) -> bool:
    """Does mapping this event need what was last sent to the person (`Known.sent`)?"""
    return options.send_users or bool(own_traits(event))


def event_properties(event: Event) -> dict[str, Any]:
    key = "properties" if event.source in SEGMENT_SHAPED else "event_properties"
    return _dict(event.data.get(key))


def action_of(event: Event, options: CustomerioOptions) -> Literal["event", "page", "screen"]:
    if event.kind == "page":  # Segment page call
        return "page"
    if event.kind == "screen":  # Segment screen call
        return "screen"
    if event.name is not None:
        if event.name in options.page_events:
            return "page"
        if event.name in options.screen_events:
            return "screen"
    return "event"


def _first_text(*sources: tuple[dict[str, Any], tuple[str, ...]]) -> str | None:
    for values, keys in sources:
        for key in keys:
            value = values.get(key)
            if type(value) is str and value.strip():
                return value
    return None


def op_name(event: Event, action: str) -> str | None:
    """Event name; a page view's URL, a screen view's screen name (customerio.md §2.2)."""
    props = event_properties(event)
    found: str | None = None
    if action == "page":
        if event.source in SEGMENT_SHAPED:
            page = _dict(_dict(event.data.get("context")).get("page"))
            found = _first_text((props, _SEGMENT_PAGE_KEYS), (page, _SEGMENT_PAGE_KEYS))
        else:
            found = _first_text((props, _AMPLITUDE_PAGE_KEYS))
    elif action == "screen":
        if event.source in SEGMENT_SHAPED:
            found = event.name or _first_text((props, ("name",)))
        else:
            found = _first_text((props, _AMPLITUDE_SCREEN_KEYS))
    name = found or event.name
    return name if name and name.strip() else None


# --- identifier (seed 003, customerio.md §2.3–§2.4) ---------------------------------------------


def _as_text(value: Any) -> str | None:
    """Amplitude's streams send user properties as strings (amplitude.md §7); arrays and objects
    can't be forwarded, and null is no value."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return _encode(value).decode()
    return None


def memory_keys(event: Event) -> tuple[str, ...]:
    """Keys under which the identifier of this Amplitude user (then device) is remembered."""
    keys: list[str] = []
    if event.user_id:
        keys.append(f"user:{event.user_id}")
    if event.anonymous_id:
        keys.append(f"device:{event.anonymous_id}")
    return tuple(keys)


def identifier_value(event: Event, options: CustomerioOptions, known: str | None) -> tuple[str | None, bool]:
    """(the identifier value, whether this event itself set it)."""
    if options.identifier == USER_ID:
        return event.user_id, False
    if event.source == LOOPWIRE:  # loopwire's traits never name the person: what was learned does
        return known, False
    prop = options.identifier
    updates = user_updates(event)
    if prop in updates.set:
        return _as_text(updates.set[prop]), True
    if prop in updates.set_once and known is None:
        return _as_text(updates.set_once[prop]), True
    return known, False


def person(value: str | None) -> Person | Skip:
    """email → `{"email"}` (matched case-insensitively), `cio_` prefix → `{"cio_id"}` without it,
    anything else → `{"id"}`; over 150 bytes or nothing → Skip (seed 003)."""
    if value is None or not value.strip():
        return Skip(SKIP_ANONYMOUS, "no_identifier")
    if api.byte_len(value) > api.IDENTIFIER_MAX_BYTES:
        return Skip(SKIP_TOO_LONG, "identifier_too_long")
    if _EMAIL.fullmatch(value):
        return Person({"email": value}, f"person:email:{value.lower()}")
    if value.startswith(CIO_PREFIX):
        cio_id = value[len(CIO_PREFIX) :]
        if not cio_id.strip():
            return Skip(SKIP_NO_CIO_ID, "no_identifier")
        return Person({"cio_id": cio_id}, f"person:cio_id:{cio_id}")
    return Person({"id": value}, f"person:id:{value}")


def person_for(event: Event, options: CustomerioOptions, known_identifier: str | None) -> Person | Skip:
    return person(identifier_value(event, options, known_identifier)[0])


# --- ids and limits ------------------------------------------------------------------------------


def event_ulid(event: Event) -> str:
    """A ULID from the event's time (ms) and a hash of its stable id, so a redelivery carries the same
    `id` and Customer.io drops the duplicate (customerio.md §2.4)."""
    ms = min(max(event.time_ms, 0), (1 << 48) - 1)
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + hashlib.sha256(event.id.encode()).digest()[:10]))


# --- the mapping ---------------------------------------------------------------------------------


def _selected_events(event: Event, options: CustomerioOptions) -> bool:
    patterns = options.route.events
    return patterns is None or matches_events(patterns, event)


def _event_attributes(event: Event, options: CustomerioOptions, updates: Updates) -> dict[str, Any]:
    """Only the selected properties (seed 003): user properties as strings, event properties as the
    JSON scalars they are; arrays, objects and nulls are left out (amplitude.md §7). An event property
    wins over a user property of the same name. loopwire's own events send every property as it is:
    the selection and amplitude.md §7 are about Amplitude's stream, not loopwire's events."""
    if event.source == LOOPWIRE:
        return dict(event_properties(event))
    attributes: dict[str, Any] = {}
    for name in options.user_properties:
        text = _as_text(updates.set.get(name, updates.set_once.get(name)))
        if text is not None:
            attributes[name] = text
    props = event_properties(event)
    for name in options.event_properties:
        value = props.get(name)
        if type(value) in (str, int, float, bool):
            attributes[name] = value
    return attributes


def _changes(options: CustomerioOptions, updates: Updates, sent: dict[str, str]) -> dict[str, str | None]:
    """Selected user properties whose value differs from what was last sent (None: unset, forget it)."""
    changes: dict[str, str | None] = {}
    for name in options.user_properties:
        if name in updates.set:
            text = _as_text(updates.set[name])
        elif name in updates.set_once and name not in sent:
            text = _as_text(updates.set_once[name])  # $setOnce: only what loopwire never sent
        elif name in updates.unset and name in sent:
            changes[name] = None
            continue
        else:
            continue
        if text is not None and sent.get(name) != text:
            changes[name] = text
    return changes


def _own_changes(
    traits: dict[str, Any], sent: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str | None]]:
    """loopwire's traits that differ from what was last sent: (the attributes to send, with their JSON
    types; what to remember, as text, None for a null trait: forget it, nothing is sent)."""
    attributes: dict[str, Any] = {}
    changes: dict[str, str | None] = {}
    for name, value in traits.items():
        if value is None:
            if name in sent:
                changes[name] = None
            continue
        text = value if type(value) is str else _encode(value).decode()
        if sent.get(name) != text:
            attributes[name] = value
            changes[name] = text
    return attributes, changes


def wants(event: Event, options: CustomerioOptions) -> Skip | None:
    """Would this event produce anything, whoever its user is? A Skip saying why not, else None."""
    if event.kind in _UNSUPPORTED:
        return Skip(_UNSUPPORTED[event.kind], "unsupported")
    if event.source == LOOPWIRE and event.kind == "identify":
        # loopwire's own attributes go whatever `send_users` says: that is about the app's user properties
        return None if own_traits(event) else Skip(SKIP_NO_OWN_TRAITS, "nothing_to_send")
    updates = user_updates(event)
    learns = options.identifier != USER_ID and (
        options.identifier in updates.set or options.identifier in updates.set_once
    )
    touches = any(
        n in updates.set or n in updates.set_once or n in updates.unset for n in options.user_properties
    )
    if event.kind == "identify":
        if learns or (options.send_users and touches):
            return None
        if not options.send_users:
            return Skip("user updates are not sent: `send_users` is off")
        return Skip("no selected user property in this update (`user_properties`)", "nothing_to_send")
    if options.send_events and _selected_events(event, options):
        return None
    if learns or (options.send_users and touches):
        return None
    if not options.send_events:
        return Skip("events are not sent: `send_events` is off")
    return Skip("event not selected in `route.events`")


def _nothing_to_send(event: Event, options: CustomerioOptions) -> Skip:
    if own_traits(event):
        return Skip(SKIP_OWN_UNCHANGED, "nothing_to_send")
    if options.send_users:
        return Skip("no selected user property changed since it was last sent", "nothing_to_send")
    if event.kind == "identify":
        return Skip("user updates are not sent: `send_users` is off")
    if not options.send_events:
        return Skip("events are not sent: `send_events` is off")
    return Skip("event not selected in `route.events`")


def map_event(
    event: Event, options: CustomerioOptions, now_ms: int, known: Known = Known()
) -> dict[str, Any] | Skip | Invalid:
    """One Amplitude, Segment or loopwire `Event` → `{"ops": [...], "remember": {...}}`, a Skip, or
    Invalid.

    `known` is what the destination recalled for this event (`memory_keys`, then `Person.key`); the
    mapping reads no memory itself. `now_ms` is the injected clock; the event's own time is used.
    """
    unwanted = wants(event, options)
    if unwanted is not None:
        return unwanted
    updates = user_updates(event)
    value, learned = identifier_value(event, options, known.identifier)
    who = person(value)
    if isinstance(who, Skip):
        if value is None and event.source == LOOPWIRE and event.user_id and options.identifier != USER_ID:
            return Skip(skip_unknown_identifier(options.identifier), "no_identifier")
        return who
    ops: list[dict[str, Any]] = []
    remember: dict[str, dict[str, Any]] = {}
    if learned and (value != known.identifier or known.unsaved):
        for key in memory_keys(event):
            remember[key] = {"identifier": value}

    timestamp = event.time_ms // 1000  # unix seconds (customerio.md §2.4)
    if event.kind != "identify" and options.send_events and _selected_events(event, options):
        action = action_of(event, options)
        name = op_name(event, action)
        if name is None:
            return Invalid("the event has no name; Customer.io requires one (customerio.md §2.2)")
        op = {
            "type": "person",
            "action": action,
            "identifiers": who.identifiers,
            "name": name,
            "id": event_ulid(event),
            "timestamp": timestamp,
            "attributes": _event_attributes(event, options, updates),
        }
        problem = api.event_op_problem(op, len(_encode(op)))
        if problem is not None:
            return Invalid(problem)
        ops.append(op)

    if options.send_users:
        changes = _changes(options, updates, known.sent or {})
        attributes = {k: v for k, v in changes.items() if v is not None}
        if attributes:
            op = {
                "type": "person",
                "action": "identify",
                "identifiers": who.identifiers,
                "timestamp": timestamp,
                "attributes": attributes,
            }
            problem = api.identify_op_problem(op, len(_encode(op)))
            if problem is not None:
                return Invalid(problem)
            ops.append(op)
        if changes:
            remember[who.key] = {"sent": changes}

    traits = own_traits(event)
    if traits:
        attributes, changes = _own_changes(traits, known.sent or {})
        if attributes:
            op = {
                "type": "person",
                "action": "identify",
                "identifiers": who.identifiers,
                "timestamp": timestamp,
                "attributes": attributes,
            }
            problem = api.identify_op_problem(op, len(_encode(op)))
            if problem is not None:
                return Invalid(problem)
            ops.append(op)
        if changes:
            remember[who.key] = {"sent": changes}

    if not ops and not remember:
        return _nothing_to_send(event, options)
    payload: dict[str, Any] = {"ops": ops}
    if remember:
        payload["remember"] = remember
    return payload


def encode_ops(payload: dict[str, Any]) -> bytes:
    """The payload's operations, comma-joined, ready to sit between `{"batch":[` and `]}`."""
    return b",".join(_encode(op) for op in payload["ops"])


def request_body(payloads: list[dict[str, Any]]) -> bytes:
    parts = [p for p in (encode_ops(payload) for payload in payloads) if p]
    return api.BATCH_HEAD + b",".join(parts) + api.BATCH_TAIL
