"""`loopwire demo`: play the cart-abandonment scenario through a real loopwire into the Amplitude sandbox.

Everything is real except the two vendors: the webhooks are signed HTTP requests to loopwire's own
`POST /webhooks/customerio`, loopwire commits them to a SQLite log and delivers them over HTTP to the
local Amplitude sandbox, which validates them as Amplitude does. The report is read back from
loopwire's store (`runtime.status()`) and from the sandbox, then checked against the scenario.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loopwire.app import Runtime, create_app
from loopwire.config import load_config
from loopwire.demo.report import build_report, print_report
from loopwire.demo.scenario import DURATION, HOLDOUT_SHARE, Webhook, build_scenario
from loopwire.demo.servers import serve_in_thread
from loopwire.sandbox.amplitude import AmplitudeSandbox

DESTINATION = "amplitude"
CONCURRENCY = 8  # webhook requests in flight, as Customer.io's senders overlap
SETTLE_TIMEOUT = 60.0  # seconds to wait for delivery to settle before reporting what is left
SIGNING_ENV = "LOOPWIRE_DEMO_SIGNING_KEY"
AMPLITUDE_ENV = "LOOPWIRE_DEMO_AMPLITUDE_KEY"
STORE_FILES = ("demo.db", "demo.db-wal", "demo.db-shm")

# The two faults the demo arranges, so retries and the dead-letter queue have something honest in
# them. The sandbox answers loopwire's first request with a 503 (Amplitude failed internally; retry,
# amplitude.md §2.6) and its second as Amplitude answers a batch holding one event with an invalid
# field value (400, `events_with_invalid_fields` naming index 0). loopwire must resend the first
# batch after a backoff, park exactly the one named event with Amplitude's answer, and resend the
# rest of the second batch at once.
FAULTS = [{"status": 503}, {"status": 400, "invalid_indexes": [0], "invalid_field": "time"}]
ARRANGED_DEAD = 1  # events the second fault names
FAULT_NOTE = (
    "Arranged on purpose: the sandbox answered loopwire's first request with 503 and its second with "
    "a 400 naming one event as invalid (how Amplitude refuses an event with a bad field value; nothing "
    "in the scenario is really invalid). loopwire retried the first batch after a backoff, dead-lettered "
    "exactly the one named event with Amplitude's answer, and resent the rest of that batch at once. "
    "With --keep, `loopwire dlq list --config <folder>/demo.yaml` shows it."
)

_encode = msgspec.json.Encoder().encode


def run_demo(people: int, seed: int, keep: Path | None, progress: bool, console: Console) -> dict[str, Any]:
    """Play `people` shoppers (seeded by `seed`); returns the report, printing it when `progress`."""
    began = time.monotonic()
    # Events happened over the last ~3 days; X-CIO-Timestamp is the send time (now), as for Customer.io.
    scenario = build_scenario(people, seed, start=int(time.time()) - DURATION - 600)
    signing_key = secrets.token_hex(32)
    api_key = "demo-" + secrets.token_hex(12)
    env = {SIGNING_ENV: signing_key, AMPLITUDE_ENV: api_key}
    if progress:
        e = scenario.expected
        console.print(
            f"[bold]loopwire demo[/bold]: {e.people} shoppers abandon a cart (SMS after 1 h, email after"
            f" 20 h, last-call email after 48 h; {HOLDOUT_SHARE:.0%} held out). Customer.io reports"
            f" {e.events} message events as signed webhooks, {e.redeliveries} of them twice.",
            highlight=False,
        )
    with ExitStack() as stack:
        folder = _folder(keep, stack)
        sandbox = AmplitudeSandbox(api_keys=frozenset({api_key}))
        sandbox_url = stack.enter_context(serve_in_thread(sandbox.app, "amplitude-sandbox"))
        config_path = _write_config(folder, sandbox_url, env, keep is not None)
        config = load_config(config_path, env={**os.environ, **env})
        _arm_fault(sandbox_url)
        app = create_app(config)
        runtime: Runtime = app.state.runtime
        loopwire_url = stack.enter_context(serve_in_thread(app, "loopwire"))
        with _bars(console, progress) as bars:
            send_task = bars.add_task("webhooks → loopwire", total=len(scenario.webhooks))
            sent = asyncio.run(
                _send(loopwire_url, scenario.webhooks, signing_key.encode(), lambda: bars.advance(send_task))
            )
            deliver_task = bars.add_task("loopwire → Amplitude", total=scenario.expected.events)
            status, settled = _settle(
                runtime, SETTLE_TIMEOUT, lambda n: bars.update(deliver_task, completed=n)
            )
        observed = {
            "status": status,
            "settled": settled,
            "sent": sent,
            "sandbox_events": _sandbox_events(sandbox_url),
            "dead_letters": runtime.store.dead_letters(DESTINATION, 20),
            "requests_by_status": _requests_by_status(runtime),
            "retried": _sample(runtime, "loopwire_delivery_events_total", outcome="retried"),
        }
        # leaving the block stops loopwire (couriers, HTTP client, store) and then the sandbox
    report = build_report(
        scenario,
        observed,
        seed=seed,
        # the 400 needs a second request, which any deliverable event brings (the 503 resends it)
        expected_dead=ARRANGED_DEAD if scenario.expected.events > scenario.expected.skipped else 0,
        fault_note=FAULT_NOTE,
        folder=str(folder) if keep is not None else None,
        seconds=time.monotonic() - began,
    )
    if progress:
        print_report(console, report)
    return report


def _folder(keep: Path | None, stack: ExitStack) -> Path:
    if keep is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopwire-demo-")))
    keep.mkdir(parents=True, exist_ok=True)
    for name in STORE_FILES:  # a previous demo's store: its events would mix with this run's
        (keep / name).unlink(missing_ok=True)
    return keep.resolve()


def _write_config(folder: Path, sandbox_url: str, env: dict[str, str], kept: bool) -> Path:
    store = json.dumps(str(folder / STORE_FILES[0]))  # a JSON string is a valid YAML scalar
    text = f"""\
# Written by `loopwire demo`: the embedded default (one SQLite file) delivering to the local
# Amplitude sandbox. Keys are random per run and read from the environment (see demo.env).
store:
  path: {store}
sources:
  customerio_webhooks:
    signing_keys:
      - ${{{SIGNING_ENV}}}
destinations:
  {DESTINATION}:
    type: amplitude
    api_key: ${{{AMPLITUDE_ENV}}}
    region: us
    base_url: {json.dumps(sandbox_url)}
    account_id: "1"
    workspace_id: "demo"
    batching:
      linger: 250ms            # gather fuller batches while webhooks stream in
    retry:                     # short, so the demo settles in seconds
      initial_backoff: 100ms
      max_backoff: 1s
      max_age: 45s
      timeout: 5s
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


def _arm_fault(sandbox_url: str) -> None:
    answer = httpx.post(f"{sandbox_url}/_sandbox/amplitude/faults", json=FAULTS, timeout=5)
    answer.raise_for_status()


@contextmanager
def _bars(console: Console, show: bool) -> Iterator[Progress]:
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show) as bars:
        yield bars


async def _send(
    base_url: str, webhooks: list[Webhook], key: bytes, done: Callable[[], None]
) -> dict[str, Any]:
    """POST every webhook, signed as Customer.io signs it (customerio.md §1.2); counts the answers."""
    counts: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    queue = iter(webhooks)  # shared by the workers: each takes the next webhook in order

    async def worker(client: httpx.AsyncClient) -> None:
        for hook in queue:
            raw = _encode(hook.body)
            timestamp = str(int(time.time()))
            signature = hmac.new(key, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
            headers = {
                "X-CIO-Timestamp": timestamp,
                "X-CIO-Signature": signature,
                "Content-Type": "application/json",
            }
            answer = await client.post("/webhooks/customerio", content=raw, headers=headers)
            if answer.status_code == 200:
                counts[str(answer.json().get("status"))] += 1
            else:
                counts["refused"] += 1
                refusals[f"{answer.status_code} {answer.text[:200]}"] += 1
            done()

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return {
        "sent": len(webhooks),
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "refused": counts["refused"],
        "refusals": dict(refusals),
    }


def _settle(runtime: Runtime, timeout: float, tick: Callable[[int], None]) -> tuple[dict[str, Any], bool]:
    """Poll until no row is pending or in flight (or `timeout` passes); returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = runtime.status()
        states = status["destinations"].get(DESTINATION, {})
        tick(sum(states.get(s, 0) for s in ("delivered", "skipped", "dead")))
        if states.get("pending", 0) == 0 and states.get("in_flight", 0) == 0:
            return status, True
        if time.monotonic() > deadline:
            return status, False
        time.sleep(0.05)


def _sandbox_events(sandbox_url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{sandbox_url}/_sandbox/amplitude/events", timeout=10)
    answer.raise_for_status()
    doc = answer.json()
    events = doc.get("events", []) if isinstance(doc, dict) else doc
    return [e for e in events if isinstance(e, dict)]


def _sample(runtime: Runtime, name: str, **labels: str) -> int:
    value = runtime.metrics.registry.get_sample_value(name, {"destination": DESTINATION, **labels})
    return int(value or 0)


def _requests_by_status(runtime: Runtime) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in runtime.metrics.registry.collect():
        for sample in family.samples:
            if (
                sample.name == "loopwire_delivery_requests_total"
                and sample.labels.get("destination") == DESTINATION
            ):
                found[sample.labels["status"]] = int(sample.value)
    return dict(sorted(found.items()))
