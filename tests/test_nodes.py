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
