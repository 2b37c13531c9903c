"""The full recompute: every audience for every person in the log, from one pass over the log.

The engine keeps memberships current one batch of new events at a time; a full recompute evaluates
everyone at one moment (after a version bump, to check sizes, for the benchmark of issue 4). Each
person is evaluated with `compile_all` + `evaluate_all` + `PersonHistory`, as the engine does, so the
memberships, states and re-evaluation timers are the engine's.

What keeps it fast without changing those:
- Carried values are left out. A recompute exports no event, so nothing of what it produces depends
  on `qualifying_values`: the audiences are evaluated without them (`Result.values` stays empty),
  and what only they read is neither read nor decoded.
- The store filters (`store.scans`). An event whose key (`model.event_key`, matched in SQL on the
  log's own columns) no event selector of any audience matches cannot change an outcome (the
  evaluator only looks at the events its selectors pick), so it never leaves the database. Nor does an event older than every
  window that can look at it (a `count` or `absent` within 7 days never sees an 8-day-old event, at
  `now` or later; `first`, `last`, `since` and sums look at the whole history, and keep it all). A
  row's `body` leaves the database only when a `where` test, a summed property or the profile reads it.
  The SQL is a pre-filter, not the judge: every row it returns is checked with the evaluator's own
  matchers.
- The log is read in the order the file holds it, once. The log is in arrival order, so a person's
  events lie all over the file, and reading them person by person through the `events_user` index
  costs a random page read per event. Instead, each of the `workers` processes (2 by default,
  started with `spawn`: call it from code under an `if __name__ == "__main__"` guard) reads one part
  of the table (a range of seqs) and groups its rows by person in memory; the people are dealt out
  by id (ranges cut by sampling the log so each holds about as many events), and the workers pass
  each other the rows of each other's people through files in a temporary directory. A worker
  holds the selected events of its part and of its people in memory at once: at most 0.7 GB for
  each of two workers over the benchmark's 10-million-event log, where 1.6 million events are
  selected. Who the people are, and how many
  events each has, comes from the `events_user` index alone. Everything is read up to the last seq
  at the start, so events appended meanwhile are left for the engine.
- A body is decoded into the top-level fields the audiences' paths start from, and nothing else.
- The profile (`engine.profile_of`) is built only when an audience reads it (a `profile`
  condition); identify and Amplitude events are then kept for it.
- Everybody with no selected event shares one result, computed once for an empty history.
- The garbage collector is paused in the workers (nothing allocated there is cyclic; it saves a few
  per cent).

`write=True` records what the engine would record for these results — the membership rows that
change (numbered after the stored ones, as the engine numbers them) and everyone's re-evaluation
timer — with `store.audiences.save`, in one transaction. It exports no entered/exited event and no
trait, so downstream tools hear nothing of these changes: it seeds the state of a store (a rebuilt
one, a benchmark). It leaves the engine's cursor where it is.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import queue
import random
import tempfile
import time
import traceback
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from itertools import pairwise
from operator import itemgetter
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from loopwire.audiences.definitions import (
    AudienceDefinition,
    Condition,
    EventRef,
    Test,
    patterns,
    rules,
    walk,
    window_ms,
)
from loopwire.audiences.engine import SOURCE as OWN_SOURCE
from loopwire.audiences.engine import profile_of
from loopwire.audiences.evaluate import (
    CompiledAudiences,
    EventMatcher,
    PersonHistory,
    Result,
    compile_all,
    evaluate_all,
)
from loopwire.model import Event, event_key
from loopwire.store import Store
from loopwire.store.audiences import Membership, save
from loopwire.store.base import ScanTarget
from loopwire.store.scans import Bound, LogScan, ScanFilter

SAMPLE = 2_000  # events sampled to cut people into ranges of about equal work
EXCHANGE_TIMEOUT_S = 3_600.0  # a worker waits this long at most for the others' rows
SKIP, KEEP, DECODE, OWN = 0, 1, 2, 3  # what becomes of a row, by its head: left out, kept, decoded, own

Head = tuple[str, str, str | None, str | None, str | None]  # source, kind, channel, metric, name
Plan = tuple[int, Event, str]  # the fate, an event with the head's values, and its key
Selected = tuple[int, Plan, dict[str, Any]]  # time_ms, plan, decoded data: one selected event

_NO_DATA: dict[str, Any] = {}  # the data of an event whose body is not read; shared, never mutated
_TIME = itemgetter(0)


class RecomputeStats(msgspec.Struct, kw_only=True):
    now_ms: int
    people: int  # people with at least one event (loopwire's own events left out)
    events: int  # their events (counted in the index; only the selected ones are read)
    evaluated_events: int  # events an audience can read: put into histories
    decoded_events: int  # of those, events whose body was decoded
    members: dict[str, int]  # audience → members at now_ms
    seconds: float  # wall clock, from splitting the log to the last result (and the write)
    evaluate_s: float  # summed over ranges: building each history (events, `PersonHistory`) + `evaluate_all`
    stream_s: float  # summed over ranges: the rest — reading, grouping, decoding, counting
    write_s: float = 0.0
    written_members: int = 0
    written_timers: int = 0
    workers: int = 1
    ranges: int = 1


# ---- what the audiences read ----------------------------------------------------------------------


class Selector(NamedTuple):
    matcher: EventMatcher
    names: tuple[str, ...]  # the event names and globs it matches keys with
    fields: frozenset[str]  # the top-level `data` fields its `where` and property paths start from
    horizon: int | None  # every use looks only at events younger than this (ms); None: at any


class Needs(NamedTuple):
    selectors: list[Selector]
    profile: bool


def _path_fields(path: str) -> set[str]:
    """The top-level `data` fields a `where` or property path can start from. `$.a.b` reads `data`;
    any other path reads Customer.io's `data`, or the `properties` / `event_properties` object."""
    raw = path.startswith("$.")
    full = path[2:] if raw else path
    reached = {full, full.split(".")[0]}  # a literal dotted key wins over nesting
    return reached if raw else reached | {"properties", "event_properties"}


Use = tuple[str | list[str], Mapping[str, Test], str | None, int | None]  # event, where, property, horizon


def _selectors(condition: Condition) -> Iterator[Use]:
    """Every event selector in a condition tree: (event, where, property read, horizon). The horizon
    is the window's old end (`within`, `ago.max`) where the use looks at the events in a window and
    nothing else: an event older than that at `now` is out of it, and only gets older. A sum (its
    running totals run over the whole history), `first`, `last` and `since` have none."""
    for c in walk(condition):
        if c.count is not None:
            yield c.count.event, c.count.where, None, window_ms(c.count)[1]
        if c.absent is not None:
            since = c.absent.since
            if since is None:
                yield c.absent.event, c.absent.where, None, window_ms(c.absent)[1]
            else:
                yield c.absent.event, c.absent.where, None, None
                yield (
                    (since.event, since.where, None, None)
                    if isinstance(since, EventRef)
                    else (since, {}, None, None)
                )
        for timing in (c.first, c.last):
            if timing is not None:
                yield timing.event, timing.where, None, None
        if c.sum is not None:
            yield c.sum.event, c.sum.where, c.sum.property, None


def needs(audiences: Mapping[str, AudienceDefinition]) -> Needs:
    """Every event selector of the audiences (conditions and carried values) with the fields it reads
    and its horizon, and whether any audience reads the profile."""
    found: dict[bytes, Selector] = {}
    profile = False

    def add(event: str | list[str], where: Mapping[str, Test], prop: str | None, horizon: int | None) -> None:
        key = msgspec.json.encode([event, where, prop], order="sorted")
        known = found.get(key)
        if known is None:
            fields = set().union(*(_path_fields(path) for path in where), _path_fields(prop) if prop else ())
            found[key] = Selector(
                EventMatcher(event, where), tuple(patterns(event)), frozenset(fields), horizon
            )
        elif known.horizon is not None:
            found[key] = known._replace(horizon=None if horizon is None else max(horizon, known.horizon))

    for definition in audiences.values():
        for rule in rules(definition):
            profile = profile or any(c.profile is not None for c in walk(rule))
            for use in _selectors(rule):
                add(*use)
        for carry in definition.qualifying_values.values():
            if carry.profile is not None:
                profile = True
            elif carry.event is not None:  # a carried value is taken from the events in its window
                add(carry.event, carry.where, carry.property, window_ms(carry)[1])
    return Needs(list(found.values()), profile)


class _Reader:
    """The recompute's scan of the log: the SQL that selects rows (and the bodies to decode), what
    becomes of each row it returns (decided once per distinct head, by the audiences' matchers), and
    the cut `data` of a row to decode: only the fields the audiences' paths start from."""

    def __init__(self, wanted: Needs, now_ms: int) -> None:
        self.wanted = wanted
        names = set().union(*(selector.fields for selector in wanted.selectors))
        if wanted.profile:
            names |= {"traits", "user_properties"}  # what `profile_of` reads
        self.fields = [(f"f{i}", name) for i, name in enumerate(sorted(names))]
        data = msgspec.defstruct(
            "Data",
            [(attr, Any, msgspec.field(default=msgspec.UNSET, name=name)) for attr, name in self.fields],
        )
        body = msgspec.defstruct("Body", [("data", data, msgspec.field(default_factory=data))])
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        self.plans: dict[Head, Plan] = {}
        # Kept: a row some selector matches, unless it is older than every such selector's horizon.
        by_horizon: dict[int | None, set[str]] = {}
        for selector in wanted.selectors:
            by_horizon.setdefault(selector.horizon, set()).update(selector.names)
        always = by_horizon.get(None, set())
        keep: list[tuple[int | None, frozenset[str]]] = []
        for horizon, group in sorted(by_horizon.items(), key=lambda item: -1 if item[0] is None else item[0]):
            if horizon is not None:
                group = group - always
                if not group:
                    continue
            keep.append((horizon, frozenset(group)))
        decode = frozenset(
            name for selector in wanted.selectors if selector.fields for name in selector.names
        )
        self.filter = ScanFilter(keep, decode, wanted.profile, OWN_SOURCE)
        self._now_ms = now_ms

    def plan(self, source: str, kind: str, channel: str | None, metric: str | None, name: str | None) -> Plan:
        head = Event(
            id="",
            source=source,
            kind=kind,
            channel=channel,
            metric=metric,
            name=name,
            time_ms=0,
            received_ms=0,
        )
        key = event_key(head)
        if source == OWN_SOURCE:
            fate = OWN
        elif self.wanted.profile and (source == "amplitude" or (source == "segment" and kind == "identify")):
            fate = DECODE
        else:
            matched = [s.fields for s in self.wanted.selectors if s.matcher.key_matches(key)]
            fate = SKIP if not matched else DECODE if any(matched) else KEEP
        return fate, head, key

    def data(self, body: bytes) -> dict[str, Any]:
        cut = self._decoder.decode(body).data
        unset = msgspec.UNSET
        return {name: value for attr, name in self.fields if (value := getattr(cut, attr)) is not unset}

    def read(
        self, scan: LogScan, first: int, last: int
    ) -> tuple[dict[str, list[Selected]], dict[str, int], int]:
        """Everyone's selected events (in log order), how many of loopwire's own events each has, and
        how many bodies were decoded."""
        plans, plan, cut = self.plans, self.plan, self.data
        selected: dict[str, list[Selected]] = {}
        own: dict[str, int] = {}
        decoded = 0
        for user_id, time_ms, source, kind, channel, metric, name, body in scan.rows(
            self.filter, self._now_ms, first, last
        ):
            head = (source, kind, channel, metric, name)
            found = plans.get(head)
            if found is None:
                found = plans[head] = plan(*head)
            fate = found[0]
            if fate == KEEP:
                data = _NO_DATA
            elif fate == DECODE:
                if body is None:
                    raise RuntimeError(f"the recompute's SQL filter left out the body of a {head} event")
                data = cut(body)
                decoded += 1
            elif fate == OWN:
                own[user_id] = own.get(user_id, 0) + 1
                continue
            else:
                continue
            events = selected.get(user_id)
            if events is None:
                selected[user_id] = [(time_ms, found, data)]
            else:
                events.append((time_ms, found, data))
        return selected, own, decoded


# ---- one worker -----------------------------------------------------------------------------------


class Share(NamedTuple):
    """Worker number `worker` of `len(parts)` reads the rows with seqs in `parts[worker]` (inclusive)
    and evaluates the people with ids in `ranges[worker]`; nothing after `last_seq` is read."""

    worker: int
    parts: list[tuple[int, int]]
    ranges: list[tuple[Bound, Bound]]
    last_seq: int


class RangeResult(NamedTuple):
    people: int
    events: int
    evaluated: int
    decoded: int  # bodies this worker decoded (in its part of the log)
    members: dict[str, int]
    seconds: float
    evaluate_s: float
    changes: list[tuple[str, str, Membership]]  # (audience, user, row) to write
    timers: dict[str, int | None]


def lasting_names(audiences: Mapping[str, AudienceDefinition]) -> tuple[set[str], bool]:
    """What some audience may read at any age: the event names a `first`, `last`, `since` or `sum`
    selects (they look at the whole history, so an unbounded `within` counts too), and whether an
    audience reads the profile (`profile_of`'s rows). Retention keeps those rows
    (store/retention.py `keep_sql`). A row a windowed selector takes is not among them: the config
    makes `store.retention.events` at least as long as every window (`longest_window`)."""
    wanted = needs(audiences)
    names = {name for selector in wanted.selectors if selector.horizon is None for name in selector.names}
    return names, bool(wanted.profile)


def longest_window(definition: AudienceDefinition) -> int:
    """The longest bounded window (ms) an audience's conditions and carried values look back over."""
    horizons = [s.horizon for s in needs({"": definition}).selectors if s.horizon is not None]
    return max(horizons, default=0)


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


def _evaluate(
    compiled: CompiledAudiences, user_id: str, rows: list[Selected], with_profile: bool, now_ms: int
) -> dict[str, Result]:
    """Every audience for one person, from their selected events in time order."""
    events = [replace(plan[1], time_ms=at, user_id=user_id, data=data) for at, plan, data in rows]
    profile = profile_of(events) if with_profile else None
    return evaluate_all(
        compiled, PersonHistory.in_order(events, [row[1][2] for row in rows], profile), now_ms
    )


def _exchange(
    share: Share, selected: dict[str, list[Selected]], own: dict[str, int], directory: str, barrier: Any
) -> tuple[dict[str, list[Selected]], dict[str, int]]:
    """Pass the rows of the other workers' people on, and take this worker's people's rows from the
    other parts of the log: a file from each worker to each other one, written before the barrier and
    read after it. Each person's rows come out in log order (the parts are in seq order)."""
    cuts = [hi for _, hi in share.ranges if hi is not None]
    dealt: list[tuple[dict[str, list[Selected]], dict[str, int]]] = [({}, {}) for _ in share.ranges]
    for user_id, rows in selected.items():
        dealt[bisect_right(cuts, user_id)][0][user_id] = rows
    for user_id, number in own.items():
        dealt[bisect_right(cuts, user_id)][1][user_id] = number
    for other, payload in enumerate(dealt):
        if other != share.worker:
            with open(os.path.join(directory, f"{share.worker}-{other}.pickle"), "wb") as file:
                pickle.dump(payload, file, protocol=pickle.HIGHEST_PROTOCOL)
    barrier.wait(timeout=EXCHANGE_TIMEOUT_S)
    mine: dict[str, list[Selected]] = {}
    mine_own: dict[str, int] = {}
    for other in range(len(share.ranges)):
        if other == share.worker:
            rows_of, own_of = dealt[other]
        else:
            with open(os.path.join(directory, f"{other}-{share.worker}.pickle"), "rb") as file:
                rows_of, own_of = pickle.load(file)
        for user_id, rows in rows_of.items():
            found = mine.get(user_id)
            if found is None:
                mine[user_id] = rows
            else:
                found.extend(rows)
        for user_id, number in own_of.items():
            mine_own[user_id] = mine_own.get(user_id, 0) + number
    return mine, mine_own


def recompute_share(
    target: ScanTarget,
    audiences: Mapping[str, AudienceDefinition],
    now_ms: int,
    share: Share,
    write: bool = False,
    directory: str = "",
    barrier: Any = None,
) -> RangeResult:
    """One worker's share: read its part of the log, trade rows with the other workers (`directory`,
    `barrier`: see `_exchange`), evaluate its people. With one part, the whole log in this process."""
    began = time.perf_counter()
    audiences = {name: replace(definition, qualifying_values={}) for name, definition in audiences.items()}
    compiled = compile_all(audiences)
    reader = _Reader(needs(audiences), now_ms)
    with_profile = reader.wanted.profile
    nobody = evaluate_all(compiled, PersonHistory([], {}), now_ms)  # everyone with no selected event
    members = dict.fromkeys(compiled.order, 0)
    changes: list[tuple[str, str, Membership]] = []
    timers: dict[str, int | None] = {}
    count = evaluated = persons = nobodies = 0
    evaluate_s = 0.0
    clock = time.perf_counter
    lo, hi = share.ranges[share.worker]
    scan = LogScan(target)
    collecting = gc.isenabled()
    gc.disable()
    try:
        selected, own, decoded = reader.read(scan, *share.parts[share.worker])
        if len(share.parts) > 1:
            selected, own = _exchange(share, selected, own, directory, barrier)
        stored = scan.memberships(audiences, lo, hi) if write else {}
        for user_id, total in scan.people(lo, hi, share.last_seq):
            total -= own.get(user_id, 0)
            if not total:
                continue  # only loopwire's own events: not a person to the engine either
            persons += 1
            count += total
            rows = selected.pop(user_id, None)
            if rows is None:
                results = nobody  # counted once, after the loop
                nobodies += 1
            else:
                rows.sort(key=_TIME)  # stable: events of the same millisecond stay in log order
                evaluated += len(rows)
                started = clock()
                results = _evaluate(compiled, user_id, rows, with_profile, now_ms)
                evaluate_s += clock() - started
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
        if selected:  # the index and the table are read up to the same seq
            raise RuntimeError(f"{len(selected)} users of the scan are missing from the events_user index")
        for name, result in nobody.items():
            members[name] += nobodies * result.member
    finally:
        if collecting:
            gc.enable()
        scan.close()
    seconds = time.perf_counter() - began
    return RangeResult(persons, count, evaluated, decoded, members, seconds, evaluate_s, changes, timers)


def _work(
    results: Any,
    target: ScanTarget,
    audiences: Mapping[str, AudienceDefinition],
    now_ms: int,
    share: Share,
    write: bool,
    directory: str,
    barrier: Any,
) -> None:
    """A worker process: its share's result, or the error that stopped it, goes to `results`."""
    try:
        outcome: RangeResult | str = recompute_share(
            target, audiences, now_ms, share, write, directory, barrier
        )
    except BaseException:
        barrier.abort()  # the others stop waiting for this one's rows
        outcome = traceback.format_exc()
    results.put((share.worker, outcome))


def _run_workers(
    target: ScanTarget,
    audiences: Mapping[str, AudienceDefinition],
    now_ms: int,
    shares: list[Share],
    write: bool,
) -> list[RangeResult]:
    context = multiprocessing.get_context("spawn")  # never fork a process that has threads
    barrier = context.Barrier(len(shares))
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="loopwire-recompute-") as directory:
        processes = [
            context.Process(
                target=_work,
                args=(results, target, audiences, now_ms, share, write, directory, barrier),
                name=f"loopwire-recompute-{share.worker}",
                daemon=True,
            )
            for share in shares
        ]
        for process in processes:
            process.start()
        found: dict[int, RangeResult] = {}
        try:
            while len(found) < len(shares):
                try:
                    index, outcome = results.get(timeout=0.5)
                except queue.Empty:
                    lost = [p.name for i, p in enumerate(processes) if i not in found and p.exitcode]
                    if lost:
                        raise RuntimeError(
                            f"recompute worker {', '.join(lost)} stopped without a result"
                        ) from None
                    continue
                if isinstance(outcome, str):
                    raise RuntimeError(f"recompute worker {index} failed:\n{outcome}")
                found[index] = outcome
        except BaseException:
            barrier.abort()
            for process in processes:
                process.terminate()
            raise
        finally:
            for process in processes:
                process.join()
    return [found[index] for index in range(len(shares))]


# ---- the whole log --------------------------------------------------------------------------------


def split(target: ScanTarget, parts: int, seed: int = 0) -> list[tuple[Bound, Bound]]:
    """`parts` ranges of user ids holding about equal numbers of events, cut at the quantiles of the
    users of a random sample of the log (seeded: the same log gives the same ranges)."""
    if parts <= 1:
        return [(None, None)]
    scan = LogScan(target)
    try:
        low, high = scan.seqs()
        if low is None or high is None:
            return [(None, None)]
        rng = random.Random(seed)
        users = scan.users_at(sorted({rng.randint(low, high) for _ in range(SAMPLE)}), OWN_SOURCE)
    finally:
        scan.close()
    users.sort()
    cuts = sorted({users[len(users) * i // parts] for i in range(1, parts)}) if users else []
    bounds: list[Bound] = [None, *cuts, None]
    return list(pairwise(bounds))


def seq_parts(target: ScanTarget, parts: int) -> tuple[list[tuple[int, int]], int]:
    """`parts` consecutive ranges of seqs (inclusive) of about equal size over the log as it is now,
    and its last seq."""
    scan = LogScan(target)
    try:
        low, high = scan.seqs()
    finally:
        scan.close()
    if low is None or high is None:
        return [(1, 0)] * parts, 0
    bounds = [low + (high - low + 1) * i // parts for i in range(parts + 1)]
    return [(start, end - 1) for start, end in pairwise(bounds)], high


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
    target = store.scan_target()
    ranges: list[tuple[Bound, Bound]] = split(target, workers) if workers > 1 else [(None, None)]
    parts, last_seq = seq_parts(target, len(ranges))
    shares = [Share(index, parts, ranges, last_seq) for index in range(len(ranges))]
    if len(shares) > 1:
        done = _run_workers(target, definitions, now_ms, shares, write)
    else:
        done = [recompute_share(target, definitions, now_ms, shares[0], write)]
    stats = RecomputeStats(
        now_ms=now_ms,
        people=sum(p.people for p in done),
        events=sum(p.events for p in done),
        evaluated_events=sum(p.evaluated for p in done),
        decoded_events=sum(p.decoded for p in done),
        members={name: sum(p.members[name] for p in done) for name in order},
        seconds=0.0,
        evaluate_s=sum(p.evaluate_s for p in done),
        stream_s=sum(p.seconds - p.evaluate_s for p in done),
        workers=len(shares),
        ranges=len(shares),
    )
    if write:
        started = time.perf_counter()
        rows = [row for part in done for row in part.changes]
        timers = {user: due for part in done for user, due in part.timers.items()}
        save(store, rows, timers, [], None)
        stats.write_s = time.perf_counter() - started
        stats.written_members = len(rows)
        stats.written_timers = sum(due is not None for due in timers.values())
    stats.seconds = time.perf_counter() - began
    return stats
