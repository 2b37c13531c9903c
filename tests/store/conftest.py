"""`store`: a store of each backend (SQLite and PostgreSQL), opened for the test (`backend`: tests/conftest.py)."""

from __future__ import annotations

import pytest

from loopwire.model import Event
from loopwire.store import Store
from tests.conftest import Opener


def event(n: int) -> Event:
    return Event(
        id=f"evt-{n:05d}",
        source="customerio",
        kind="message",
        channel="email",
        metric="sent",
        time_ms=1_000 + n,
        received_ms=5_000,
        user_id=f"user-{n}",
    )


@pytest.fixture
def store(backend: Opener) -> Store:
    return backend()
