"""`loopwire demo`: the scenario played through a real loopwire, in every direction it carries data.

In: Customer.io's signed reporting webhooks, the storefront's Segment library and the app's Amplitude
SDK, all as real HTTP to loopwire's own endpoints. Out: the Amplitude, Customer.io and Segment
sandboxes, which check what they get as the vendors do. Only the vendors are stand-ins.

The calls are played in three rounds, each settled (loopwire's engine has read the whole log, and
nothing is pending or in flight) before the next:
1. before the journey: the storefront's sign-ins, product views and abandoned checkouts;
2. the app's first sessions (who the user is, their plan);
3. the journey: Customer.io's webhooks, the orders, the app's later sessions.
A person's rounds follow their own timeline. Settling between rounds makes "identify only when a
selected property changed" deterministic: each update is compared with what Customer.io has already
accepted, never with an update still in flight (the engine's holdout trait included).

The report is read back from loopwire (`runtime.status()`, its metrics, the experiment's assignments
and `lift_report`) and from the sandboxes, then checked against the scenario (`report.build_report`).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from loopwire.analysis.inputs import lift_report
from loopwire.analysis.report import render_html, to_json
from loopwire.app import Runtime, create_app
from loopwire.audiences.engine import CURSOR as ENGINE_CURSOR
from loopwire.config import load_config
from loopwire.demo import wiring
from loopwire.demo.render import print_report
from loopwire.demo.report import build_report
from loopwire.demo.scenario import DURATION, EXPERIMENT_ID, HOLDOUT_SHARE, build_scenario
from loopwire.demo.senders import App, Storefront, missing_sdks, send_webhooks
from loopwire.demo.servers import Tap, serve_in_thread
from loopwire.sandbox.amplitude import AmplitudeSandbox
from loopwire.sandbox.customerio import CustomerioSandbox
from loopwire.sandbox.segment import SegmentSandbox
from loopwire.store import Store
from loopwire.store import experiments as experiment_queries

SETTLE_TIMEOUT = 60.0  # seconds to wait for delivery to settle, per round, before reporting what is left
ASSIGN_TIMEOUT = 30.0  # seconds to wait for the engine to have assigned every person with an id
SOURCES = {"customerio": "customerio_webhooks", "segment": "segment_api", "amplitude": "amplitude_api"}


class Sandboxes:
    """The three vendor stand-ins, each on its own loopback port."""

    def __init__(self, keys: dict[str, str], stack: ExitStack) -> None:
        self.amplitude = AmplitudeSandbox(api_keys=frozenset({keys[wiring.AMPLITUDE_ENV]}))
        self.customerio = CustomerioSandbox(credentials={keys[wiring.CIO_SITE_ENV]: keys[wiring.CIO_KEY_ENV]})
        self.segment = SegmentSandbox(write_keys=frozenset({keys[wiring.SEGMENT_ENV]}))
        self.customerio_tap = Tap(self.customerio.app, "/api/")  # keeps the operations as sent
        self.urls = {
            wiring.AMPLITUDE: stack.enter_context(serve_in_thread(self.amplitude.app, "amplitude-sandbox")),
            wiring.CUSTOMERIO: stack.enter_context(
                serve_in_thread(self.customerio_tap, "customerio-sandbox")
            ),
            wiring.SEGMENT: stack.enter_context(serve_in_thread(self.segment.app, "segment-sandbox")),
        }

    def arm_faults(self) -> None:
        for name, faults, vendor in (
            (wiring.AMPLITUDE, wiring.AMPLITUDE_FAULTS, "amplitude"),
            (wiring.CUSTOMERIO, wiring.CUSTOMERIO_FAULTS, "customerio"),
            (wiring.SEGMENT, wiring.SEGMENT_FAULTS, "segment"),
        ):
            answer = httpx.post(f"{self.urls[name]}/_sandbox/{vendor}/faults", json=faults, timeout=5)
            answer.raise_for_status()

    def _get(self, name: str, path: str) -> Any:
        answer = httpx.get(f"{self.urls[name]}{path}", timeout=10)
        answer.raise_for_status()
        return answer.json()

    def observe(self) -> dict[str, Any]:
        """What each vendor holds, read through its control API; Customer.io's operations as sent."""
        operations: list[dict[str, Any]] = []
        for path, status, body in list(self.customerio_tap.exchanges):
            if path.startswith("/api/v2/batch") and status == 200:  # a 207 would apply only some
                operations.extend(msgspec.json.decode(body).get("batch", []))
        return {
            "amplitude_events": self._get(wiring.AMPLITUDE, "/_sandbox/amplitude/events")["events"],
            "customerio_people": self._get(wiring.CUSTOMERIO, "/_sandbox/customerio/people")["people"],
            "customerio_events": self._get(wiring.CUSTOMERIO, "/_sandbox/customerio/events")["events"],
            "customerio_operations": operations,
            "segment_messages": self._get(wiring.SEGMENT, "/_sandbox/segment/messages")["messages"],
            "segment_dropped": self._get(wiring.SEGMENT, "/_sandbox/segment/dropped")["dropped"],
        }


def run_demo(people: int, seed: int, keep: Path | None, progress: bool, console: Console) -> dict[str, Any]:
    """Play `people` shoppers (seeded by `seed`); returns the report, printing it when `progress`."""
    missing = missing_sdks()
    if missing:
        raise RuntimeError(
            "the demo drives the official Segment and Amplitude Python libraries; install "
            f"{' and '.join(missing)} (`pip install -e '.[test]'`, as `make demo` does)"
        )
    began = time.monotonic()
    # Events happened over the last ~3 days; X-CIO-Timestamp is the send time (now), as for Customer.io.
    scenario = build_scenario(people, seed, start=int(time.time()) - DURATION - 600)
    keys = wiring.make_keys()
    if progress:
        e = scenario.expected
        console.print(
            f"[bold]loopwire demo[/bold]: {e.people} shoppers abandon a cart (SMS after 1 h, email after"
            f" 20 h, last-call email after 48 h; {HOLDOUT_SHARE:.0%} held out by loopwire's experiment"
            f" `{EXPERIMENT_ID}`). In: {e.store_calls}"
            f" storefront calls (Segment library), {e.app_calls} app events (Amplitude SDK),"
            f" {e.webhooks} Customer.io webhooks. Out: Amplitude, Customer.io, Segment.",
            highlight=False,
        )
    with ExitStack() as stack:
        folder = _folder(keep, stack)
        boxes = Sandboxes(keys, stack)
        config_path = wiring.write_config(folder, boxes.urls, keys, keep is not None)
        config = load_config(config_path, env={**os.environ, **keys})
        boxes.arm_faults()
        app = create_app(config)
        runtime: Runtime = app.state.runtime
        url = stack.enter_context(serve_in_thread(app, "loopwire"))
        storefront = Storefront(url, keys[wiring.STOREFRONT_ENV])
        stack.callback(storefront.close)
        mobile = App(f"{url}/2/httpapi", keys[wiring.AMPLITUDE_ENV])
        stack.callback(mobile.close)
        with _bars(console, progress) as bars:
            ins = {
                "segment": bars.add_task("storefront → loopwire", total=len(scenario.storefront)),
                "amplitude": bars.add_task("app → loopwire", total=len(scenario.app)),
                "customerio": bars.add_task("webhooks → loopwire", total=len(scenario.webhooks)),
            }
            outs = {name: bars.add_task(f"loopwire → {name}", total=None) for name in wiring.DESTINATIONS}

            def tick(source: str) -> Callable[[], None]:
                return lambda: bars.advance(ins[source])

            def settle() -> tuple[dict[str, Any], bool]:
                return _settle(runtime, SETTLE_TIMEOUT, bars, outs)

            storefront.send([c for c in scenario.storefront if c.round == 1], tick("segment"))
            status, settled = settle()
            mobile.send([e for e in scenario.app if e.round == 2], tick("amplitude"))
            status, settled2 = settle()
            signing_key = keys[wiring.SIGNING_ENV].encode()
            sent = asyncio.run(send_webhooks(url, scenario.webhooks, signing_key, tick("customerio")))
            storefront.send([c for c in scenario.storefront if c.round == 3], tick("segment"))
            mobile.send([e for e in scenario.app if e.round == 3], tick("amplitude"))
            status, settled3 = settle()
        assignments = _await_assignments(runtime.store, set(scenario.expected.assignments), ASSIGN_TIMEOUT)
        lift = lift_report(runtime.store, EXPERIMENT_ID, config.experiments[EXPERIMENT_ID])
        html_path = None
        if keep is not None:
            html_path = folder / wiring.LIFT_HTML
            html_path.write_text(render_html(lift))
        observed = {
            "status": status,
            "settled": settled and settled2 and settled3,
            "webhooks": sent,
            "storefront": storefront.counts(),
            "app": mobile.counts(),
            "app_bodies": dict(mobile.bodies),
            "ingest": _ingest_counts(runtime),
            "destinations": {name: _delivery(runtime, name) for name in wiring.DESTINATIONS},
            "assignments": assignments,
            "lift": to_json(lift),
            "lift_html": str(html_path) if html_path is not None else None,
            **boxes.observe(),
        }
        # leaving the block stops the SDK clients, loopwire (couriers, HTTP client, store), the sandboxes
    report = build_report(
        scenario,
        observed,
        seed=seed,
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
    for name in wiring.STORE_FILES:  # a previous demo's store: its events would mix with this run's
        (keep / name).unlink(missing_ok=True)
    return keep.resolve()


@contextmanager
def _bars(console: Console, show: bool) -> Iterator[Progress]:
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show) as bars:
        yield bars


def _engine_done(store: Store) -> bool:
    """Has loopwire's engine read the whole log (and so assigned everyone and written their traits)?"""
    return not store.scan_events(0, experiment_queries.cursor(store, ENGINE_CURSOR), 1)


def _settle(
    runtime: Runtime, timeout: float, bars: Progress, tasks: dict[str, TaskID]
) -> tuple[dict[str, Any], bool]:
    """Poll until the engine has read the whole log and no row of any destination is pending or in
    flight (or `timeout` passes). The engine is asked first: what it writes is routed as it is logged."""
    deadline = time.monotonic() + timeout
    while True:
        engine_done = _engine_done(runtime.store)
        status = runtime.status()
        busy = False
        for name, task in tasks.items():
            states = status["destinations"].get(name, {})
            done = sum(states.get(s, 0) for s in ("delivered", "skipped", "dead"))
            busy = busy or states.get("pending", 0) > 0 or states.get("in_flight", 0) > 0
            bars.update(task, completed=done, total=sum(states.values()))
        if engine_done and not busy:
            return status, True
        if time.monotonic() > deadline:
            return status, False
        time.sleep(0.05)


def _await_assignments(store: Store, user_ids: set[str], timeout: float) -> list[tuple[str, str, int]]:
    """The experiment's assignments once they hold every one of `user_ids` (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = experiment_queries.assignments(store, EXPERIMENT_ID)
        if user_ids <= {user_id for user_id, _, _ in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _samples(runtime: Runtime, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in runtime.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def _ingest_counts(runtime: Runtime) -> dict[str, dict[str, int]]:
    """Per source, as loopwire counted it: new events logged, duplicates, refused requests and messages."""
    counts = {source: {"accepted": 0, "duplicates": 0, "refused": 0} for source in SOURCES}
    for metric, key in (
        ("loopwire_ingest_events_total", "accepted"),
        ("loopwire_ingest_duplicate_events_total", "duplicates"),
        ("loopwire_ingest_rejected_requests_total", "refused"),
    ):
        for labels, value in _samples(runtime, metric):
            if labels.get("source") in counts:
                counts[labels["source"]][key] += int(value)
    return counts


def _delivery(runtime: Runtime, name: str) -> dict[str, Any]:
    statuses = {
        labels["status"]: int(value)
        for labels, value in _samples(runtime, "loopwire_delivery_requests_total")
        if labels.get("destination") == name
    }
    retried = runtime.metrics.registry.get_sample_value(
        "loopwire_delivery_events_total", {"destination": name, "outcome": "retried"}
    )
    return {
        "requests_by_status": dict(sorted(statuses.items())),
        "retried": int(retried or 0),
        "dead_letters": runtime.store.dead_letters(name, 20),
    }
