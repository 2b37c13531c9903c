"""What a destination last sent per key, so it can send only changes (migration 2's `sent_state`)."""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from loopwire.store.base import Connection, Store


class SentMemory:
    """A destination's memory of what it last sent per key (a person, say): `recall` reads it (sync, from
    a read connection, cheap), `remember` writes it after the destination confirmed delivery."""

    def __init__(self, store: Store, dest: str) -> None:
        self._store = store
        self._dest = dest
        self._reader = store.reader()
        self._lock = threading.Lock()

    def recall(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._reader.execute(
                "SELECT value FROM sent_state WHERE dest = ? AND key = ?", (self._dest, key)
            ).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = msgspec.json.decode(row[0])
        return value

    async def remember(self, items: dict[str, dict[str, Any]], now_ms: int) -> None:
        if not items:
            return
        rows = [(self._dest, key, msgspec.json.encode(value), now_ms) for key, value in items.items()]

        def job(conn: Connection) -> None:
            conn.executemany(
                "INSERT INTO sent_state (dest, key, value, updated_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (dest, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                rows,
            )

        await self._store.write(job)

    def close(self) -> None:
        self._reader.close()
