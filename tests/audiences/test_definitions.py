"""The audience schema decodes the documented YAML and rejects mistakes with a message naming the key
(msgspec's `- at $.path` suffix is what config.py turns into `audiences.<name>.<path> (line N)`)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import yaml

from loopwire.audiences.definitions import (
    AudienceDefinition,
    dependencies,
    event_names,
    validate_audiences,
    window_ms,
)
from loopwire.errors import ConfigError
from loopwire.settings import dec_hook

DOC_EXAMPLE = """
cart_abandoners:
  version: 2
  description: Checkout started in the last 4 hours, no order since
  rule:
    all:
      - count: {event: Checkout Started, within: 4h}
      - absent: {event: Order Completed, since: Checkout Started}
  entered_event_name: Entered Cart Abandon Segment
  qualifying_values:
    cart_value: {event: Checkout Started, property: value}
    items: {event: Checkout Started, property: products}
  exclude: [recent_purchasers]
  priority_group: recovery
  priority: 20
recent_purchasers:
  version: 1
  rule:
    count: {event: Order Completed, within: 24h}
big_spenders:
  version: 1
  rule:
    any:
      - sum: {event: Order Completed, property: revenue, gt: 300}
      - profile: {plan: {in: [gold, platinum]}}
      - not: {member_of: recent_purchasers}
      - last: {event: Order Completed, ago: {min: 60d, max: 90d}, where: {coupon: {exists: false}}}
      - first: {event: "*.clicked", within: 7d}
"""


def convert(raw: Any) -> AudienceDefinition:
    return msgspec.convert(raw, AudienceDefinition, dec_hook=dec_hook)


def error_of(raw: Any) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(raw)
    return str(caught.value)


def test_the_documented_example_decodes() -> None:
    raw = yaml.safe_load(DOC_EXAMPLE)
    typed = {name: convert(body) for name, body in raw.items()}
    cart = typed["cart_abandoners"]
    assert cart.rule is not None and cart.rule.all is not None
    count = cart.rule.all[0].count
    assert count is not None and count.within == 4 * 3600.0
    assert window_ms(count) == (0, 4 * 3_600_000)
    absent = cart.rule.all[1].absent
    assert absent is not None and absent.since == "Checkout Started"
    assert event_names("cart_abandoners", cart) == ("Entered Cart Abandon Segment", "Audience Exited")
    assert event_names("recent_purchasers", typed["recent_purchasers"]) == (
        "Audience Entered",
        "Audience Exited",
    )
    last = typed["big_spenders"].rule.any[3].last  # type: ignore[union-attr,index]
    assert last is not None and window_ms(last) == (60 * 86_400_000, 90 * 86_400_000)
    assert validate_audiences(typed) == ["recent_purchasers", "big_spenders", "cart_abandoners"]
    assert dependencies("cart_abandoners", typed) == {"recent_purchasers"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"version": 1, "rule": {"count": {"event": "x"}, "member_of": "y"}},
            "a condition has exactly one of count, absent, first, last, sum, profile, member_of, all, any, not; "
            "this one has `count` and `member_of` - at `$.rule`",
        ),
        (
            {"version": 1, "rule": {"all": [{"not": {}}]}},
            "this one has none - at `$.rule.all[0].not`",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "whithin": "7d"}}},
            "unknown field `whithin` - at `$.rule.count`",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "within": "7 days"}}},
            "expected a duration such as 30s",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "within": "0s"}}},
            "`within` must be longer than zero",
        ),
        (
            {"version": 1, "rule": {"count": {"event": []}}},
            "`event` needs at least one name or glob - at `$.rule.count`",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "at_least": 3, "at_most": 2}}},
            "`at_most` must be at least",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "within": "1d", "ago": {"min": "1d"}}}},
            "either `within` or `ago`",
        ),
        (
            {"version": 1, "rule": {"last": {"event": "x", "ago": {"min": "9d", "max": "9d"}}}},
            "`ago.min` must be shorter",
        ),
        ({"version": 1, "rule": {"last": {"event": "x", "ago": {}}}}, "`ago` needs `min`, `max` or both"),
        (
            {"version": 1, "rule": {"absent": {"event": "x", "since": "y", "within": "1h"}}},
            "`since` replaces the window",
        ),
        (
            {"version": 1, "rule": {"sum": {"event": "x", "property": "revenue"}}},
            "`sum` needs at least one of gt",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "where": {"plan": {}}}}},
            "a property test needs at least one of eq, ne, gt, gte, lt, lte, in, contains, exists",
        ),
        (
            {"version": 1, "rule": {"count": {"event": "x", "where": {"plan": {"eq": [1]}}}}},
            "Expected `bool | int | float | str | null`",
        ),
        ({"version": 1, "rule": {"all": []}}, "`all` and `any` need at least one condition"),
        ({"version": 1, "rule": {"profile": {}}}, "`profile` needs at least one attribute test"),
        ({"version": 0, "rule": {"member_of": "x"}}, "`version` starts at 1"),
        ({"rule": {"member_of": "x"}}, "Object missing required field `version`"),
        ({"version": 1}, "exactly one of `rule`, `states` or `library`; this one has none"),
        ({"version": 1, "library": "vip", "rule": {"member_of": "x"}}, "this one has `rule` and `library`"),
        (
            {"version": 1, "rule": {"member_of": "x"}, "params": {"over": 1}},
            "`params` only applies to a `library`",
        ),
        ({"version": 1, "states": []}, "`states` needs at least one state"),
        (
            {
                "version": 1,
                "states": [
                    {"name": "a", "rule": {"member_of": "x"}},
                    {"name": "a", "rule": {"member_of": "y"}},
                ],
            },
            "state names must be distinct",
        ),
        (
            {"version": 1, "rule": {"member_of": "x"}, "qualifying_values": {"v": {"event": "x"}}},
            "needs `property`",
        ),
        (
            {
                "version": 1,
                "rule": {"member_of": "x"},
                "qualifying_values": {"v": {"event": "x", "profile": "p"}},
            },
            "either `event` (with `property`) or `profile`",
        ),
        (
            {
                "version": 1,
                "rule": {"member_of": "x"},
                "qualifying_values": {"v": {"event": "x", "pick": "max"}},
            },
            "Invalid enum value 'max'",
        ),
    ],
)
def test_mistakes_name_the_key(raw: dict[str, Any], message: str) -> None:
    assert message in error_of(raw)


def test_defaults_and_the_not_key() -> None:
    definition = convert({"version": 3, "rule": {"not": {"member_of": "vip"}}})
    assert definition.rule is not None and definition.rule.not_ is not None
    assert definition.rule.not_.member_of == "vip"
    assert (definition.exclude, definition.priority_group, definition.priority) == ([], None, 0)
    assert msgspec.to_builtins(definition) == {"version": 3, "rule": {"not": {"member_of": "vip"}}}


def _typed(raw: dict[str, Any]) -> dict[str, AudienceDefinition]:
    return {name: convert(body) for name, body in raw.items()}


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (
            {"a": {"version": 1, "rule": {"member_of": "nope"}}},
            "audiences.a.rule",
            "`member_of: nope` names no audience",
        ),
        (
            {
                "a": {"version": 1, "rule": {"member_of": "b"}, "exclude": ["b", "zzz"]},
                "b": {"version": 1, "rule": {"member_of": "a"}},
            },
            "audiences.a.exclude[1]",
            "`zzz` names no audience",
        ),
        (
            {"a": {"version": 1, "rule": {"profile": {"x": {"eq": 1}}}, "exclude": ["a"]}},
            "audiences.a.exclude[0]",
            "cannot exclude itself",
        ),
        (
            {"bad name": {"version": 1, "rule": {"profile": {"x": {"eq": 1}}}}},
            "audiences.bad name",
            "letters, digits",
        ),
        ({"a": {"version": 1, "library": "vip"}}, "audiences.a", "must be resolved first"),
    ],
)
def test_set_level_mistakes(raw: dict[str, Any], key: str, message: str) -> None:
    lines = {key: 7}
    with pytest.raises(ConfigError) as caught:
        validate_audiences(_typed(raw), line_for=lines.get)
    assert caught.value.key == key and caught.value.line == 7
    assert message in str(caught.value)
