"""Amplitude's ingestion contract as pure functions: envelopes, events, identifications and the
documented answer bodies (amplitude.md §2–§4). No I/O and no clock; the sandbox keeps the state."""

from __future__ import annotations

import email.policy
import http
import math
import re
import zlib
from collections.abc import Mapping
from email.parser import BytesParser
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from loopwire import jsonsafe
from loopwire.errors import InputError
from loopwire.model import TIME_MAX_MS

# Limits (amplitude.md §2.5, §3, §4.2). Megabytes are decimal and "<" is read strictly: where the
# docs disagree the sandbox takes the stricter reading, so a client that passes here passes Amplitude.
HTTPAPI_MAX_BYTES = 999_999  # "< 1 MB" [V2]
BATCH_MAX_BYTES = 20_000_000  # "≤ 20 MB" [BATCH]
HTTPAPI_MAX_EVENTS = 1_999  # "< 2,000" [V2]; [V2-new] says "up to 2,000" — stricter reading kept
BATCH_MAX_EVENTS = 2_000  # "The limit per batch is 2000 events" [BATCH]
GROUPIDENTIFY_MAX = 1_024  # identifications, and group properties, per request (§4.2)
GROUPIDENTIFY_MAX_BYTES = 1_000_000  # "≤ 1 MB per request" (§4.2)
IDENTIFY_MAX_BYTES = 20_000_000  # no documented limit (§4.1): a memory guard, not an Amplitude rule
DEFAULT_MIN_ID_LENGTH = 5  # §2.2
BATCH_EPS_LIMIT = 1_000.0  # per user/device on /batch (§3)
DEDUPE_SECONDS = 7 * 86_400.0  # insert_id memory (§2.4)
STRING_MAX_CHARS = 1_024  # "string values ... are limited to 1024 characters" [V2] (§2.2)

# §2.4 "Invalid ids", compared lower-cased (the doc lists them lower-case; "NULL" is no better an id).
INVALID_IDS = frozenset(
    {
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "",
        "00000000-0000-0000-0000-000000000000",
        "{}",
        "lmy47d",
        "0",
        "-1",
    }
)

_ID_KEYS = ("user_id", "device_id")
_EVENT_OBJECT_KEYS = ("event_properties", "user_properties", "groups", "group_properties")
_IDENTIFY_OBJECT_KEYS = ("user_properties", "groups")
_JSON_MEDIA = frozenset({"", "application/json", "text/plain"})  # text/plain: browser beacons (§5.1)


class Answer(NamedTuple):
    """An HTTP status and its JSON body; `body["code"]` always equals `status` (§2.6)."""

    status: int
    body: dict[str, Any]


class Accepted(NamedTuple):
    api_key: str
    items: list[dict[str, Any]]  # events or identifications, short ids already removed


# ---- documented bodies (§2.6) --------------------------------------------------------------------


def error(status: int, text: str, **extra: Any) -> Answer:
    return Answer(status, {"code": status, "error": text, **extra})


def success(ingested: int, size: int, upload_ms: int) -> Answer:
    body = {
        "code": 200,
        "events_ingested": ingested,
        "payload_size_bytes": size,
        "server_upload_time": upload_ms,
    }
    return Answer(200, body)


def too_large() -> Answer:
    return error(413, "Payload too large")


_EVENT_FIELD = re.compile(r"\$\.events\[(\d+)\]\.(\w+)")


def undecodable(problem: InputError) -> Answer:
    """The 400 for a body `jsonsafe` refused. An integer out of range inside an event names the
    event and field as Amplitude's own 400s do (§2.6); the rest is "Invalid JSON request body",
    with loopwire's reason in `detail` (a key the SDKs ignore)."""
    where = _EVENT_FIELD.match(problem.message.split("`")[1]) if problem.message.count("`") >= 2 else None
    if problem.code == "number_out_of_range" and where is not None:
        index, field = int(where.group(1)), where.group(2)
        return error(400, "Invalid field values on some events", events_with_invalid_fields={field: [index]})
    return error(400, "Invalid JSON request body", detail=problem.message)


def missing_field(field: str, problems: Problems | None = None) -> Answer:
    # The doc's example reports event problems alongside a missing api_key (fixture
    # httpapi_response_400_missing_field.json), so they are included when there are any.
    maps = problems.maps() if problems else {}
    return error(400, "Request missing required field", missing_field=field, **maps)


def invalid_api_key(key: object) -> Answer:
    return error(400, f"Invalid API key: {key}")  # SDKs test startswith("Invalid API key") (§2.6)


def throttled(threshold: float, users: dict[str, int], devices: dict[str, int], indexes: list[int]) -> Answer:
    shown: float = int(threshold) if float(threshold).is_integer() else threshold  # 30, not 30.0
    return error(
        429,
        "Too many requests for some devices and users",
        eps_threshold=shown,
        throttled_devices=devices,
        throttled_users=users,
        throttled_events=indexes,
    )


def status_answer(status: int) -> Answer:
    """The body Amplitude documents for `status`; for statuses it documents without a body (5xx)
    or not at all (401, 408), `{code, error: reason phrase}` keeps clients that read `code` working."""
    if status == 413:
        return too_large()
    if status == 403:
        return error(403, "Forbidden")
    return error(status, http.HTTPStatus(status).phrase)


# ---- wire formats (§2.1, §4.1, §5.1) -------------------------------------------------------------


def decode_body(
    raw: bytes, over: bool, content_type: str, content_encoding: str, limit: int
) -> tuple[bytes, Answer | None]:
    """JSON bodies as `application/json`, `text/plain` (sendBeacon) or without a type, identity or
    gzip-encoded; `limit` counts decoded bytes, so a small gzip body that inflates past it is 413."""
    if over:
        return b"", too_large()
    if not raw:
        return b"", error(400, "Missing request body")
    media = content_type.split(";", 1)[0].strip().lower()
    encoding = content_encoding.strip().lower()
    if media not in _JSON_MEDIA or encoding not in ("", "identity", "gzip"):
        return b"", error(400, "Invalid JSON request body")
    if encoding != "gzip":
        return raw, None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return b"", error(400, "Invalid JSON request body")
    if len(body) > limit:
        return b"", too_large()
    if not inflater.eof:  # truncated stream
        return b"", error(400, "Invalid JSON request body")
    return (body, None) if body else (b"", error(400, "Missing request body"))


def form_fields(content_type: str, raw: bytes, query: str | None = None) -> dict[str, str]:
    """Identify form fields from an urlencoded or multipart body, or from `query` for a GET (§4.1).
    The first value of a repeated field wins."""
    media = content_type.split(";", 1)[0].strip().lower()
    pairs: list[tuple[str, str]] = []
    if query is not None:
        pairs = parse_qsl(query, keep_blank_values=True)
    elif media == "multipart/form-data":
        head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                pairs.append((name, payload.decode("utf-8", "replace")))
    elif media in ("", "application/x-www-form-urlencoded"):
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


# ---- event validation (§2.2, §2.4) ---------------------------------------------------------------


class Problems:
    """Per-field event indexes for a 400 body, in the key order of Amplitude's examples."""

    __slots__ = ("invalid", "missing", "short")

    def __init__(self) -> None:
        self.invalid: dict[str, list[int]] = {}
        self.missing: dict[str, list[int]] = {}
        self.short: dict[str, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.invalid or self.missing or self.short)

    def maps(self) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        if self.invalid:
            out["events_with_invalid_fields"] = self.invalid
        if self.missing:
            out["events_with_missing_fields"] = self.missing
        if self.short:
            out["events_with_invalid_id_lengths"] = self.short  # SDK-known, not in the docs (§2.6)
        return out


def _add(where: dict[str, list[int]], field: str, index: int) -> None:
    if field in where:
        where[field].append(index)
    else:
        where[field] = [index]


def _check_ids(
    item: dict[str, Any], index: int, min_length: int, problems: Problems, required: bool = True
) -> None:
    """§2.4: a listed invalid id fails the event; a too-short id is removed from it; an event left
    with neither id fails unless ids aren't `required`. JSON null counts as absent; a non-string id
    is an invalid field."""
    kept = 0
    stripped: list[str] = []
    for key in _ID_KEYS:
        value = item.get(key)
        if value is None:
            continue
        if type(value) is not str or len(value) > STRING_MAX_CHARS or value.lower() in INVALID_IDS:
            _add(problems.invalid, key, index)
            kept += 1  # already invalid: don't also report it as missing
        elif len(value) < min_length:
            del item[key]
            stripped.append(key)
        else:
            kept += 1
    if kept or not required:
        return
    if stripped:
        for key in stripped:
            _add(problems.short, key, index)
    else:
        _add(problems.missing, "user_id", index)  # one of the two is required: neither is there
        _add(problems.missing, "device_id", index)


def _check_objects(item: dict[str, Any], index: int, keys: tuple[str, ...], problems: Problems) -> None:
    for key in keys:
        value = item.get(key)
        if value is not None and type(value) is not dict:
            _add(problems.invalid, key, index)


def check_events(events: list[dict[str, Any]], min_length: int) -> Problems:
    """Validate events in place (short ids are removed, §2.4); the result is falsy when all pass."""
    problems = Problems()
    for index, event in enumerate(events):
        event_type = event.get("event_type")
        if event_type is None or event_type == "":
            _add(problems.missing, "event_type", index)
        elif type(event_type) is not str or len(event_type) > STRING_MAX_CHARS:
            _add(problems.invalid, "event_type", index)
        # The official SDKs send $groupidentify without user or device (Python `verify_event`
        # exempts it, amplitude.md §6.2): it updates a group, not a user.
        _check_ids(event, index, min_length, problems, event_type != "$groupidentify")
        moment = event.get("time")
        # Integer ms only, no float/str (§2.2); and a date, 1970 to year 9999 (model.TIME_MAX_MS).
        if moment is not None and (type(moment) is not int or not 0 <= moment <= TIME_MAX_MS):
            _add(problems.invalid, "time", index)
        insert_id = event.get("insert_id")
        if insert_id is not None and (type(insert_id) is not str or len(insert_id) > STRING_MAX_CHARS):
            _add(problems.invalid, "insert_id", index)
        _check_objects(event, index, _EVENT_OBJECT_KEYS, problems)
    return problems


def min_id_length(options: Any) -> int | None:
    """`options.min_id_length` (§2.1), the default when absent; None when malformed."""
    if options is None:
        return DEFAULT_MIN_ID_LENGTH
    if type(options) is not dict:
        return None
    value = options.get("min_id_length")
    if value is None:
        return DEFAULT_MIN_ID_LENGTH
    if type(value) is not int or value < 0:
        return None
    return value


def _key_ok(key: object, api_keys: frozenset[str] | None) -> bool:
    if type(key) is not str:
        return False
    return key in api_keys if api_keys is not None else True


def check_envelope(doc: Any, api_keys: frozenset[str] | None, max_events: int) -> Answer | Accepted:
    """HTTP V2 / Batch request body (§2.1, §2.6) → the 400/413 answer, or the accepted events."""
    if type(doc) is not dict:
        return error(400, "Invalid JSON request body")
    min_length = min_id_length(doc.get("options"))
    if min_length is None:
        return error(400, "Invalid JSON request body")
    events = doc.get("events")
    if events is not None and (type(events) is not list or any(type(e) is not dict for e in events)):
        return error(400, "Invalid event JSON")
    api_key = doc.get("api_key")
    if api_key is None or api_key == "":
        problems = check_events(events, min_length) if events and len(events) <= max_events else None
        return missing_field("api_key", problems)
    if not _key_ok(api_key, api_keys):
        return invalid_api_key(api_key)
    if not events:  # absent, null or [] — nothing to ingest
        return missing_field("events")
    if len(events) > max_events:
        return too_large()
    problems = check_events(events, min_length)
    if problems:
        return error(400, "Invalid field values on some events", **problems.maps())
    return Accepted(api_key, events)


# ---- Identify and Group Identify (§4) ------------------------------------------------------------


def _identifications(raw: str | None) -> list[dict[str, Any]] | None:
    if not raw:
        return None
    try:
        doc = jsonsafe.decode(raw)
    except InputError:
        return None
    if type(doc) is dict:
        return [doc]
    if type(doc) is list and doc and all(type(d) is dict for d in doc):
        return doc
    return None


def parse_identifications(raw: str | None) -> list[dict[str, Any]]:
    """Best effort, for fault rules that name the ids of a request."""
    return _identifications(raw) or []


def _group_property_count(properties: dict[str, Any]) -> int:
    count = 0
    for key, value in properties.items():
        # operations ($set, $add, ...) hold the properties one level down (§2.3)
        count += len(value) if key.startswith("$") and type(value) is dict else 1
    return count


def check_identify(form: Mapping[str, str], api_keys: frozenset[str] | None) -> Answer | Accepted:
    """`POST /identify` form fields (§4.1) → answer, or the accepted identifications."""
    api_key = form.get("api_key")
    if not api_key:
        return missing_field("api_key")
    if not _key_ok(api_key, api_keys):
        return invalid_api_key(api_key)
    items = _identifications(form.get("identification"))
    if items is None:
        return error(400, "missing_event")  # §4.1: identification missing or malformed
    options = form.get("options")  # sent by Segment's destination, not in Amplitude's doc (§4.1)
    try:
        min_length = min_id_length(jsonsafe.decode(options)) if options else DEFAULT_MIN_ID_LENGTH
    except InputError:
        min_length = None
    if min_length is None:
        return error(400, "Invalid JSON request body")
    problems = Problems()
    for index, item in enumerate(items):
        _check_ids(item, index, min_length, problems)
        _check_objects(item, index, _IDENTIFY_OBJECT_KEYS, problems)
    if problems:
        return error(400, "Invalid field values on some events", **problems.maps())
    return Accepted(api_key, items)


def check_group_identify(form: Mapping[str, str], api_keys: frozenset[str] | None) -> Answer | Accepted:
    """`POST /groupidentify` form fields (§4.2) → answer, or the accepted identifications."""
    api_key = form.get("api_key")
    if not api_key:
        return missing_field("api_key")
    if not _key_ok(api_key, api_keys):
        return invalid_api_key(api_key)
    items = _identifications(form.get("identification"))
    if items is None:
        return error(400, "missing_event")
    if len(items) > GROUPIDENTIFY_MAX:  # §4.2 lists only 200 and 400 as answers
        return error(400, f"Too many group identifications (limit {GROUPIDENTIFY_MAX})")
    problems = Problems()
    properties = 0
    for index, item in enumerate(items):
        for key in ("group_type", "group_value"):
            value = item.get(key)
            if value is None or value == "":
                _add(problems.missing, key, index)
            elif type(value) is not str:
                _add(problems.invalid, key, index)
        group_properties = item.get("group_properties")
        if group_properties is None:
            continue
        if type(group_properties) is not dict:
            _add(problems.invalid, "group_properties", index)
        else:
            properties += _group_property_count(group_properties)
    if problems:
        return error(400, "Invalid field values on some events", **problems.maps())
    if properties > GROUPIDENTIFY_MAX:
        return error(400, f"Too many group properties (limit {GROUPIDENTIFY_MAX})")
    return Accepted(api_key, items)


# ---- throttling helpers (§2.5) -------------------------------------------------------------------


def ids_of(items: list[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """How many items each user_id and each device_id has in one request."""
    users: dict[str, int] = {}
    devices: dict[str, int] = {}
    for item in items:
        if type(item) is not dict:
            continue
        user = item.get("user_id")
        if type(user) is str:
            users[user] = users.get(user, 0) + 1
        device = item.get("device_id")
        if type(device) is str:
            devices[device] = devices.get(device, 0) + 1
    return users, devices


def throttled_indexes(items: list[Any], users: Mapping[str, int], devices: Mapping[str, int]) -> list[int]:
    indexes = []
    for index, item in enumerate(items):
        if type(item) is not dict:
            continue
        user, device = item.get("user_id"), item.get("device_id")
        if (type(user) is str and user in users) or (type(device) is str and device in devices):
            indexes.append(index)
    return indexes


def eps(count: float, window: float) -> int:
    """Events per second as Amplitude reports it: a whole number, rounded up so 30.1 shows as 31."""
    return math.ceil(count / window)
