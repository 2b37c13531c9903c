"""Several `loopwire serve` nodes on one PostgreSQL database (issue 11): each webhook is taken by
whichever node it reaches, and every event reaches Amplitude exactly once, whichever node sends it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from loopwire.app import create_app
from tests.conftest import SIGNING_KEY, Clock, make_config, on_backend, post, wait_until
from tests.helpers.cio import encode, signed_headers, webhook
from tests.helpers.servers import serve_app


def test_two_nodes_deliver_every_event_once(
    tmp_path: Path, sandbox: Any, clock: Clock, request: pytest.FixtureRequest
) -> None:
    box, sandbox_url = sandbox
    config = make_config(on_backend("postgres", tmp_path, request), sandbox_url, batching={"linger": "0s"})
    docs = [
        webhook("email", "sent", user_id=f"cust_{n:04d}", event_id=f"evt-node-{n:04d}") for n in range(60)
    ]
    with ExitStack() as stack:
        apps = [create_app(config, clock=clock) for _ in range(2)]
        urls = [stack.enter_context(serve_app(app)) for app in apps]
        runtimes = [app.state.runtime for app in apps]

        def send(n: int) -> int:
            body = encode(docs[n % len(docs)])
            # every event reaches one node, and a tenth of them the other one too (a retried webhook)
            return post(
                f"{urls[n % 2]}/webhooks/customerio", body, signed_headers(SIGNING_KEY, body)
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, [*range(60), *range(61, 67)]))
        assert set(statuses) == {200}
        wait_until(lambda: runtimes[0].store.counts()["amplitude"]["delivered"] == 60, what="every delivery")
        assert runtimes[1].store.event_count() == 60
        assert runtimes[1].store.counts()["amplitude"] == {
            "pending": 0,
            "in_flight": 0,
            "delivered": 60,
            "dead": 0,
            "skipped": 0,
        }
    assert box.stats()["duplicates"] == 0 and box.stats()["events_ingested"] == 60
    assert sorted(e["insert_id"] for e in box.events) == sorted(d["event_id"] for d in docs)


def test_a_node_killed_mid_run_loses_nothing_and_the_other_delivers_it_once(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two `loopwire serve` processes on one database under load; one is SIGKILLed. Every webhook
    # either node answered 200 reaches Amplitude, under its own insert id, once: what the dead node
    # had in flight is put back by the live one (store/postgres.py `_reap`), not only at a restart.
    import signal
    import threading
    import time

    import httpx
    import yaml

    from loopwire.sandbox.amplitude import AmplitudeSandbox
    from tests.conftest import API_KEY
    from tests.helpers.servers import free_port
    from tests.test_crash import start_server

    monkeypatch.setenv("LOOPWIRE_PG_DSN", pg_dsn)
    box = AmplitudeSandbox(api_keys=frozenset({API_KEY}))
    with serve_app(box.app) as sandbox_url:
        config = tmp_path / "loopwire.yaml"
        destination = {
            "type": "amplitude",
            "api_key": "${AMP_KEY}",
            "region": "us",
            "base_url": sandbox_url,
            "batching": {"max_events": 50, "linger": "5ms"},
            "retry": {"initial_backoff": "50ms", "max_backoff": "200ms"},
        }
        document = {
            "store": {"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"},
            "sources": {"customerio_webhooks": {"signing_keys": ["${CIO_KEY}"]}},
            "destinations": {"amplitude": destination},
        }
        config.write_text(yaml.safe_dump(document))
        ports = [free_port(), free_port()]
        nodes = [start_server(config, port) for port in ports]
        acked: list[str] = []
        sent: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        dead: set[int] = set()

        def load(worker: int) -> None:
            with httpx.Client(timeout=5) as client:
                for n in range(100_000):
                    if stop.is_set():
                        return
                    node = (worker + n) % 2
                    if node in dead:
                        node = 1 - node
                    doc = webhook(user_id=f"user-{worker:02d}-{n % 50:03d}")
                    body = encode(doc)
                    with lock:
                        sent.append(doc["event_id"])
                    try:
                        answer = client.post(
                            f"http://127.0.0.1:{ports[node]}/webhooks/customerio",
                            content=body,
                            headers=signed_headers(SIGNING_KEY, body),
                        )
                    except httpx.HTTPError:
                        continue  # the node died under this request: it was never acknowledged
                    if answer.status_code == 200:
                        with lock:
                            acked.append(doc["event_id"])

        workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        try:
            for thread in workers:
                thread.start()
            wait_until(lambda: len(acked) >= 300, timeout=60, what="load to build up")
            # the next batches sent hang, then their connections drop unanswered: the node killed
            # now dies with rows in flight that Amplitude never stored
            box.add_fault(slow_ms=3000, close_connection=True, times=6)
            wait_until(
                lambda: len(box.requests) and box.stats()["faults_pending"] < 6, what="a hanging batch"
            )
            time.sleep(0.3)
            dead.add(0)
            nodes[0].send_signal(signal.SIGKILL)
            nodes[0].wait(timeout=10)
            at_kill = len(acked)
            wait_until(
                lambda: len(acked) >= at_kill + 200, timeout=60, what="the other node to take the load"
            )
            stop.set()
            for thread in workers:
                thread.join(timeout=10)
            want = set(acked)
            wait_until(
                lambda: want <= {e["insert_id"] for e in box.events},
                timeout=60,
                what="every acknowledged event in Amplitude",
            )
        finally:
            stop.set()
            for node in nodes:
                if node.poll() is None:
                    node.send_signal(signal.SIGTERM)
                    node.wait(timeout=15)
    insert_ids = [e["insert_id"] for e in box.events]
    assert len(insert_ids) == len(set(insert_ids))  # none twice
    assert set(insert_ids) <= set(sent)  # nothing unknown


def test_a_pause_on_one_node_acts_on_every_node(
    tmp_path: Path,
    sandbox: Any,
    clock: Clock,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The console of node A pauses amplitude: node B stops sending within PAUSES_FOLLOW_S (its
    # webhooks are queued), and sends them once A's console resumes it.
    import httpx

    from loopwire import app as app_module
    from tests.conftest import CONSOLE_TOKEN

    monkeypatch.setattr(app_module, "PAUSES_FOLLOW_S", 0.1)
    box, sandbox_url = sandbox
    config = make_config(on_backend("postgres", tmp_path, request), sandbox_url, batching={"linger": "0s"})
    bearer = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
    with ExitStack() as stack:
        apps = [create_app(config, clock=clock) for _ in range(2)]
        urls = [stack.enter_context(serve_app(app)) for app in apps]
        node_b = apps[1].state.runtime
        answer = httpx.post(f"{urls[0]}/api/destinations/amplitude/pause", headers=bearer)
        assert answer.status_code == 200
        wait_until(lambda: "amplitude" not in node_b.couriers, what="node B's courier stopped")
        assert node_b.paused == {"amplitude"}
        body = encode(webhook("email", "sent", user_id="cust_pause", event_id="evt-paused-on-b"))
        assert (
            post(f"{urls[1]}/webhooks/customerio", body, signed_headers(SIGNING_KEY, body)).status_code == 200
        )
        assert node_b.store.counts()["amplitude"]["pending"] == 1
        assert box.stats()["events_ingested"] == 0  # queued, not sent, by either node
        answer = httpx.post(f"{urls[0]}/api/destinations/amplitude/resume", headers=bearer)
        assert answer.status_code == 200
        wait_until(lambda: node_b.store.counts()["amplitude"]["delivered"] == 1, what="the queued event sent")
        wait_until(lambda: "amplitude" in node_b.couriers, what="node B's courier started again")
        assert node_b.paused == set()
    assert [e["insert_id"] for e in box.events] == ["evt-paused-on-b"]
