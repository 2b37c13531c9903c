"""loopwire with all three inputs on (Customer.io webhooks, the Amplitude and Segment APIs), served
over loopback against an Amplitude sandbox: what the hardening and fuzz tests attack."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from loopwire.app import Runtime, create_app
from loopwire.sandbox.amplitude import AmplitudeSandbox
from tests.conftest import API_KEY, make_config
from tests.helpers.servers import serve_app

WRITE_KEY = "wk_test_0001"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


@contextmanager
def serve_bridge(
    tmp_path: Path, ingest_process: bool = True, destination_url: str | None = None, **server: Any
) -> Iterator[tuple[str, Runtime]]:
    """Yields (base URL, runtime); `server` options override `server:` in the config, and
    `destination_url` sends the Amplitude destination somewhere else than the sandbox."""
    box = AmplitudeSandbox(api_keys=frozenset({API_KEY}))
    with serve_app(box.app) as sandbox_url:
        config = make_config(
            tmp_path / "loopwire.db",
            destination_url or sandbox_url,
            extra_sources={
                "amplitude_api": {"api_keys": ["${AMP_KEY}"]},
                "segment_api": {"write_keys": [WRITE_KEY]},
            },
        )
        options = msgspec.structs.replace(config.server, ingest_process=ingest_process, **server)
        app = create_app(msgspec.structs.replace(config, server=options))
        with serve_app(app) as url:
            yield url, app.state.runtime
