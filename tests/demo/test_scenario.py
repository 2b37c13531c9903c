"""The demo scenario: seeded, Customer.io-shaped, and honest about what it expects."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from unittest.mock import ANY

import msgspec
import pytest
from amplitude import BaseEvent, EventOptions, Identify, IdentifyEvent
from segment.analytics.client import Client as SegmentClient
from ulid import ULID

from loopwire.config import load_config
from loopwire.contracts.amplitude import DEFAULT_MIN_ID_LENGTH
from loopwire.contracts.amplitude import check_events as check_amplitude_events
from loopwire.contracts.segment import check_message as check_segment_message
from loopwire.demo import scenario as scenario_module
from loopwire.demo import wiring
from loopwire.demo.report import CioExpected
from loopwire.demo.scenario import (
    BASE_RATE,
    DURATION,
    EXPERIMENT_ID,
    HOLDOUT_SHARE,
    OWN_ORDER_AFTER,
    PERSUADED_SHARE,
    TREATED_RATE,
    Scenario,
    build_scenario,
    in_holdout,
)
from loopwire.demo.senders import amplitude_options, segment_call
from loopwire.destinations.amplitude.mapping import map_event
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Skip
from loopwire.destinations.customerio.mapping import Known, wants
from loopwire.destinations.customerio.mapping import map_event as map_customerio
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.settings import Secret
from loopwire.sources.amplitude_api import to_event as amplitude_event
from loopwire.sources.customerio_parse import parse_webhook
from loopwire.sources.segment_api import to_event as segment_event

START = 1_735_000_000

# customerio.md §1.5: the extra `data` fields each (object_type, metric) requires.
REQUIRED = {
    ("sms", "sent"): {"recipient"},
    ("sms", "delivered"): {"recipient"},
    ("sms", "clicked"): {"recipient", "href", "link_id"},
    ("sms", "converted"): {"recipient"},
    ("sms", "bounced"): {"recipient", "failure_message"},
    ("email", "sent"): {"subject", "recipient"},
    ("email", "delivered"): {"subject", "recipient"},
    ("email", "opened"): {"recipient"},
    ("email", "clicked"): {"subject", "recipient", "href", "link_id"},
    ("email", "converted"): {"subject", "recipient"},
    ("email", "unsubscribed"): {"subject", "recipient"},
    ("email", "bounced"): {"subject", "recipient", "failure_message"},
}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(300, seed=11, start=START)


def test_same_seed_same_bytes_and_another_seed_differs() -> None:
    first = msgspec.json.encode(build_scenario(60, seed=5, start=START))
    assert first == msgspec.json.encode(build_scenario(60, seed=5, start=START))
    assert first != msgspec.json.encode(build_scenario(60, seed=6, start=START))


def test_holdout_is_about_ten_percent_and_follows_the_id() -> None:
    keys = [f"cust_{n}" for n in range(20_000)]
    share = sum(in_holdout(k) for k in keys) / len(keys)
    assert abs(share - HOLDOUT_SHARE) < 0.01
    assert [in_holdout(k) for k in keys[:500]] == [in_holdout(k) for k in keys[:500]]
    people = build_scenario(2_000, seed=1, start=START).people
    assert 0.08 < sum(p.holdout for p in people) / len(people) < 0.12
    assert all(p.holdout == in_holdout(p.id) for p in people)
    assert not any(p.holdout for p in people if p.id is None)  # no id: not in the experiment


def test_the_journey_holds_out_whom_loopwires_experiment_holds_out(tmp_path: Path) -> None:
    """The scenario's holdout and the demo's config are one rule: the experiment loopwire's engine
    runs (demo.yaml) puts every id the scenario sees in the group the journey used."""
    keys = wiring.make_keys()
    urls = dict.fromkeys(wiring.DESTINATIONS, "http://127.0.0.1:9")
    experiment = load_config(wiring.write_config(tmp_path, urls, keys, kept=False), env=keys).experiments[
        EXPERIMENT_ID
    ]
    assert experiment.audience is None and experiment.conversion == "Order Completed"
    scenario = build_scenario(400, seed=2, start=START)
    assignments = scenario.expected.assignments
    assert all(experiment.assign(user_id) == group for user_id, group in assignments.items())
    for person in scenario.people:
        if person.kind == "customer":
            assert assignments[str(person.id)] == ("holdout" if person.holdout else "treatment")
    # the zero-id profiles share the placeholder id "0": with this salt it is in treatment, so they
    # are messaged and Amplitude's id-0 rule shows; the email-only people have no id to assign
    assert assignments["0"] == "treatment" and not in_holdout("0")
    assert set(assignments) == {p.id for p in scenario.people if p.id is not None}


def test_every_person_has_their_own_email_and_ids() -> None:
    """Customer.io and Segment tell people apart by email too: two people sharing one would merge."""
    for seed in range(40):
        people = build_scenario(200, seed=seed, start=START).people
        for field in ("email", "cio_id", "key"):
            assert len({getattr(p, field) for p in people}) == len(people), (seed, field)


def test_the_holdout_gets_no_webhook(scenario: Scenario) -> None:
    held = {p.key for p in scenario.people if p.holdout}
    assert held
    assert not any(w.person in held for w in scenario.webhooks)
    assert scenario.expected.holdout == len(held)


def test_every_body_has_customerio_documented_shape(scenario: Scenario) -> None:
    for hook in scenario.webhooks:
        body = hook.body
        assert set(body) == {"event_id", "object_type", "metric", "timestamp", "data"}
        assert ULID.from_str(body["event_id"]).milliseconds == body["timestamp"] * 1000
        assert type(body["timestamp"]) is int
        assert START <= body["timestamp"] < START + DURATION
        data = body["data"]
        assert set(data["identifiers"]) == {"id", "email", "cio_id"}
        for key in ("delivery_id", "campaign_id", "action_id", "journey_id", "trigger_event_id"):
            assert data[key] is not None, key
        pair = (body["object_type"], body["metric"])
        assert REQUIRED[pair] <= set(data), pair
        if "link_id" in data:
            assert type(data["link_id"]) is int
        event = parse_webhook(msgspec.json.encode(body), 0)
        assert event.id == body["event_id"]
        assert event.kind == "message"  # email/unsubscribed here is the message-level event (§1.6)
        assert event.user_id == data["identifiers"]["id"]


def test_the_journey_covers_every_step_the_guide_names(scenario: Scenario) -> None:
    pairs = scenario.expected.by_pair
    for pair in ("sms sent", "sms delivered", "sms clicked", "email sent", "email delivered", "email opened"):
        assert pairs.get(pair, 0) > 0, pair
    for pair in ("email clicked", "email bounced", "email unsubscribed"):
        assert pairs.get(pair, 0) > 0, pair
    opens = [w.body["data"] for w in scenario.webhooks if w.body["metric"] == "opened"]
    assert any(d["prefetched"] and d["proxied"] for d in opens)  # Apple MPP
    assert any(not d["prefetched"] and not d["synthetic"] for d in opens)  # a person
    bounces = [w.body["data"] for w in scenario.webhooks if w.body["metric"] == "bounced"]
    assert all(d["failure_message"] for d in bounces)
    # within a message, sent comes first; each delivery reports each metric once (first occurrence)
    by_delivery: dict[str, list[tuple[int, str]]] = {}
    for hook in scenario.webhooks:
        if not hook.redelivery:
            data = hook.body["data"]
            by_delivery.setdefault(data["delivery_id"], []).append(
                (hook.body["timestamp"], hook.body["metric"])
            )
    for events in by_delivery.values():
        assert min(events)[1] == "sent"
        assert Counter(m for _, m in events).most_common(1)[0][1] == 1


def test_redeliveries_repeat_an_earlier_event_exactly(scenario: Scenario) -> None:
    seen: dict[str, dict[str, object]] = {}
    redelivered = 0
    for hook in scenario.webhooks:
        event_id = hook.body["event_id"]
        if hook.redelivery:
            assert seen[event_id] == hook.body
            redelivered += 1
        else:
            assert event_id not in seen
            seen[event_id] = hook.body
    assert redelivered == scenario.expected.redeliveries > 0
    assert len(seen) == scenario.expected.events
    assert scenario.expected.webhooks == len(scenario.webhooks)
    assert sum(scenario.expected.by_pair.values()) == scenario.expected.events


def test_expected_skips_are_exactly_what_the_amplitude_mapping_skips(scenario: Scenario) -> None:
    options = AmplitudeOptions(api_key=Secret("k"), region="us")
    kinds = {p.key: p for p in scenario.people}
    skipped = 0
    for hook in scenario.webhooks:
        if hook.redelivery:
            continue
        person = kinds[hook.person]
        result = map_event(parse_webhook(msgspec.json.encode(hook.body), 0), options, 0)
        if isinstance(result, Skip):
            skipped += 1
            assert person.kind == "email_only", result.reason
        elif person.kind == "zero_id":  # Amplitude refuses id 0: the email stands in (seed 002)
            assert result["user_id"] == person.email
        else:
            assert result["user_id"] == person.id
    assert skipped == scenario.expected.skipped > 0
    assert scenario.expected.zero_id_people > 0


def test_people_must_be_positive() -> None:
    with pytest.raises(ValueError):
        build_scenario(0, seed=1, start=START)


# --- the storefront (Segment library) and the app (Amplitude SDK) ----------------------------------


def test_storefront_and_app_never_change_a_seeds_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """They draw from a stream of their own: with them switched off, the webhooks are the same."""
    with_shop = build_scenario(80, seed=4, start=START)
    monkeypatch.setattr(scenario_module, "shop_activity", lambda *args: ([], []))
    without = build_scenario(80, seed=4, start=START)
    assert msgspec.json.encode(with_shop.webhooks) == msgspec.json.encode(without.webhooks)
    assert with_shop.storefront and with_shop.app and not without.storefront


def test_storefront_calls_are_what_the_segment_library_sends_and_segment_takes(scenario: Scenario) -> None:
    client = SegmentClient("write-key", send=False)  # builds each message as the library does, sends none
    for call in scenario.storefront:
        method, arguments = segment_call(call)
        ok, message = getattr(client, method)(**arguments)
        assert ok
        assert check_segment_message(message) is None, message
        assert message["messageId"] == call.message_id
        # browsing starts up to 3 h before the cart is abandoned, the first cart at START
        assert (START - 3 * 3600) * 1000 <= call.timestamp_ms < (START + DURATION) * 1000


def test_app_events_are_what_the_amplitude_sdk_sends_and_amplitude_takes(scenario: Scenario) -> None:
    bodies = []
    for item in scenario.app:
        if item.event_type == "$identify":
            identify = Identify()
            for name, value in item.user_properties.items():
                identify.set(name, value)
            event = IdentifyEvent(user_properties=identify.user_properties)  # as Amplitude.identify builds it
            event.load_event_options(EventOptions(**amplitude_options(item)))
        else:
            event = BaseEvent(
                item.event_type, event_properties=item.event_properties, **amplitude_options(item)
            )
        bodies.append(event.get_event_body())
    assert not check_amplitude_events(bodies, DEFAULT_MIN_ID_LENGTH)
    assert {b["event_type"] for b in bodies} == {"$identify", "App Opened"}
    assert all(
        b["user_properties"] == {"$set": {"email": ANY, "plan": ANY}}
        for b in bodies
        if "user_properties" in b
    )


def test_signed_in_customers_identify_browse_and_check_out_guests_stay_anonymous(scenario: Scenario) -> None:
    calls = [c for c in scenario.storefront if not c.resend]
    for person in scenario.people:
        mine = [c for c in calls if c.person == person.key]
        names = Counter(c.event or c.call for c in mine)
        assert names["Checkout Started"] == 1 and names["Product Viewed"] >= 1
        checkout = next(c for c in mine if c.event == "Checkout Started")
        assert set(checkout.properties) >= {"cart_id", "cart_url", "value", "currency", "items", "products"}
        assert checkout.properties["value"] > 0 and checkout.properties["items"] >= 1
        assert all(c.timestamp_ms <= checkout.timestamp_ms for c in mine if c.round == 1)
        if person.kind == "customer":
            assert names["identify"] == 1 and all(c.user_id == person.id for c in mine)
            identify = next(c for c in mine if c.call == "identify")
            assert identify.traits["email"] == person.email
        else:  # a guest: an anonymousId and the email typed at checkout
            assert names["identify"] == 0 and all(c.user_id is None for c in mine)
            assert all(c.context["traits"] == {"email": person.email} for c in mine)
    assert any(p.kind != "customer" for p in scenario.people)


def test_orders_follow_a_converted_journey_after_its_click_or_come_on_their_own_in_the_holdout(
    scenario: Scenario,
) -> None:
    orders = {c.person: c for c in scenario.storefront if c.event == "Order Completed" and not c.resend}
    converted = {w.person: w.body for w in scenario.webhooks if w.body["metric"] == "converted"}
    held = {p.key for p in scenario.people if p.holdout}
    assert set(converted) <= set(orders)
    for person, order in orders.items():
        assert order.round == 3
        checkout = next(
            c for c in scenario.storefront if c.person == person and c.event == "Checkout Started"
        )
        assert order.properties["cart_id"] == checkout.properties["cart_id"]
        assert order.properties["revenue"] == checkout.properties["value"]
        if person in converted:
            body = converted[person]
            click = next(
                w.body
                for w in scenario.webhooks
                if w.body["metric"] == "clicked"
                and w.body["data"]["delivery_id"] == body["data"]["delivery_id"]
            )
            assert click["timestamp"] * 1000 < order.timestamp_ms <= body["timestamp"] * 1000
            assert order.context["campaign"]["source"] == "customerio"
            assert order.context["campaign"]["medium"] == body["object_type"]
        else:  # bought on their own, when the plan said, with no campaign
            assert order.timestamp_ms == scenario.plans[person].own_order_at * 1000  # type: ignore[operator]
            assert "campaign" not in order.context
    assert converted and any(p in held for p in orders)


def test_every_shopper_does_what_their_plan_says(scenario: Scenario) -> None:
    """Persuaded: a click, a conversion, an order with that click's campaign. On their own: an order
    then, and no message after it (Customer.io's exit condition). Neither: no order at all."""
    orders = {c.person: c for c in scenario.storefront if c.event == "Order Completed" and not c.resend}
    hooks: dict[str, list[dict[str, object]]] = {}
    for hook in scenario.webhooks:
        hooks.setdefault(hook.person, []).append(hook.body)
    for person in scenario.people:
        plan = scenario.plans[person.key]
        mine = hooks.get(person.key, [])
        metrics = Counter(str(b["metric"]) for b in mine)
        assert not (plan.persuaded and (person.holdout or plan.own_order_at is not None))
        if plan.persuaded:
            assert metrics["converted"] >= 1 and metrics["bounced"] == metrics["unsubscribed"] == 0
            assert "campaign" in orders[person.key].context
        else:
            assert metrics["converted"] == 0
        if plan.own_order_at is not None:
            assert OWN_ORDER_AFTER[0] <= plan.own_order_at - plan.abandoned < OWN_ORDER_AFTER[1]
            sent = [int(b["timestamp"]) for b in mine if b["metric"] == "sent"]  # type: ignore[call-overload]
            assert all(at < plan.own_order_at for at in sent)
        if not plan.persuaded and plan.own_order_at is None:
            assert person.key not in orders


def test_the_true_rates_are_what_the_plans_are_drawn_with() -> None:
    """12 % buy on their own, held out or not; the journey persuades 1 in 11 of the rest of the
    treated: 20 % of the treated buy. Checked over many shoppers, within four standard errors."""
    scenario = build_scenario(3_000, seed=8, start=START)
    plans = [(p, scenario.plans[p.key]) for p in scenario.people]
    own = [plan.own_order_at is not None for _, plan in plans]
    treated = [
        plan.own_order_at is not None or plan.persuaded for person, plan in plans if not person.holdout
    ]
    for drawn, rate in ((own, BASE_RATE), (treated, TREATED_RATE)):
        assert abs(sum(drawn) / len(drawn) - rate) < 4 * (rate * (1 - rate) / len(drawn)) ** 0.5
    assert abs(PERSUADED_SHARE - 1 / 11) < 1e-12
    assert not any(plan.persuaded for person, plan in plans if person.holdout)


def test_app_users_identify_in_their_first_session_and_at_most_once_later(scenario: Scenario) -> None:
    customers = {p.key for p in scenario.people if p.kind == "customer"}
    events = [e for e in scenario.app if not e.resend]
    users = {e.person for e in events}
    assert users and users <= customers
    for user in users:
        mine = [e for e in events if e.person == user]
        identifies = Counter(e.round for e in mine if e.event_type == "$identify")
        assert identifies[2] == 1 and identifies[3] <= 1
        assert {e.round for e in mine} <= {2, 3}
        assert all(START * 1000 <= e.time_ms < (START + DURATION) * 1000 for e in mine)
    plans = [e.user_properties["plan"] for e in events if e.event_type == "$identify"]
    assert set(plans) == {"free", "plus"}


def test_one_user_update_per_person_per_round(scenario: Scenario) -> None:
    """What keeps "identify only when a property changed" deterministic: the runner settles each
    round, and within a round nobody sends two updates that could race."""
    updates = Counter(
        (c.round, c.user_id) for c in scenario.storefront if c.call == "identify" and not c.resend
    ) + Counter((e.round, e.user_id) for e in scenario.app if e.event_type == "$identify" and not e.resend)
    assert max(updates.values()) == 1


def test_resends_repeat_an_earlier_call_in_the_same_round(scenario: Scenario) -> None:
    for items, key in ((scenario.storefront, "message_id"), (scenario.app, "insert_id")):
        seen: dict[str, object] = {}
        resent = 0
        for item in items:
            ident = getattr(item, key)
            if item.resend:
                assert seen[ident] == msgspec.structs.replace(item, resend=False)
                resent += 1
            else:
                assert ident not in seen
                seen[ident] = item
        assert resent >= 1
    assert scenario.expected.store_resends >= 1 and scenario.expected.app_resends >= 1
    rounds = [c.round for c in scenario.storefront]
    assert rounds == sorted(rounds)


def test_the_reports_customerio_expectations_are_what_the_customerio_mapping_does(
    scenario: Scenario, tmp_path: Path
) -> None:
    """`report.CioExpected` is worked out from the demo's settings alone; the real mapping, fed the
    same calls as loopwire's inputs would log them, must come to the same numbers."""
    keys = wiring.make_keys()
    urls = dict.fromkeys(wiring.DESTINATIONS, "http://127.0.0.1:9")
    config = load_config(wiring.write_config(tmp_path, urls, keys, kept=False), env=keys)
    options = config.destinations[wiring.CUSTOMERIO]
    assert isinstance(options, CustomerioOptions)
    client = SegmentClient("write-key", send=False)
    events = []
    for round_ in (1, 2, 3):  # the runner's order
        for call in scenario.storefront:
            if call.round == round_ and not call.resend:
                method, arguments = segment_call(call)
                _, message = getattr(client, method)(**arguments)
                events.append(segment_event({**message, "type": method}, 0))
        for item in scenario.app:
            if item.round == round_ and not item.resend:
                body = {"event_type": item.event_type, **amplitude_options(item)}
                if item.user_properties:
                    body["user_properties"] = {"$set": item.user_properties}
                events.append(amplitude_event(body, 0))
    sent: dict[str, dict[str, str]] = {}
    routed, skips, actions = 0, Counter[str](), Counter[str]()
    for event in events:
        if wants(event, options) is not None:
            continue
        routed += 1
        result = map_customerio(event, options, 0, Known(sent=sent.get(f"person:id:{event.user_id}")))
        if isinstance(result, Skip):
            skips[result.reason] += 1
            continue
        assert isinstance(result, dict)
        actions.update(op["action"] for op in result["ops"])
        for key, value in result.get("remember", {}).items():
            sent[key] = {**sent.get(key, {}), **value["sent"]}
    want = CioExpected(scenario)
    assert routed == want.routed
    assert actions["event"] == len(want.events) and actions["identify"] == want.identifies
    assert sum(n for reason, n in skips.items() if "without a user" in reason) == want.anonymous > 0
    assert (
        sum(n for reason, n in skips.items() if "no selected user property" in reason) == want.unchanged > 0
    )
