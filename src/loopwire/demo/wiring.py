"""How the demo wires loopwire: its config file, the keys it reads from the environment, what each
destination selects, and the faults it arranges in the sandboxes (each stated in the report)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from loopwire.demo.scenario import EXPERIMENT_ID, HOLDOUT_PERCENT, HOLDOUT_SALT

SIGNING_ENV = "LOOPWIRE_DEMO_SIGNING_KEY"
AMPLITUDE_ENV = (
    "LOOPWIRE_DEMO_AMPLITUDE_KEY"  # the app's Amplitude key: the app keeps it, loopwire forwards with it
)
STOREFRONT_ENV = "LOOPWIRE_DEMO_STOREFRONT_WRITE_KEY"  # what the storefront's Segment library sends
SEGMENT_ENV = "LOOPWIRE_DEMO_SEGMENT_WRITE_KEY"  # the Segment source loopwire writes engagement to
CIO_SITE_ENV = "LOOPWIRE_DEMO_CIO_SITE_ID"
CIO_KEY_ENV = "LOOPWIRE_DEMO_CIO_API_KEY"
STORE_FILES = ("demo.db", "demo.db-wal", "demo.db-shm")
LIFT_HTML = "lift.html"  # the self-contained lift report, written into the --keep folder
HOLDOUT_TRAIT = f"holdout_{EXPERIMENT_ID}"  # what loopwire's engine exports to every destination
EXPERIMENT_WINDOW = "14d"  # conversions counted after assignment; the scenario's orders fall within 13 days

# Destination names in demo.yaml (and in the report).
AMPLITUDE, CUSTOMERIO, SEGMENT = "amplitude", "customerio", "segment"
DESTINATIONS = (AMPLITUDE, CUSTOMERIO, SEGMENT)

# The customerio destination, as a marketer would set up Amplitude's Customer.io stream: people are
# addressed by the shop's user id (Customer.io's `id`), the two events the journey needs are sent
# with the properties its messages use, and three person attributes are kept up to date.
CIO_EVENTS = ("Checkout Started", "Order Completed")
CIO_EVENT_PROPERTIES = ("cart_id", "cart_url", "order_id", "value", "revenue", "currency", "items")
CIO_USER_PROPERTIES = ("email", "first_name", "plan")

# Faults the demo asks the sandboxes for, so retries and the dead-letter queue have something honest
# in them. Amplitude: the first request gets a 503 (retry, amplitude.md §2.6), the second a 400
# naming index 0 in `events_with_invalid_fields` (dead-letter exactly that event, resend the rest).
AMPLITUDE_FAULTS: list[dict[str, Any]] = [
    {"status": 503},
    {"status": 400, "invalid_indexes": [0], "invalid_field": "time"},
]
CUSTOMERIO_FAULTS: list[dict[str, Any]] = [{"status": 503, "endpoint": "batch"}]  # 5xx: retry (§2.6)
SEGMENT_FAULTS: list[dict[str, Any]] = [{"status": 429, "retry_after": 1}]  # wait as told (segment.md §5)
ARRANGED_DEAD = 1  # events the Amplitude 400 names

FAULT_NOTES = {
    AMPLITUDE: (
        "Arranged on purpose: the sandbox answered loopwire's first request with 503 and its second "
        "with a 400 naming one event as invalid (how Amplitude refuses an event with a bad field "
        "value; nothing in the scenario is really invalid). loopwire retried the first batch after a "
        "backoff, dead-lettered exactly the one named event with Amplitude's answer, and resent the "
        "rest of that batch at once. With --keep, `loopwire dlq list --config <folder>/demo.yaml` "
        "shows it."
    ),
    CUSTOMERIO: (
        "Arranged on purpose: the sandbox answered loopwire's first Track API batch with 503. "
        "loopwire resent it after a backoff; event ids are deterministic, so a resend never "
        "double-counts."
    ),
    SEGMENT: (
        "Arranged on purpose: the sandbox answered loopwire's first batch with 429 and Retry-After: 1. "
        "loopwire waited the second Segment asked for and resent it."
    ),
}


def make_keys() -> dict[str, str]:
    """Random keys for this run, by environment variable."""
    return {
        SIGNING_ENV: secrets.token_hex(32),
        AMPLITUDE_ENV: "demo-" + secrets.token_hex(12),
        STOREFRONT_ENV: "storefront-" + secrets.token_hex(12),
        SEGMENT_ENV: "cio-engagement-" + secrets.token_hex(12),
        CIO_SITE_ENV: "demo-site-" + secrets.token_hex(4),
        CIO_KEY_ENV: secrets.token_hex(16),
    }


def _lines(items: tuple[str, ...]) -> str:
    return json.dumps(list(items))  # a JSON list is a valid YAML flow sequence


def write_config(folder: Path, urls: dict[str, str], env: dict[str, str], kept: bool) -> Path:
    """demo.yaml (and demo.env when the folder is kept); `urls` by destination name."""
    store = json.dumps(str(folder / STORE_FILES[0]))  # a JSON string is a valid YAML scalar
    retry = """\
    retry:                     # short, so the demo settles in seconds
      initial_backoff: 100ms
      max_backoff: 1s
      max_age: 45s
      timeout: 5s"""
    text = f"""\
# Written by `loopwire demo`: the embedded default (one SQLite file), three inputs, three
# destinations (each a local sandbox) and the journey's holdout experiment. Keys are random per run
# and read from the environment (see demo.env).
store:
  path: {store}
sources:
  customerio_webhooks:         # Customer.io's reporting webhooks (signed)
    signing_keys:
      - ${{{SIGNING_ENV}}}
  segment_api:                 # the storefront's Segment library, host pointed here
    write_keys:
      - ${{{STOREFRONT_ENV}}}
  amplitude_api:               # the app's Amplitude SDK, server URL pointed here
    api_keys:
      - ${{{AMPLITUDE_ENV}}}
destinations:
  {AMPLITUDE + ":":<29}# Customer.io engagement, and the app's events forwarded unchanged
    type: amplitude
    api_key: ${{{AMPLITUDE_ENV}}}
    region: us
    base_url: {json.dumps(urls[AMPLITUDE])}
    account_id: "1"
    workspace_id: "demo"
    batching:
      linger: 250ms            # gather fuller batches while events stream in
{retry}
  {CUSTOMERIO + ":":<29}# storefront and app events → Customer.io's Track API
    type: customerio
    site_id: ${{{CIO_SITE_ENV}}}
    api_key: ${{{CIO_KEY_ENV}}}
    region: us
    base_url: {json.dumps(urls[CUSTOMERIO])}
    identifier: user_id        # the shop's user id is the Customer.io id
    send_users: true           # identify, only when a selected user property changed
    event_properties: {_lines(CIO_EVENT_PROPERTIES)}
    user_properties: {_lines(CIO_USER_PROPERTIES)}
    route:
      events: {_lines(CIO_EVENTS)}
    batching:
      linger: 250ms
{retry}
  {SEGMENT + ":":<29}# Customer.io engagement → Segment track calls
    type: segment
    write_key: ${{{SEGMENT_ENV}}}
    region: us
    base_url: {json.dumps(urls[SEGMENT])}
    batching:
      linger: 250ms
{retry}
experiments:
  {EXPERIMENT_ID}:{" " * max(1, 27 - len(EXPERIMENT_ID))}# the journey's holdout: who gets no message, and the lift
    name: Cart abandon journey
    salt: {HOLDOUT_SALT}     # the scenario holds out with the same salt and rule
    holdout_percent: {HOLDOUT_PERCENT:g}
    conversion: Order Completed  # the storefront's orders (Segment library)
    revenue_property: revenue
    window: {EXPERIMENT_WINDOW}
    # no `audience`: everyone with a user id is assigned when loopwire first sees them (their
    # sign-in, before the checkout), and their group goes out as the trait {HOLDOUT_TRAIT}
"""
    path = folder / "demo.yaml"
    path.write_text(text)
    if kept:  # so `loopwire status --config <folder>/demo.yaml` works after `set -a; . <folder>/demo.env`
        secrets_file = folder / "demo.env"
        secrets_file.unlink(missing_ok=True)
        descriptor = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in env.items()))
    return path
