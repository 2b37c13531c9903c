"""The full recompute: every audience for every person in the log, in one streaming pass per worker.

The engine keeps memberships current one batch of new events at a time; a full recompute evaluates
everyone at one moment (after a version bump, to check sizes, for the benchmark of issue 4). It
streams the log ordered by person through the `events_user (user_id, time_ms)` index, one query per
range of people, and evaluates each person with `compile_all` + `evaluate_all` + `PersonHistory`, as
the engine does, so the memberships are the engine's.

What keeps it fast without changing a result:
- Only events an audience can read are decoded. An event's key (`model.event_key`) comes from the
  log's own columns; an event that no event selector of any audience matches cannot change an
  outcome (the evaluator only looks at the events its selectors pick, in time order), so it is left
  out of the history. Of the rest, only those a `where` test or a carried or summed property reads
  have their body decoded, and then only the top-level fields those paths start from.
- The profile (`engine.profile_of`) is built only when an audience reads it (a `profile` condition or
  a `{profile: ...}` value); identify and Amplitude events are then kept for it.
- Everybody with no relevant event shares one result, computed once for an empty history.
- `workers` processes (2 by default, started with `spawn`: call it from code under an
  `if __name__ == "__main__"` guard) take ranges of people, cut by sampling the log so each holds
  about the same number of events. The garbage collector is paused while a range is evaluated
  (nothing allocated there is cyclic; it saves a few per cent).

`write=True` records what the engine would record for these results — the membership rows that
change (numbered after the stored ones, as the engine numbers them) and everyone's re-evaluation
timer — with `store.audiences.save`, in one transaction. It exports no entered/exited event and no
trait, so downstream tools hear nothing of these changes: it seeds the state of a store (a rebuilt
one, a benchmark). It leaves the engine's cursor where it is.
"""

from __future__ import annotations

import gc
import multiprocessing
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise
from typing import Any, NamedTuple

import msgspec

from loopwire.audiences.definitions import AudienceDefinition, Condition, EventRef, Test, rules, walk
from loopwire.audiences.engine import SOURCE as OWN_SOURCE
from loopwire.audiences.engine import profile_of
from loopwire.audiences.evaluate import EventMatcher, PersonHistory, Result, compile_all, evaluate_all
from loopwire.model import Event
from loopwire.store import Store
from loopwire.store.audiences import Membership, save
from loopwire.store.sqlite import connect

SAMPLE = 2_000  # events sampled to cut people into ranges of about equal work
RANGES_PER_WORKER = 4  # more ranges than workers, so a worker that finishes early takes another
MMAP_BYTES = 1 << 34  # read the file through the page cache without copying (SQLite caps it)
SKIP, KEEP, DECODE = 0, 1, 2  # what becomes of an event, by its key: left out, kept, kept and decoded

Bound = str | None  # a user id bounding a range; None: unbounded
Row = tuple[str, str, str, str | None, str | None, str | None, int, bytes]


class RecomputeStats(msgspec.Struct, kw_only=True):
    now_ms: int
    people: int  # people with at least one event (loopwire's own events left out)
    events: int  # their events, all read
    evaluated_events: int  # events an audience can read: put into histories
    decoded_events: int  # of those, events whose body was decoded
    members: dict[str, int]  # audience → members at now_ms
    seconds: float  # wall clock, from splitting the log to the last result (and the write)
    evaluate_s: float  # summed over ranges: `PersonHistory` + `evaluate_all`
    stream_s: float  # summed over ranges: the rest — reading, grouping, decoding, counting
    write_s: float = 0.0
    written_members: int = 0
    written_timers: int = 0
    workers: int = 1
    ranges: int = 1


# ---- what the audiences read ----------------------------------------------------------------------


class Needs(NamedTuple):
    selectors: list[tuple[EventMatcher, frozenset[str]]]  # each selector, and the `data` fields it reads
    profile: bool


def _path_fields(path: str) -> set[str]:
    """The top-level `data` fields a `where` or property path can start from. `$.a.b` reads `data`;
    any other path reads Customer.io's `data`, or the `properties` / `event_properties` object."""
    raw = path.startswith("$.")
    full = path[2:] if raw else path
    reached = {full, full.split(".")[0]}  # a literal dotted key wins over nesting
    return reached if raw else reached | {"properties", "event_properties"}


def _selectors(condition: Condition) -> Iterator[tuple[str | list[str], Mapping[str, Test], str | None]]:
    """(event, where, property read) of every event selector in a condition tree."""
    for c in walk(condition):
        for spec in (c.count, c.absent, c.first, c.last):
            if spec is not None:
                yield spec.event, spec.where, None
        if c.absent is not None and c.absent.since is not None:
            since = c.absent.since
            yield (since.event, since.where, None) if isinstance(since, EventRef) else (since, {}, None)
        if c.sum is not None:
            yield c.sum.event, c.sum.where, c.sum.property


def needs(audiences: Mapping[str, AudienceDefinition]) -> Needs:
    """Every event selector of the audiences (conditions and carried values) with the fields it reads,
    and whether any audience reads the profile."""
    found: dict[bytes, tuple[EventMatcher, frozenset[str]]] = {}
    profile = False

    def add(event: str | list[str], where: Mapping[str, Test], prop: str | None) -> None:
        key = msgspec.json.encode([event, where, prop], order="sorted")
        if key not in found:
            fields = set().union(*(_path_fields(path) for path in where), _path_fields(prop) if prop else ())
            found[key] = (EventMatcher(event, where), frozenset(fields))

    for definition in audiences.values():
        for rule in rules(definition):
            profile = profile or any(c.profile is not None for c in walk(rule))
            for event, where, prop in _selectors(rule):
                add(event, where, prop)
        for carry in definition.qualifying_values.values():
            if carry.profile is not None:
                profile = True
            elif carry.event is not None:
                add(carry.event, carry.where, carry.property)
    return Needs(list(found.values()), profile)


class _Reader:
    """What becomes of a log row (SKIP, KEEP or DECODE, decided once per distinct key), and the cut
    `data` of a row to decode: only the fields the audiences' paths start from."""

    def __init__(self, wanted: Needs) -> None:
        self.wanted = wanted
        names = set().union(*(fields for _, fields in wanted.selectors))
        if wanted.profile:
            names |= {"traits", "user_properties"}  # what `profile_of` reads
        self.fields = [(f"f{i}", name) for i, name in enumerate(sorted(names))]
        data = msgspec.defstruct(
            "Data",
            [(attr, Any, msgspec.field(default=msgspec.UNSET, name=name)) for attr, name in self.fields],
        )
        body = msgspec.defstruct("Body", [("data", data, msgspec.field(default_factory=data))])
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        self.plans: dict[tuple[str, str, str | None, str | None, str | None], int] = {}

    def plan(self, source: str, kind: str, channel: str | None, metric: str | None, name: str | None) -> int:
        if self.wanted.profile and (source == "amplitude" or (source == "segment" and kind == "identify")):
            return DECODE
        key = f"{channel}.{metric}" if source == "customerio" and channel is not None else name or kind
        matched = [fields for matcher, fields in self.wanted.selectors if matcher.key_matches(key)]
        if not matched:
            return SKIP
        return DECODE if any(matched) else KEEP

    def data(self, body: bytes) -> dict[str, Any]:
        cut = self._decoder.decode(body).data
        unset = msgspec.UNSET
        return {name: value for attr, name in self.fields if (value := getattr(cut, attr)) is not unset}


# ---- one range of people --------------------------------------------------------------------------


class RangeResult(NamedTuple):
    people: int
    events: int
    evaluated: int
    decoded: int
    members: dict[str, int]
    seconds: float
    evaluate_s: float
    changes: list[tuple[str, str, Membership]]  # (audience, user, row) to write
    timers: dict[str, int | None]


def _in_range(sql: str, args: tuple[Any, ...], lo: Bound, hi: Bound) -> tuple[str, tuple[Any, ...]]:
    if lo is not None:
        sql, args = sql + " AND user_id >= ?", (*args, lo)
    if hi is not None:
        sql, args = sql + " AND user_id < ?", (*args, hi)
    return sql, args


def query(lo: Bound = None, hi: Bound = None) -> tuple[str, tuple[Any, ...]]:
    """The recompute's one query over the people with ids in [lo, hi): their events, by person."""
    sql, args = _in_range(
        "SELECT user_id, source, kind, channel, metric, name, time_ms, body FROM events"
        " WHERE user_id IS NOT NULL AND source != ?",
        (OWN_SOURCE,),
        lo,
        hi,
    )
    return sql + " ORDER BY user_id, time_ms", args


def read_connection(path: str) -> sqlite3.Connection:
    """A connection of its own that only reads, mapping the file instead of copying its pages."""
    conn = connect(path)
    conn.execute("PRAGMA query_only=ON")
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


def people(rows: Iterable[Row]) -> Iterator[tuple[str, list[Row]]]:
    """Rows ordered by user → (user_id, that user's rows)."""
    current: str | None = None
    group: list[Row] = []
    for row in rows:
        if row[0] != current:
            if current is not None:
                yield current, group
            current, group = row[0], []
        group.append(row)
    if current is not None:
        yield current, group


def _stored(
    conn: sqlite3.Connection, audiences: Iterable[str], lo: Bound, hi: Bound
) -> dict[str, dict[str, Membership]]:
    found: dict[str, dict[str, Membership]] = {}
    for audience in audiences:
        sql, args = _in_range(
            "SELECT user_id, member, version, state, changes, since_ms FROM members WHERE audience = ?",
            (audience,),
            lo,
            hi,
        )
        for user_id, member, version, state, changes, since in conn.execute(sql, args):
            found.setdefault(user_id, {})[audience] = Membership(bool(member), version, state, changes, since)
    return found


def changed(
    definition: AudienceDefinition, result: Result, old: Membership | None, now_ms: int
) -> Membership | None:
    """The membership row the engine writes for this result, or None when it writes none."""
    was = old is not None and old.member
    moved = (  # a member whose state or audience version changed enters anew
        old is not None
        and old.member
        and result.member
        and (old.state != result.state or old.version != definition.version)
    )
    if result.member == was and not moved:
        return None
    return Membership(
        result.member, definition.version, result.state, (old.changes if old else 0) + 1, now_ms
    )


def recompute_range(
    path: str,
    audiences: Mapping[str, AudienceDefinition],
    now_ms: int,
    lo: Bound = None,
    hi: Bound = None,
    write: bool = False,
) -> RangeResult:
    """Everyone whose id is in [lo, hi). Runs in a worker process (or in this one)."""
    began = time.perf_counter()
    compiled = compile_all(audiences)
    reader = _Reader(needs(audiences))
    plans, plan, cut, with_profile = reader.plans, reader.plan, reader.data, reader.wanted.profile
    nobody = evaluate_all(compiled, PersonHistory([], {}), now_ms)  # everyone with no relevant event
    members = dict.fromkeys(compiled.order, 0)
    changes: list[tuple[str, str, Membership]] = []
    timers: dict[str, int | None] = {}
    count = evaluated = decoded = persons = 0
    evaluate_s = 0.0
    clock = time.perf_counter
    conn = read_connection(path)
    collecting = gc.isenabled()
    gc.disable()
    try:
        stored = _stored(conn, audiences, lo, hi) if write else {}
        sql, args = query(lo, hi)
        for user_id, rows in people(conn.execute(sql, args)):
            events: list[Event] = []
            for _, source, kind, channel, metric, event_name, time_ms, body in rows:
                head = (source, kind, channel, metric, event_name)
                fate = plans.get(head, -1)
                if fate < 0:
                    fate = plans[head] = plan(*head)
                if fate == SKIP:
                    continue
                data = {}
                if fate == DECODE:
                    data = cut(body)
                    decoded += 1
                events.append(
                    Event(
                        id="",
                        source=source,
                        kind=kind,
                        channel=channel,
                        metric=metric,
                        name=event_name,
                        time_ms=time_ms,
                        received_ms=0,
                        user_id=user_id,
                        data=data,
                    )
                )
            persons += 1
            count += len(rows)
            evaluated += len(events)
            if events:
                started = clock()
                history = PersonHistory(events, profile_of(events) if with_profile else None)
                results = evaluate_all(compiled, history, now_ms)
                evaluate_s += clock() - started
            else:
                results = nobody
            for name, result in results.items():
                if result.member:
                    members[name] += 1
            if write:
                old = stored.get(user_id, {})
                moments = [r.next_check_ms for r in results.values() if r.next_check_ms is not None]
                timers[user_id] = min(moments) if moments else None
                for name, result in results.items():
                    row = changed(audiences[name], result, old.get(name), now_ms)
                    if row is not None:
                        changes.append((name, user_id, row))
    finally:
        if collecting:
            gc.enable()
        conn.close()
    seconds = time.perf_counter() - began
    return RangeResult(persons, count, evaluated, decoded, members, seconds, evaluate_s, changes, timers)


# ---- the whole log --------------------------------------------------------------------------------


def split(path: str, parts: int, seed: int = 0) -> list[tuple[Bound, Bound]]:
    """`parts` ranges of user ids holding about equal numbers of events, cut at the quantiles of the
    users of a random sample of the log (seeded: the same log gives the same ranges)."""
    if parts <= 1:
        return [(None, None)]
    conn = read_connection(path)
    try:
        # two queries: MIN and MAX together in one would scan the table
        (low,) = conn.execute("SELECT MIN(seq) FROM events").fetchone()
        (high,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        if low is None:
            return [(None, None)]
        rng = random.Random(seed)
        seqs = sorted({rng.randint(low, high) for _ in range(SAMPLE)})
        users: list[str] = []
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            users += [
                user_id
                for (user_id,) in conn.execute(
                    f"SELECT user_id FROM events WHERE seq IN ({','.join('?' * len(chunk))})"
                    " AND user_id IS NOT NULL AND source != ?",
                    (*chunk, OWN_SOURCE),
                )
            ]
    finally:
        conn.close()
    users.sort()
    cuts = sorted({users[len(users) * i // parts] for i in range(1, parts)}) if users else []
    bounds: list[Bound] = [None, *cuts, None]
    return list(pairwise(bounds))


def recompute(
    store: Store,
    audiences: Mapping[str, AudienceDefinition],
    now_ms: int,
    *,
    write: bool = False,
    workers: int = 2,
) -> RecomputeStats:
    """Every audience for everyone in the log at `now_ms` (resolved definitions, as the engine gets
    them): member counts and timings; with `write`, the engine's membership rows and timers too."""
    began = time.perf_counter()
    definitions = dict(audiences)
    order = compile_all(definitions).order  # validates before any worker starts
    ranges = split(store.path, workers * RANGES_PER_WORKER) if workers > 1 else [(None, None)]
    if len(ranges) > 1:
        context = multiprocessing.get_context("spawn")  # never fork a process that has threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [
                pool.submit(recompute_range, store.path, definitions, now_ms, lo, hi, write)
                for lo, hi in ranges
            ]
            parts = [future.result() for future in futures]
    else:
        parts = [recompute_range(store.path, definitions, now_ms, write=write)]
    stats = RecomputeStats(
        now_ms=now_ms,
        people=sum(p.people for p in parts),
        events=sum(p.events for p in parts),
        evaluated_events=sum(p.evaluated for p in parts),
        decoded_events=sum(p.decoded for p in parts),
        members={name: sum(p.members[name] for p in parts) for name in order},
        seconds=0.0,
        evaluate_s=sum(p.evaluate_s for p in parts),
        stream_s=sum(p.seconds - p.evaluate_s for p in parts),
        workers=workers if len(ranges) > 1 else 1,
        ranges=len(ranges),
    )
    if write:
        started = time.perf_counter()
        rows = [row for part in parts for row in part.changes]
        timers = {user: due for part in parts for user, due in part.timers.items()}
        save(store, rows, timers, [], None)
        stats.write_s = time.perf_counter() - started
        stats.written_members = len(rows)
        stats.written_timers = sum(due is not None for due in timers.values())
    stats.seconds = time.perf_counter() - began
    return stats
