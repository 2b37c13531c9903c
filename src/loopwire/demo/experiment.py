"""The demo's holdout experiment, checked against the scenario: who loopwire assigned where, whether
the group reached every destination, and the lift report next to the lift the scenario was built with.

Pure, like `report`: the scenario and what the run observed (plain dicts) in, a section of the report
and its checks out. The truth is worked out from the scenario alone: who has which id, which orders
each id placed, and the rates the scenario drew them with.
"""

from __future__ import annotations

from typing import Any

from loopwire.demo import wiring
from loopwire.demo.scenario import (
    BASE_RATE,
    EXPERIMENT_ID,
    HOLDOUT_PERCENT,
    HOLDOUT_SALT,
    OWN_ORDER_AFTER,
    PERSUADED_SHARE,
    TREATED_RATE,
    Scenario,
)

GROUPS = ("holdout", "treatment")
WINDOW_DAYS = int(wiring.EXPERIMENT_WINDOW.removesuffix("d"))
AMPLITUDE_MIN_ID_LENGTH = 5  # amplitude.md §2.2: shorter user ids are refused, so never sent
ASSIGNED_AT = "when loopwire first saw it (a customer's sign-in at the storefront, before the checkout)"


def _cents(value: float) -> float:
    return round(value, 2) + 0.0


def truth(scenario: Scenario) -> dict[str, Any]:
    """What the scenario holds for the experiment: the rates it drew orders with, and per group the
    users loopwire assigns, how many of them ordered and their revenue."""
    revenue: dict[str, float] = {}
    for call in scenario.storefront:
        if call.event == "Order Completed" and not call.resend and call.user_id is not None:
            revenue[call.user_id] = revenue.get(call.user_id, 0.0) + float(call.properties["revenue"])
    groups: dict[str, dict[str, Any]] = {g: {"users": 0, "converted": 0, "revenue": 0.0} for g in GROUPS}
    for user_id, group in scenario.expected.assignments.items():
        row = groups[group]
        row["users"] += 1
        if user_id in revenue:
            row["converted"] += 1
            row["revenue"] += revenue[user_id]
    for row in groups.values():
        row["revenue"] = _cents(row["revenue"])
        row["rate"] = row["converted"] / row["users"] if row["users"] else 0.0
    return {
        "holdout_rate": BASE_RATE,
        "treated_rate": TREATED_RATE,
        "absolute_lift": round(TREATED_RATE - BASE_RATE, 6),
        "relative_lift": round(TREATED_RATE / BASE_RATE - 1, 6),
        "how": (
            f"every shopper buys on their own with probability {BASE_RATE:.0%} (within "
            f"{OWN_ORDER_AFTER[1] // 86_400} days of the checkout, messages or not); the journey persuades "
            f"{PERSUADED_SHARE:.1%} of the treated shoppers who would not, and they buy after a click: "
            f"{TREATED_RATE:.0%} of treated shoppers buy"
        ),
        "sample": groups,
    }


def _amplitude_group(event: dict[str, Any]) -> Any:
    if event.get("event_type") != "$identify":
        return None
    return ((event.get("user_properties") or {}).get("$set") or {}).get(wiring.HOLDOUT_TRAIT)


def is_holdout_trait(event: dict[str, Any]) -> bool:
    """An Amplitude event that is loopwire's export of the holdout group."""
    return _amplitude_group(event) is not None


def _traits(observed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per destination, the group each assigned id holds there (the trait loopwire exported)."""
    amplitude = {str(e.get("user_id")): g for e in observed["amplitude_events"] if (g := _amplitude_group(e))}
    segment = {
        str(m.get("userId")): m["traits"][wiring.HOLDOUT_TRAIT]
        for m in observed["segment_messages"]
        if m.get("type") == "identify" and wiring.HOLDOUT_TRAIT in (m.get("traits") or {})
    }
    customerio = {
        str(p["id"]): p["attributes"][wiring.HOLDOUT_TRAIT]
        for p in observed["customerio_people"]
        if p.get("id") is not None and wiring.HOLDOUT_TRAIT in p["attributes"]
    }
    return {wiring.AMPLITUDE: amplitude, wiring.SEGMENT: segment, wiring.CUSTOMERIO: customerio}


def amplitude_refused(scenario: Scenario) -> set[str]:
    """Assigned ids Amplitude would refuse (the placeholder "0"): loopwire skips their trait there."""
    return {i for i in scenario.expected.assignments if len(i) < AMPLITUDE_MIN_ID_LENGTH}


def experiment_section(
    scenario: Scenario, observed: dict[str, Any], amplitude_dead_ids: set[str]
) -> tuple[dict[str, Any], dict[str, bool]]:
    """The report's `lift` section and the checks it adds."""
    want = scenario.expected.assignments
    rows = [(str(user_id), str(group), int(ms)) for user_id, group, ms in observed["assignments"]]
    got = {user_id: group for user_id, group, _ in rows}
    at = {user_id: ms for user_id, _, ms in rows}
    checkout_ms = {
        c.user_id: c.timestamp_ms
        for c in scenario.storefront
        if c.user_id is not None and c.event == "Checkout Started"
    }
    orders = [
        c for c in scenario.storefront if c.event == "Order Completed" and not c.resend and c.user_id in at
    ]
    window_ms = WINDOW_DAYS * 86_400_000
    facts = truth(scenario)
    lift: dict[str, Any] = observed["lift"]
    estimate = lift["lift"]
    traits = _traits(observed)
    # Amplitude: all but the ids it refuses and a trait the arranged 400 dead-lettered (the engine
    # gives each trait the event id holdout:<experiment>:<user id>)
    dead_traits = {
        i.rpartition(":")[2] for i in amplitude_dead_ids if i.startswith(f"holdout:{EXPERIMENT_ID}:")
    }
    amplitude_want = {u: g for u, g in want.items() if u not in amplitude_refused(scenario) | dead_traits}
    sample = facts["sample"]
    reported = {g: lift[g] for g in GROUPS}
    groups_match = all(
        reported[g]["n"] == sample[g]["users"]
        and reported[g]["conversions"] == sample[g]["converted"]
        and abs(reported[g]["revenue"] - sample[g]["revenue"]) < 0.005
        for g in GROUPS
    )
    covers = None
    if estimate is not None:
        interval = estimate["absolute_interval"]
        covers = interval["low"] <= facts["absolute_lift"] <= interval["high"]
    checks = {
        "loopwire assigned every person with an id, in the group the journey used (same rule, same salt)": (
            got == want
        ),
        "every assignment came before the person's checkout; every order falls in its 14-day window": all(
            at[u] <= checkout_ms.get(u, at[u]) for u in at
        )
        and all(0 <= c.timestamp_ms - at[str(c.user_id)] <= window_ms for c in orders),
        "the group reached Customer.io (what the journey branches on), Segment and Amplitude": (
            traits[wiring.CUSTOMERIO] == want
            and traits[wiring.SEGMENT] == want
            and traits[wiring.AMPLITUDE] == amplitude_want
        ),
        "the lift report's groups are the scenario's: users, converters and revenue per group": groups_match,
        "no holdout person received a message (the lift report finds 0 exposed)": (
            lift["holdout_exposed"] == 0
        ),
    }
    section = {
        "experiment": EXPERIMENT_ID,
        "salt": HOLDOUT_SALT,
        "holdout_percent": HOLDOUT_PERCENT,
        "assigned_at": ASSIGNED_AT,
        "assigned": {g: sum(x == g for x in got.values()) for g in GROUPS},
        "placeholder_ids": sorted(u for u in want if u == "0"),
        "true": facts,
        "estimate": None
        if estimate is None
        else {
            "absolute": estimate["absolute"],
            "absolute_interval": estimate["absolute_interval"],
            "relative": estimate["relative"],
            "covers_true_lift": covers,
        },
        "html": observed.get("lift_html"),
        "report": lift,
    }
    return section, checks
