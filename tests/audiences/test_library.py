"""Every library audience on synthetic histories, with the answers worked out by hand: who is in, the
moment they leave with no new event (`next_check_ms`), and each window's edges (1 ms before / at)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.audiences.evaluate import PersonHistory, Result, compile_all, evaluate, evaluate_all
from loopwire.audiences.library import LIBRARY, LibraryError, library_definition, resolve_audiences
from loopwire.errors import ConfigError
from loopwire.model import Event
from loopwire.settings import dec_hook
from tests.audiences.test_evaluate import DAY, HOUR, T0, amp, cio, seg

CART = "https://shop.example.com/cart?c=1"


def at(name: str, events: list[Event], now: int, **params: Any) -> Result:
    return evaluate(library_definition(name, params), PersonHistory(events), now)


def member(name: str, events: list[Event], now: int, **params: Any) -> bool:
    return at(name, events, now, **params).member


def order(moment: int, revenue: Any = 50) -> Event:
    return seg("Order Completed", moment, revenue=revenue)


# ---- high intent engagers: clicked any message in the last 7 days -------------------------------


def test_high_intent_enters_on_a_click_and_leaves_seven_days_later() -> None:
    events = [cio("delivered", T0 - DAY), cio("clicked", T0, machine=False, href=CART)]
    assert at("high_intent_engagers", events, T0 - 1) == Result(member=False, next_check_ms=T0)
    # In from the click; the only click turns 7 days old at T0+7d: that is when they leave.
    assert at("high_intent_engagers", events, T0) == Result(
        member=True, values={"clicks": 1}, next_check_ms=T0 + 7 * DAY
    )
    assert member("high_intent_engagers", events, T0 + 7 * DAY - 1) is True
    assert at("high_intent_engagers", events, T0 + 7 * DAY) == Result(member=False, next_check_ms=None)


def test_high_intent_any_channel_but_not_machine_clicks() -> None:
    assert member("high_intent_engagers", [cio("clicked", T0, channel="sms", href=CART)], T0) is True
    assert member("high_intent_engagers", [cio("clicked", T0, channel="push")], T0) is True
    # An email link scanner's click (machine: true) is not intent, unless asked for.
    scanner = [cio("clicked", T0, machine=True)]
    assert member("high_intent_engagers", scanner, T0) is False
    assert member("high_intent_engagers", scanner, T0, count_machine_clicks=True) is True
    assert member("high_intent_engagers", [cio("opened", T0), cio("delivered", T0)], T0) is False


# ---- fatigue risk: 5+ delivered in 14 days, no click --------------------------------------------


def delivered_daily(count: int) -> list[Event]:
    return [cio("delivered", T0 + d * DAY, channel="email" if d % 2 else "sms") for d in range(count)]


def test_fatigue_needs_five_deliveries_in_fourteen_days() -> None:
    events = delivered_daily(5)  # T0, T0+1d, ..., T0+4d
    # Four before T0+4d; the fifth makes five at T0+4d exactly.
    assert member("fatigue_risk", events, T0 + 4 * DAY - 1) is False
    # Five in window until the first (T0) turns 14 days old at T0+14d → four → out.
    assert at("fatigue_risk", events, T0 + 4 * DAY) == Result(
        member=True, values={"delivered": 5}, next_check_ms=T0 + 14 * DAY
    )
    assert member("fatigue_risk", events, T0 + 14 * DAY - 1) is True
    assert member("fatigue_risk", events, T0 + 14 * DAY) is False


def test_fatigue_a_click_keeps_them_out_for_fourteen_days() -> None:
    events = [*delivered_daily(5), cio("clicked", T0 + 2 * DAY)]
    # Five deliveries but a click 2 days ago; the click leaves the window at T0+16d, the earliest the
    # answer could change (by then the deliveries have thinned out too, so it stays out).
    result = at("fatigue_risk", events, T0 + 4 * DAY)
    assert result == Result(member=False, next_check_ms=T0 + 16 * DAY)
    assert at("fatigue_risk", events, T0 + 16 * DAY) == Result(member=False, next_check_ms=None)


def test_fatigue_counts_deliveries_not_sends_and_ignores_scanner_clicks() -> None:
    sends = [*delivered_daily(4), cio("sent", T0 + 4 * DAY)]
    assert member("fatigue_risk", sends, T0 + 4 * DAY) is False
    scanned = [*delivered_daily(5), cio("clicked", T0 + 3 * DAY, machine=True)]
    assert member("fatigue_risk", scanned, T0 + 4 * DAY) is True


# ---- cart abandoners: checkout in the last 4 hours, no order since ------------------------------


def checkout(moment: int, value: Any = 80) -> Event:
    return seg("Checkout Started", moment, value=value, products=[{"sku": "A", "quantity": 2}])


def test_cart_abandoner_window_and_values() -> None:
    events = [checkout(T0)]
    expected_values = {"cart_value": 80, "items": [{"sku": "A", "quantity": 2}]}
    # In from the checkout until it is 4 hours old (exclusive).
    assert at("cart_abandoners", events, T0) == Result(
        member=True, values=expected_values, next_check_ms=T0 + 4 * HOUR
    )
    assert member("cart_abandoners", events, T0 + 4 * HOUR - 1) is True
    assert at("cart_abandoners", events, T0 + 4 * HOUR) == Result(member=False, next_check_ms=None)
    definition = library_definition("cart_abandoners")
    assert definition.entered_event_name == "Entered Cart Abandon Segment"


def test_cart_abandoner_leaves_on_the_order() -> None:
    events = [checkout(T0), order(T0 + HOUR)]
    assert member("cart_abandoners", events, T0 + HOUR - 1) is True
    assert at("cart_abandoners", events, T0 + HOUR) == Result(member=False, next_check_ms=None)
    # An order before the checkout does not count as "since".
    assert member("cart_abandoners", [order(T0 - DAY), checkout(T0)], T0) is True


def test_cart_abandoner_excluding_recent_purchasers() -> None:
    audiences = resolve_audiences(
        {
            "cart": AudienceDefinition(version=1, library="cart_abandoners", exclude=["recent"]),
            "recent": AudienceDefinition(version=1, library="recent_purchasers"),
        }
    )
    # Ordered at T0−1h, started another checkout at T0: a cart abandoner by the rule, suppressed as a
    # recent purchaser. The suppression lifts at T0+23h — after the 4-hour window has closed anyway.
    results = evaluate_all(audiences, PersonHistory([order(T0 - HOUR), checkout(T0)]), T0)
    assert results["recent"] == Result(member=True, next_check_ms=T0 + 23 * HOUR)
    assert results["cart"] == Result(member=False, next_check_ms=T0 + 23 * HOUR)
    later = evaluate_all(audiences, PersonHistory([order(T0 - HOUR), checkout(T0)]), T0 + 23 * HOUR)
    assert later["cart"] == Result(member=False, next_check_ms=None)
    # Without the earlier order they are in.
    assert evaluate_all(audiences, PersonHistory([checkout(T0)]), T0)["cart"].member is True


# ---- clicked a cart message, no purchase 6 hours on ---------------------------------------------


def test_cart_click_enters_six_hours_after_the_click() -> None:
    events = [cio("clicked", T0, href=CART)]
    assert at("cart_click_no_purchase", events, T0) == Result(member=False, next_check_ms=T0 + 6 * HOUR)
    assert member("cart_click_no_purchase", events, T0 + 6 * HOUR - 1) is False
    # In at 6 h; out when the click is 3 days old.
    assert at("cart_click_no_purchase", events, T0 + 6 * HOUR) == Result(
        member=True, values={"href": CART}, next_check_ms=T0 + 3 * DAY
    )
    assert member("cart_click_no_purchase", events, T0 + 3 * DAY - 1) is True
    assert at("cart_click_no_purchase", events, T0 + 3 * DAY) == Result(member=False, next_check_ms=None)


def test_cart_click_an_order_within_or_after_the_wait() -> None:
    bought_early = [cio("clicked", T0, href=CART), order(T0 + 2 * HOUR)]
    assert at("cart_click_no_purchase", bought_early, T0 + 6 * HOUR) == Result(
        member=False, next_check_ms=None
    )
    bought_late = [cio("clicked", T0, href=CART), order(T0 + 7 * HOUR)]
    assert member("cart_click_no_purchase", bought_late, T0 + 7 * HOUR - 1) is True
    assert member("cart_click_no_purchase", bought_late, T0 + 7 * HOUR) is False


def test_cart_click_other_links_and_a_second_click() -> None:
    assert (
        member("cart_click_no_purchase", [cio("clicked", T0, href="https://shop/p/1")], T0 + 7 * HOUR)
        is False
    )
    # A second cart click at T0+10h restarts the wait: out until T0+16h.
    events = [cio("clicked", T0, href=CART), cio("clicked", T0 + 10 * HOUR, channel="sms", href=CART)]
    assert member("cart_click_no_purchase", events, T0 + 10 * HOUR - 1) is True
    assert at("cart_click_no_purchase", events, T0 + 10 * HOUR) == Result(
        member=False, next_check_ms=T0 + 16 * HOUR
    )


def test_cart_click_by_campaign() -> None:
    events = [cio("clicked", T0, campaign_id=412, href="https://shop/p/1")]
    params = {"cart_message": {"campaign_id": {"in": [412, 413]}}}
    assert member("cart_click_no_purchase", events, T0 + 6 * HOUR, **params) is True
    assert member("cart_click_no_purchase", events, T0 + 6 * HOUR) is False  # default: cart link only


# ---- lapsed bands -------------------------------------------------------------------------------

BANDS = ("lapsed_30_60", "lapsed_60_90", "lapsed_90_plus")


@pytest.mark.parametrize(
    ("now", "band"),
    [
        (T0 + 30 * DAY - 1, None),  # 29.99 days since the order: not lapsed yet
        (T0 + 30 * DAY, "lapsed_30_60"),
        (T0 + 60 * DAY - 1, "lapsed_30_60"),
        (T0 + 60 * DAY, "lapsed_60_90"),
        (T0 + 90 * DAY - 1, "lapsed_60_90"),
        (T0 + 90 * DAY, "lapsed_90_plus"),
        (T0 + 900 * DAY, "lapsed_90_plus"),
    ],
)
def test_lapsed_bands_partition_time_since_the_last_order(now: int, band: str | None) -> None:
    events = [order(T0 - 40 * DAY), order(T0)]  # the last order (T0) decides
    assert [name for name in BANDS if member(name, events, now)] == ([band] if band else [])


def test_lapsed_next_checks_walk_through_the_bands() -> None:
    events = [order(T0)]
    assert at("lapsed_30_60", events, T0 + 45 * DAY) == Result(
        member=True, values={"orders": 1}, next_check_ms=T0 + 60 * DAY
    )
    assert at("lapsed_60_90", events, T0 + 45 * DAY) == Result(member=False, next_check_ms=T0 + 60 * DAY)
    assert at("lapsed_90_plus", events, T0 + 45 * DAY) == Result(member=False, next_check_ms=T0 + 90 * DAY)
    assert at("lapsed_90_plus", events, T0 + 90 * DAY).next_check_ms is None
    # A new order resets the clock: out of every band.
    assert not any(member(name, [*events, order(T0 + 50 * DAY)], T0 + 65 * DAY) for name in BANDS)
    assert not any(member(name, [], T0) for name in BANDS)  # never ordered: not lapsed


# ---- VIP: lifetime revenue over 300 -------------------------------------------------------------


def test_vip_is_strictly_over_300() -> None:
    exactly = [order(T0, 100), order(T0 + DAY, 150), order(T0 + 2 * DAY, 50)]  # 300.00: not over
    assert member("vip", exactly, T0 + 3 * DAY) is False
    above = [order(T0, 100), order(T0 + DAY, 150), order(T0 + 2 * DAY, "50.01")]  # 300.01
    assert member("vip", above, T0 + 2 * DAY - 1) is False  # 250 before the third order
    result = at("vip", above, T0 + 2 * DAY)
    assert result.member is True and result.next_check_ms is None  # lifetime: never ages out
    assert result.values["lifetime_value"] == pytest.approx(300.01)


def test_vip_from_amplitude_and_with_params() -> None:
    events = [amp("Order Completed", T0, revenue=200), seg("Order Completed", T0 + 100 * DAY, revenue=150)]
    assert member("vip", events, T0 + 100 * DAY) is True  # 350 across both sources
    assert member("vip", events, T0 + 100 * DAY, over=400) is False
    # Within a year: 350 until the first order is 365 days old, then 150.
    yearly = at("vip", events, T0 + 100 * DAY, within="365d")
    assert (yearly.member, yearly.next_check_ms) == (True, T0 + 365 * DAY)
    assert member("vip", events, T0 + 365 * DAY, within="365d") is False
    assert member("vip", [seg("Purchase", T0, revenue=999)], T0) is False
    assert member("vip", [seg("Purchase", T0, revenue=999)], T0, order_event="Purchase") is True


# ---- first-time buyers in 14 days ---------------------------------------------------------------


def test_first_time_buyer_for_fourteen_days() -> None:
    events = [order(T0, 42)]
    assert at("first_time_buyers", events, T0) == Result(
        member=True, values={"order_value": 42}, next_check_ms=T0 + 14 * DAY
    )
    assert member("first_time_buyers", events, T0 - 1) is False
    assert member("first_time_buyers", events, T0 + 14 * DAY - 1) is True
    assert member("first_time_buyers", events, T0 + 14 * DAY) is False


def test_a_second_order_ends_first_time_buyer() -> None:
    events = [order(T0), order(T0 + 3 * DAY)]
    assert member("first_time_buyers", events, T0 + 3 * DAY - 1) is True
    assert at("first_time_buyers", events, T0 + 3 * DAY) == Result(member=False, next_check_ms=None)
    # A repeat buyer whose second order was yesterday is not a first-time buyer.
    assert member("first_time_buyers", [order(T0 - 30 * DAY), order(T0 - DAY)], T0) is False


# ---- recent purchasers: ordered in the last 24 h ------------------------------------------------


def test_recent_purchaser_for_24_hours() -> None:
    events = [order(T0)]
    assert at("recent_purchasers", events, T0) == Result(member=True, next_check_ms=T0 + 24 * HOUR)
    assert member("recent_purchasers", events, T0 + 24 * HOUR - 1) is True
    assert member("recent_purchasers", events, T0 + 24 * HOUR) is False
    assert member("recent_purchasers", [checkout(T0)], T0) is False


# ---- lifecycle state ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "state", "next_check"),
    [
        (T0 - 1, None, T0),  # not ordered yet: no state; the order in the history lands at T0
        (T0, "active", T0 + 30 * DAY),
        (T0 + 30 * DAY - 1, "active", T0 + 30 * DAY),
        (T0 + 30 * DAY, "at_risk", T0 + 90 * DAY),
        (T0 + 90 * DAY - 1, "at_risk", T0 + 90 * DAY),
        (T0 + 90 * DAY, "lapsed", None),
    ],
)
def test_lifecycle_state_first_matching_rule_wins(
    now: int, state: str | None, next_check: int | None
) -> None:
    result = at("lifecycle_state", [order(T0)], now)
    assert (result.member, result.state, result.next_check_ms) == (state is not None, state, next_check)


def test_lifecycle_state_returns_to_active_and_takes_params() -> None:
    events = [order(T0), order(T0 + 200 * DAY)]
    assert at("lifecycle_state", events, T0 + 200 * DAY).state == "active"
    assert at("lifecycle_state", [order(T0)], T0 + 10 * DAY, active_within="7d").state == "at_risk"
    with pytest.raises(LibraryError, match="shorter than `at_risk_within`"):
        library_definition("lifecycle_state", {"active_within": "90d", "at_risk_within": "30d"})


# ---- enabling by name ---------------------------------------------------------------------------


def test_every_library_audience_resolves_and_compiles_together() -> None:
    config = {name: AudienceDefinition(version=1, library=name) for name in LIBRARY}
    config["cart_abandoners"] = AudienceDefinition(
        version=4, library="cart_abandoners", exclude=["recent_purchasers"]
    )
    resolved = resolve_audiences(config)
    assert all(d.library is None and (d.rule or d.states) for d in resolved.values())
    assert resolved["cart_abandoners"].version == 4
    compiled = compile_all(resolved)
    history = PersonHistory([order(T0 - 50 * DAY, 400), cio("clicked", T0 - DAY, href=CART), checkout(T0)])
    members = {name for name, r in evaluate_all(compiled, history, T0 + HOUR).items() if r.member}
    # Ordered 400 fifty days ago (VIP, lapsed 30–60, at_risk), clicked a cart link a day ago with no
    # order since (cart click, high intent), checkout an hour ago (cart abandoner).
    assert members == {
        "vip",
        "lapsed_30_60",
        "lifecycle_state",
        "cart_click_no_purchase",
        "high_intent_engagers",
        "cart_abandoners",
    }


def test_config_keys_override_the_library() -> None:
    raw = {
        "version": 2,
        "library": "vip",
        "params": {"over": 500},
        "description": "Our VIPs",
        "entered_event_name": "Became VIP",
        "priority_group": "tier",
        "priority": 5,
    }
    resolved = resolve_audiences({"vip": msgspec.convert(raw, AudienceDefinition, dec_hook=dec_hook)})["vip"]
    assert (resolved.version, resolved.description, resolved.entered_event_name) == (
        2,
        "Our VIPs",
        "Became VIP",
    )
    assert (resolved.priority_group, resolved.priority) == ("tier", 5)
    assert resolved.rule is not None and resolved.rule.sum is not None and resolved.rule.sum.gt == 500
    assert library_definition("vip").description.startswith(
        "Order revenue summed over the lifetime is over 300"
    )


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        (
            {"library": "vips"},
            "audiences.a.library",
            "unknown library audience 'vips'; the library has high_intent_engagers",
        ),
        (
            {"library": "vip", "params": {"over": "lots"}},
            "audiences.a.params.over",
            "Expected `float`, got `str`",
        ),
        (
            {"library": "vip", "params": {"ovr": 1}},
            "audiences.a.params.ovr",
            "unknown param; vip takes order_event",
        ),
        (
            {"library": "recent_purchasers", "params": {"within": "soon"}},
            "audiences.a.params.within",
            "expected a duration",
        ),
        ({"library": "vip", "exclude": ["ghost"]}, "audiences.a.exclude[0]", "`ghost` names no audience"),
        (
            {"library": "cart_click_no_purchase", "params": {"cart_message": {"href": {"contians": "cart"}}}},
            "audiences.a.params.cart_message[...].contians",
            "unknown key",
        ),
    ],
)
def test_library_mistakes_name_the_key(entry: dict[str, Any], key: str, message: str) -> None:
    definition = msgspec.convert({"version": 1, **entry}, AudienceDefinition, dec_hook=dec_hook)
    with pytest.raises(ConfigError) as caught:
        resolve_audiences({"a": definition}, line_for={key: 12}.get)
    assert (caught.value.key, caught.value.line) == (key, 12)
    assert message in str(caught.value)


def test_next_check_is_never_late_on_random_histories() -> None:
    """Memberships only change at an event's time plus a window edge. Check every such moment between
    now and `next_check_ms`: nothing may change before it (with None, nothing may change at all)."""
    import random

    rng = random.Random(20240601)
    config = {name: AudienceDefinition(version=1, library=name) for name in LIBRARY}
    config["cart_abandoners"] = AudienceDefinition(
        version=1, library="cart_abandoners", exclude=["recent_purchasers"]
    )
    config["high_intent_engagers"] = AudienceDefinition(
        version=1, library="high_intent_engagers", priority_group="g", priority=1
    )
    config["fatigue_risk"] = AudienceDefinition(
        version=1, library="fatigue_risk", priority_group="g", priority=2
    )
    compiled = compile_all(resolve_audiences(config))
    edges = [0, 6 * HOUR, 4 * HOUR, 24 * HOUR, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 60 * DAY, 90 * DAY]
    for _ in range(150):
        events = []
        for _ in range(rng.randrange(1, 12)):
            moment = T0 + rng.randrange(-100 * DAY, 10 * DAY)
            kind = rng.random()
            if kind < 0.3:
                events.append(
                    cio(rng.choice(["clicked", "delivered"]), moment, href=rng.choice([CART, "/p"]))
                )
            elif kind < 0.6:
                events.append(checkout(moment))
            else:
                events.append(order(moment, rng.choice([50, 120, 200])))
        history = PersonHistory(events)
        now = T0 + rng.randrange(-50 * DAY, 20 * DAY)
        before = evaluate_all(compiled, history, now)
        moments = sorted(
            {e.time_ms + edge for e in events for edge in edges}
            | {e.time_ms + edge - 1 for e in events for edge in edges}
        )
        for moment in moments:
            if moment <= now:
                continue
            after = evaluate_all(compiled, history, moment)
            for name, result in before.items():
                if result.next_check_ms is None or moment < result.next_check_ms:
                    assert (after[name].member, after[name].state) == (result.member, result.state), (
                        name,
                        now,
                        moment,
                    )
