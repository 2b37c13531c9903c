"""Lift reports for the experiments page, computed off the request path.

A lift report reads every conversion and every message exposure of the experiment's window — the
analytical kind of read (DESIGN.md, Storage) — which grows with the log. The page must not: the
report is computed in a thread, at most once per `MAX_AGE_S`, and the page shows the newest one with
its age. Only the very first view of an experiment waits for it, and at most `FIRST_WAIT_S`; past
that the page says it is computing and reloads itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from loopwire.analysis.lift import LiftReport

log = logging.getLogger("loopwire.console")

MAX_AGE_S = 60.0
FIRST_WAIT_S = 2.0


class LiftCache:
    def __init__(self, compute: Callable[[str], LiftReport], clock: Callable[[], float] = time.time) -> None:
        self._compute = compute
        self._clock = clock
        self.reports: dict[
            str, tuple[int, float, LiftReport]
        ] = {}  # key → (computed ms, seconds taken, report)
        self._running: dict[str, asyncio.Task[None]] = {}

    async def _run(self, key: str) -> None:
        started = time.perf_counter()
        try:
            report = await asyncio.to_thread(self._compute, key)
        except Exception:
            log.exception("the console could not compute the lift of %s", key)
            return
        finally:
            self._running.pop(key, None)
        self.reports[key] = (int(self._clock() * 1000), time.perf_counter() - started, report)

    async def get(self, key: str, first_wait: float = FIRST_WAIT_S) -> tuple[int, float, LiftReport] | None:
        """The newest report of `key` (starting a fresh one when it is missing or older than
        `MAX_AGE_S`); None while the first is still being computed."""
        cached = self.reports.get(key)
        stale = cached is None or self._clock() * 1000 - cached[0] > MAX_AGE_S * 1000
        if stale and key not in self._running:
            self._running[key] = asyncio.create_task(self._run(key), name=f"console-lift-{key}")
        task = self._running.get(key)
        if cached is None and task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), first_wait)
        return self.reports.get(key)

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
