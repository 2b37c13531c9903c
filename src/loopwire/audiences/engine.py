"""The measurement engine: reads the log after its cursor and writes loopwire's own events back.

For each person seen it assigns every experiment's holdout (deterministic, stored once, never
changed) and exports the group as a trait (`holdout_<experiment>`), an `identify` event that routes
like any other, so Customer.io journeys can branch on it and Amplitude can split charts by it.

Crash safety: the exported events carry deterministic ids (`holdout:<experiment>:<user>`) and are
committed before the assignments and the cursor, so a crash in between only repeats work the log's
id dedupe absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from loopwire.audiences.holdouts import Experiment
from loopwire.model import Event, decode_event
from loopwire.store import Store
from loopwire.store import experiments as queries

log = logging.getLogger("loopwire.audiences")

CURSOR = "audiences"
SOURCE = "loopwire"


def trait_name(experiment_id: str) -> str:
    return f"holdout_{experiment_id}"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def identify(user_id: str, traits: dict[str, object], event_id: str, time_ms: int, now_ms: int) -> Event:
    """loopwire's own identify, shaped as a Segment message so every destination reads it."""
    return Event(
        id=event_id,
        source=SOURCE,
        kind="identify",
        time_ms=time_ms,
        received_ms=now_ms,
        user_id=user_id,
        data={
            "type": "identify",
            "userId": user_id,
            "messageId": event_id,
            "timestamp": iso(time_ms),
            "traits": traits,
        },
    )


class Engine:
    def __init__(
        self,
        store: Store,
        experiments: Mapping[str, Experiment],
        ingest: Callable[[Sequence[Event]], Awaitable[list[bool]]],
        clock: Callable[[], float] = time.time,
        batch: int = 2000,
        poll: float = 0.5,
    ) -> None:
        self._store = store
        # Audience-scoped experiments are assigned when the person enters that audience.
        self._everyone = {key: exp for key, exp in experiments.items() if exp.audience is None}
        self._ingest = ingest
        self._clock = clock
        self._batch = batch
        self._poll = poll
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="audience-engine")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                done = await self.run_once()
            except Exception:
                log.exception("the audience engine failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if not done:
                await asyncio.sleep(self._poll)

    async def run_once(self) -> int:
        """Process the next batch of the log; returns how many log rows were read."""
        after = await asyncio.to_thread(queries.cursor, self._store, CURSOR)
        rows = await asyncio.to_thread(self._store.scan_events, 0, after, self._batch)
        if not rows:
            return 0
        first_seen: dict[str, int] = {}
        for _, body in rows:
            event = decode_event(body)
            if event.source == SOURCE or event.user_id is None:
                continue
            seen = first_seen.get(event.user_id)
            if seen is None or event.time_ms < seen:
                first_seen[event.user_id] = event.time_ms
        now_ms = int(self._clock() * 1000)
        assignments: list[tuple[str, str, str, int]] = []
        exports: list[Event] = []
        users = list(first_seen)
        for key, experiment in self._everyone.items():
            known = await asyncio.to_thread(queries.assigned, self._store, key, users)
            for user_id in users:
                if user_id in known:
                    continue
                group = experiment.assign(user_id)
                at = first_seen[user_id]
                assignments.append((key, user_id, group, at))
                exports.append(
                    identify(user_id, {trait_name(key): group}, f"holdout:{key}:{user_id}", at, now_ms)
                )
        if exports:
            await self._ingest(exports)
        await asyncio.to_thread(queries.record, self._store, CURSOR, rows[-1][0], assignments)
        return len(rows)
