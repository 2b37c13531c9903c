"""The demo scenario: seeded, Customer.io-shaped, and honest about what it expects."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from ulid import ULID

from loopwire.demo.scenario import DURATION, HOLDOUT_SHARE, Scenario, build_scenario, in_holdout
from loopwire.destinations.amplitude.mapping import map_event
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Skip
from loopwire.settings import Secret
from loopwire.sources.customerio_parse import parse_webhook

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
    assert all(p.holdout == in_holdout(p.key) for p in people)


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
