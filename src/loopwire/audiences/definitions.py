"""The typed schema of `audiences:` in the config file, and its config-time checks.

A rule is a tree of conditions. Each condition is a mapping with exactly one key — `count`, `absent`,
`first`, `last`, `sum`, `profile`, `member_of`, `all`, `any` or `not` — so YAML reads as the logic:

    rule:
      all:
        - count: {event: Checkout Started, within: 4h}
        - absent: {event: Order Completed, since: Checkout Started}

Event conditions name events by their key (`loopwire.model.event_key`), shell-style
globs allowed: "email.clicked", "*.clicked", "Order Completed". Windows are half-open on the old
side: `within: 7d` takes events whose age is in [0, 7d); `ago: {min: 60d, max: 90d}` takes [60d, 90d).
docs/audiences.md has the whole schema with examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import msgspec

from loopwire.errors import ConfigError
from loopwire.settings import Duration

Scalar = str | int | float | bool
Number = int | float

DEFAULT_ENTERED = "Audience Entered"
DEFAULT_EXITED = "Audience Exited"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class Test(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A test of one property value; several operators in one test must all hold (`{gte: 10, lt: 50}`).

    A missing property fails every operator except `ne` and `exists: false`."""

    eq: Scalar | None = None
    ne: Scalar | None = None
    gt: Number | str | None = None
    gte: Number | str | None = None
    lt: Number | str | None = None
    lte: Number | str | None = None
    in_: list[Scalar] | None = msgspec.field(name="in", default=None)
    contains: Scalar | None = None
    exists: bool | None = None

    def __post_init__(self) -> None:
        if all(getattr(self, f) is None for f in self.__struct_fields__):
            raise ValueError(
                "a property test needs at least one of eq, ne, gt, gte, lt, lte, in, contains, exists"
            )


Where = dict[str, Test]


class Ago(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """An age band: `min` ≤ age < `max` (no `max`: no upper bound)."""

    min: Duration | None = None
    max: Duration | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("`ago` needs `min`, `max` or both, e.g. {min: 60d, max: 90d}")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError("`ago.min` must be shorter than `ago.max`")


class EventRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    event: str | list[str]
    where: Where = {}

    def __post_init__(self) -> None:
        if not patterns(self.event):
            raise ValueError("`event` needs at least one name or glob")


class _Windowed(EventRef, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    within: Duration | None = None
    ago: Ago | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.within is not None and self.ago is not None:
            raise ValueError("give either `within` or `ago`, not both")
        if self.within is not None and self.within <= 0:
            raise ValueError("`within` must be longer than zero")


class Count(_Windowed, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Matching events in the window number at least `at_least` and at most `at_most`."""

    at_least: int = 1
    at_most: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.at_least < 0:
            raise ValueError("`at_least` cannot be negative")
        if self.at_most is not None and self.at_most < self.at_least:
            raise ValueError("`at_most` must be at least `at_least`")


class Absent(_Windowed, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """No matching event in the window; or, with `since`, the `since` event happened and no matching
    event has happened at or after its latest occurrence."""

    since: str | list[str] | EventRef | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.since is not None and (self.within is not None or self.ago is not None):
            raise ValueError("`since` replaces the window: give `since` or `within`/`ago`, not both")
        if isinstance(self.since, str | list) and not patterns(self.since):
            raise ValueError("`since` needs at least one event name or glob")


class Timing(_Windowed, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """`first`/`last`: the first (last) matching event exists and its age is within the window."""


class Sum(_Windowed, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """The sum of a numeric property over matching events in the window passes every comparison."""

    property: str
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("`sum` needs at least one of gt, gte, lt, lte")


CONDITION_KEYS = ("count", "absent", "first", "last", "sum", "profile", "member_of", "all", "any", "not")


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    count: Count | None = None
    absent: Absent | None = None
    first: Timing | None = None
    last: Timing | None = None
    sum: Sum | None = None
    profile: Where | None = None
    member_of: str | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = msgspec.field(name="not", default=None)

    def __post_init__(self) -> None:
        present = [key for key, value in zip(CONDITION_KEYS, _values(self), strict=True) if value is not None]
        if len(present) != 1:
            found = "none" if not present else " and ".join(f"`{key}`" for key in present)
            raise ValueError(
                f"a condition has exactly one of {', '.join(CONDITION_KEYS)}; this one has {found}"
            )
        if self.all == [] or self.any == []:
            raise ValueError("`all` and `any` need at least one condition")
        if self.profile == {}:
            raise ValueError("`profile` needs at least one attribute test")


def _values(condition: Condition) -> tuple[Any, ...]:
    c = condition
    return (c.count, c.absent, c.first, c.last, c.sum, c.profile, c.member_of, c.all, c.any, c.not_)


class State(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    name: str
    rule: Condition


class Carry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A value carried in the audience's entered event: from matching events at or before now
    (`pick`: last, first, sum or count), or a profile attribute."""

    event: str | list[str] | None = None
    where: Where = {}
    within: Duration | None = None
    property: str | None = None
    pick: Literal["last", "first", "sum", "count"] = "last"
    profile: str | None = None

    def __post_init__(self) -> None:
        if (self.event is None) == (self.profile is None):
            raise ValueError("a value comes from either `event` (with `property`) or `profile`")
        if self.profile is not None and (self.where or self.within is not None or self.property is not None):
            raise ValueError("a `profile` value takes no `where`, `within` or `property`")
        if self.event is not None and self.property is None and self.pick != "count":
            raise ValueError("an event value needs `property` (unless `pick: count`)")


class AudienceDefinition(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """One audience. Exactly one of `rule`, `states` (ordered; the first matching state wins) or
    `library` (a ready-made definition from `audiences.library`, tuned by `params`)."""

    version: int
    description: str = ""
    rule: Condition | None = None
    states: list[State] | None = None
    library: str | None = None
    params: dict[str, Any] = {}
    entered_event_name: str | None = None  # None: "Audience Entered" with property `audience`
    exited_event_name: str | None = None  # None: "Audience Exited"
    qualifying_values: dict[str, Carry] = {}
    exclude: list[str] = []
    priority_group: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("`version` starts at 1 and only goes up")
        given = [k for k in ("rule", "states", "library") if getattr(self, k) is not None]
        if len(given) != 1:
            found = "none" if not given else " and ".join(f"`{k}`" for k in given)
            raise ValueError(
                f"an audience has exactly one of `rule`, `states` or `library`; this one has {found}"
            )
        if self.params and self.library is None:
            raise ValueError("`params` only applies to a `library` audience")
        if self.states is not None:
            if not self.states:
                raise ValueError("`states` needs at least one state")
            names = [s.name for s in self.states]
            if len(set(names)) != len(names):
                raise ValueError("state names must be distinct")


def patterns(event: str | list[str]) -> list[str]:
    return [event] if isinstance(event, str) else list(event)


def window_ms(spec: _Windowed | Carry) -> tuple[int, int | None]:
    """The window as an age band in ms: `lo` ≤ age < `hi` (hi None: unbounded)."""
    if isinstance(spec, _Windowed) and spec.ago is not None:
        lo = 0 if spec.ago.min is None else round(spec.ago.min * 1000)
        return lo, None if spec.ago.max is None else round(spec.ago.max * 1000)
    if spec.within is not None:
        return 0, round(spec.within * 1000)
    return 0, None


def event_names(name: str, definition: AudienceDefinition) -> tuple[str, str]:
    """The (entered, exited) event names; defaults carry the audience in the `audience` property."""
    return (definition.entered_event_name or DEFAULT_ENTERED, definition.exited_event_name or DEFAULT_EXITED)


def walk(condition: Condition) -> Iterator[Condition]:
    yield condition
    for child in (condition.all or []) + (condition.any or []) + ([condition.not_] if condition.not_ else []):
        yield from walk(child)


def rules(definition: AudienceDefinition) -> list[Condition]:
    if definition.rule is not None:
        return [definition.rule]
    return [state.rule for state in definition.states or []]


def member_refs(definition: AudienceDefinition) -> set[str]:
    return {c.member_of for rule in rules(definition) for c in walk(rule) if c.member_of is not None}


def dependencies(name: str, definitions: Mapping[str, AudienceDefinition]) -> set[str]:
    """What `name`'s final membership reads: audiences in its `member_of` and `exclude`, and the
    audiences of its priority group with a higher priority."""
    definition = definitions[name]
    deps = member_refs(definition) | set(definition.exclude)
    if definition.priority_group is not None:
        deps |= {
            other
            for other, d in definitions.items()
            if d.priority_group == definition.priority_group and d.priority > definition.priority
        }
    return deps


LineFor = Callable[[str], int | None]
_LAST_SEGMENT = re.compile(r"(\.[^.\[]*|\[[^\]]*\])$")


def line_near(key: str, line_for: LineFor) -> int | None:
    """The line of `key`, or of its nearest enclosing key that has one (msgspec writes dict keys as
    `[...]`, and a key added by a library has no line of its own)."""
    while key:
        line = line_for(key)
        if line is not None:
            return line
        shorter = _LAST_SEGMENT.sub("", key)
        key = "" if shorter == key else shorter
    return None


def validate_audiences(
    definitions: Mapping[str, AudienceDefinition], line_for: LineFor = lambda key: None
) -> list[str]:
    """Check names, references, priority groups and cycles; return the names in evaluation order
    (every audience after the audiences it depends on). Raises `ConfigError` naming the key."""

    def fail(message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key, line=line_near(key, line_for))

    groups: dict[tuple[str, int], str] = {}
    for name in sorted(definitions):
        definition = definitions[name]
        where = f"audiences.{name}"
        if not NAME.match(name):
            raise fail("audience names use letters, digits, `_` and `-` only", where)
        if definition.library is not None:
            raise fail(
                "library audiences must be resolved first (audiences.library.resolve_audiences)", where
            )
        for ref in sorted(member_refs(definition)):
            if ref not in definitions:
                raise fail(f"`member_of: {ref}` names no audience in this file", f"{where}.rule")
        for index, ref in enumerate(definition.exclude):
            if ref == name:
                raise fail("an audience cannot exclude itself", f"{where}.exclude[{index}]")
            if ref not in definitions:
                raise fail(f"`{ref}` names no audience in this file", f"{where}.exclude[{index}]")
        if definition.priority_group is not None:
            slot = (definition.priority_group, definition.priority)
            if slot in groups:
                raise fail(
                    f"`{groups[slot]}` has the same priority ({definition.priority}) in priority group "
                    f"`{definition.priority_group}`; give each audience of a group its own priority",
                    f"{where}.priority",
                )
            groups[slot] = name
    return _order(definitions, fail)


def _order(
    definitions: Mapping[str, AudienceDefinition], fail: Callable[[str, str], ConfigError]
) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(definitions):
        if state.get(root) == 2:
            continue
        path: list[str] = [root]
        stack: list[Iterator[str]] = [iter(sorted(dependencies(root, definitions)))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
            elif state.get(child) == 1:
                cycle = [*path[path.index(child) :], child]
                raise fail(
                    "audiences depend on each other in a cycle (member_of, exclude or a higher priority "
                    f"in the same group): {' → '.join(cycle)}",
                    f"audiences.{child}",
                )
            elif state.get(child) != 2:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(dependencies(child, definitions))))
    return order
