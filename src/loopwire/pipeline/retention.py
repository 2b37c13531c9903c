"""Retention in `loopwire serve`: every `store.retention.interval`, trim the log and the outboxes
(store/retention.py) in small transactions through the store's writer, then give the freed pages
back; what it deleted is counted in the store (`loopwire_retention_deleted_rows_total`) and logged.
On PostgreSQL the same rules drop old partitions whole (store/postgres_retention.py), on the one
node that leads "retention" (`Store.lead`; on SQLite, the one server).

What the configured readers of the log still need decides what stays, besides the windows:
- the audience engine and the identity graph read the log by seq: nothing after their cursors goes;
- an audience may read an event at any age (`first`, `last`, `since`, `sum`, a window-less `count`,
  a `profile` condition): such events stay (`recompute.lasting_names`); the config makes the events
  window at least as long as every bounded window (config.py `_check_retention`);
- an experiment's conversion events stay, so a lift report counts every conversion of people
  assigned long ago (the messages that reached them go with the window: docs/lift.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from loopwire.audiences.engine import CURSOR as ENGINE_CURSOR
from loopwire.audiences.recompute import lasting_names
from loopwire.config import Config
from loopwire.store import Store
from loopwire.store import experiments as experiments_store
from loopwire.store import identity as identity_graph
from loopwire.store import retention as retention_store
from loopwire.store.base import Dialect
from loopwire.store.retention import Cutoffs, Term, Trimmed, trim

log = logging.getLogger("loopwire.retention")
LEAD = "retention"  # the role `Store.lead` gives one node of a shared store
FIRST_RUN_DELAY_S = 1.0  # after startup, once the engine and the identity follower are running


def keep_sql(config: Config, dialect: Dialect = "sqlite") -> Term:
    """Rows retention keeps whatever their age (store/retention.py `keep_sql`)."""
    lasting, profile = lasting_names(config.audiences) if config.audiences else (set(), False)
    conversions = {experiment.conversion for experiment in config.experiments.values()}
    return retention_store.keep_sql(lasting, profile, conversions, dialect)


class Retention:
    def __init__(self, store: Store, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._policy = config.store.retention
        self._keep = keep_sql(config, store.dialect)
        self._engine = bool(config.audiences or config.experiments)
        self._identity = config.identity.graph
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # runs finished (tests wait on it)

    def cutoffs(self, now_ms: int) -> Cutoffs:
        def before(window: float | None) -> int | None:
            return None if window is None else now_ms - round(window * 1000)

        policy = self._policy
        return Cutoffs(before(policy.events), before(policy.delivered), before(policy.dead))

    def below(self) -> int | None:
        """The lowest seq a reader of the log has not read yet (None: no reader to wait for)."""
        bounds: list[int] = []
        if self._engine:
            bounds.append(experiments_store.cursor(self._store, ENGINE_CURSOR) + 1)
        if self._identity:
            # No graph file yet: the follower will fold the log from the start, so nothing goes.
            folded = identity_graph.folded_through(self._store.path)
            bounds.append((folded or 0) + 1)
        return min(bounds, default=None)

    async def run_once(self) -> Trimmed:
        started = time.monotonic()
        now_ms = int(self._clock() * 1000)
        cutoffs = self.cutoffs(now_ms)
        # One node trims a shared (PostgreSQL) store; the others leave it to that one.
        if not await asyncio.to_thread(self._store.lead, LEAD):
            self.runs += 1
            return Trimmed()
        below = await asyncio.to_thread(self.below)
        trimmed = await trim(self._store, cutoffs, self._keep, below, now_ms=now_ms)
        self.runs += 1
        if trimmed.rows:
            log.info(
                "retention deleted %d events, %d delivered, %d skipped and %d dead outbox rows in %.1f s;"
                " %d free pages given back",
                trimmed.events,
                trimmed.delivered,
                trimmed.skipped,
                trimmed.dead,
                time.monotonic() - started,
                trimmed.freed_pages,
            )
        return trimmed

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        await asyncio.sleep(min(FIRST_RUN_DELAY_S, float(self._policy.interval)))
        while True:
            try:
                await self.run_once()
            except Exception:  # disk full, a defect: the next run tries again; ingest is not touched
                log.exception("retention failed; it runs again in %.0f s", float(self._policy.interval))
            await asyncio.sleep(float(self._policy.interval))
