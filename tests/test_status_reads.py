"""Status, console and /metrics read the store in a thread: while a slow read runs, the server goes
on answering (issue 13, item 2)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.bridge import serve_bridge
from tests.helpers.console import login

SLOW_S = 1.5


@pytest.mark.parametrize("path", ["/api/status", "/", "/metrics"])
def test_a_slow_status_read_does_not_stop_the_server(tmp_path: Path, path: str) -> None:
    with serve_bridge(tmp_path, ingest_process=False) as (url, runtime):
        real_read = runtime.store.read

        def slow_read(query: Any) -> Any:
            time.sleep(SLOW_S)  # a read of a huge log, holding no lock the server needs
            return real_read(query)

        runtime.store.read = slow_read  # type: ignore[method-assign]
        answered: list[int] = []
        with login(url) as operator:
            reader = threading.Thread(target=lambda: answered.append(operator.get(path).status_code))
            reader.start()
            time.sleep(0.2)  # the slow read is under way
            started = time.monotonic()
            for _ in range(5):
                assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
            waited = time.monotonic() - started
            reader.join()
        assert answered == [200]
        assert waited < SLOW_S / 2, f"/healthz waited {waited:.2f}s behind {path}"
