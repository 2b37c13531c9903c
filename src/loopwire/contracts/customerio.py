"""Customer.io's Track API contract as pure functions: identifiers, limits, request bodies (v1 and
v2 operations) and the documented answer bodies (customerio.md §2). No I/O and no clock; the
sandbox in `customerio` keeps the people, events and the state-dependent rules."""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

import msgspec

# Limits (customerio.md §2.3, §2.5). "KB" is read as decimal, the stricter reading, so a client that
# passes here passes Customer.io whichever one they mean.
IDENTIFIER_MAX_BYTES = 150
ATTRIBUTE_NAME_MAX_BYTES = 150
ATTRIBUTE_VALUE_MAX_BYTES = 1_000
ATTRIBUTES_MAX = 300  # unique attributes per identify call and per person
EVENT_NAME_MAX_BYTES = 100
EVENT_DATA_MAX_BYTES = 100_000
ENTITY_MAX_BYTES = 32_000  # /api/v2/entity request
BATCH_MAX_BYTES = 500_000  # /api/v2/batch request
BATCH_OP_MAX_BYTES = 32_000  # each operation of a batch
V1_MAX_BYTES = 1_000_000  # no documented v1 limit: a memory guard above any valid body, not a rule
RATE_LIMIT = 1_000  # requests per second, current spec (§2.5)
ANONYMOUS_MERGE_SECONDS = 30 * 86_400  # anonymous events older than this aren't merged (§2.4)
TIMESTAMP_MAX = 10_000_000_000  # unix seconds; a larger value is milliseconds sent by mistake

Kind = Literal["id", "email", "cio_id"]
EventType = Literal["event", "page", "screen"]
EVENT_TYPES: frozenset[str] = frozenset({"event", "page", "screen"})
PLATFORMS = frozenset({"ios", "android"})
PERSON_ACTIONS = frozenset(
    {
        "identify",
        "delete",
        "event",
        "screen",
        "page",
        "add_relationships",
        "delete_relationships",
        "add_device",
        "delete_device",
        "merge",
        "suppress",
        "unsuppress",
    }
)
OBJECT_ACTIONS = frozenset({"identify", "delete", "add_relationships", "delete_relationships"})
DELIVERY_METRICS = frozenset({"opened", "converted", "delivered"})
# Body keys of a v1 identify that steer the call rather than set attributes (§2.4).
CONTROL_KEYS = frozenset({"_update", "_timestamp", "cio_relationships"})
SUBSCRIPTION_PREFERENCES = "cio_subscription_preferences"

_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)  # Crockford base32, ≤ 2^128
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_encoder = msgspec.json.Encoder()


class Problem(NamedTuple):
    """One validation failure; `reason` is "invalid" or "required" (only "invalid" appears in the
    reference's 207 example, §2.3)."""

    field: str
    reason: str
    message: str


class Who(NamedTuple):
    """How a request addresses a person; `cio_id` values are stored without the `cio_` prefix."""

    kind: Kind
    value: str


class Identify(NamedTuple):
    who: Who
    id: str | None  # body `id` / `attributes.id`
    email: str | None
    attributes: dict[str, Any]  # everything else, `unsubscribed` already normalised
    created_at: int | None
    anonymous_id: str | None
    update_only: bool  # `_update: true`
    timestamp: int | None  # `_timestamp` (v1) / `timestamp` (v2)


class Track(NamedTuple):
    who: Who | None  # None: anonymous (POST /api/v1/events)
    anonymous_id: str | None
    name: str
    type: EventType
    id: str | None  # a ULID, upper-cased for dedupe
    timestamp: int | None
    data: dict[str, Any]


class Delete(NamedTuple):
    who: Who


class AddDevice(NamedTuple):
    who: Who
    device: dict[str, Any]  # {"id", "platform", "last_used", "attributes"}


class DeleteDevice(NamedTuple):
    who: Who
    device_id: str


class Suppress(NamedTuple):
    who: Who
    suppress: bool  # False: unsuppress


class Unmodelled(NamedTuple):
    """A documented, valid operation the sandbox accepts without modelling (objects, deliveries,
    relationships, merges)."""

    what: str


Op = Identify | Track | Delete | AddDevice | DeleteDevice | Suppress | Unmodelled


# ---- documented answer bodies (§2.6) ---------------------------------------------------------------


def v1_error(*messages: str) -> dict[str, Any]:
    return {"meta": {"errors": list(messages)}}


def v1_problems(problems: list[Problem]) -> dict[str, Any]:
    """v1 errors are strings: the field leads the message unless the message already starts with it."""
    return v1_error(*(_v1_text(p) for p in problems))


def _v1_text(problem: Problem) -> str:
    if not problem.field or problem.message.startswith(problem.field + " "):
        return problem.message
    return f"{problem.field}: {problem.message}"


def v2_error(problems: list[Problem]) -> dict[str, Any]:
    return {"errors": [{"reason": p.reason, "field": p.field, "message": p.message} for p in problems]}


def v2_partial(failed: list[tuple[int, Problem]]) -> dict[str, Any]:
    return {
        "errors": [
            {"batch_index": i, "reason": p.reason, "field": p.field, "message": p.message} for i, p in failed
        ]
    }


# ---- small checks --------------------------------------------------------------------------------


def byte_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def value_bytes(value: Any) -> int:
    """A string counts its UTF-8 bytes; anything else its compact JSON text."""
    return byte_len(value) if type(value) is str else len(_encoder.encode(value))


def is_ulid(value: str) -> bool:
    return _ULID.fullmatch(value) is not None


def is_json_media(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def unsubscribed(value: Any) -> bool:
    """§2.4: `true`, any-case "true", 1 and "1" unsubscribe; anything else subscribes."""
    if type(value) is bool:
        return value
    if type(value) is int:
        return value == 1
    return type(value) is str and value.lower() in ("true", "1")


def _timestamp(value: Any, field: str) -> int | Problem:
    if type(value) is not int or not 0 <= value < TIMESTAMP_MAX:
        return Problem(field, "invalid", "must be a unix timestamp in whole seconds")
    return value


def _identifier_problem(value: str, field: str) -> Problem | None:
    if not value:
        return Problem(field, "required", "identifier cannot be empty")
    if byte_len(value) > IDENTIFIER_MAX_BYTES:
        return Problem(field, "invalid", f"identifier cannot be longer than {IDENTIFIER_MAX_BYTES} bytes")
    return None


def who_from_path(identifier: str) -> Who | Problem:
    """v1 path identifier (already URL-decoded, §2.4): `cio_` prefix → cio_id, email-shaped → email,
    anything else (a phone number too) → id. The exact shape rule is unconfirmed."""
    problem = _identifier_problem(identifier, "identifier")
    if problem is not None:
        return problem
    if identifier.startswith("cio_"):
        if len(identifier) == 4:
            return Problem("identifier", "invalid", "cio_ must be followed by a cio_id")
        return Who("cio_id", identifier[4:])
    if _EMAIL.fullmatch(identifier):
        return Who("email", identifier)
    return Who("id", identifier)


def who_from_identifiers(identifiers: Any, field: str = "identifiers") -> Who | Problem:
    """v2 `identifiers`: exactly one of id, email, cio_id (§2.3). `phone` needs a workspace setting
    the sandbox doesn't have, so it is refused."""
    if type(identifiers) is not dict or not identifiers:
        return Problem(field, "required", "identifiers must be an object with one of id, email, cio_id")
    if "phone" in identifiers:
        return Problem(f"{field}.phone", "invalid", "phone identifiers are not enabled in this workspace")
    if len(identifiers) != 1:
        return Problem(field, "invalid", "identifiers must have exactly one of id, email, cio_id")
    kind, value = next(iter(identifiers.items()))
    if kind not in ("id", "email", "cio_id"):
        return Problem(f"{field}.{kind}", "invalid", "identifiers must have exactly one of id, email, cio_id")
    if type(value) is not str:
        return Problem(f"{field}.{kind}", "invalid", "identifier must be a string")
    problem = _identifier_problem(value, f"{field}.{kind}")
    return problem or Who(kind, value)


def _object(value: Any, field: str, problems: list[Problem]) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        problems.append(Problem(field, "invalid", "must be an object"))
        return {}
    return value


# ---- identify (§2.2, §2.4, §2.5) ---------------------------------------------------------------------


def _check_attributes(attributes: dict[str, Any], prefix: str, problems: list[Problem]) -> None:
    counted = [k for k in attributes if k not in CONTROL_KEYS]
    if len(counted) > ATTRIBUTES_MAX:
        problems.append(
            Problem(
                prefix.rstrip(".") or "attributes",
                "invalid",
                f"cannot set more than {ATTRIBUTES_MAX} attributes in one call",
            )
        )
    for name in counted:
        value = attributes[name]
        field = f"{prefix}{name}"
        if byte_len(name) > ATTRIBUTE_NAME_MAX_BYTES:
            problems.append(
                Problem(
                    field, "invalid", f"property name cannot be longer than {ATTRIBUTE_NAME_MAX_BYTES} bytes"
                )
            )
        # The preferences object is a structure, not a scalar attribute value.
        if not name.startswith(SUBSCRIPTION_PREFERENCES) and value_bytes(value) > ATTRIBUTE_VALUE_MAX_BYTES:
            # The message is the one in the reference's 207 example (§2.5).
            problems.append(
                Problem(
                    field,
                    "invalid",
                    f"property value cannot be longer than {ATTRIBUTE_VALUE_MAX_BYTES} bytes",
                )
            )


def check_identify(
    who: Who, attributes: dict[str, Any], prefix: str, timestamp: Any
) -> Identify | list[Problem]:
    """`attributes` is the v1 body or the v2 `attributes` object; `prefix` names its fields in errors."""
    problems: list[Problem] = []
    _check_attributes(attributes, prefix, problems)
    rest = {k: v for k, v in attributes.items() if k not in CONTROL_KEYS}
    ids: dict[str, str | None] = {}
    for key in ("id", "email", "anonymous_id"):
        value = rest.pop(key, None)
        if value is not None and type(value) is not str:
            problems.append(Problem(f"{prefix}{key}", "invalid", "must be a string"))
            value = None
        ids[key] = value or None
    if ids["id"] is not None:
        problem = _identifier_problem(ids["id"], f"{prefix}id")
        if problem:
            problems.append(problem)
    created_at: int | None = None
    if "created_at" in rest:
        checked = _timestamp(rest.pop("created_at"), f"{prefix}created_at")
        if isinstance(checked, Problem):
            problems.append(checked)
        else:
            created_at = checked
    update = attributes.get("_update", False)
    if type(update) is not bool:
        problems.append(Problem(f"{prefix}_update", "invalid", "must be a boolean"))
    order: int | None = None
    if timestamp is not None:
        checked_ts = _timestamp(timestamp, "timestamp" if prefix else "_timestamp")
        if isinstance(checked_ts, Problem):
            problems.append(checked_ts)
        else:
            order = checked_ts
    relationships = attributes.get("cio_relationships")
    if relationships is not None and type(relationships) not in (dict, list):
        problems.append(Problem(f"{prefix}cio_relationships", "invalid", "must be an object or a list"))
    preferences = rest.get(SUBSCRIPTION_PREFERENCES)
    if preferences is not None and type(preferences) is not dict:
        problems.append(Problem(f"{prefix}{SUBSCRIPTION_PREFERENCES}", "invalid", "must be an object"))
    if problems:
        return problems
    if "unsubscribed" in rest:
        rest["unsubscribed"] = unsubscribed(rest["unsubscribed"])
    return Identify(
        who, ids["id"], ids["email"], rest, created_at, ids["anonymous_id"], update is True, order
    )


def check_v1_identify(who: Who, body: dict[str, Any]) -> Identify | list[Problem]:
    return check_identify(who, body, "", body.get("_timestamp"))


# ---- events (§2.2, §2.3, §2.4, §2.5) -----------------------------------------------------------------


def check_event(
    who: Who | None, body: dict[str, Any], data_key: str, kind: Any = None
) -> Track | list[Problem]:
    """v1 bodies carry `type` and `data`; v2 operations carry the type as `action` (given as `kind`)
    and the data as `attributes`."""
    problems: list[Problem] = []
    name = body.get("name")
    if name is None or (type(name) is str and not name.strip()):
        problems.append(Problem("name", "required", "name is required"))
        name = ""
    elif type(name) is not str:
        problems.append(Problem("name", "invalid", "name must be a string"))
        name = ""
    else:
        name = name.strip()  # §2.4: leading/trailing spaces are trimmed
        if byte_len(name) > EVENT_NAME_MAX_BYTES:
            problems.append(
                Problem("name", "invalid", f"event name cannot be longer than {EVENT_NAME_MAX_BYTES} bytes")
            )
    event_type = body.get("type", "event") if kind is None else kind
    if event_type is None:
        event_type = "event"
    if event_type not in EVENT_TYPES:
        problems.append(Problem("type", "invalid", "type must be one of event, page, screen"))
    event_id = body.get("id")
    if event_id is not None:
        # A non-ULID id is refused (unconfirmed in the reference, §2.4): the sandbox is strict so that
        # a client sending anything else learns it here.
        if type(event_id) is not str or not is_ulid(event_id):
            problems.append(Problem("id", "invalid", "id must be a ULID"))
            event_id = None
        else:
            event_id = event_id.upper()
    moment: int | None = None
    if body.get("timestamp") is not None:
        checked = _timestamp(body["timestamp"], "timestamp")
        if isinstance(checked, Problem):
            problems.append(checked)
        else:
            moment = checked
    data = _object(body.get(data_key), data_key, problems)
    if data and len(_encoder.encode(data)) > EVENT_DATA_MAX_BYTES:
        problems.append(
            Problem(data_key, "invalid", f"event data cannot be larger than {EVENT_DATA_MAX_BYTES} bytes")
        )
    anonymous_id = body.get("anonymous_id")
    if anonymous_id is not None and (type(anonymous_id) is not str or not anonymous_id):
        problems.append(Problem("anonymous_id", "invalid", "anonymous_id must be a non-empty string"))
    if problems:
        return problems
    return Track(who, anonymous_id, name, event_type, event_id, moment, data)


# ---- devices (§2.2, §2.3) ----------------------------------------------------------------------------


def check_device(who: Who, device: Any, id_key: str) -> AddDevice | list[Problem]:
    """v1 names the device token `id`, v2 names it `token`."""
    if type(device) is not dict:
        return [Problem("device", "required", "device must be an object")]
    problems: list[Problem] = []
    token = device.get(id_key)
    if type(token) is not str or not token:
        problems.append(Problem(f"device.{id_key}", "required", f"device.{id_key} is required"))
    platform = device.get("platform")
    if platform not in PLATFORMS:
        problems.append(Problem("device.platform", "invalid", "device.platform must be ios or android"))
    last_used = device.get("last_used")
    if last_used is not None:
        checked = _timestamp(last_used, "device.last_used")
        if isinstance(checked, Problem):
            problems.append(checked)
    attributes = _object(device.get("attributes"), "device.attributes", problems)
    push = attributes.get("push_enabled")
    if push is not None and push not in ("true", "false"):
        problems.append(Problem("device.attributes.push_enabled", "invalid", 'must be "true" or "false"'))
    if problems:
        return problems
    record = {"id": token, "platform": platform, "last_used": last_used, "attributes": attributes}
    return AddDevice(who, record)


# ---- v1 bodies ---------------------------------------------------------------------------------------


def check_v1_event(who: Who | None, body: dict[str, Any]) -> Track | list[Problem]:
    return check_event(who, body, "data")


def check_v1_device(who: Who, body: dict[str, Any]) -> AddDevice | list[Problem]:
    return check_device(who, body.get("device"), "id")


# ---- v2 operations (§2.3) ----------------------------------------------------------------------------


def op_size_problem(op: Any) -> Problem | None:
    """A batch operation is measured as compact JSON (the batch's own spacing doesn't count)."""
    if len(_encoder.encode(op)) > BATCH_OP_MAX_BYTES:
        return Problem("", "invalid", f"operation cannot be larger than {BATCH_OP_MAX_BYTES} bytes")
    return None


def check_op(op: Any) -> Op | list[Problem]:
    if type(op) is not dict:
        return [Problem("", "invalid", "operation must be an object")]
    kind, action = op.get("type"), op.get("action")
    if kind is None:
        return [Problem("type", "required", "type is required")]
    if action is None:
        return [Problem("action", "required", "action is required")]
    if kind == "person":
        if action not in PERSON_ACTIONS:
            return [Problem("action", "invalid", f"unknown person action {action!r}")]
        return _check_person_op(op, action)
    if kind == "object":
        if action not in OBJECT_ACTIONS:
            return [Problem("action", "invalid", f"unknown object action {action!r}")]
        ids = op.get("identifiers")
        if type(ids) is not dict or not ids.get("object_type_id") or not ids.get("object_id"):
            return [Problem("identifiers", "required", "identifiers need object_type_id and object_id")]
        return Unmodelled(f"object {action}")
    if kind == "delivery":
        if action != "event":
            return [Problem("action", "invalid", "a delivery takes action event")]
        ids = op.get("identifiers")
        if type(ids) is not dict or type(ids.get("id")) is not str or not ids["id"]:
            return [Problem("identifiers.id", "required", "identifiers.id (the delivery id) is required")]
        if op.get("name") not in DELIVERY_METRICS:
            return [Problem("name", "invalid", "name must be one of opened, converted, delivered")]
        attributes = op.get("attributes")
        if type(attributes) is not dict or not attributes.get("device_token"):
            return [Problem("attributes.device_token", "required", "attributes.device_token is required")]
        return Unmodelled(f"delivery {op['name']}")
    return [Problem("type", "invalid", "type must be one of person, object, delivery")]


def _check_person_op(op: dict[str, Any], action: str) -> Op | list[Problem]:
    if action == "merge":
        for side in ("primary", "secondary"):
            checked = who_from_identifiers(op.get(side), side)
            if isinstance(checked, Problem):
                return [checked]
        return Unmodelled("person merge")
    who = who_from_identifiers(op.get("identifiers"))
    if isinstance(who, Problem):
        return [who]
    if action == "identify":
        problems: list[Problem] = []
        attributes = _object(op.get("attributes"), "attributes", problems)
        if problems:
            return problems
        return check_identify(who, attributes, "attributes.", op.get("timestamp"))
    if action in EVENT_TYPES:
        return check_event(who, op, "attributes", action)
    if action == "delete":
        return Delete(who)
    if action == "add_device":
        return check_device(who, op.get("device"), "token")
    if action == "delete_device":
        device = op.get("device")
        token = device.get("token") if type(device) is dict else None
        if type(token) is not str or not token:
            return [Problem("device.token", "required", "device.token is required")]
        return DeleteDevice(who, token)
    if action in ("suppress", "unsuppress"):
        return Suppress(who, action == "suppress")
    if type(op.get("cio_relationships")) is not list:  # add_relationships / delete_relationships
        return [Problem("cio_relationships", "required", "cio_relationships must be a list")]
    return Unmodelled(f"person {action}")
