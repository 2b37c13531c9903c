"""Amplitude's endpoints, limits and response rules, each citing `reference/amplitude.md` (§n).

`classify` is the one place that turns an HTTP answer into delivery outcomes (see `base.py` for the
`indexes` semantics). It is pure: no clock, no I/O — a `Retry-After` date is measured against the
response's own `Date` header.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import msgspec

from loopwire.contracts.amplitude import (
    BATCH_MAX_BYTES,
    BATCH_MAX_EVENTS,
    HTTPAPI_MAX_BYTES,
    HTTPAPI_MAX_EVENTS,
)
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split

# §1: ingestion hosts; the EU residency host serves both event endpoints.
HOSTS: Mapping[str, str] = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
# §1 (HTTP V2, Batch Event Upload): same JSON body, same `options`, different limits (§3).
PATHS: Mapping[str, str] = {"httpapi": "/2/httpapi", "batch": "/batch"}

# The limits and the refused ids are Amplitude's contract, shared with the sandbox and the
# Amplitude-compatible input (`loopwire.contracts.amplitude`, each value citing amplitude.md).
MAX_STRING_CHARS = 1_024  # §2.2: string values (user_id, property values) are limited to 1,024 characters
MAX_GROUP_TYPES = 5  # §2.2 / §2.5: 5 group types, 10 values per event; the rest is ignored
MAX_GROUP_VALUES = 10

THROTTLE_DELAY_S = 30.0  # §2.6 429: "pause that user/device 30 s"; §6.3: the Python SDK waits 30 s
# §2.5 / §3: the daily quota is 500,000 events per id per *rolling* 24 h with hourly granularity, so
# an id over quota can only get room back when its oldest hour ages out: retry hourly (the retry
# policy's `max_age` still ends it), instead of dropping the events as the SDKs do (§5.2).
DAILY_QUOTA_DELAY_S = 3_600.0


def limits(endpoint: Literal["httpapi", "batch"]) -> tuple[int, int]:
    """(max events, max bytes) one request to `endpoint` may carry (§2.5, §3)."""
    if endpoint == "batch":
        return BATCH_MAX_EVENTS, BATCH_MAX_BYTES
    return HTTPAPI_MAX_EVENTS, HTTPAPI_MAX_BYTES


def events_url(options: AmplitudeOptions) -> str:
    """`base_url` (e.g. the sandbox) wins over the region's host (§1); the path follows `endpoint`."""
    base = options.base_url.rstrip("/") if options.base_url else HOSTS[options.region]
    return base + PATHS[options.endpoint]


# --- response rules (§2.6, §5.2, §6.3) --------------------------------------------------------

_decode = msgspec.json.Decoder().decode

_REQUEST_LEVEL_FIX = {
    "api_key": "check this destination's `api_key` (Amplitude › Settings › Projects › General)",
    "events": "this is a loopwire bug: please report it with the dead-lettered response",
}


def _body(raw: bytes) -> dict[str, Any]:
    try:
        doc = _decode(raw) if raw else None
    except msgspec.DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `Retry-After` (delta-seconds, or an HTTP-date measured against `Date`), else None."""
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        date = _header(headers, "Date")
        if date is None:
            return None
        try:
            seconds = (parsedate_to_datetime(value) - parsedate_to_datetime(date)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay


def _indexes(value: Any, count: int) -> set[int]:
    if not isinstance(value, list):
        return set()
    return {i for i in value if type(i) is int and 0 <= i < count}


def _keys(value: Any) -> Collection[Any]:
    # Documented as maps id → count (§2.6, §3: "treat as map"); accept a plain list of ids too.
    if isinstance(value, dict | list):
        return value
    return ()


def _matching(
    payload_ids: Sequence[tuple[str | None, str | None]], users: Collection[Any], devices: Collection[Any]
) -> set[int]:
    if not users and not devices:
        return set()
    return {
        i
        for i, (user_id, device_id) in enumerate(payload_ids)
        if (user_id is not None and user_id in users) or (device_id is not None and device_id in devices)
    }


def _problems(doc: dict[str, Any], count: int) -> dict[int, list[str]]:
    """Per batch index, what Amplitude said is wrong with that event (§2.6 400 index lists)."""
    found: dict[int, list[str]] = {}
    for key, what in (
        ("events_with_missing_fields", "missing"),
        ("events_with_invalid_fields", "invalid value"),
        ("events_with_invalid_id_lengths", "shorter than min_id_length; set `min_id_length` to allow it"),
    ):
        lists = doc.get(key)
        if isinstance(lists, dict):
            for field, indexes in lists.items():
                for i in sorted(_indexes(indexes, count)):
                    found.setdefault(i, []).append(f"field `{field}` ({what})")
    for i in sorted(_indexes(doc.get("silenced_events"), count)):
        found.setdefault(i, []).append("its device (silenced for sending too many events)")
    return found


def _rejections(problems: dict[int, list[str]]) -> list[Outcome]:
    by_reason: dict[str, set[int]] = {}
    for i, parts in problems.items():
        by_reason.setdefault("Amplitude rejected " + " and ".join(parts), set()).add(i)
    return [Rejected(reason, frozenset(indexes)) for reason, indexes in sorted(by_reason.items())]


def _partial(outcomes: list[Outcome], claimed: set[int], count: int, rest: Outcome) -> tuple[Outcome, ...]:
    if len(claimed) < count:
        outcomes.append(rest)
    return tuple(outcomes)


def _delays(
    doc: dict[str, Any],
    count: int,
    payload_ids: Sequence[tuple[str | None, str | None]],
    claimed: set[int],
    throttle_delay: float,
) -> list[Outcome]:
    """Daily-quota ids wait an hour, throttled events wait `throttle_delay` (§2.5, §2.6 429, §5.2)."""
    outcomes: list[Outcome] = []
    quota = _matching(
        payload_ids,
        _keys(doc.get("exceeded_daily_quota_users")),
        _keys(doc.get("exceeded_daily_quota_devices")),
    )
    quota = {i for i in quota if i < count} - claimed
    if quota:
        outcomes.append(
            Retry(
                max(DAILY_QUOTA_DELAY_S, throttle_delay),
                "Amplitude's daily quota (500,000 events per user or device per rolling 24 h) is used up "
                "for this id; retrying hourly",
                frozenset(quota),
            )
        )
        claimed |= quota
    throttled = _indexes(doc.get("throttled_events"), count) | _matching(
        payload_ids, _keys(doc.get("throttled_users")), _keys(doc.get("throttled_devices"))
    )
    throttled = {i for i in throttled if i < count} - claimed
    if throttled:
        outcomes.append(
            Retry(
                throttle_delay,
                "Amplitude throttled this user or device (too many events per second); retrying after a pause",
                frozenset(throttled),
            )
        )
        claimed |= throttled
    return outcomes


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    count: int,
    payload_ids: Sequence[tuple[str | None, str | None]],
) -> tuple[Outcome, ...]:
    """One Amplitude answer → outcomes per batch index (§2.6, §5.2).

    `payload_ids[i]` is the (user_id, device_id) sent at batch index i, so `throttled_users` /
    `throttled_devices` / `exceeded_daily_quota_*` can be matched even without `throttled_events`.
    """
    doc = _body(body)
    code = doc.get("code")
    if 200 <= status < 300:
        # §2.6 / §5.2: both SDKs trust the body's `code`; we only let it turn a 2xx into a 429.
        if code != 429:
            return (Delivered(),)
        status = 429
    after = retry_after(headers)
    error = doc.get("error")
    error = error if isinstance(error, str) else ""

    if status == 429:
        delay = THROTTLE_DELAY_S if after is None else after
        claimed: set[int] = set()
        outcomes = _delays(doc, count, payload_ids, claimed, delay)
        if not outcomes:
            return (Retry(delay, "Amplitude throttled the request (429); retrying after a pause"),)
        rest = Retry(0.0, "resent at once: only other users or devices in the batch were throttled")
        return _partial(outcomes, claimed, count, rest)

    if status == 400:
        if error.startswith("Invalid API key"):
            return (Rejected(f"Amplitude rejected the API key: {_REQUEST_LEVEL_FIX['api_key']}"),)
        missing = doc.get("missing_field")
        if isinstance(missing, str) and missing:
            fix = _REQUEST_LEVEL_FIX.get(missing, "this is a loopwire bug: please report it")
            return (Rejected(f"Amplitude says the request is missing `{missing}`: {fix}"),)
        problems = _problems(doc, count)
        claimed = set(problems)
        outcomes = _rejections(problems)
        outcomes += _delays(doc, count, payload_ids, claimed, THROTTLE_DELAY_S if after is None else after)
        if not outcomes:
            detail = f" ({error})" if error else ""
            return (Rejected(f"Amplitude rejected the whole request as invalid (400){detail}"),)
        rest = Retry(0.0, "resent at once: other events in the batch were rejected")
        return _partial(outcomes, claimed, count, rest)

    if status == 413:
        if count > 1:
            return (Split("Amplitude refused the request as too large (413); splitting the batch"),)
        return (
            Rejected(
                "Amplitude refused this single event as too large (413): make it smaller "
                "(turn `body_content` off, or drop large properties)"
            ),
        )
    if status == 401:
        return (Rejected(f"Amplitude refused the credentials (401): {_REQUEST_LEVEL_FIX['api_key']}"),)
    if status == 403:
        return (
            Rejected(
                "Amplitude's firewall refused the request (403 Forbidden): check `base_url` and `region`, "
                "and that this host may reach Amplitude"
            ),
        )
    if status == 404:
        return (Rejected("Amplitude answered 404 Not Found: check `base_url` and `endpoint`"),)
    # §2.6: 408, 5xx and anything unexpected are worth retrying; 500/502/504 may have been accepted,
    # which the stable insert_id makes harmless.
    if after is not None:
        return (Retry(after, f"Amplitude answered {status}; retrying when its Retry-After says"),)
    return (Retry(None, f"Amplitude answered {status}; retrying with backoff"),)
