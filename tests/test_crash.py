"""SIGKILL under load: every event answered 2xx reaches Amplitude after a restart, none twice."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from loopwire.sandbox.amplitude import AmplitudeSandbox
from tests.conftest import API_KEY, SIGNING_KEY, wait_until
from tests.helpers.cio import encode, signed_headers, webhook
from tests.helpers.servers import free_port, serve_app


def start_server(config: Path, port: int, fsize_limit: int | None = None) -> subprocess.Popen[bytes]:
    """`loopwire serve` in a process of its own; `fsize_limit` caps the size of any file it writes
    (RLIMIT_FSIZE, inherited by its ingest process): a disk that fills at that size."""
    env = {**os.environ, "CIO_KEY": SIGNING_KEY, "AMP_KEY": API_KEY}

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    process = subprocess.Popen(
        [sys.executable, "-m", "loopwire", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=limit if fsize_limit is not None else None,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=20, what="loopwire serve to start")
    return process


def serve_config(directory: Path, **amplitude: Any) -> Path:
    """A config file for `loopwire serve`: the webhook source, an amplitude destination with
    `amplitude` options, the store in `directory`; secrets from the environment."""
    config = directory / "loopwire.yaml"
    destination = {"type": "amplitude", "api_key": "${AMP_KEY}", "region": "us", **amplitude}
    document = {
        "store": {"path": str(directory / "loopwire.db")},
        "sources": {"customerio_webhooks": {"signing_keys": ["${CIO_KEY}"]}},
        "destinations": {"amplitude": destination},
    }
    config.write_text(yaml.safe_dump(document))
    return config


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    box = AmplitudeSandbox(api_keys=frozenset({API_KEY}))
    with serve_app(box.app) as sandbox_url:
        config = serve_config(
            tmp_path,
            base_url=sandbox_url,
            batching={"max_events": 50, "linger": "5ms"},
            retry={"initial_backoff": "50ms", "max_backoff": "200ms"},
        )
        port = free_port()
        server = start_server(config, port)
        endpoint = f"http://127.0.0.1:{port}/webhooks/customerio"
        acked: list[str] = []
        sent: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker: int) -> None:
            with httpx.Client(timeout=5) as client:
                for n in range(100_000):
                    if stop.is_set():
                        return
                    doc = webhook(user_id=f"user-{worker:02d}-{n % 50:03d}")
                    body = encode(doc)
                    with lock:
                        sent.append(doc["event_id"])
                    try:
                        answer = client.post(
                            endpoint, content=body, headers=signed_headers(SIGNING_KEY, body)
                        )
                    except httpx.HTTPError:
                        return  # the server died under us: this one was never acknowledged
                    if answer.status_code == 200:
                        with lock:
                            acked.append(doc["event_id"])

        workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for thread in workers:
            thread.start()
        wait_until(lambda: len(acked) >= 400, timeout=30, what="load to build up")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        stop.set()
        for thread in workers:
            thread.join(timeout=10)
        assert len(acked) >= 400

        restarted = start_server(config, port)
        try:
            want = set(acked)
            wait_until(
                lambda: want <= {e["insert_id"] for e in box.events},
                timeout=60,
                what="every acknowledged event in Amplitude",
            )
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(timeout=15)

    insert_ids = [e["insert_id"] for e in box.events]
    # Every event Amplitude holds came from one webhook, under that webhook's own id: no event was
    # delivered twice under different insert ids, and nothing unknown appeared.
    assert len(insert_ids) == len(set(insert_ids))
    assert set(insert_ids) <= set(sent)
