"""Identity: which identifiers an event carries (pure rules), and the report of what breaks attribution.

The graph itself is kept in the store (store/identity.py) by a follower of the log
(pipeline/identity_graph.py): the identifiers seen together in one event are one person. This
module reads it: `report` (counts, match rates, examples) and `person` (one person's identifiers,
events and their delivery state), both sync, for the CLI and for the console (run in a thread).

Kinds of identifier (`KINDS`), each one bit of a person's `mask`:
- `user_id`: the event's user id (Customer.io `identifiers.id`, Amplitude `user_id`, Segment
  `userId`). Customer.io's id 0 is not an id: its native integration sends the email instead
  (customerio.md §3, seed 002).
- `email`: lower-cased (Customer.io matches emails case-insensitively, customerio.md §2.6).
- `cio_id`: Customer.io's `identifiers.cio_id` (customerio.md §1.3).
- `device_id`: Amplitude's `device_id` (amplitude.md §2.2), and Customer.io push recipients'
  `device_id` (customerio.md §1.5: the amplitude mapping sends it as the device id).
- `anonymous_id`: Segment's `anonymousId` (segment.md §2).
- `phone`: Segment/Amplitude traits `phone`, Customer.io sms/whatsapp `recipient`.
- `external_id`: the attribute named by `identity.primary` when it names neither `user_id` nor
  `email` (traits, user properties).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from loopwire.config import Config, DestinationOptions
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.customerio.options import USER_ID, CustomerioOptions
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.store import Store
from loopwire.store import identity as graph

KINDS = ("user_id", "email", "cio_id", "device_id", "anonymous_id", "phone", "external_id")
BIT = {kind: 1 << index for index, kind in enumerate(KINDS)}
ANONYMOUS = BIT["device_id"] | BIT["anonymous_id"]
ALL_MASKS = range(1, 1 << len(KINDS))
VALUE_MAX_CHARS = 1_000  # longer values are not identifiers (every vendor refuses them, §2.5 of each)
PROBLEMS = ("email_on_many_users", "user_with_many_emails", "without_primary", "untied_anonymous")

Ident = tuple[str, str]  # (kind, value)


# --- which identifiers an event carries (pure) -------------------------------------------------


class _Context(msgspec.Struct):
    traits: Any = None


class _Data(msgspec.Struct):
    identifiers: Any = None  # Customer.io
    recipients: Any = None  # Customer.io push
    recipient: Any = None  # Customer.io email / sms
    user_properties: Any = None  # Amplitude
    traits: Any = None  # Segment identify
    context: _Context | None = None  # Segment


class _Ids(msgspec.Struct):
    """Only what identifies someone: msgspec skips the rest of the stored event unread."""

    source: str
    channel: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    data: _Data | None = None


class _Loose(msgspec.Struct):
    source: str
    channel: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    data: Any = None


_ids_decoder = msgspec.json.Decoder(_Ids)
_loose_decoder = msgspec.json.Decoder(_Loose)


def _text(value: Any) -> str | None:
    if type(value) is int:
        value = str(value)
    if type(value) is not str:
        return None
    value = value.strip()
    return value if value and len(value) <= VALUE_MAX_CHARS else None


def normal_email(value: Any) -> str | None:
    text = _text(value)
    return text.lower() if text is not None and "@" in text else None


def normal_phone(value: Any) -> str | None:
    """`+1 (555) 867-5309` → `+15558675309`; formatting differs between tools, the number does not."""
    text = _text(value)
    if text is None:
        return None
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) < 5:
        return None
    return f"+{digits}" if text.startswith("+") else digits


def _get(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        return data.get(key)
    return getattr(data, key, None) if isinstance(data, _Data | _Context) else None


def _traits(source: str, data: Any) -> list[dict[str, Any]]:
    """The property maps of an event that describe the person."""
    found: list[dict[str, Any]] = []
    if source == "amplitude":
        props = _get(data, "user_properties")
        if isinstance(props, dict):
            found.append(props)
            for op in ("$set", "$setOnce"):  # amplitude.md §2.3
                if isinstance(props.get(op), dict):
                    found.append(props[op])
    elif source == "segment":
        traits = _get(data, "traits")
        if isinstance(traits, dict):
            found.append(traits)
        inner = _get(_get(data, "context"), "traits")
        if isinstance(inner, dict):
            found.append(inner)
    return found


def identifiers_of(body: bytes, external: str | None = None) -> list[Ident]:
    """The identifiers one stored event (encoded `Event`) carries, without repeats. `external`: the
    attribute holding the external id, if the primary identifier is one. loopwire's own events (the
    audience engine's) carry only ids it learned from others: they add nothing."""
    try:
        event: _Ids | _Loose = _ids_decoder.decode(body)
    except msgspec.ValidationError:  # a source payload of an unexpected shape: read it loosely
        try:
            event = _loose_decoder.decode(body)
        except msgspec.DecodeError:  # not an event loopwire wrote: it identifies no one
            return []
    except msgspec.DecodeError:
        return []
    source = event.source
    if source == "loopwire":
        return []
    found: list[Ident] = []
    user_id = _text(event.user_id)
    if user_id is not None and not (source == "customerio" and user_id == "0"):
        found.append(("user_id", user_id))
    email = normal_email(event.email)
    if email is not None:
        found.append(("email", email))
    anonymous = _text(event.anonymous_id)
    if anonymous is not None:
        found.append(("device_id" if source == "amplitude" else "anonymous_id", anonymous))
    data = event.data
    if source == "customerio":
        identifiers = _get(data, "identifiers")
        if isinstance(identifiers, dict):
            cio_id = _text(identifiers.get("cio_id"))
            if cio_id is not None:
                found.append(("cio_id", cio_id))
        recipient = _get(data, "recipient")
        if event.channel in ("sms", "whatsapp"):
            phone = normal_phone(recipient)
            if phone is not None:
                found.append(("phone", phone))
        elif event.channel == "email":
            address = normal_email(recipient)
            if address is not None:
                found.append(("email", address))
        recipients = _get(data, "recipients")
        if isinstance(recipients, list):
            for item in recipients:
                device = _text(item.get("device_id")) if isinstance(item, dict) else None
                if device is not None:
                    found.append(("device_id", device))
    else:
        for traits in _traits(source, data):
            address = normal_email(traits.get("email"))
            if address is not None:
                found.append(("email", address))
            phone = normal_phone(traits.get("phone"))
            if phone is not None:
                found.append(("phone", phone))
            if external is not None:
                value = _text(traits.get(external))
                if value is not None:
                    found.append(("external_id", value))
    return list(dict.fromkeys(found)) if len(found) > 1 else found


def external_attribute(config: Config) -> str | None:
    """The attribute holding the primary identifier, when it is an external id."""
    primary = config.identity.primary
    return None if primary in ("user_id", "email") else primary


def primary_kind(config: Config) -> str:
    primary = config.identity.primary
    return primary if primary in ("user_id", "email") else "external_id"


# --- what each destination needs -----------------------------------------------------------------


def needs(options: DestinationOptions, config: Config) -> int:
    """The identifier kinds of which a person must carry at least one for the destination to reach
    them, as a mask (docs/identity.md, "Match rate"):
    - amplitude: `user_id` or `device_id` (amplitude.md §2.2: one of them is required).
    - segment: `userId` or `anonymousId` (segment.md §2); a person with only an email is sent with the
      email as `anonymousId` (customerio.md §4), so an email counts too. With
      `route.hash_identifiers` (an ad platform downstream): an email or a phone, the only
      identifiers such platforms match on hashed.
    - customerio: `identifier: user_id` needs the user id; a user property may hold an id, an email
      or a `cio_` id (customerio.md §2.3), so any of those; the external id attribute if that is it.
    """
    if isinstance(options, AmplitudeOptions):
        return BIT["user_id"] | BIT["device_id"]
    if isinstance(options, SegmentOptions):
        if options.route.hash_identifiers:
            return BIT["email"] | BIT["phone"]
        return BIT["user_id"] | BIT["anonymous_id"] | BIT["email"]
    assert isinstance(options, CustomerioOptions)
    if options.identifier == USER_ID:
        return BIT["user_id"]
    if options.identifier == external_attribute(config):
        return BIT["external_id"]
    if options.identifier == "email":
        return BIT["email"]
    return BIT["user_id"] | BIT["email"] | BIT["cio_id"]


def lacks_primary(mask: int, primary: str) -> bool:
    """A known person (some identifier that is not a device or anonymous id) without the primary."""
    return bool(mask & ~ANONYMOUS) and not mask & BIT[primary]


def untied(mask: int) -> bool:
    """Device or anonymous ids never seen with anything that names a person."""
    return bool(mask) and not mask & ~ANONYMOUS


# --- the report ----------------------------------------------------------------------------------


class IdentityReport(msgspec.Struct, frozen=True):
    primary: str  # user_id, email or the external id attribute
    people: int  # connected components of the graph
    email_on_many_users: int  # emails seen with two or more user ids
    user_with_many_emails: int  # user ids seen with two or more emails
    without_primary: int  # known people who carry no primary identifier
    untied_anonymous: int  # people who are only device / anonymous ids
    match_rates: dict[str, float]  # destination → share of people it can reach (0..1)
    matched: dict[str, int]  # destination → people it can reach
    examples: dict[str, list[list[str]]]  # problem → a few groups of "kind:value"
    lag_events: int  # log rows not yet folded into the graph
    identifiers: dict[str, int]  # kind → distinct values in the graph
    enabled: bool = True  # identity.graph: false → nothing is kept


def rates(tally: graph.Tally, config: Config) -> tuple[dict[str, int], dict[str, float]]:
    matched = {
        name: sum(n for mask, n in tally.masks.items() if mask & needs(options, config))
        for name, options in config.destinations.items()
    }
    people = tally.people
    return matched, {name: (count / people if people else 0.0) for name, count in matched.items()}


def problems(tally: graph.Tally, primary: str) -> dict[str, int]:
    return {
        "email_on_many_users": tally.split_emails,
        "user_with_many_emails": tally.split_users,
        "without_primary": sum(n for mask, n in tally.masks.items() if lacks_primary(mask, primary)),
        "untied_anonymous": sum(n for mask, n in tally.masks.items() if untied(mask)),
    }


def _label(idents: Iterable[Ident]) -> list[str]:
    return [f"{kind}:{value}" for kind, value in idents]


def report(store: Store, config: Config, examples: int = 20) -> IdentityReport:
    """Counts come from the graph's own tallies (a few rows, whatever the size of the log);
    examples are read through indexes, `examples` of each kind at most."""
    primary = primary_kind(config)
    tally = graph.tally(store)
    found = problems(tally, primary)
    matched, match_rates = rates(tally, config)
    lacking = [m for m in ALL_MASKS if lacks_primary(m, primary)]
    anonymous = [m for m in ALL_MASKS if untied(m)]
    groups = {
        "email_on_many_users": graph.split_examples(store, "email", examples),
        "user_with_many_emails": graph.split_examples(store, "user_id", examples),
        "without_primary": graph.people_with_masks(store, lacking, examples),
        "untied_anonymous": graph.people_with_masks(store, anonymous, examples),
    }
    return IdentityReport(
        primary=config.identity.primary,
        people=tally.people,
        email_on_many_users=found["email_on_many_users"],
        user_with_many_emails=found["user_with_many_emails"],
        without_primary=found["without_primary"],
        untied_anonymous=found["untied_anonymous"],
        match_rates=match_rates,
        matched=matched,
        examples={name: [_label(group) for group in rows] for name, rows in groups.items()},
        lag_events=max(0, store.last_seq() - tally.cursor),
        identifiers=tally.identifiers,
        enabled=config.identity.graph,
    )


# --- one person ----------------------------------------------------------------------------------


class DeliveryState(msgspec.Struct, frozen=True):
    state: str  # pending | in_flight | delivered | skipped | dead
    attempts: int
    updated_ms: int
    reason: str | None = None  # the skip reason, the last error, or why it is dead
    response: str | None = None  # the destination's last answer, as kept with a dead letter
    delivered_ms: int | None = None  # when the destination accepted it


class PersonEvent(msgspec.Struct, frozen=True):
    seq: int
    time_ms: int
    source: str
    key: str  # "email.clicked" for Customer.io engagement, else the event name (or kind)
    event_id: str
    deliveries: dict[str, DeliveryState]


class Person(msgspec.Struct, frozen=True):
    key: str
    identifiers: dict[str, list[str]]  # kind → values in the person's connected component
    events: list[PersonEvent]  # newest first
    in_graph: bool = True  # False: found only by user id in the log (the graph lags or is off)


def lookup_candidates(key: str) -> list[Ident]:
    """What a key typed by an operator may be: an email (case-insensitive), a `cio_`-prefixed cio_id
    (the Track API's notation, customerio.md §2.1), or an id of any other kind."""
    text = key.strip()
    if "@" in text:
        return [("email", text.lower())]
    found = [(kind, text) for kind in KINDS if kind != "email"]
    if text.startswith("cio_") and len(text) > 4:
        found.insert(0, ("cio_id", text[4:]))
    phone = normal_phone(text)
    if phone is not None and phone != text:
        found.append(("phone", phone))
    return found


def person(store: Store, config: Config, key: str, limit: int = 200) -> Person | None:
    candidates = lookup_candidates(key)
    if not candidates:
        return None
    idents = graph.component(store, candidates)
    in_graph = bool(idents)
    if not idents:
        if not graph.user_has_events(store, key.strip()):
            return None
        idents = [("user_id", key.strip())]
    identifiers: dict[str, list[str]] = {}
    for kind, value in idents:
        identifiers.setdefault(kind, []).append(value)
    rows = graph.person_events(store, idents, limit)
    outbox = graph.deliveries(store, [row.seq for row in rows], list(config.destinations))
    events = [
        PersonEvent(
            seq=row.seq,
            time_ms=row.time_ms,
            source=row.source,
            key=row.key,
            event_id=row.event_id,
            deliveries={
                dest: DeliveryState(
                    state=d.state,
                    attempts=d.attempts,
                    updated_ms=d.updated_ms,
                    reason=d.reason,
                    response=d.response,
                    delivered_ms=d.updated_ms if d.state == "delivered" else None,
                )
                for dest, d in outbox.get(row.seq, {}).items()
            },
        )
        for row in rows
    ]
    return Person(
        key=key, identifiers={k: sorted(v) for k, v in identifiers.items()}, events=events, in_graph=in_graph
    )
