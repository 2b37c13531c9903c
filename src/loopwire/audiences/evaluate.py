"""Pure audience evaluation: one person's history + a moment → membership, values, next check.

Compile once (`compile_all` at startup, or `compile_audience`), then evaluate per person; compiled
definitions hold pre-built glob matchers and property tests, and a `PersonHistory` memoises which of
its events each matcher selects, so the ~10 audiences of a config share one pass per event selector.

`next_check_ms` is the earliest moment after `now_ms` at which the result could change with no new
event (a click ageing out of a 7-day window, a 4-hour window closing, entering a 60–90-day band). The
engine re-evaluates then; a leaf's moment is exact, an `all`/`any` combines its children's moments
into a safe (never late) bound.

Windows: an event at time t is in a window `lo ≤ age < hi` at time T when `lo ≤ T − t < hi`: the new
end is inclusive, the old end exclusive, and events after T (clock skew, replays) are not yet in.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from heapq import merge
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from loopwire.audiences.definitions import (
    AudienceDefinition,
    Carry,
    Condition,
    EventRef,
    Test,
    event_names,
    member_refs,
    patterns,
    validate_audiences,
    window_ms,
)
from loopwire.model import Event, event_key, event_pattern

Outcome = tuple[bool, int | None]  # (value now, earliest moment it could change)
Memberships = Mapping[str, Outcome]

_MISSING: Any = object()
_MAGIC = re.compile(r"[*?]")  # wildcards of `model.event_pattern`; brackets are literal
_KEY_CACHE_LIMIT = 10_000
_BY_TIME = attrgetter("time_ms")


class Result(msgspec.Struct, frozen=True, kw_only=True):
    member: bool
    values: dict[str, Any] = {}
    next_check_ms: int | None = None
    state: str | None = None  # the matching state of a `states` audience (e.g. lifecycle_state)


def properties(event: Event) -> Mapping[str, Any]:
    """Where `where` paths look: Customer.io's webhook `data`, Amplitude's `event_properties`, the
    `properties` of Segment (and loopwire) events. A path starting with `$.` reads the raw payload."""
    if event.source == "customerio":
        return event.data
    found = event.data.get("event_properties" if event.source == "amplitude" else "properties")
    return found if isinstance(found, dict) else {}


class _Path:
    __slots__ = ("full", "parts", "raw")

    def __init__(self, path: str) -> None:
        self.raw = path.startswith("$.")
        self.full = path[2:] if self.raw else path
        self.parts = tuple(self.full.split("."))

    def lookup(self, root: Mapping[str, Any]) -> Any:
        if self.full in root:  # a literal dotted key wins over nesting
            return root[self.full]
        value: Any = root
        for part in self.parts:
            if isinstance(value, dict):
                value = value.get(part, _MISSING)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return _MISSING
            if value is _MISSING:
                return _MISSING
        return value

    def of_event(self, event: Event) -> Any:
        return self.lookup(event.data if self.raw else properties(event))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None  # "nan" and "inf" are not amounts
    return None


def _equal(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, int | float):
        number = _number(value)
        return number is not None and number == expected
    return bool(value == expected)


def _compare(value: Any, bound: float | str) -> int | None:
    """-1/0/1 for value vs bound: numbers (numeric strings too) against a number, strings against a
    string (ISO dates order correctly); None when they are not comparable."""
    if isinstance(bound, str):
        if not isinstance(value, str):
            return None
        return int(value > bound) - int(value < bound)
    number = _number(value)
    if number is None:
        return None
    return int(number > bound) - int(number < bound)


def _ordering(bound: float | str, accept: tuple[int, ...]) -> Callable[[Any], bool]:
    return lambda value: _compare(value, bound) in accept


def _compile_test(test: Test) -> Callable[[Any], bool]:
    checks: list[Callable[[Any], bool]] = []
    if test.eq is not None:
        eq = test.eq
        checks.append(lambda v: v is not _MISSING and _equal(v, eq))
    if test.ne is not None:
        ne = test.ne
        checks.append(lambda v: v is _MISSING or not _equal(v, ne))
    for bound, accept in ((test.gt, (1,)), (test.gte, (0, 1)), (test.lt, (-1,)), (test.lte, (-1, 0))):
        if bound is not None:
            checks.append(_ordering(bound, accept))
    if test.in_ is not None:
        options = list(test.in_)
        checks.append(lambda v: v is not _MISSING and any(_equal(v, o) for o in options))
    if test.contains is not None:
        needle = test.contains

        def contains(v: Any) -> bool:
            if isinstance(v, str) and isinstance(needle, str):
                return needle in v
            return isinstance(v, list) and any(_equal(item, needle) for item in v)

        checks.append(contains)
    if test.exists is not None:
        flag = test.exists
        checks.append(lambda v: (v is not _MISSING and v is not None) == flag)
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def _compile_where(where: Mapping[str, Test]) -> list[tuple[_Path, Callable[[Any], bool]]]:
    return [(_Path(path), _compile_test(test)) for path, test in where.items()]


class _Selected:
    """The events one matcher selects from one history: their positions and times, ascending."""

    __slots__ = ("indices", "times")

    def __init__(self, indices: list[int], times: list[int]) -> None:
        self.indices = indices
        self.times = times


_NONE = _Selected([], [])  # shared: never mutated


class PersonHistory:
    """One person's events, sorted by time (stable), and their profile: the latest identify traits /
    user properties as a plain dict of attributes."""

    __slots__ = ("_selected", "_sums", "events", "positions", "profile", "times")

    def __init__(self, events: Iterable[Event], profile: Mapping[str, Any] | None = None) -> None:
        ordered = tuple(sorted(events, key=_BY_TIME))
        self._fill(ordered, [event_key(event) for event in ordered], profile)

    @classmethod
    def in_order(
        cls, events: Sequence[Event], keys: Sequence[str], profile: Mapping[str, Any] | None = None
    ) -> PersonHistory:
        """The history of events already in time order (ties in the order they were logged, as the
        sort of `PersonHistory(...)` leaves them) with their keys (`model.event_key`): nothing is
        sorted or recomputed. The full recompute has them so."""
        history = cls.__new__(cls)
        history._fill(tuple(events), keys, profile)
        return history

    def _fill(
        self, events: tuple[Event, ...], keys: Sequence[str], profile: Mapping[str, Any] | None
    ) -> None:
        self.events = events
        self.profile: Mapping[str, Any] = profile or {}
        self.times = [e.time_ms for e in events]
        positions: dict[str, list[int]] = {}  # event key → positions of its events, ascending
        for position, key in enumerate(keys):
            found = positions.get(key)
            if found is None:
                positions[key] = [position]
            else:
                found.append(position)
        self.positions = positions
        self._selected: dict[EventMatcher, _Selected] = {}
        self._sums: dict[tuple[EventMatcher, str], list[float]] = {}

    def prefix_sums(self, matcher: EventMatcher, path: _Path) -> list[float]:
        """sums[i] = the property summed over the first i selected events (non-numbers count 0)."""
        cache_key = (matcher, path.full if not path.raw else "$." + path.full)
        sums = self._sums.get(cache_key)
        if sums is None:
            sums = [0.0]
            for index in matcher.select(self).indices:
                sums.append(sums[-1] + (_number(path.of_event(self.events[index])) or 0.0))
            self._sums[cache_key] = sums
        return sums


class EventMatcher:
    """Event-name globs (against `event_key`) plus `where` tests, compiled once."""

    __slots__ = ("_exact", "_keys", "_regex", "_tests")

    def __init__(self, event: str | list[str], where: Mapping[str, Test]) -> None:
        names = patterns(event)
        self._exact = frozenset(n for n in names if not _MAGIC.search(n))
        globs = [event_pattern(n).pattern for n in names if _MAGIC.search(n)]
        self._regex = re.compile("|".join(f"(?:{g})" for g in globs), re.S) if globs else None
        self._tests = _compile_where(where)
        self._keys: dict[str, bool] = {}

    def key_matches(self, key: str) -> bool:
        known = self._keys.get(key)
        if known is None:
            known = key in self._exact or (self._regex is not None and self._regex.fullmatch(key) is not None)
            if len(self._keys) < _KEY_CACHE_LIMIT:
                self._keys[key] = known
        return known

    def select(self, history: PersonHistory) -> _Selected:
        found = history._selected.get(self)
        if found is None:
            # One look per name, or per distinct event key of the person when there are globs; then
            # the `where` tests on those events.
            positions = history.positions
            if self._regex is None:
                groups = [group for name in self._exact if (group := positions.get(name)) is not None]
            else:
                known = self._keys
                groups = [
                    group
                    for key, group in positions.items()
                    if (known[key] if key in known else self.key_matches(key))
                ]
            if not groups:
                history._selected[self] = _NONE
                return _NONE
            indices = groups[0] if len(groups) == 1 else sorted(chain.from_iterable(groups))
            if self._tests:
                events, tests = history.events, self._tests
                if len(tests) == 1:
                    (path, test), *_ = tests
                    indices = [i for i in indices if test(path.of_event(events[i]))]
                else:
                    indices = [i for i in indices if all(t(p.of_event(events[i])) for p, t in tests)]
            found = _Selected(indices, [history.times[i] for i in indices])
            history._selected[self] = found
        return found


# ---- combining outcomes -------------------------------------------------------------------------


def _earliest(moments: Iterable[int | None]) -> int | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def combine_all(parts: Sequence[Outcome]) -> Outcome:
    earliest: int | None = None
    latest_false: int | None = None
    any_false = never = False
    for value, moment in parts:
        if value:
            if moment is not None and (earliest is None or moment < earliest):
                earliest = moment
        else:
            any_false = True
            if moment is None:
                never = True
            elif latest_false is None or moment > latest_false:
                latest_false = moment
    if not any_false:
        return True, earliest
    # False until every false part has turned true: none can before its own moment.
    return False, None if never else latest_false


def combine_any(parts: Sequence[Outcome]) -> Outcome:
    earliest: int | None = None
    latest_true: int | None = None
    any_true = never = False
    for value, moment in parts:
        if value:
            any_true = True
            if moment is None:
                never = True
            elif latest_true is None or moment > latest_true:
                latest_true = moment
        elif moment is not None and (earliest is None or moment < earliest):
            earliest = moment
    if not any_true:
        return False, earliest
    return True, None if never else latest_true


# ---- condition nodes ----------------------------------------------------------------------------


class _Node:
    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        raise NotImplementedError


def _window(times: list[int], lo: int, hi: int | None, now: int, test: Callable[[int, int], bool]) -> Outcome:
    """Evaluate `test(left, right)` on the selected events in the window (positions [left, right)),
    then walk forward through enter (t + lo) and exit (t + hi) moments until the test flips."""
    n = len(times)
    right = bisect_right(times, now - lo)
    left = 0 if hi is None else bisect_right(times, now - hi)
    value = test(left, right)
    while True:
        moment = times[right] + lo if right < n else None  # the next event enters
        if hi is not None and left < right:  # the oldest one in the window leaves
            leave = times[left] + hi
            if moment is None or leave < moment:
                moment = leave
        if moment is None:
            return value, None
        while right < n and times[right] + lo <= moment:
            right += 1
        if hi is not None:
            while left < right and times[left] + hi <= moment:
                left += 1
        if test(left, right) != value:
            return value, moment


class _Count(_Node):
    def __init__(self, matcher: EventMatcher, lo: int, hi: int | None, least: int, most: int | None) -> None:
        self.matcher, self.lo, self.hi, self.least, self.most = matcher, lo, hi, least, most

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        """`_window` with the count's test written in (the hottest node: no closure, no calls)."""
        least, most = self.least, self.most
        times = self.matcher.select(history).times
        if not times:  # nothing will enter the window: the count stays 0
            return least == 0, None
        lo, hi, n = self.lo, self.hi, len(times)
        right = bisect_right(times, now - lo)
        left = 0 if hi is None else bisect_right(times, now - hi)
        count = right - left
        value = least <= count and (most is None or count <= most)
        while True:
            moment = times[right] + lo if right < n else None  # the next event enters
            if hi is not None and left < right:  # the oldest one in the window leaves
                leave = times[left] + hi
                if moment is None or leave < moment:
                    moment = leave
            if moment is None:
                return value, None
            while right < n and times[right] + lo <= moment:
                right += 1
            if hi is not None:
                while left < right and times[left] + hi <= moment:
                    left += 1
            count = right - left
            if (least <= count and (most is None or count <= most)) != value:
                return value, moment


class _Sum(_Node):
    def __init__(self, matcher: EventMatcher, path: _Path, lo: int, hi: int | None, test: Test) -> None:
        self.matcher, self.path, self.lo, self.hi = matcher, path, lo, hi
        self.test = _compile_test(test)

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        sums = history.prefix_sums(self.matcher, self.path)
        check = self.test
        return _window(
            self.matcher.select(history).times,
            self.lo,
            self.hi,
            now,
            lambda left, right: check(sums[right] - sums[left]),
        )


class _First(_Node):
    def __init__(self, matcher: EventMatcher, lo: int, hi: int | None) -> None:
        self.matcher, self.lo, self.hi = matcher, lo, hi

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        times = self.matcher.select(history).times
        if not times:
            return False, None
        enter = times[0] + self.lo
        leave = None if self.hi is None else times[0] + self.hi
        current = enter <= now and (leave is None or now < leave)
        for moment in (enter, leave) if leave is None or enter <= leave else (leave, enter):
            if (
                moment is not None
                and moment > now
                and (enter <= moment and (leave is None or moment < leave)) != current
            ):
                return current, moment
        return current, None


class _Last(_Node):
    def __init__(self, matcher: EventMatcher, lo: int, hi: int | None) -> None:
        self.matcher, self.lo, self.hi = matcher, lo, hi

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        times, lo, hi = self.matcher.select(history).times, self.lo, self.hi
        n = len(times)
        if not n:
            return False, None
        right = bisect_right(times, now)  # times[right - 1] is the last event at `now`
        current = right > 0 and times[right - 1] + lo <= now and (hi is None or now < times[right - 1] + hi)
        moment = now
        while True:  # the next moment: a later event, or the last one entering or leaving the band
            upcoming = times[right] if right < n else None
            if right:
                last = times[right - 1]
                if last + lo > moment and (upcoming is None or last + lo < upcoming):
                    upcoming = last + lo
                if hi is not None and last + hi > moment and (upcoming is None or last + hi < upcoming):
                    upcoming = last + hi
            if upcoming is None:
                return current, None
            moment = upcoming
            while right < n and times[right] <= moment:
                right += 1
            value = (
                right > 0
                and times[right - 1] + lo <= moment
                and (hi is None or moment < times[right - 1] + hi)
            )
            if value != current:
                return current, moment


class _AbsentSince(_Node):
    def __init__(self, matcher: EventMatcher, anchor: EventMatcher) -> None:
        self.matcher, self.anchor = matcher, anchor

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        anchors = self.anchor.select(history)
        if not anchors.times:  # the `since` event never happened: false, and only an event changes that
            return False, None
        found = self.matcher.select(history)

        def value(moment: int) -> bool:
            right = bisect_right(anchors.times, moment)
            if right == 0:
                return False  # the `since` event has not happened: nothing to be absent since
            start, anchor_index = anchors.times[right - 1], anchors.indices[right - 1]
            lo, hi = bisect_left(found.times, start), bisect_right(found.times, moment)
            return hi == lo or (hi - lo == 1 and found.indices[lo] == anchor_index)

        current = value(now)
        later = found.times[bisect_right(found.times, now) :]
        later_anchors = anchors.times[bisect_right(anchors.times, now) :]
        if not later and not later_anchors:  # nothing ahead: only a new event changes it
            return current, None
        for moment in merge(later, later_anchors):
            if value(moment) != current:
                return current, moment
        return current, None


class _Profile(_Node):
    def __init__(self, where: Mapping[str, Test]) -> None:
        self.tests = _compile_where(where)

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        return all(test(path.lookup(history.profile)) for path, test in self.tests), None


class _MemberOf(_Node):
    def __init__(self, name: str) -> None:
        self.name = name

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        if self.name not in members:
            raise ValueError(f"the membership of audience {self.name!r} is needed (member_of) but not given")
        return members[self.name]


class _All(_Node):
    def __init__(self, children: list[_Node]) -> None:
        self.children = children
        # A part that is false and can't change settles an `all` (true and can't change: an `any`):
        # the rest need not be looked at, unless one of them reads a membership, which must then
        # be given (evaluating it is what says so).
        self.may_stop = not any(_reads_members(child) for child in children)

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        parts: list[Outcome] = []
        for child in self.children:
            part = child.outcome(history, now, members)
            if part[1] is None and not part[0] and self.may_stop:
                return part
            parts.append(part)
        return combine_all(parts)


class _Any(_All):
    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        parts: list[Outcome] = []
        for child in self.children:
            part = child.outcome(history, now, members)
            if part[1] is None and part[0] and self.may_stop:
                return part
            parts.append(part)
        return combine_any(parts)


class _Not(_Node):
    def __init__(self, child: _Node) -> None:
        self.child = child

    def outcome(self, history: PersonHistory, now: int, members: Memberships) -> Outcome:
        value, moment = self.child.outcome(history, now, members)
        return not value, moment


def _reads_members(node: _Node) -> bool:
    if isinstance(node, _MemberOf):
        return True
    if isinstance(node, _All):  # and `_Any`
        return any(_reads_members(child) for child in node.children)
    return isinstance(node, _Not) and _reads_members(node.child)


# ---- compiling ----------------------------------------------------------------------------------


class _Compiler:
    """Builds nodes, sharing one matcher per distinct (event, where) across every audience."""

    def __init__(self) -> None:
        self.matchers: dict[bytes, EventMatcher] = {}
        self.used: set[EventMatcher] = set()  # the matchers of the audience being compiled
        self.reads_more = False  # it reads the profile or another audience's membership too

    def matcher(self, event: str | list[str], where: Mapping[str, Test]) -> EventMatcher:
        key = msgspec.json.encode([sorted(patterns(event)), where], order="sorted")
        found = self.matchers.get(key)
        if found is None:
            found = self.matchers[key] = EventMatcher(event, where)
        self.used.add(found)
        return found

    def node(self, c: Condition) -> _Node:
        if c.count is not None:
            lo, hi = window_ms(c.count)
            return _Count(
                self.matcher(c.count.event, c.count.where), lo, hi, c.count.at_least, c.count.at_most
            )
        if c.absent is not None:
            spec = c.absent
            matcher = self.matcher(spec.event, spec.where)
            if spec.since is None:
                lo, hi = window_ms(spec)
                return _Count(matcher, lo, hi, 0, 0)
            since = spec.since if isinstance(spec.since, EventRef) else EventRef(event=spec.since)
            return _AbsentSince(matcher, self.matcher(since.event, since.where))
        if c.first is not None or c.last is not None:
            timing = c.first or c.last
            assert timing is not None
            lo, hi = window_ms(timing)
            kind = _First if c.first is not None else _Last
            return kind(self.matcher(timing.event, timing.where), lo, hi)
        if c.sum is not None:
            s = c.sum
            lo, hi = window_ms(s)
            test = Test(gt=s.gt, gte=s.gte, lt=s.lt, lte=s.lte)
            return _Sum(self.matcher(s.event, s.where), _Path(s.property), lo, hi, test)
        if c.profile is not None:
            self.reads_more = True
            return _Profile(c.profile)
        if c.member_of is not None:
            self.reads_more = True
            return _MemberOf(c.member_of)
        if c.all is not None:
            return _All([self.node(child) for child in c.all])
        if c.any is not None:
            return _Any([self.node(child) for child in c.any])
        assert c.not_ is not None
        return _Not(self.node(c.not_))

    def carry(self, spec: Carry) -> Callable[[PersonHistory, int], Any]:
        if spec.profile is not None:
            self.reads_more = True
            path = _Path(spec.profile)
            return lambda history, now: path.lookup(history.profile)
        assert spec.event is not None
        matcher = self.matcher(spec.event, spec.where)
        prop = _Path(spec.property or "")
        _, hi = window_ms(spec)
        pick = spec.pick

        def value(history: PersonHistory, now: int) -> Any:
            selected = matcher.select(history)
            right = bisect_right(selected.times, now)
            left = 0 if hi is None else bisect_right(selected.times, now - hi)
            if pick == "count":
                return right - left
            if pick == "sum":
                events = (history.events[i] for i in selected.indices[left:right])
                return sum(_number(prop.of_event(e)) or 0.0 for e in events)
            if left == right:
                return _MISSING
            position = right - 1 if pick == "last" else left
            return prop.of_event(history.events[selected.indices[position]])

        return value


class CompiledAudience:
    __slots__ = (
        "_unseen",
        "carries",
        "definition",
        "events_only",
        "exclude",
        "higher",
        "matchers",
        "name",
        "rule",
        "states",
    )

    def __init__(
        self, name: str, definition: AudienceDefinition, compiler: _Compiler, higher: tuple[str, ...] = ()
    ) -> None:
        if definition.library is not None:
            raise ValueError(
                f"audience {name!r} is a library reference: resolve it first (resolve_audiences)"
            )
        self.name = name
        self.definition = definition
        compiler.used, compiler.reads_more = set(), False
        self.rule = None if definition.rule is None else compiler.node(definition.rule)
        self.states = [(s.name, compiler.node(s.rule)) for s in definition.states or []]
        self.carries = {key: compiler.carry(spec) for key, spec in definition.qualifying_values.items()}
        self.exclude = tuple(definition.exclude)
        self.higher = higher  # audiences of its priority group with a higher priority
        self.matchers = tuple(compiler.used)  # every event selector of its rule, states and values
        self.events_only = not compiler.reads_more  # it reads no profile and no other audience
        self._unseen: _Unseen | None = None

    def raw(
        self, history: PersonHistory, now: int, members: Memberships
    ) -> tuple[bool, int | None, str | None]:
        """The rule (or the first matching state) alone, before exclusions and priority groups."""
        if self.rule is not None:
            value, moment = self.rule.outcome(history, now, members)
            return value, moment, None
        moments: list[int | None] = []
        for name, node in self.states:
            value, moment = node.outcome(history, now, members)
            moments.append(moment)
            if value:
                return True, _earliest(moments), name
        return False, _earliest(moments), None

    def values(self, history: PersonHistory, now: int) -> dict[str, Any]:
        found = {key: carry(history, now) for key, carry in self.carries.items()}
        return {key: value for key, value in found.items() if value is not _MISSING}

    def unseen(self, now: int) -> _Unseen:
        """What it gives a history none of whose events any of its matchers selects: for an
        `events_only` audience, what it gives an empty history, whoever the person is. Kept for the
        last `now` (a recompute, or one batch of the engine, evaluates everyone at one moment)."""
        found = self._unseen  # read once: another thread may replace it meanwhile
        if found is None or found.now != now:
            empty = PersonHistory(())
            alone = None  # the result itself, when no other audience has a say in it
            if not self.exclude and not self.higher:
                alone = _finish(self, empty, now, {})
            found = self._unseen = _Unseen(now, self.raw(empty, now, {}), self.values(empty, now), alone)
        return found


class _Unseen(NamedTuple):
    now: int
    raw: tuple[bool, int | None, str | None]
    values: dict[str, Any]  # shared by every result it gives: read-only
    result: Result | None


class CompiledAudiences:
    __slots__ = ("_touched", "audiences", "in_order", "order")

    def __init__(self, order: list[str], audiences: dict[str, CompiledAudience]) -> None:
        self.order = order
        self.audiences = audiences
        referenced = {  # the audiences whose membership another one reads
            other
            for audience in audiences.values()
            for other in (*audience.exclude, *audience.higher, *member_refs(audience.definition))
        }
        self.in_order = [(name, audiences[name], name in referenced) for name in order]
        self._touched: dict[str, frozenset[str]] = {}

    def touched(self, history: PersonHistory) -> set[str]:
        """The audiences with a matcher that matches the key of one of the history's events (the
        others select nothing from it)."""
        found: set[str] = set()
        cache = self._touched
        for key in history.positions:
            names = cache.get(key)
            if names is None:
                names = frozenset(
                    name
                    for name, audience in self.audiences.items()
                    if any(matcher.key_matches(key) for matcher in audience.matchers)
                )
                if len(cache) < _KEY_CACHE_LIMIT:
                    cache[key] = names
            found |= names
        return found


def compile_audience(target: AudienceDefinition | Condition, name: str = "audience") -> CompiledAudience:
    definition = (
        target if isinstance(target, AudienceDefinition) else AudienceDefinition(version=1, rule=target)
    )
    return CompiledAudience(name, definition, _Compiler())


def compile_all(definitions: Mapping[str, AudienceDefinition]) -> CompiledAudiences:
    """Validate (references, priority groups, cycles → `ConfigError`) and compile every audience."""
    order = validate_audiences(definitions)
    compiler = _Compiler()
    compiled: dict[str, CompiledAudience] = {}
    for name in order:
        d = definitions[name]
        higher = tuple(
            sorted(
                other
                for other, o in definitions.items()
                if d.priority_group is not None
                and o.priority_group == d.priority_group
                and o.priority > d.priority
            )
        )
        compiled[name] = CompiledAudience(name, d, compiler, higher)
    return CompiledAudiences(order, compiled)


def _finish(
    audience: CompiledAudience,
    history: PersonHistory,
    now: int,
    members: Memberships,
    unseen: _Unseen | None = None,
) -> Result:
    """The audience's result, after its exclusions and priority group. `unseen`: the audience's own
    events are not in the history (see `CompiledAudiences.touched`), and this is what it gives."""
    values: dict[str, Any] | None = None
    if unseen is not None:
        (value, moment, state), values = unseen.raw, unseen.values
    elif audience.rule is not None:  # `raw`, written in for the common case
        (value, moment), state = audience.rule.outcome(history, now, members), None
    else:
        value, moment, state = audience.raw(history, now, members)
    if not audience.exclude and not audience.higher:
        if not value:
            return Result(member=False, next_check_ms=moment)
        if values is None:
            values = audience.values(history, now) if audience.carries else {}
        return Result(member=True, values=values, next_check_ms=moment, state=state)
    parts: list[Outcome] = [(value, moment)]
    for other in audience.exclude + audience.higher:
        if other not in members:
            raise ValueError(f"the membership of audience {other!r} is needed (exclude) but not given")
        is_member, when = members[other]
        parts.append((not is_member, when))
    member, next_check = combine_all(parts)
    if not member:
        return Result(member=False, next_check_ms=next_check)
    if values is None:
        values = audience.values(history, now)
    return Result(member=True, values=values, next_check_ms=next_check, state=state)


def evaluate(
    target: AudienceDefinition | Condition | CompiledAudience,
    history: PersonHistory,
    now_ms: int,
    memberships: Mapping[str, bool] | None = None,
) -> Result:
    """One audience for one person. `memberships` answers `member_of` and `exclude` (their timing is
    the caller's to track); priority groups need the other audiences: use `evaluate_all`."""
    audience = target if isinstance(target, CompiledAudience) else compile_audience(target)
    members = {name: (bool(is_member), None) for name, is_member in (memberships or {}).items()}
    return _finish(audience, history, now_ms, members)


def evaluate_all(
    definitions: Mapping[str, AudienceDefinition] | CompiledAudiences, history: PersonHistory, now_ms: int
) -> dict[str, Result]:
    """Every audience for one person, dependencies first, with exclusions and priority groups applied.
    Pass a `CompiledAudiences` (from `compile_all`) to compile once for many people."""
    compiled = definitions if isinstance(definitions, CompiledAudiences) else compile_all(definitions)
    results: dict[str, Result] = {}
    members: dict[str, Outcome] = {}
    touched = compiled.touched(history)
    for name, audience, referenced in compiled.in_order:
        if audience.events_only and name not in touched:  # none of its events: as for everyone so
            unseen = audience.unseen(now_ms)
            result = unseen.result or _finish(audience, history, now_ms, members, unseen)
        else:
            result = _finish(audience, history, now_ms, members)
        results[name] = result
        if referenced:
            members[name] = (result.member, result.next_check_ms)
    return results


def membership_event(
    name: str, definition: AudienceDefinition, result: Result, entered: bool
) -> tuple[str, dict[str, Any]]:
    """The name and properties of the event that records an entry (with the qualifying values) or an
    exit: e.g. ("Entered Cart Abandon Segment", {"cart_value": 80, "audience": "cart_abandoners",
    "audience_version": 2}). A `states` audience adds `state`."""
    entered_name, exited_name = event_names(name, definition)
    properties: dict[str, Any] = dict(result.values) if entered else {}
    properties.update(audience=name, audience_version=definition.version)
    if result.state is not None:
        properties["state"] = result.state
    return (entered_name if entered else exited_name), properties
