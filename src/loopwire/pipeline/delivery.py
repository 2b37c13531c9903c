"""Delivery: claim a batch from a destination's outbox, map, send, and settle every row.

Each row ends in exactly one place: delivered, skipped (with the mapping's reason), pending again
(with a backoff and the last error), or dead (with the reason and the response). Nothing is dropped
without a record of why, and nothing is retried past `retry.max_age`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from loopwire.destinations.base import (
    Delivered,
    Destination,
    Invalid,
    Outcome,
    Rejected,
    Response,
    Retry,
    Skip,
    Split,
)
from loopwire.metrics import Metrics
from loopwire.model import decode_event
from loopwire.store import Claimed, Settlement, Store

log = logging.getLogger("loopwire.delivery")

RESPONSE_KEEP = 2000  # bytes of a response body kept with a dead letter


def backoff(attempts: int, initial: float, maximum: float, rand: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped at `maximum`."""
    ceiling = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return float(ceiling / 2 + ceiling / 2 * rand)


def describe(response: Response | None, redact: Callable[[str], str]) -> str | None:
    if response is None:
        return None
    return redact(f"{response.status} {response.body[:RESPONSE_KEEP].decode('utf-8', 'replace')}")


class _Item:
    __slots__ = ("claimed", "part", "payload", "received_ms")

    def __init__(self, claimed: Claimed, payload: dict[str, Any], part: bytes, received_ms: int) -> None:
        self.claimed = claimed
        self.payload = payload
        self.part = part
        self.received_ms = received_ms


class Courier:
    """Delivers one destination's outbox; `concurrency` loops share it, each with a request in flight."""

    def __init__(
        self,
        destination: Destination,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        idle_poll: float = 1.0,
    ) -> None:
        self.dest = destination
        self.name = destination.name
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"courier-{self.name}-{i}")
            for i in range(self.dest.concurrency)
        ]

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()  # rows left in flight are sent again at the next start
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                claimed = await self.run_once()
            except Exception:
                log.exception("delivery loop for %s failed; retrying in 1 s", self.name)
                await asyncio.sleep(1.0)
                continue
            if claimed >= self.dest.max_events:
                continue  # a backlog: take the next full batch at once
            await self._idle()  # otherwise let the next batch gather for `linger`

    async def _idle(self) -> None:
        due = await asyncio.to_thread(self._store.next_due_ms, self.name)
        now = self.now_ms()
        if due is not None and due <= now:  # rows are waiting already: let a fuller batch gather
            await asyncio.sleep(self.dest.linger)
            return
        timeout = self._idle_poll if due is None else min(self._idle_poll, (due - now) / 1000)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return
        if self.dest.linger > 0 and not self._stopping:
            await asyncio.sleep(self.dest.linger)  # let a burst gather into one fuller batch

    async def run_once(self) -> int:
        """Claim one batch and settle all of it; returns how many rows were claimed."""
        rows = await self._store.claim(self.name, self.dest.max_events, self.now_ms())
        if not rows:
            return 0
        settlements: list[Settlement] = []
        items: list[_Item] = []
        for index, row in enumerate(rows):
            if index and index % 100 == 0:
                await asyncio.sleep(0)  # let requests in between: a big batch must not stall ingest
            try:
                event = decode_event(row.body)
                payload = self.dest.map(event, self.now_ms())
                if isinstance(payload, Skip):
                    settlements.append(
                        Settlement(row.seq, "skipped", reason=payload.reason, code=payload.code)
                    )
                    continue
                if isinstance(payload, Invalid):
                    settlements.append(
                        Settlement(row.seq, "dead", reason=self.dest.redact(payload.reason), code="invalid")
                    )
                    continue
                items.append(_Item(row, payload, self.dest.encode(payload), event.received_ms))
            except Exception as exc:  # a mapping bug must not lose the event: park it with the reason
                log.exception("mapping event seq=%s for %s failed", row.seq, self.name)
                settlements.append(
                    Settlement(row.seq, "dead", reason=f"mapping failed: {exc!r}", code="mapping_failed")
                )
        for chunk in self._chunks(items):
            settlements.extend(await self._deliver(chunk))
        await self._settle(settlements)
        self._count(settlements, {item.claimed.seq: item.received_ms for item in items})
        return len(rows)

    async def _settle(self, settlements: list[Settlement]) -> None:
        """Record the outcomes, trying again while the store refuses writes (disk full): given up,
        the rows would stay in flight, and be sent only after a restart."""
        while True:
            try:
                await self._store.settle(self.name, settlements, self.now_ms())
                return
            except Exception:
                if self._stopping:
                    raise  # in flight at the next start: sent again, insert ids keep it idempotent
                log.exception("could not record deliveries for %s; retrying in 1 s", self.name)
                await asyncio.sleep(1.0)

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        chunks: list[list[_Item]] = []
        current: list[_Item] = []
        size = 0
        for item in items:
            extra = len(item.part) + 1
            if current and (len(current) >= self.dest.max_events or size + extra > self.dest.max_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += extra
        if current:
            chunks.append(current)
        return chunks

    async def _deliver(self, items: list[_Item]) -> list[Settlement]:
        response, outcomes = await self.dest.send([i.part for i in items], [i.payload for i in items])
        if response is not None or not all(isinstance(o, Delivered) for o in outcomes):
            # (a destination may settle rows without a request, e.g. a payload with nothing to send)
            self._metrics.responses.labels(self.name, str(response.status if response else 0)).inc()
        by_index = _assign(outcomes, len(items))
        kept = describe(response, self.dest.redact)
        code = f"http_{response.status}" if response is not None else "no_response"
        settlements: list[Settlement] = []
        split: list[_Item] = []
        now = self.now_ms()
        for index, item in enumerate(items):
            outcome = by_index[index]
            row = item.claimed
            if isinstance(outcome, Delivered):
                settlements.append(Settlement(row.seq, "delivered"))
            elif isinstance(outcome, Rejected):
                settlements.append(
                    Settlement(
                        row.seq, "dead", reason=self.dest.redact(outcome.reason), response=kept, code=code
                    )
                )
            elif isinstance(outcome, Split):
                if len(items) == 1:
                    reason = f"too large to send even alone: {outcome.reason}"
                    settlements.append(
                        Settlement(row.seq, "dead", reason=reason, response=kept, code="too_large")
                    )
                else:
                    split.append(item)
            else:
                settlements.append(self._retry(row, outcome, kept, now, code))
        if split:
            half = (len(split) + 1) // 2
            settlements.extend(await self._deliver(split[:half]))
            settlements.extend(await self._deliver(split[half:]))
        return settlements

    def _retry(self, row: Claimed, outcome: Retry, kept: str | None, now: int, code: str) -> Settlement:
        policy = self.dest.retry
        if outcome.after is not None:
            delay = outcome.after
        else:
            delay = backoff(row.attempts, policy.initial_backoff, policy.max_backoff, self._rand())
        next_ms = now + int(delay * 1000)
        if next_ms - row.enqueued_ms > policy.max_age * 1000:
            reason = (
                f"gave up after {row.attempts} attempts over {(now - row.enqueued_ms) / 1000:.0f}s"
                f" (retry.max_age is {policy.max_age:.0f}s); last error: {outcome.reason}"
            )
            return Settlement(row.seq, "dead", reason=self.dest.redact(reason), response=kept, code="max_age")
        return Settlement(
            row.seq,
            "pending",
            next_ms=next_ms,
            reason=self.dest.redact(outcome.reason),
            response=kept,
            code=code,
        )

    def _count(self, settlements: list[Settlement], received: dict[int, int]) -> None:
        counter = self._metrics.delivery
        reasons = self._metrics.reasons
        now = self._clock()
        for s in settlements:
            outcome = "retried" if s.state == "pending" else s.state
            counter.labels(self.name, outcome).inc()
            if s.state != "delivered":
                reasons.labels(self.name, outcome, s.code or "unknown").inc()
            if s.state == "delivered" and s.seq in received:
                self._metrics.latency.labels(self.name).observe(max(0.0, now - received[s.seq] / 1000))


def _assign(outcomes: tuple[Outcome, ...], count: int) -> list[Outcome]:
    """Give every batch index exactly one outcome; `indexes=None` covers the indexes left over."""
    assigned: list[Outcome | None] = [None] * count
    rest: Outcome | None = None
    for outcome in outcomes:
        if outcome.indexes is None:
            rest = rest or outcome
            continue
        for index in outcome.indexes:
            if 0 <= index < count and assigned[index] is None:
                assigned[index] = outcome
    fallback: Outcome = rest or Retry(None, "the destination's answer did not cover this event")
    return [a if a is not None else fallback for a in assigned]
