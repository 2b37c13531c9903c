"""Customer.io's Track API: hosts, paths, limits and response rules, each citing `reference/customerio.md`
(§n).

`classify` is the one place that turns an HTTP answer into delivery outcomes (see `base.py` for the
`indexes` semantics). It is pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

# Retry-After (delta-seconds or an HTTP-date against `Date`) is read the same way for every API.
from loopwire.destinations.amplitude.api import retry_after
from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split
from loopwire.destinations.customerio.options import CustomerioOptions

# §2.1: Track API hosts; only the subdomain differs. An EU account sent to the US host is redirected
# (its data transits the US); a US account sent to the EU host fails — so there is no default.
HOSTS: Mapping[str, str] = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
BATCH_PATH = "/api/v2/batch"  # §2.3: {"batch": [op, ...]}, person ops may be mixed
REGION_PATH = "/api/v1/accounts/region"  # §2.1: region lookup, 401 on bad credentials

# §2.5 limits. "KB" is read as 1,000 bytes, the stricter reading (the sandbox reads it the same way).
IDENTIFIER_MAX_BYTES = 150  # person id (and, per seed 003, any identifier value)
ATTRIBUTE_NAME_MAX_BYTES = 150
ATTRIBUTE_VALUE_MAX_BYTES = 1_000
ATTRIBUTES_MAX = 300  # unique attributes per identify call
EVENT_NAME_MAX_BYTES = 100
EVENT_DATA_MAX_BYTES = 100_000
OP_MAX_BYTES = 32_000  # each operation of a v2 batch
BATCH_MAX_BYTES = 500_000  # one v2 batch request
# §2.3: the maximum number of operations per batch is not stated (UNCONFIRMED); RudderStack sends up
# to 1,000. One payload is at most two operations (an event and an identify), hence 500 payloads.
BATCH_MAX_OPS = 1_000
OPS_PER_PAYLOAD = 2
MAX_PAYLOADS = BATCH_MAX_OPS // OPS_PER_PAYLOAD
BATCH_HEAD = b'{"batch":['
BATCH_TAIL = b"]}"
ENVELOPE_BYTES = len(BATCH_HEAD) + len(BATCH_TAIL)


# --- limits (§2.5), checked before anything is sent ---------------------------------------------

_encode_json = msgspec.json.Encoder().encode


def byte_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _value_bytes(value: Any) -> int:
    return byte_len(value) if type(value) is str else len(_encode_json(value))


def _key(name: str) -> str:
    """A property name fit for a reason: cut if long (the limit may be the name's own length)."""
    return name if len(name) <= 60 else name[:57] + "..."


def _largest(attributes: Mapping[str, Any]) -> str:
    if not attributes:
        return "it has no properties"
    name = max(attributes, key=lambda k: byte_len(k) + _value_bytes(attributes[k]))
    return f"the largest property is `{_key(name)}`"


def event_op_problem(op: Mapping[str, Any], size: int) -> str | None:
    """Why Customer.io would refuse this event / page / screen operation of `size` bytes (§2.5)."""
    name = op["name"]
    what = {"event": "event name", "page": "page view name (its URL)", "screen": "screen view name"}[
        op["action"]
    ]
    if byte_len(name) > EVENT_NAME_MAX_BYTES:
        return (
            f"the {what} is {byte_len(name)} bytes; Customer.io takes event names of at most "
            f"{EVENT_NAME_MAX_BYTES} bytes (customerio.md §2.5)"
        )
    attributes = op["attributes"]
    data = len(_encode_json(attributes))
    if data > EVENT_DATA_MAX_BYTES:
        return (
            f"the event data is {data} bytes; Customer.io takes at most {EVENT_DATA_MAX_BYTES} bytes "
            f"of event data (customerio.md §2.5); {_largest(attributes)}"
        )
    if size > OP_MAX_BYTES:
        return (
            f"the event operation is {size} bytes; Customer.io takes at most {OP_MAX_BYTES} bytes per "
            f"batch operation (customerio.md §2.5); {_largest(attributes)}"
        )
    return None


def identify_op_problem(op: Mapping[str, Any], size: int) -> str | None:
    """Why Customer.io would refuse this identify operation of `size` bytes (§2.5)."""
    attributes = op["attributes"]
    if len(attributes) > ATTRIBUTES_MAX:
        return (
            f"{len(attributes)} user properties changed at once; Customer.io takes at most "
            f"{ATTRIBUTES_MAX} attributes per identify call (customerio.md §2.5): select fewer "
            "`user_properties`"
        )
    for name, value in attributes.items():
        if byte_len(name) > ATTRIBUTE_NAME_MAX_BYTES:
            return (
                f"user property `{_key(name)}`: its name is {byte_len(name)} bytes; Customer.io takes attribute "
                f"names of at most {ATTRIBUTE_NAME_MAX_BYTES} bytes (customerio.md §2.5)"
            )
        if _value_bytes(value) > ATTRIBUTE_VALUE_MAX_BYTES:
            return (
                f"user property `{_key(name)}`: its value is {_value_bytes(value)} bytes; Customer.io takes "
                f"attribute values of at most {ATTRIBUTE_VALUE_MAX_BYTES} bytes (customerio.md §2.5)"
            )
    if size > OP_MAX_BYTES:
        return (
            f"the identify operation is {size} bytes; Customer.io takes at most {OP_MAX_BYTES} bytes "
            f"per batch operation (customerio.md §2.5); {_largest(attributes)}"
        )
    return None


# --- endpoints (§2.1) -----------------------------------------------------------------------------


def base_url(options: CustomerioOptions) -> str:
    """`base_url` (e.g. the sandbox) wins over the region's host (§2.1)."""
    return options.base_url.rstrip("/") if options.base_url else HOSTS[options.region]


def batch_url(options: CustomerioOptions) -> str:
    return base_url(options) + BATCH_PATH


def region_url(options: CustomerioOptions) -> str:
    return base_url(options) + REGION_PATH


# --- response rules (§2.3, §2.6) --------------------------------------------------------------

_decode = msgspec.json.Decoder().decode

CREDENTIALS_FIX = (
    "check `site_id` and `api_key` (Customer.io › Workspace Settings › API Credentials › Track API keys) "
    "and `region`"
)


def _errors(raw: bytes) -> list[dict[str, Any]]:
    """The `errors` list of a v2 answer (§2.6), or a v1 `meta.errors` / `meta.error` turned into it."""
    try:
        doc = _decode(raw) if raw else None
    except msgspec.DecodeError:
        return []
    if not isinstance(doc, dict):
        return []
    errors = doc.get("errors")
    if isinstance(errors, list):
        return [e for e in errors if isinstance(e, dict)]
    meta = doc.get("meta")
    if isinstance(meta, dict):
        listed = meta.get("errors")
        if isinstance(listed, list):
            return [{"message": str(m)} for m in listed]
        if isinstance(meta.get("error"), str):
            return [{"message": meta["error"]}]
    return []


def describe(error: Mapping[str, Any]) -> str:
    """`field: message (reason)` from one error object, whichever parts it has."""
    field, message, reason = (error.get(k) for k in ("field", "message", "reason"))
    text = str(message) if message else ""
    if field:
        text = f"`{field}`: {text}" if text else f"`{field}`"
    if reason:
        text = f"{text} ({reason})" if text else str(reason)
    return text or "no detail given"


def _by_payload(
    errors: list[dict[str, Any]], count: int, op_payload: Sequence[int]
) -> dict[int, list[str]] | None:
    """Payload index → what failed in its operations; None if an error names no usable batch_index."""
    found: dict[int, list[str]] = {}
    for error in errors:
        index = error.get("batch_index")
        if type(index) is not int or not 0 <= index < len(op_payload) or not 0 <= op_payload[index] < count:
            return None
        found.setdefault(op_payload[index], []).append(describe(error))
    return found


def _rejections(found: dict[int, list[str]], what: str) -> list[Outcome]:
    by_reason: dict[str, set[int]] = {}
    for payload, parts in found.items():
        by_reason.setdefault(f"{what}: " + "; ".join(dict.fromkeys(parts)), set()).add(payload)
    return [Rejected(reason, frozenset(indexes)) for reason, indexes in sorted(by_reason.items())]


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    count: int,
    op_payload: Sequence[int],
) -> tuple[Outcome, ...]:
    """One Track API answer to a v2 batch → outcomes per payload index (§2.3, §2.6).

    `count` payloads were sent as `len(op_payload)` operations; `op_payload[i]` is the payload that
    operation (`batch_index`) i came from, so a 207 dead-letters exactly the payloads with a failed op.
    """
    if 200 <= status < 300 and status != 207:
        return (Delivered(),)
    after = retry_after(headers)
    errors = _errors(body)

    if status == 207:
        # §2.3: the listed operations failed, the others were accepted.
        found = _by_payload(errors, count, op_payload) if errors else None
        if found is None:
            return (
                Rejected(
                    "Customer.io accepted only part of the batch (207) without naming the failed "
                    "operations; replaying is safe (event ids are deduplicated)"
                ),
            )
        outcomes = _rejections(found, "Customer.io rejected this event's operation")
        if len(found) < count:
            outcomes.append(Delivered())
        return tuple(outcomes)

    if status == 400:
        # §2.6: the whole request was invalid. If the errors still point at operations, only their
        # payloads are at fault: dead-letter those and send the rest again at once.
        found = _by_payload(errors, count, op_payload) if errors else None
        if found:
            outcomes = _rejections(found, "Customer.io rejected this event's operation (400)")
            if len(found) < count:
                outcomes.append(Retry(0.0, "resent at once: other events in the batch were invalid"))
            return tuple(outcomes)
        detail = "; ".join(dict.fromkeys(describe(e) for e in errors)) or "no detail given"
        return (Rejected(f"Customer.io rejected the request as invalid (400): {detail}"),)

    if status == 401:
        return (Rejected(f"Customer.io refused the credentials (401): {CREDENTIALS_FIX}"),)
    if status == 403:
        return (Rejected(f"Customer.io refused the request (403 Forbidden): {CREDENTIALS_FIX}"),)
    if status == 404:
        return (Rejected("Customer.io answered 404 Not Found: check `base_url` and `region`"),)
    if status == 413:
        # §2.5: 413 is not documented for the Track API (UNCONFIRMED); every request is kept under
        # 500 KB before sending, so a 413 means a stricter limit: halve the batch.
        if count > 1:
            return (Split("Customer.io refused the request as too large (413); splitting the batch"),)
        return (
            Rejected(
                "Customer.io refused this single event as too large (413): send fewer or smaller "
                "properties (`event_properties`, `user_properties`)"
            ),
        )
    if status == 429:
        # §2.5: 429 and Retry-After are not documented for the Track API (UNCONFIRMED); honour them.
        if after is not None:
            return (
                Retry(after, "Customer.io throttled the request (429); retrying when its Retry-After says"),
            )
        return (Retry(None, "Customer.io throttled the request (429); retrying with backoff"),)
    if 400 <= status < 500 and status not in (408, 425):
        detail = "; ".join(dict.fromkeys(describe(e) for e in errors)) or "no detail given"
        return (Rejected(f"Customer.io refused the request ({status}): {detail}"),)
    # §2.6: 5xx is transient (the official client retries 500/502/503/504); 408, 425 and anything
    # unexpected (a 3xx the client did not follow) are retried too. An op that was applied before a 5xx is harmless to resend: event
    # ids are ULIDs Customer.io deduplicates, and identify sets the same values again.
    if after is not None:
        return (Retry(after, f"Customer.io answered {status}; retrying when its Retry-After says"),)
    return (Retry(None, f"Customer.io answered {status}; retrying with backoff"),)
