from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

from loopwire.app import create_app
from loopwire.config import Config, parse_config
from loopwire.sandbox.amplitude import AmplitudeSandbox
from loopwire.store import SQLiteStore, Store
from tests.helpers.postgres import Cluster
from tests.helpers.servers import serve_app

SIGNING_KEY = "test_signing_key"
API_KEY = "test-api-key-0001"
CONSOLE_TOKEN = "test-console-token-0001"  # LOOPWIRE_CONSOLE_TOKEN of every test config
Opener = Callable[..., Store]


class Clock:
    """Real time plus an offset the test can advance, so backoffs pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class StoreSection(NamedTuple):
    """The `store:` section of a test's config, and the environment it reads (`${LOOPWIRE_PG_DSN}`)."""

    section: dict[str, Any]
    env: dict[str, str]


def on_backend(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreSection:
    """A store section for `backend`: a SQLite file in `tmp_path`, or a new database of the session's
    PostgreSQL server, its DSN given as users give it, through the environment."""
    if backend == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        return StoreSection({"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"}, {"LOOPWIRE_PG_DSN": dsn})
    return StoreSection({"path": str(tmp_path / "loopwire.db")}, {})


def make_config(
    store: Path | StoreSection,
    sandbox_url: str,
    signing_keys: list[str] | None = None,
    extra_sources: dict[str, Any] | None = None,
    extra_destinations: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **amplitude: Any,
) -> Config:
    """A config as a user would write it, through the same YAML parser and `${ENV}` interpolation."""
    destination: dict[str, Any] = {
        "type": "amplitude",
        "api_key": "${AMP_KEY}",
        "region": "us",
        "base_url": sandbox_url,
        "retry": {"initial_backoff": "50ms", "max_backoff": "200ms", "max_age": "1h", "timeout": "2s"},
        "batching": {"linger": "10ms"},
    }
    destination.update(amplitude)
    if isinstance(store, Path):
        store = StoreSection({"path": str(store)}, {})
    document = {
        "store": store.section,
        "sources": {
            "customerio_webhooks": {"signing_keys": signing_keys or ["${CIO_KEY}"]},
            **(extra_sources or {}),
        },
        "destinations": {"amplitude": destination, **(extra_destinations or {})},
    }
    return parse_config(
        yaml.safe_dump(document),
        env={
            "CIO_KEY": SIGNING_KEY,
            "AMP_KEY": API_KEY,
            "LOOPWIRE_CONSOLE_TOKEN": CONSOLE_TOKEN,
            **store.env,
            **(env or {}),
        },
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the whole session (tests/helpers/postgres.py)."""
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(postgres: Cluster) -> str:
    """The DSN of a new, empty database of the session's server."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores of one database of each backend: a restart, a CLI command beside a server, a
    second node. Closed at the end of the test."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "log.db"

        def make(**options: Any) -> Store:
            return SQLiteStore(path, **options)

    else:
        from loopwire.store.postgres import Store as PostgresStore

        dsn = request.getfixturevalue("pg_dsn")

        def make(**options: Any) -> Store:
            return PostgresStore(dsn, **options)

    def open_store(**options: Any) -> Store:
        store = make(**options)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox() -> Iterator[tuple[AmplitudeSandbox, str]]:
    box = AmplitudeSandbox(api_keys=frozenset({API_KEY}))
    with serve_app(box.app) as url:
        yield box, url


@pytest.fixture
def store_section(tmp_path: Path, request: pytest.FixtureRequest) -> StoreSection:
    """The store of `loopwire`: SQLite. A module runs its tests on both backends by overriding it
    with `store_section = both_backends` (tests/test_app.py)."""
    return on_backend("sqlite", tmp_path, request)


@pytest.fixture(params=["sqlite", "postgres"])
def both_backends(tmp_path: Path, request: pytest.FixtureRequest) -> StoreSection:
    return on_backend(request.param, tmp_path, request)


@pytest.fixture
def loopwire(
    store_section: StoreSection, sandbox: tuple[AmplitudeSandbox, str], clock: Clock
) -> Callable[..., Any]:
    """Start loopwire against the sandbox: `with loopwire(**amplitude_options) as (url, runtime): ...`."""
    from contextlib import contextmanager

    @contextmanager
    def start(**options: Any) -> Iterator[tuple[str, Any]]:
        config = make_config(store_section, sandbox[1], **options)
        app = create_app(config, clock=clock)
        with serve_app(app) as url:
            yield url, app.state.runtime

    return start


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=10)
