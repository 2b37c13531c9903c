"""The durable store: event log, per-destination outboxes, dead letters. SQLite is the embedded default.

Everything above `store/` is typed against `Store` (the Protocol of store/base.py) and gets one from
`open_store`; nothing there knows which database it runs on.
"""

import sqlite3
from typing import Literal, Protocol

from loopwire.store.base import Claimed, Settlement, Store
from loopwire.store.memory import SentMemory
from loopwire.store.sqlite import Appender
from loopwire.store.sqlite import Store as SQLiteStore

# What a database raises when it cannot take a write (disk full, I/O error, connection lost): a caller
# logs one line for these rather than a traceback each.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

__all__ = [
    "STORE_ERRORS",
    "Appender",
    "Claimed",
    "SQLiteStore",
    "SentMemory",
    "Settlement",
    "Store",
    "open_store",
]


class _Secret(Protocol):
    def reveal(self) -> str: ...


class StoreSettings(Protocol):
    """The config's `store:` section (config.StoreConfig), as the store reads it."""

    @property
    def type(self) -> Literal["sqlite", "postgres"]: ...

    @property
    def path(self) -> str: ...

    @property
    def dsn(self) -> _Secret | None: ...

    @property
    def group_commit_max(self) -> int: ...

    @property
    def pool_max(self) -> int: ...


def open_store(settings: StoreSettings, *, recover: bool = True) -> Store:
    """Open (creating and migrating) the configured store. Only the serving process recovers rows
    left in flight: a CLI command opened beside a running server passes `recover=False` (on
    PostgreSQL a store recovers only the rows of nodes that are gone, whoever opens it)."""
    if settings.type == "postgres":
        from loopwire.store.postgres import Store as PostgresStore  # psycopg: the `postgres` extra

        if settings.dsn is None:
            raise ValueError("a PostgreSQL store needs a DSN")
        return PostgresStore(
            settings.dsn.reveal(), settings.group_commit_max, recover=recover, pool_max=settings.pool_max
        )
    return SQLiteStore(settings.path, settings.group_commit_max, recover=recover)
