"""The full recompute: every audience for every person in the log, from one pass over the log.

The engine keeps memberships current one batch of new events at a time; a full recompute evaluates
everyone at one moment (after a version bump, to check sizes, for the benchmark of issue 4). Each
person is evaluated with `compile_all` + `evaluate_all` + `PersonHistory`, as the engine does, so the
memberships, states and re-evaluation timers are the engine's.

What keeps it fast without changing those:
- Carried values are left out. A recompute exports no event, so nothing of what it produces depends
  on `qualifying_values`: the audiences are evaluated without them (`Result.values` stays empty),
  and what only they read is neither read nor decoded.
- SQLite filters. An event whose key (`model.event_key`, matched in SQL on the log's own columns)
  no event selector of any audience matches cannot change an outcome (the evaluator only looks at
  the events its selectors pick), so it never leaves SQLite. Nor does an event older than every
  window that can look at it (a `count` or `absent` within 7 days never sees an 8-day-old event, at
  `now` or later; `first`, `last`, `since` and sums look at the whole history, and keep it all). A
  row's `body` leaves SQLite only when a `where` test, a summed property or the profile reads it.
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
import re
import sqlite3
import tempfile
import time
import traceback
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
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
from loopwire.model import Event, event_key, event_pattern
from loopwire.store import Store
from loopwire.store.audiences import Membership, save
from loopwire.store.sqlite import connect

SAMPLE = 2_000  # events sampled to cut people into ranges of about equal work
EXCHANGE_TIMEOUT_S = 3_600.0  # a worker waits this long at most for the others' rows
MMAP_BYTES = 1 << 34  # read the file through the page cache without copying (SQLite caps it)
SKIP, KEEP, DECODE, OWN = 0, 1, 2, 3  # what becomes of a row, by its head: left out, kept, decoded, own

Bound = str | None  # a user id bounding a range; None: unbounded
Head = tuple[str, str, str | None, str | None, str | None]  # source, kind, channel, metric, name
Plan = tuple[int, Event, str]  # the fate, an event with the head's values, and its key
Selected = tuple[int, Plan, dict[str, Any]]  # time_ms, plan, decoded data: one selected event

# A row's event key, as `model.event_key` builds it from the log's columns: f"{channel}.{metric}" for
# a Customer.io message, else the name, or the kind when the name is missing or empty.
_IS_MESSAGE = "source = 'customerio' AND channel IS NOT NULL"
_PROFILE_ROW = "source = 'amplitude' OR (source = 'segment' AND kind = 'identify')"  # `profile_of`'s
_WILDCARD = re.compile(r"[*?]")  # as in `model.event_pattern`, where brackets are literal
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


Term = tuple[str, tuple[str, ...]]  # SQL and its parameters


def _column_matches(column: str, names: Iterable[str], null_as: str | None = None) -> Term:
    """`column` matches one of these `model.event_pattern` names or globs, in SQL: one IN for the
    plain names, an SQLite GLOB per glob (the same wildcards, once `[` is made literal). `null_as`:
    the text a NULL stands for in the event key."""
    given = sorted(set(names))
    if any(name and not name.strip("*") for name in given):
        return "1", ()
    exact = [name for name in given if not _WILDCARD.search(name)]
    globs = [name for name in given if _WILDCARD.search(name)]
    terms = [f"{column} IN ({', '.join('?' * len(exact))})"] if exact else []
    terms += [f"{column} GLOB ?"] * len(globs)
    if null_as is not None and any(event_pattern(name).fullmatch(null_as) for name in given):
        terms.append(f"{column} IS NULL")
    return " OR ".join(terms) or "0", (*exact, *(name.replace("[", "[[]") for name in globs))


def _message_matches(names: Iterable[str]) -> Term:
    """`channel.metric` matches one of the names or globs, on the two columns (no string is built per
    row): the dot between them is matched by a dot of a name, by a `?`, or inside a `*`, which then
    matches the end of the channel and the start of the metric."""
    metrics: dict[str, set[str]] = {}  # a pattern of the channel → the patterns of the metric with it
    for name in names:
        for at, char in enumerate(name):
            if char in ".?*":
                channel, metric = (name[: at + 1], name[at:]) if char == "*" else (name[:at], name[at + 1 :])
                metrics.setdefault(channel, set()).add(metric)
    terms: list[str] = []
    args: list[str] = []
    for channel, metric_names in sorted(metrics.items(), key=lambda item: bool(item[0].strip("*"))):
        metric_sql, metric_args = _column_matches("metric", metric_names, null_as="None")  # f"{None}"
        channel_sql, channel_args = _column_matches("channel", [channel])
        terms.append(f"({metric_sql})" if channel_sql == "1" else f"({channel_sql}) AND ({metric_sql})")
        args += [*channel_args, *metric_args] if channel_sql != "1" else metric_args
    return " OR ".join(terms) or "0", tuple(args)


def matches_sql(names: Iterable[str]) -> Term:
    """An SQL condition on a log row, and its parameters: the row's event key (`model.event_key`)
    matches one of these names or globs."""
    given = set(names)
    message, message_args = _message_matches(given)
    named, named_args = _column_matches("name", given)
    kind, kind_args = _column_matches("kind", given)
    condition = f"CASE WHEN {_IS_MESSAGE} THEN ({message}) WHEN name <> '' THEN ({named}) ELSE ({kind}) END"
    return condition, (*message_args, *named_args, *kind_args)


def lasting_sql(audiences: Mapping[str, AudienceDefinition]) -> Term:
    """An SQL condition on a log row: some audience may read it at any age — an event a `first`,
    `last`, `since` or `sum` selects (they look at the whole history, so an unbounded `within`
    counts too), or a row `profile_of` reads when an audience reads the profile. Retention keeps
    these rows (store/retention.py). A row a windowed selector takes is not in it: the config makes
    `store.retention.events` at least as long as every window (`longest_window`)."""
    wanted = needs(audiences)
    names = {name for selector in wanted.selectors if selector.horizon is None for name in selector.names}
    terms: list[str] = []
    args: tuple[Any, ...] = ()
    if names:
        condition, args = matches_sql(names)
        terms.append(f"({condition})")
    if wanted.profile:
        terms.append(f"({_PROFILE_ROW})")
    if not terms:
        return "0", ()
    return f"(user_id IS NOT NULL AND ({' OR '.join(terms)}))", args


def longest_window(definition: AudienceDefinition) -> int:
    """The longest bounded window (ms) an audience's conditions and carried values look back over."""
    horizons = [s.horizon for s in needs({"": definition}).selectors if s.horizon is not None]
    return max(horizons, default=0)


def _in_range(sql: str, args: tuple[Any, ...], lo: Bound, hi: Bound) -> tuple[str, tuple[Any, ...]]:
    if lo is not None:
        sql, args = sql + " AND user_id >= ?", (*args, lo)
    if hi is not None:
        sql, args = sql + " AND user_id < ?", (*args, hi)
    return sql, args


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
        keep: list[str] = []
        keep_args: list[Any] = []
        for horizon, group in sorted(by_horizon.items(), key=lambda item: -1 if item[0] is None else item[0]):
            if horizon is not None:
                group = group - always
                if not group:
                    continue
            condition, args = matches_sql(group)
            keep.append(f"({condition})" if horizon is None else f"(time_ms > ? AND ({condition}))")
            keep_args += args if horizon is None else [now_ms - horizon, *args]
        decode, self._decode_args = matches_sql(
            name for selector in wanted.selectors if selector.fields for name in selector.names
        )
        if wanted.profile:
            keep.append(f"({_PROFILE_ROW})")
            decode = f"({decode}) OR {_PROFILE_ROW}"
        self._columns = (
            f"user_id, time_ms, source, kind, channel, metric, name, CASE WHEN {decode} THEN body END"
        )
        self._keep, self._keep_args = " OR ".join(keep) or "0", tuple(keep_args)

    def query(self, first: int, last: int) -> tuple[str, tuple[Any, ...]]:
        """One pass over the rows with seqs in [first, last]: those an audience can select, and
        loopwire's own rows, which only count."""
        return (
            f"SELECT {self._columns} FROM events NOT INDEXED WHERE seq BETWEEN ? AND ? AND user_id IS NOT NULL"
            f" AND (source = ? OR {self._keep})",
            (*self._decode_args, first, last, OWN_SOURCE, *self._keep_args),
        )

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
        self, conn: sqlite3.Connection, first: int, last: int
    ) -> tuple[dict[str, list[Selected]], dict[str, int], int]:
        """Everyone's selected events (in log order), how many of loopwire's own events each has, and
        how many bodies were decoded."""
        plans, plan, cut = self.plans, self.plan, self.data
        selected: dict[str, list[Selected]] = {}
        own: dict[str, int] = {}
        decoded = 0
        for user_id, time_ms, source, kind, channel, metric, name, body in conn.execute(
            *self.query(first, last)
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


def read_connection(path: str) -> sqlite3.Connection:
    """A connection of its own that only reads, mapping the file instead of copying its pages."""
    conn = connect(path)
    conn.execute("PRAGMA query_only=ON")
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


def counts(lo: Bound, hi: Bound, last_seq: int) -> tuple[str, tuple[Any, ...]]:
    """Every user with an id in [lo, hi) and their number of events up to `last_seq`, in id order,
    from the `events_user` index alone (loopwire's own events included: the scan counts those)."""
    sql, args = _in_range("SELECT user_id, COUNT(*) FROM events WHERE user_id IS NOT NULL", (), lo, hi)
    return sql + " AND seq <= ? GROUP BY user_id ORDER BY user_id", (*args, last_seq)


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
    path: str,
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
    conn = read_connection(path)
    collecting = gc.isenabled()
    gc.disable()
    try:
        selected, own, decoded = reader.read(conn, *share.parts[share.worker])
        if len(share.parts) > 1:
            selected, own = _exchange(share, selected, own, directory, barrier)
        stored = _stored(conn, audiences, lo, hi) if write else {}
        for user_id, total in conn.execute(*counts(lo, hi, share.last_seq)):
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
        conn.close()
    seconds = time.perf_counter() - began
    return RangeResult(persons, count, evaluated, decoded, members, seconds, evaluate_s, changes, timers)


def _work(
    results: Any,
    path: str,
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
            path, audiences, now_ms, share, write, directory, barrier
        )
    except BaseException:
        barrier.abort()  # the others stop waiting for this one's rows
        outcome = traceback.format_exc()
    results.put((share.worker, outcome))


def _run_workers(
    path: str, audiences: Mapping[str, AudienceDefinition], now_ms: int, shares: list[Share], write: bool
) -> list[RangeResult]:
    context = multiprocessing.get_context("spawn")  # never fork a process that has threads
    barrier = context.Barrier(len(shares))
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="loopwire-recompute-") as directory:
        processes = [
            context.Process(
                target=_work,
                args=(results, path, audiences, now_ms, share, write, directory, barrier),
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


def split(path: str, parts: int, seed: int = 0) -> list[tuple[Bound, Bound]]:
    """`parts` ranges of user ids holding about equal numbers of events, cut at the quantiles of the
    users of a random sample of the log (seeded: the same log gives the same ranges)."""
    if parts <= 1:
        return [(None, None)]
    conn = read_connection(path)
    try:
        low, high = _seqs(conn)
        if low is None or high is None:
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


def _seqs(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    # two queries: MIN and MAX together in one would scan the table
    (low,) = conn.execute("SELECT MIN(seq) FROM events").fetchone()
    (high,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
    return low, high


def seq_parts(path: str, parts: int) -> tuple[list[tuple[int, int]], int]:
    """`parts` consecutive ranges of seqs (inclusive) of about equal size over the log as it is now,
    and its last seq."""
    conn = read_connection(path)
    try:
        low, high = _seqs(conn)
    finally:
        conn.close()
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
    ranges: list[tuple[Bound, Bound]] = split(store.path, workers) if workers > 1 else [(None, None)]
    parts, last_seq = seq_parts(store.path, len(ranges))
    shares = [Share(index, parts, ranges, last_seq) for index in range(len(ranges))]
    if len(shares) > 1:
        done = _run_workers(store.path, definitions, now_ms, shares, write)
    else:
        done = [recompute_share(store.path, definitions, now_ms, shares[0], write)]
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
