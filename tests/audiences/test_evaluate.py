"""The evaluator on hand-made histories: windows at their boundaries (1 ms before / at / after),
`next_check_ms` and the flip when re-evaluated then, property filters, sums, profiles, member_of,
exclusions, priority groups and ordered states. Every expectation is worked out by hand."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from loopwire.audiences.definitions import AudienceDefinition, Condition
from loopwire.audiences.evaluate import (
    PersonHistory,
    Result,
    compile_all,
    compile_audience,
    evaluate,
    evaluate_all,
    membership_event,
)
from loopwire.errors import ConfigError
from loopwire.model import Event
from loopwire.settings import dec_hook

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
MS = 1
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
_ids = itertools.count()


def cio(metric: str, at: int, channel: str = "email", **data: Any) -> Event:
    """A Customer.io reporting webhook event (properties = the webhook's `data`)."""
    return Event(
        id=f"cio-{next(_ids)}",
        source="customerio",
        kind="message",
        channel=channel,
        metric=metric,
        time_ms=at,
        received_ms=at,
        user_id="u1",
        data={"identifiers": {"id": "u1"}, **data},
    )


def seg(name: str, at: int, **properties: Any) -> Event:
    """A Segment track call (properties under `properties`)."""
    message = {"type": "track", "event": name, "userId": "u1", "properties": properties}
    return Event(
        id=f"seg-{next(_ids)}",
        source="segment",
        kind="track",
        name=name,
        time_ms=at,
        received_ms=at,
        data=message,
    )


def amp(name: str, at: int, top: dict[str, Any] | None = None, **properties: Any) -> Event:
    """An Amplitude event (properties under `event_properties`; `top` = other top-level fields)."""
    payload = {"event_type": name, "user_id": "u1", "time": at, "event_properties": properties, **(top or {})}
    return Event(
        id=f"amp-{next(_ids)}",
        source="amplitude",
        kind="track",
        name=name,
        time_ms=at,
        received_ms=at,
        data=payload,
    )


def rule(raw: dict[str, Any]) -> Condition:
    return msgspec.convert(raw, Condition, dec_hook=dec_hook)


def audience(raw: dict[str, Any]) -> AudienceDefinition:
    return msgspec.convert(raw, AudienceDefinition, dec_hook=dec_hook)


def check(target: Any, events: list[Event], now: int, **kw: Any) -> Result:
    return evaluate(target, PersonHistory(events, kw.pop("profile", None)), now, kw.pop("memberships", None))


# ---- windows ------------------------------------------------------------------------------------

CLICKED_7D = rule({"count": {"event": "*.clicked", "within": "7d"}})


@pytest.mark.parametrize(
    ("now", "member"),
    [
        (T0 - 1, False),  # the click is 1 ms in the future: not yet in
        (T0, True),  # age 0: the new end is inclusive
        (T0 + 7 * DAY - 1, True),  # age 7d − 1 ms: still inside
        (T0 + 7 * DAY, False),  # age exactly 7d: the old end is exclusive
        (T0 + 7 * DAY + 1, False),
    ],
)
def test_within_window_boundaries(now: int, member: bool) -> None:
    assert check(CLICKED_7D, [cio("clicked", T0)], now).member is member


def test_a_click_ages_out_at_next_check_with_no_new_event() -> None:
    events = [cio("clicked", T0)]
    result = check(CLICKED_7D, events, T0 + 3 * DAY)
    # In since T0; leaves when the click turns 7 days old: T0 + 7d exactly.
    assert result == Result(member=True, next_check_ms=T0 + 7 * DAY)
    later = check(CLICKED_7D, events, result.next_check_ms or 0)
    assert later == Result(member=False, next_check_ms=None)  # nothing left that could bring them back


def test_next_check_follows_the_last_click_not_the_first() -> None:
    # Clicks at T0 and T0+2d: the count stays ≥ 1 until the later one ages out at T0+9d.
    events = [cio("clicked", T0), cio("clicked", T0 + 2 * DAY, channel="sms")]
    assert check(CLICKED_7D, events, T0 + 3 * DAY).next_check_ms == T0 + 9 * DAY
    assert check(CLICKED_7D, events, T0 + 9 * DAY - 1).member is True
    assert check(CLICKED_7D, events, T0 + 9 * DAY).member is False


def test_an_event_after_now_is_a_scheduled_change() -> None:
    # Replaying at an earlier moment: the click at T0 enters the window at T0 exactly.
    result = check(CLICKED_7D, [cio("clicked", T0)], T0 - HOUR)
    assert result == Result(member=False, next_check_ms=T0)


def test_at_most_leaves_when_a_fourth_event_arrives_and_returns_when_one_ages_out() -> None:
    two_or_three = rule({"count": {"event": "Order Completed", "within": "10d", "at_least": 2, "at_most": 3}})
    events = [seg("Order Completed", T0 + d * DAY) for d in (0, 1, 2, 3)]
    # At T0+2d: three orders (days 0,1,2) → member; at T0+3d the fourth arrives → 4 > 3 → out.
    assert check(two_or_three, events, T0 + 2 * DAY) == Result(member=True, next_check_ms=T0 + 3 * DAY)
    # At T0+3d: four in window; day-0 order leaves at T0+10d → three again → in.
    assert check(two_or_three, events, T0 + 3 * DAY) == Result(member=False, next_check_ms=T0 + 10 * DAY)
    # At T0+10d: three (days 1,2,3); day-1 leaves at T0+11d → two, still in; day-2 at T0+12d → one → out.
    assert check(two_or_three, events, T0 + 10 * DAY) == Result(member=True, next_check_ms=T0 + 12 * DAY)


def test_ago_band_boundaries_for_count() -> None:
    between = rule({"count": {"event": "Order Completed", "ago": {"min": "30d", "max": "60d"}}})
    events = [seg("Order Completed", T0)]
    assert check(between, events, T0 + 30 * DAY - 1) == Result(member=False, next_check_ms=T0 + 30 * DAY)
    assert check(between, events, T0 + 30 * DAY) == Result(member=True, next_check_ms=T0 + 60 * DAY)
    assert check(between, events, T0 + 60 * DAY - 1).member is True
    assert check(between, events, T0 + 60 * DAY) == Result(member=False, next_check_ms=None)


# ---- property filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"value": {"eq": 120}}, True),
        ({"value": {"eq": "120"}}, False),  # a string test compares strings: 120 is not "120"
        ({"value": {"gt": 100}}, True),
        ({"value": {"gt": 120}}, False),
        ({"value": {"gte": 120, "lt": 121}}, True),  # operators in one test must all hold
        ({"value": {"lte": 119.99}}, False),
        ({"coupon": {"eq": "SPRING"}}, True),
        ({"coupon": {"ne": "SPRING"}}, False),
        ({"missing": {"ne": "SPRING"}}, True),  # a missing property is "not equal"
        ({"missing": {"eq": "SPRING"}}, False),
        ({"missing": {"exists": False}}, True),
        ({"coupon": {"exists": True}}, True),
        ({"nothing": {"exists": True}}, False),  # null counts as absent
        ({"coupon": {"in": ["WINTER", "SPRING"]}}, True),
        ({"coupon": {"contains": "PRI"}}, True),
        ({"tags": {"contains": "gift"}}, True),
        ({"tags": {"contains": "sale"}}, False),
        ({"cart.items": {"gte": 2}}, True),  # nested
        ({"cart.items": {"gte": 3}}, False),
        ({"products.0.sku": {"eq": "SKU-1"}}, True),  # list index
        ({"first_order": {"eq": True}}, True),
        ({"first_order": {"eq": 1}}, False),  # booleans are not numbers
        ({"price": {"gt": 9}}, True),  # numeric string compared as a number
        ({"day": {"gte": "2024-03-01", "lt": "2024-04-01"}}, True),  # strings compare as strings
        ({"a.b": {"eq": "literal"}}, True),  # a literal dotted key wins over nesting
    ],
)
def test_where_on_segment_properties(where: dict[str, Any], expected: bool) -> None:
    order = seg(
        "Order Completed",
        T0,
        value=120,
        coupon="SPRING",
        nothing=None,
        tags=["gift", "new"],
        cart={"items": 2},
        products=[{"sku": "SKU-1"}],
        first_order=True,
        price="9.50",
        day="2024-03-15",
        **{"a.b": "literal"},
    )
    condition = rule({"count": {"event": "Order Completed", "where": where}})
    assert check(condition, [order], T0).member is expected


def test_where_reads_each_sources_properties() -> None:
    condition = rule(
        {"count": {"event": ["email.clicked", "Order Completed"], "where": {"plan": {"eq": "gold"}}}}
    )
    # Customer.io: the webhook `data`; Amplitude: `event_properties`; Segment: `properties`.
    assert check(condition, [cio("clicked", T0, plan="gold")], T0).member is True
    assert check(condition, [amp("Order Completed", T0, plan="gold")], T0).member is True
    assert check(condition, [amp("Order Completed", T0, top={"plan": "gold"})], T0).member is False
    assert check(condition, [seg("Order Completed", T0, plan="gold")], T0).member is True


def test_dollar_path_reads_the_raw_payload() -> None:
    condition = rule({"sum": {"event": "Order Completed", "property": "$.revenue", "gte": 50}})
    events = [
        amp("Order Completed", T0, top={"revenue": 30}),
        amp("Order Completed", T0 + 1, top={"revenue": 20}),
    ]
    assert check(condition, events, T0 + 1).member is True  # 30 + 20 = 50 ≥ 50
    assert check(condition, events, T0).member is False  # only 30 so far


def test_globs_and_lists_of_event_names() -> None:
    events = [cio("clicked", T0, channel="sms"), cio("delivered", T0), seg("Product Viewed", T0)]
    assert check(rule({"count": {"event": "sms.*", "at_least": 1}}), events, T0).member is True
    assert check(rule({"count": {"event": "*.delivered"}}), events, T0).member is True
    assert check(rule({"count": {"event": ["push.*", "Product ?iewed"]}}), events, T0).member is True
    assert check(rule({"count": {"event": "product viewed"}}), events, T0).member is False  # case matters
    assert check(rule({"count": {"event": "*", "at_least": 3}}), events, T0).member is True


# ---- absent -------------------------------------------------------------------------------------

NO_ORDER_SINCE_CHECKOUT = rule({"absent": {"event": "Order Completed", "since": "Checkout Started"}})


def test_absent_since_needs_the_since_event() -> None:
    # No checkout yet: there is nothing to be absent since, so the condition does not hold; the
    # checkout in the history at T0 + 1h is when it could (and does) start to hold.
    assert check(NO_ORDER_SINCE_CHECKOUT, [seg("Checkout Started", T0 + HOUR)], T0) == Result(
        member=False, next_check_ms=T0 + HOUR
    )
    assert check(NO_ORDER_SINCE_CHECKOUT, [seg("Checkout Started", T0)], T0).member is True


def test_absent_since_counts_an_order_at_the_same_millisecond() -> None:
    events = [seg("Order Completed", T0), seg("Checkout Started", T0)]
    assert check(NO_ORDER_SINCE_CHECKOUT, events, T0).member is False


def test_absent_since_a_new_checkout_after_an_order() -> None:
    # checkout T0, order T0+1h, checkout again T0+2h: nothing since the latest checkout.
    events = [
        seg("Checkout Started", T0),
        seg("Order Completed", T0 + HOUR),
        seg("Checkout Started", T0 + 2 * HOUR),
    ]
    assert check(NO_ORDER_SINCE_CHECKOUT, events, T0 + HOUR).member is False
    assert check(NO_ORDER_SINCE_CHECKOUT, events, T0 + HOUR + 30 * MINUTE).next_check_ms == T0 + 2 * HOUR
    assert check(NO_ORDER_SINCE_CHECKOUT, events, T0 + 2 * HOUR).member is True


def test_absent_since_does_not_count_the_since_event_itself() -> None:
    nothing_after = rule({"absent": {"event": "*", "since": "Checkout Started"}})
    assert check(nothing_after, [seg("Checkout Started", T0)], T0).member is True
    assert (
        check(nothing_after, [seg("Checkout Started", T0), seg("Product Viewed", T0 + 1)], T0 + 1).member
        is False
    )


def test_absent_within_window_and_its_return() -> None:
    no_click = rule({"absent": {"event": "*.clicked", "within": "14d"}})
    events = [cio("clicked", T0)]
    assert check(no_click, events, T0) == Result(member=False, next_check_ms=T0 + 14 * DAY)
    assert check(no_click, events, T0 + 14 * DAY - 1).member is False
    assert check(no_click, events, T0 + 14 * DAY) == Result(member=True, next_check_ms=None)
    assert check(no_click, [], T0) == Result(member=True, next_check_ms=None)


# ---- first / last -------------------------------------------------------------------------------


def test_last_in_band_and_the_next_check_into_it() -> None:
    lapsed = rule({"last": {"event": "Order Completed", "ago": {"min": "60d", "max": "90d"}}})
    events = [seg("Order Completed", T0), seg("Order Completed", T0 + 10 * DAY)]
    # The last order is at T0+10d: in the band from T0+70d (inclusive) to T0+100d (exclusive).
    assert check(lapsed, events, T0 + 65 * DAY) == Result(member=False, next_check_ms=T0 + 70 * DAY)
    assert check(lapsed, events, T0 + 70 * DAY - 1).member is False
    assert check(lapsed, events, T0 + 70 * DAY) == Result(member=True, next_check_ms=T0 + 100 * DAY)
    assert check(lapsed, events, T0 + 100 * DAY) == Result(member=False, next_check_ms=None)


def test_last_moves_when_a_later_event_is_already_in_the_history() -> None:
    lapsed = rule({"last": {"event": "Order Completed", "ago": {"min": "1d"}}})
    events = [seg("Order Completed", T0), seg("Order Completed", T0 + 2 * DAY)]
    # At T0+1d the first order is 1 day old (in); at T0+2d a newer order is 0 days old (out) until T0+3d.
    assert check(lapsed, events, T0 + DAY) == Result(member=True, next_check_ms=T0 + 2 * DAY)
    assert check(lapsed, events, T0 + 2 * DAY) == Result(member=False, next_check_ms=T0 + 3 * DAY)


def test_first_within() -> None:
    new = rule({"first": {"event": "Order Completed", "within": "14d"}})
    events = [seg("Order Completed", T0), seg("Order Completed", T0 + 5 * DAY)]
    # Only the first order's age matters: in from T0 until T0+14d exclusive, despite the later order.
    assert check(new, events, T0 + 6 * DAY) == Result(member=True, next_check_ms=T0 + 14 * DAY)
    assert check(new, events, T0 + 14 * DAY) == Result(member=False, next_check_ms=None)
    assert check(new, [], T0) == Result(member=False, next_check_ms=None)


# ---- sums ---------------------------------------------------------------------------------------


def test_sum_over_a_window_drops_when_an_order_ages_out() -> None:
    spent = rule({"sum": {"event": "Order Completed", "property": "revenue", "within": "30d", "gte": 100}})
    events = [
        seg("Order Completed", T0, revenue=60),
        seg("Order Completed", T0 + DAY, revenue="40.0"),  # numeric strings add as numbers
        seg("Order Completed", T0 + 2 * DAY, revenue="n/a"),  # not a number: adds nothing
        seg("Order Completed", T0 + 3 * DAY),  # no revenue: adds nothing
    ]
    # 60 + 40 = 100 ≥ 100 from T0+1d; the 60 leaves at T0+30d → 40 < 100.
    assert check(spent, events, T0 + DAY - 1).member is False
    assert check(spent, events, T0 + DAY) == Result(member=True, next_check_ms=T0 + 30 * DAY)
    assert check(spent, events, T0 + 30 * DAY) == Result(member=False, next_check_ms=None)


# ---- profile ------------------------------------------------------------------------------------


def test_profile_comparisons() -> None:
    gold = rule({"profile": {"plan": {"eq": "gold"}, "address.country": {"in": ["DE", "AT"]}}})
    assert check(gold, [], T0, profile={"plan": "gold", "address": {"country": "DE"}}) == Result(member=True)
    assert check(gold, [], T0, profile={"plan": "gold", "address": {"country": "FR"}}).member is False
    assert check(gold, [], T0, profile={}).member is False
    assert check(rule({"profile": {"orders_count": {"gte": 2}}}), [], T0, profile={"orders_count": 2}).member


# ---- all / any / not and their next checks ------------------------------------------------------


def test_all_waits_for_its_last_false_part() -> None:
    # Needs a click in 7 days AND an order 2 days ago or more. Click at T0, order at T0+1h.
    both = rule(
        {
            "all": [
                {"count": {"event": "*.clicked", "within": "7d"}},
                {"last": {"event": "Order Completed", "ago": {"min": "2d"}}},
            ]
        }
    )
    events = [cio("clicked", T0), seg("Order Completed", T0 + HOUR)]
    assert check(both, events, T0 + HOUR) == Result(member=False, next_check_ms=T0 + HOUR + 2 * DAY)
    assert check(both, events, T0 + HOUR + 2 * DAY) == Result(member=True, next_check_ms=T0 + 7 * DAY)


def test_all_with_a_part_that_cannot_turn_true_has_no_next_check() -> None:
    never = rule(
        {"all": [{"count": {"event": "*.clicked", "within": "7d"}}, {"profile": {"vip": {"eq": True}}}]}
    )
    assert check(never, [cio("clicked", T0)], T0) == Result(member=False, next_check_ms=None)


def test_any_and_not() -> None:
    either = rule(
        {
            "any": [
                {"count": {"event": "*.clicked", "within": "1d"}},
                {"count": {"event": "*.opened", "within": "2d"}},
            ]
        }
    )
    events = [cio("clicked", T0), cio("opened", T0)]
    # Holds until both have aged out: the click at T0+1d, the open at T0+2d.
    assert check(either, events, T0) == Result(member=True, next_check_ms=T0 + 2 * DAY)
    assert check(either, events, T0 + DAY).member is True
    assert check(either, events, T0 + 2 * DAY).member is False
    negated = rule({"not": {"count": {"event": "*.clicked", "within": "1d"}}})
    assert check(negated, events, T0) == Result(member=False, next_check_ms=T0 + DAY)


# ---- member_of, exclusions, priority groups -----------------------------------------------------


def test_member_of_reads_the_given_memberships() -> None:
    condition = rule({"member_of": "vip"})
    assert check(condition, [], T0, memberships={"vip": True}).member is True
    assert check(condition, [], T0, memberships={"vip": False}).member is False
    with pytest.raises(ValueError, match="'vip'"):
        check(condition, [], T0)


AUDIENCES = {
    "recent": audience({"version": 1, "rule": {"count": {"event": "Order Completed", "within": "24h"}}}),
    "clicked": audience({"version": 1, "rule": {"count": {"event": "*.clicked", "within": "7d"}}}),
    "clicked_not_recent": audience(
        {"version": 1, "rule": {"member_of": "clicked"}, "exclude": ["recent"], "qualifying_values": {}}
    ),
    "vip_clickers": audience(
        {"version": 1, "rule": {"all": [{"member_of": "clicked"}, {"profile": {"vip": {"eq": True}}}]}}
    ),
}


def test_evaluate_all_resolves_member_of_and_exclusions_with_their_timing() -> None:
    events = [cio("clicked", T0), seg("Order Completed", T0 + HOUR)]
    results = evaluate_all(AUDIENCES, PersonHistory(events, {"vip": True}), T0 + 2 * HOUR)
    assert results["clicked"] == Result(member=True, next_check_ms=T0 + 7 * DAY)
    assert results["recent"] == Result(member=True, next_check_ms=T0 + HOUR + 24 * HOUR)
    # Clicked but ordered an hour ago: excluded until the order is 24 h old.
    assert results["clicked_not_recent"] == Result(member=False, next_check_ms=T0 + 25 * HOUR)
    assert results["vip_clickers"] == Result(member=True, next_check_ms=T0 + 7 * DAY)
    later = evaluate_all(AUDIENCES, PersonHistory(events, {"vip": True}), T0 + 25 * HOUR)
    assert later["clicked_not_recent"] == Result(member=True, next_check_ms=T0 + 7 * DAY)


def test_evaluate_applies_exclusions_from_memberships() -> None:
    events = [cio("clicked", T0)]
    assert (
        check(
            AUDIENCES["clicked_not_recent"], events, T0, memberships={"clicked": True, "recent": True}
        ).member
        is False
    )
    assert check(
        AUDIENCES["clicked_not_recent"], events, T0, memberships={"clicked": True, "recent": False}
    ).member


def _group_member(priority: int, event: str, exclude: list[str] | None = None) -> AudienceDefinition:
    return audience(
        {
            "version": 1,
            "rule": {"count": {"event": event, "within": "7d"}},
            "priority_group": "offer",
            "priority": priority,
            "exclude": exclude or [],
        }
    )


def test_priority_group_keeps_only_the_highest_matching_audience() -> None:
    definitions = {
        "cart": _group_member(30, "Checkout Started"),
        "browse": _group_member(20, "Product Viewed"),
        "engaged": _group_member(10, "*.clicked"),
        "blocked": audience({"version": 1, "rule": {"profile": {"blocked": {"eq": True}}}}),
    }
    events = [seg("Product Viewed", T0), cio("clicked", T0), seg("Checkout Started", T0 + DAY)]
    history = PersonHistory(events, {})
    at_t0 = evaluate_all(definitions, history, T0)
    # At T0 the checkout has not happened: browse (20) beats engaged (10).
    assert [n for n in ("cart", "browse", "engaged") if at_t0[n].member] == ["browse"]
    # engaged is held back by browse; browse could change at T0+1d (cart's checkout enters its window
    # then), so that is the earliest engaged could change too.
    assert at_t0["engaged"].next_check_ms == T0 + DAY
    assert at_t0["browse"].next_check_ms == T0 + DAY
    at_day = evaluate_all(definitions, history, T0 + DAY)
    assert [n for n in ("cart", "browse", "engaged") if at_day[n].member] == ["cart"]
    # With cart excluded for this person, the next one down takes the place.
    definitions["cart"] = _group_member(30, "Checkout Started", exclude=["blocked"])
    blocked = evaluate_all(definitions, PersonHistory(events, {"blocked": True}), T0 + DAY)
    assert [n for n in ("cart", "browse", "engaged") if blocked[n].member] == ["browse"]


def test_priority_tie_is_a_config_error() -> None:
    definitions = {"a": _group_member(10, "x"), "b": _group_member(10, "y")}
    with pytest.raises(ConfigError, match=r"audiences\.b\.priority: `a` has the same priority \(10\)"):
        compile_all(definitions)


@pytest.mark.parametrize(
    ("definitions", "cycle"),
    [
        (
            {
                "a": {"version": 1, "rule": {"member_of": "b"}},
                "b": {"version": 1, "rule": {"not": {"member_of": "a"}}},
            },
            "a → b → a",
        ),
        ({"a": {"version": 1, "rule": {"member_of": "a"}}}, "a → a"),
        (
            {
                "a": {"version": 1, "rule": {"count": {"event": "x"}}, "exclude": ["b"]},
                "b": {"version": 1, "rule": {"member_of": "c"}},
                "c": {"version": 1, "rule": {"member_of": "a"}},
            },
            "a → b → c → a",
        ),
        (
            {
                "hi": {"version": 1, "rule": {"member_of": "lo"}, "priority_group": "g", "priority": 2},
                "lo": {"version": 1, "rule": {"count": {"event": "x"}}, "priority_group": "g", "priority": 1},
            },
            "hi → lo → hi",
        ),
    ],
)
def test_cycles_are_rejected_at_config_time(definitions: dict[str, Any], cycle: str) -> None:
    typed = {name: audience(body) for name, body in definitions.items()}
    with pytest.raises(ConfigError, match="cycle") as caught:
        compile_all(typed)
    assert cycle in str(caught.value)


# ---- states and carried values ------------------------------------------------------------------


def test_states_first_match_wins_and_next_check_covers_earlier_states() -> None:
    lifecycle = audience(
        {
            "version": 1,
            "states": [
                {"name": "hot", "rule": {"count": {"event": "*.clicked", "within": "1d"}}},
                {"name": "warm", "rule": {"count": {"event": "*.clicked", "within": "3d"}}},
            ],
        }
    )
    events = [cio("clicked", T0)]
    assert check(lifecycle, events, T0) == Result(member=True, state="hot", next_check_ms=T0 + DAY)
    assert check(lifecycle, events, T0 + DAY) == Result(member=True, state="warm", next_check_ms=T0 + 3 * DAY)
    assert check(lifecycle, events, T0 + 3 * DAY) == Result(member=False)


def test_qualifying_values_come_from_the_right_events() -> None:
    definition = audience(
        {
            "version": 1,
            "rule": {"count": {"event": "Checkout Started", "within": "4h"}},
            "qualifying_values": {
                "cart_value": {"event": "Checkout Started", "property": "value"},
                "first_value": {"event": "Checkout Started", "property": "value", "pick": "first"},
                "checkouts": {"event": "Checkout Started", "pick": "count"},
                "spent": {"event": "Order Completed", "property": "revenue", "pick": "sum"},
                "spent_1d": {
                    "event": "Order Completed",
                    "property": "revenue",
                    "pick": "sum",
                    "within": "1d",
                },
                "coupon": {"event": "Checkout Started", "property": "coupon"},
                "plan": {"profile": "plan"},
            },
        }
    )
    events = [
        seg("Order Completed", T0 - 2 * DAY, revenue=10),
        seg("Order Completed", T0 - HOUR, revenue=5),
        seg("Checkout Started", T0, value=40, coupon="A"),
        seg("Checkout Started", T0 + HOUR, value=55),
        seg("Checkout Started", T0 + 5 * HOUR, value=99),  # after now: not carried
    ]
    result = check(definition, events, T0 + 2 * HOUR, profile={"plan": "gold"})
    # The latest checkout at or before now (T0+1h) has no coupon: left out, not taken from an older one.
    assert result.values == {
        "cart_value": 55,
        "first_value": 40,
        "checkouts": 2,
        "spent": 15.0,
        "spent_1d": 5.0,
        "plan": "gold",
    }
    assert check(definition, events, T0 + 9 * HOUR).values == {}  # last checkout 4h+ old: no values


def test_compiled_audiences_share_one_matcher_per_selector() -> None:
    same = {"count": {"event": ["b", "a"], "where": {"x": {"eq": 1}}}}
    definitions = {
        "one": audience({"version": 1, "rule": same}),
        "two": audience({"version": 1, "rule": {"not": same}}),
    }
    compiled = compile_all(definitions)
    one, two = compiled.audiences["one"].rule, compiled.audiences["two"].rule
    assert one is not None and two is not None
    assert one.matcher is two.child.matcher  # type: ignore[attr-defined]


def test_compile_rejects_an_unresolved_library_reference() -> None:
    with pytest.raises(ValueError, match="resolve"):
        compile_audience(audience({"version": 1, "library": "vip"}))


def test_membership_events_name_the_audience_and_version() -> None:
    definition = audience(
        {
            "version": 3,
            "rule": {"count": {"event": "Checkout Started", "within": "4h"}},
            "entered_event_name": "Entered Cart Abandon Segment",
            "qualifying_values": {"cart_value": {"event": "Checkout Started", "property": "value"}},
        }
    )
    result = check(definition, [seg("Checkout Started", T0, value=80)], T0)
    assert membership_event("cart", definition, result, entered=True) == (
        "Entered Cart Abandon Segment",
        {"cart_value": 80, "audience": "cart", "audience_version": 3},
    )
    left = check(definition, [seg("Checkout Started", T0, value=80)], T0 + 4 * HOUR)
    assert membership_event("cart", definition, left, entered=False) == (
        "Audience Exited",
        {"audience": "cart", "audience_version": 3},
    )
    states = audience({"version": 1, "states": [{"name": "hot", "rule": {"count": {"event": "*.clicked"}}}]})
    hot = check(states, [cio("clicked", T0)], T0)
    assert membership_event("heat", states, hot, entered=True) == (
        "Audience Entered",
        {"audience": "heat", "audience_version": 1, "state": "hot"},
    )
