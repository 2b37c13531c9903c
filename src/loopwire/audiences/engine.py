"""The measurement engine: reads the log after its cursor and writes loopwire's own events back.

For every person an event arrives for, and every person whose re-evaluation timer is due (how
someone leaves "clicked in 7 days" on day 8 with no new event), it evaluates every audience, and for
each change of membership writes an entered/exited event carrying the audience, its version and the
qualifying values, plus an `identify` with the membership as traits (`audience_<name>: true|false`,
or the state of a `states` audience). It assigns holdouts — to everyone seen, or on entering the
experiment's audience — and exports the group as the trait `holdout_<experiment>`. All of these
are ordinary events: they route to every destination like any other.

Crash safety: exported events carry deterministic ids and are committed before the memberships,
timers, assignments and cursor that caused them, so a crash in between only repeats work the log's
id dedupe absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.audiences.evaluate import PersonHistory, compile_all, evaluate_all, membership_event
from loopwire.audiences.holdouts import Experiment
from loopwire.audiences.versions import VersionRecord, check_versions
from loopwire.model import Event, decode_event
from loopwire.store import Store
from loopwire.store import experiments as queries
from loopwire.store.audiences import Membership, Reader, record_versions, save
from loopwire.store.audiences import versions as versions_of

log = logging.getLogger("loopwire.audiences")

CURSOR = "audiences"
SOURCE = "loopwire"


def holdout_trait(experiment_id: str) -> str:
    return f"holdout_{experiment_id}"


def audience_trait(name: str, definition: AudienceDefinition) -> str:
    return name if definition.states is not None else f"audience_{name}"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def identify(user_id: str, traits: dict[str, Any], event_id: str, time_ms: int, now_ms: int) -> Event:
    """loopwire's own identify, shaped as a Segment message so every destination reads it."""
    data = {
        "type": "identify",
        "userId": user_id,
        "messageId": event_id,
        "timestamp": iso(time_ms),
        "traits": traits,
    }
    return Event(
        id=event_id,
        source=SOURCE,
        kind="identify",
        time_ms=time_ms,
        received_ms=now_ms,
        user_id=user_id,
        data=data,
    )


def track(
    user_id: str, name: str, properties: dict[str, Any], event_id: str, time_ms: int, now_ms: int
) -> Event:
    data = {
        "type": "track",
        "userId": user_id,
        "event": name,
        "messageId": event_id,
        "timestamp": iso(time_ms),
        "properties": properties,
    }
    return Event(
        id=event_id,
        source=SOURCE,
        kind="track",
        name=name,
        time_ms=time_ms,
        received_ms=now_ms,
        user_id=user_id,
        data=data,
    )


def profile_of(events: Sequence[Event]) -> dict[str, Any]:
    """The latest traits / user properties a person's events set, oldest first."""
    profile: dict[str, Any] = {}
    for event in events:
        if event.source == "segment" and event.kind == "identify":
            traits = event.data.get("traits")
            if isinstance(traits, dict):
                profile.update(traits)
        elif event.source == "amplitude":
            props = event.data.get("user_properties")
            if isinstance(props, dict):
                operations = any(isinstance(k, str) and k.startswith("$") for k in props)
                found = props.get("$set") if operations else props
                if isinstance(found, dict):
                    profile.update(found)
    return profile


def check_and_record_versions(store: Store, audiences: Mapping[str, AudienceDefinition], now_ms: int) -> int:
    """Refuse a definition changed without a version bump (ConfigError naming the key); keep every
    new version in the changelog. Returns how many versions were recorded."""
    recorded: dict[str, list[VersionRecord]] = {}
    for name, version, fingerprint, definition, at in versions_of(store):
        recorded.setdefault(name, []).append(
            VersionRecord(
                name=name,
                version=version,
                fingerprint=fingerprint,
                definition_json=definition,
                recorded_ms=at,
            )
        )
    new = check_versions(audiences, recorded, now_ms)
    record_versions(
        store, [(r.name, r.version, r.fingerprint, r.definition_json, r.recorded_ms) for r in new]
    )
    return len(new)


def history_of(store: Store, name: str) -> list[VersionRecord]:
    return [
        VersionRecord(name=n, version=v, fingerprint=f, definition_json=d, recorded_ms=at)
        for n, v, f, d, at in versions_of(store)
        if n == name
    ]


class _Plan(NamedTuple):
    exports: list[Event]
    members: list[tuple[str, str, Membership]]
    timers: dict[str, int | None]
    assignments: list[tuple[str, str, str, int]]
    cursor: tuple[str, int] | None
    work: int


class Engine:
    def __init__(
        self,
        store: Store,
        experiments: Mapping[str, Experiment],
        ingest: Callable[[Sequence[Event]], Awaitable[list[bool]]],
        audiences: Mapping[str, AudienceDefinition] | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 2000,
        poll: float = 0.5,
    ) -> None:
        self._store = store
        self._experiments = dict(experiments)
        self._audiences = dict(audiences or {})
        self._compiled = compile_all(self._audiences) if self._audiences else None
        self._ingest = ingest
        self._clock = clock
        self._batch = batch
        self._poll = poll
        self._reader = Reader(store)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="audience-engine")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._reader.close()

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
        """Process the next batch of the log and the due timers; returns how much work it did.
        Evaluation runs in a worker thread; the exports go through the same door as any source."""
        plan = await asyncio.to_thread(self._plan)
        if plan is None:
            return 0
        if plan.exports:
            await self._ingest(plan.exports)
        await asyncio.to_thread(save, self._store, plan.members, plan.timers, plan.assignments, plan.cursor)
        return plan.work

    def _plan(self) -> _Plan | None:
        if not self._store.lead(CURSOR):  # another node follows the log (a shared PostgreSQL store)
            return None
        after = queries.cursor(self._store, CURSOR)
        rows = self._store.scan_events(0, after, self._batch)
        now_ms = int(self._clock() * 1000)
        first_seen: dict[str, int] = {}
        for _, body in rows:
            event = decode_event(body)
            if event.source == SOURCE or event.user_id is None:
                continue
            seen = first_seen.get(event.user_id)
            if seen is None or event.time_ms < seen:
                first_seen[event.user_id] = event.time_ms
        due = self._reader.due(now_ms, self._batch) if self._compiled else []
        if not rows and not due:
            return None
        exports: list[Event] = []
        assignments: list[tuple[str, str, str, int]] = []
        members: list[tuple[str, str, Membership]] = []
        timers: dict[str, int | None] = {}
        for key, experiment in self._experiments.items():
            if experiment.audience is None:
                self._assign(key, experiment, first_seen, now_ms, assignments, exports)
        if self._compiled is not None:
            users = sorted(set(first_seen) | set(due))
            self._evaluate(users, now_ms, exports, assignments, members, timers)
        cursor = (CURSOR, rows[-1][0]) if rows else None
        return _Plan(exports, members, timers, assignments, cursor, len(rows) + len(due))

    def _assign(
        self,
        key: str,
        experiment: Experiment,
        users: Mapping[str, int],
        now_ms: int,
        assignments: list[tuple[str, str, str, int]],
        exports: list[Event],
    ) -> None:
        known = queries.assigned(self._store, key, list(users))
        for user_id, at in users.items():
            if user_id in known:
                continue
            group = experiment.assign(user_id)
            assignments.append((key, user_id, group, at))
            exports.append(
                identify(user_id, {holdout_trait(key): group}, f"holdout:{key}:{user_id}", at, now_ms)
            )

    def _evaluate(
        self,
        users: list[str],
        now_ms: int,
        exports: list[Event],
        assignments: list[tuple[str, str, str, int]],
        members: list[tuple[str, str, Membership]],
        timers: dict[str, int | None],
    ) -> None:
        assert self._compiled is not None
        histories = self._reader.histories(users)
        current = self._reader.memberships(users)
        entered_by_audience: dict[str, dict[str, int]] = {}
        for user_id in users:
            events = [decode_event(body) for body in histories[user_id]]
            results = evaluate_all(self._compiled, PersonHistory(events, profile_of(events)), now_ms)
            moments = [r.next_check_ms for r in results.values() if r.next_check_ms is not None]
            timers[user_id] = min(moments) if moments else None
            traits: dict[str, Any] = {}
            changes = 0
            for name, result in results.items():
                definition = self._audiences[name]
                old = current[user_id].get(name)
                was = old is not None and old.member
                # a member whose state (lifecycle_state) or audience version changed enters anew
                moved = (
                    old is not None
                    and old.member
                    and result.member
                    and (old.state != result.state or old.version != definition.version)
                )
                if result.member == was and not moved:
                    continue
                count = (old.changes if old else 0) + 1
                changes += count
                event_name, properties = membership_event(name, definition, result, result.member)
                event_id = f"audience:{name}:{user_id}:{count}"
                exports.append(track(user_id, event_name, properties, event_id, now_ms, now_ms))
                members.append(
                    (
                        name,
                        user_id,
                        Membership(result.member, definition.version, result.state, count, now_ms),
                    )
                )
                traits[audience_trait(name, definition)] = (
                    result.state if definition.states is not None else result.member
                )
                if result.member and not was:
                    entered_by_audience.setdefault(name, {})[user_id] = now_ms
            if traits:
                exports.append(
                    identify(user_id, traits, f"audience-traits:{user_id}:{changes}", now_ms, now_ms)
                )
        for key, experiment in self._experiments.items():
            if experiment.audience is not None and experiment.audience in entered_by_audience:
                self._assign(
                    key, experiment, entered_by_audience[experiment.audience], now_ms, assignments, exports
                )
