"""Segment's HTTP Tracking API: hosts, limits and response rules, each citing `reference/segment.md` (§n).

`classify` is the one place that turns an HTTP answer into delivery outcomes (see `base.py` for the
`indexes` semantics). Segment's answer never names a message: a 200 covers the whole request and an
error refuses all of it (§5), so every outcome here covers the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

# Same header rules as Amplitude's (delta-seconds or an HTTP-date measured against `Date`).
from loopwire.destinations.amplitude.api import retry_after
from loopwire.destinations.base import Delivered, Outcome, Rejected, Retry, Split
from loopwire.destinations.segment.options import SegmentOptions

# §1: US (Oregon) is Segment's default host, EU (Dublin) takes EU-workspace write keys only. Hosts
# are written without /v1, as the server SDKs take them; the path adds it.
HOSTS: Final[Mapping[str, str]] = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}
BATCH_PATH: Final = "/v1/batch"  # §1: one call for identify/track/page/screen/group

# §4. "KB" is not defined: one message is capped at 32 × 1024 bytes as the official Python library
# does (consumer.py), a batch at the stricter decimal reading of 500 KB.
MESSAGE_MAX_BYTES: Final = 32 * 1024
BATCH_MAX_BYTES: Final = 500_000
BATCH_MAX_MESSAGES: Final = 2_500  # over it Segment answers 200 and discards the events (§4)
MESSAGE_ID_MAX_CHARS: Final = 99  # §4 "< 100 chars" (the field table's "≤ 100" is the looser reading)
MESSAGES_PER_EVENT: Final = 2  # a mapped event is a track, or an identify and a track
MAX_EVENTS: Final = BATCH_MAX_MESSAGES // MESSAGES_PER_EVENT


def batch_url(options: SegmentOptions) -> str:
    """`base_url` (e.g. the sandbox) wins over the region's host; a trailing `/v1` is tolerated."""
    if options.base_url:
        return options.base_url.rstrip("/").removesuffix("/v1") + BATCH_PATH
    return HOSTS[options.region] + BATCH_PATH


# --- response rules (§5, §6 "Retry / backoff") -------------------------------------------------

_decode = msgspec.json.Decoder().decode

KEY_FIX: Final = (
    "check this destination's `write_key` (Segment › Connections › Sources › your source › Settings › "
    "API Keys) and that `region` is the workspace's region (an EU key works only on the EU host, §1)"
)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def wait_seconds(headers: Mapping[str, str]) -> float | None:
    """§5 429: `Retry-After`, else `X-RateLimit-Reset`, both in seconds."""
    after = retry_after(headers)
    if after is not None:
        return after
    reset = _header(headers, "X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        seconds = float(reset.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds == seconds else None


def error_text(body: bytes) -> str:
    """`code: message` from Segment's error body (§5: the shape the Python library parses), or the
    first 200 characters of whatever came back."""
    try:
        doc: Any = _decode(body) if body else None
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict):
        code, message = doc.get("code"), doc.get("message")
        parts = [str(p) for p in (code, message) if isinstance(p, str | int) and str(p)]
        if parts:
            return ": ".join(parts)
    return body[:200].decode("utf-8", "replace").strip()


def _about_the_key(detail: str) -> bool:
    text = detail.lower().replace("_", " ").replace("-", " ")
    return "write key" in text or "writekey" in text


def classify(status: int, headers: Mapping[str, str], body: bytes, count: int) -> tuple[Outcome, ...]:
    """One Segment answer to a batch of `count` outbox events → outcomes (§5)."""
    if 200 <= status < 300:
        # §5: 200 means "Segment has it". What it discards behind a 200 (no identity, no event
        # name, over 2,500 messages, messageId too long) the mapping and `send` rule out first.
        return (Delivered(),)
    detail = error_text(body)
    said = f" ({detail})" if detail else ""
    if status == 400:
        if _about_the_key(detail):
            # Empty or malformed keys get a 400 (segmentio/analytics-go#205): every event would.
            return (Rejected(f"Segment refused the write key (400){said}: {KEY_FIX}"),)
        # §5: too large or invalid JSON, for the whole request, naming no message. Resending as is
        # cannot help ("fix/split"): halve the batch until the message it refuses is alone.
        if count > 1:
            return (Split(f"Segment refused the batch (400){said}; splitting it to find the message"),)
        return (Rejected(f"Segment refused this event (400){said}"),)
    if status in (401, 403):
        return (Rejected(f"Segment refused the write key ({status}){said}: {KEY_FIX}"),)
    if status == 404:
        return (Rejected(f"Segment answered 404 Not Found{said}: check `base_url` and `region`"),)
    if status == 413:
        if count > 1:
            return (Split(f"Segment refused the batch as too large (413){said}; splitting it"),)
        return (
            Rejected(
                f"Segment refused this event as too large (413){said}: make it smaller "
                "(turn `body_content` off, or keep fewer properties with `route.properties`)"
            ),
        )
    after = wait_seconds(headers)
    if status == 429:
        reason = "Segment is rate limiting this workspace (429, §4: about 1,000 requests/s)"
        if after is not None:
            return (Retry(after, f"{reason}; retrying when Retry-After says"),)
        return (Retry(None, f"{reason}; retrying with backoff"),)
    if status in (408, 410, 460) or status >= 500:
        # §6: what the official library retries (network errors, 408, 410, 429, 460, 5xx).
        if after is not None:
            return (Retry(after, f"Segment answered {status}{said}; retrying when Retry-After says"),)
        return (Retry(None, f"Segment answered {status}{said}; retrying with backoff"),)
    # §6: 422 and the other 4xx are not retried by the library either.
    return (Rejected(f"Segment refused the request ({status}){said}"),)
