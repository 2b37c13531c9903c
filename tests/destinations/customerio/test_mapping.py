"""Golden tests for the Amplitude (or Segment) → Customer.io mapping, plus its options and overrides.

Each folder under tests/fixtures/customerio/ is one case, named after the rule of seed 003 or the
Customer.io limit it proves: `input.json` (a msgspec-encoded `loopwire.model.Event`), `options.yaml`
(overrides of `CustomerioOptions`), optionally `known.json` (what the destination recalled from its
memory: `identifier`, `sent`) and `expected.json` (the payload, `{"skip": reason}` or
`{"invalid": reason}`). `LOOPWIRE_REGEN_GOLDEN=1 pytest tests/destinations/customerio` rewrites the
expected files — read every changed one against seed 003 before committing it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from ulid import ULID

from loopwire.destinations.base import Invalid, Skip
from loopwire.destinations.customerio import api
from loopwire.destinations.customerio.mapping import (
    Known,
    event_ulid,
    map_event,
    memory_keys,
    person,
    request_body,
)
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.destinations.customerio.overrides import apply_overrides, default_map_options
from loopwire.errors import ConfigError
from loopwire.model import Event, decode_event
from loopwire.settings import Secret, dec_hook

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "customerio"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "input.json").is_file())
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the injected clock
REGEN = os.environ.get("LOOPWIRE_REGEN_GOLDEN") == "1"

# Each rule of seed 003 (and each limit of customerio.md §2.5) has a golden case of this name.
RULES = [
    "email_identifier_matches_case_insensitively",
    "cio_prefix_addresses_cio_id",
    "plain_value_addresses_id",
    "identifier_over_150_bytes_skipped",
    "anonymous_event_never_sent",
    "only_selected_event_properties_sent",
    "no_properties_selected_none_sent",
    "page_view_as_page_type",
    "screen_view_as_screen_type",
    "user_properties_sent_as_strings",
    "identify_event_sends_only_identify",
    "unchanged_user_property_not_resent",
    "attribute_value_over_1000_bytes_invalid",
    "attribute_name_over_150_bytes_invalid",
    "event_name_over_100_bytes_invalid",
    "event_data_over_100000_bytes_invalid",
    "operation_over_32000_bytes_invalid",
    "over_300_attributes_invalid",
    "ulid_is_deterministic",
    "required_fields_only",
    "all_fields",
    # loopwire's own events (audience and holdout engine)
    "loopwire_identify_sends_all_traits",
    "loopwire_identify_unchanged_not_resent",
    "loopwire_audience_entered_as_event",
    "loopwire_identify_unknown_identifier_skipped",
]


def options_for(raw: dict[str, Any] | None) -> CustomerioOptions:
    body = {"site_id": "site-0001", "api_key": "track-key-0001", "region": "us", **(raw or {})}
    result: CustomerioOptions = msgspec.convert(body, CustomerioOptions, dec_hook=dec_hook, str_keys=True)
    return result


def load(folder: Path) -> tuple[Event, CustomerioOptions, Known]:
    event = decode_event((folder / "input.json").read_bytes())
    options = options_for(yaml.safe_load((folder / "options.yaml").read_text()))
    known_file = folder / "known.json"
    known = Known(**json.loads(known_file.read_text())) if known_file.is_file() else Known()
    return event, options, known


def outcome(result: dict[str, Any] | Skip | Invalid) -> dict[str, Any]:
    if isinstance(result, Skip):
        return {"skip": result.reason}
    if isinstance(result, Invalid):
        return {"invalid": result.reason}
    return result


def run_case(folder: Path) -> dict[str, Any]:
    event, options, known = load(folder)
    return outcome(map_event(event, options, NOW_MS, known))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    folder = FIXTURES / case
    got = run_case(folder)
    expected_file = folder / "expected.json"
    if REGEN:
        expected_file.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
        return
    assert expected_file.is_file(), (
        f"{case}: no expected.json (run with LOOPWIRE_REGEN_GOLDEN=1, then review)"
    )
    assert got == json.loads(expected_file.read_text())


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_has_a_golden_case(rule: str) -> None:
    assert rule in CASES


def test_all_fields_case_covers_every_output_key() -> None:
    got = run_case(FIXTURES / "all_fields")
    assert set(got) == {"ops", "remember"}
    event_op, identify_op = got["ops"]
    assert set(event_op) == {"type", "action", "identifiers", "name", "id", "timestamp", "attributes"}
    assert set(identify_op) == {"type", "action", "identifiers", "timestamp", "attributes"}


def test_invalid_reasons_name_the_key_not_the_value() -> None:
    for case in CASES:
        got = run_case(FIXTURES / case)
        reason = got.get("invalid") or got.get("skip")
        if reason is None:
            continue
        assert "bbbbbbbbbb" not in reason and "dddddddddd" not in reason, case
        assert len(reason) < 300, case
    assert "`bio`" in run_case(FIXTURES / "attribute_value_over_1000_bytes_invalid")["invalid"]
    assert "`description`" in run_case(FIXTURES / "event_data_over_100000_bytes_invalid")["invalid"]


def test_mapping_leaves_the_event_unchanged_and_is_repeatable() -> None:
    event, options, known = load(FIXTURES / "all_fields")
    before = copy.deepcopy(event.data)
    first = map_event(event, options, NOW_MS, known)
    assert event.data == before
    assert first == map_event(event, options, NOW_MS + 60_000, known)  # the clock is not read


# --- identifiers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "identifiers", "key"),
    [
        ("ada@example.com", {"email": "ada@example.com"}, "person:email:ada@example.com"),
        ("Ada@Example.COM", {"email": "Ada@Example.COM"}, "person:email:ada@example.com"),
        ("cio_a3000001", {"cio_id": "a3000001"}, "person:cio_id:a3000001"),
        ("cio_team@example.com", {"email": "cio_team@example.com"}, "person:email:cio_team@example.com"),
        ("cust_000123", {"id": "cust_000123"}, "person:id:cust_000123"),
        ("+15558675309", {"id": "+15558675309"}, "person:id:+15558675309"),  # a phone is an id (§2.4)
        ("not an@email", {"id": "not an@email"}, "person:id:not an@email"),
        ("u" * 150, {"id": "u" * 150}, "person:id:" + "u" * 150),
    ],
)
def test_identifier_rules(value: str, identifiers: dict[str, str], key: str) -> None:
    who = person(value)
    assert not isinstance(who, Skip)
    assert who.identifiers == identifiers
    assert who.key == key


@pytest.mark.parametrize("value", [None, "", "   ", "cio_", "u" * 151, "é" * 76, "a@" + "b" * 150 + ".com"])
def test_identifiers_never_sent(value: str | None) -> None:
    assert isinstance(person(value), Skip)


def test_memory_keys_are_user_then_device() -> None:
    event, _, _ = load(FIXTURES / "plain_value_addresses_id")
    assert memory_keys(event) == ("user:cust_000123", "device:7c1d3a52-6f0e-4a5e-9f7b-2f4b8a9d1e10")


# --- event ids ------------------------------------------------------------------------------------


def test_ulid_is_deterministic_valid_and_carries_the_event_time() -> None:
    event, options, _ = load(FIXTURES / "ulid_is_deterministic")
    first = event_ulid(event)
    redelivered = msgspec.structs.replace(event, received_ms=event.received_ms + 3_600_000)
    assert event_ulid(redelivered) == first
    parsed = ULID.from_str(first)
    assert str(parsed) == first and len(first) == 26
    assert parsed.milliseconds == event.time_ms
    other = msgspec.structs.replace(event, id="evt-ulid-0002")
    assert event_ulid(other) != first
    assert event_ulid(other)[:10] == first[:10]  # same time, different id: same prefix, other randomness
    payload = map_event(event, options, NOW_MS)
    assert isinstance(payload, dict)
    assert payload["ops"][0]["id"] == first


def test_ulids_of_events_sort_by_time() -> None:
    event, _, _ = load(FIXTURES / "ulid_is_deterministic")
    later = msgspec.structs.replace(event, time_ms=event.time_ms + 1, id="zzz")
    assert event_ulid(event) < event_ulid(later)


# --- request body -----------------------------------------------------------------------------------


def test_request_body_concatenates_operations_and_skips_memory_only_payloads() -> None:
    payloads = []
    for case in ("track_event_with_user_properties_sends_event_and_identify", "unset_forgets_property_without_sending",
                 "plain_value_addresses_id"):  # fmt: skip
        got = run_case(FIXTURES / case)
        payloads.append(got)
    body = json.loads(request_body(payloads))
    assert body == {"batch": [*payloads[0]["ops"], *payloads[2]["ops"]]}
    assert payloads[1]["ops"] == []


def test_largest_payload_fits_a_batch_with_room_to_spare() -> None:
    # Two operations of at most 32 KB each: one payload can never break the 500 KB batch limit.
    assert api.OPS_PER_PAYLOAD * api.OP_MAX_BYTES + api.ENVELOPE_BYTES < api.BATCH_MAX_BYTES
    assert api.MAX_PAYLOADS * api.OPS_PER_PAYLOAD <= api.BATCH_MAX_OPS


# --- options ---------------------------------------------------------------------------------------


def test_options_require_identifier_and_region() -> None:
    with pytest.raises(msgspec.ValidationError, match="identifier"):
        msgspec.convert(
            {"site_id": "s", "api_key": "k", "region": "us"}, CustomerioOptions, dec_hook=dec_hook
        )
    with pytest.raises(msgspec.ValidationError, match="region"):
        msgspec.convert(
            {"site_id": "s", "api_key": "k", "identifier": "email"}, CustomerioOptions, dec_hook=dec_hook
        )
    with pytest.raises(msgspec.ValidationError, match="region"):
        options_for({"identifier": "email", "region": "apac"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"identifier": " "}, "identifier"),
        ({"identifier": "email", "route": {"properties": ["a"]}}, "event_properties"),
        ({"identifier": "email", "route": {"hash_identifiers": True}}, "hash_identifiers"),
        ({"identifier": "email", "colour": "red"}, "colour"),
    ],
)
def test_options_reject_what_does_not_apply(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        options_for(extra)


def test_options_defaults_follow_seed_003() -> None:
    options = options_for({"identifier": "email"})
    assert options.send_events is True
    assert options.send_users is False
    assert options.event_properties == [] and options.user_properties == []  # none selected, none sent
    assert options.site_id == Secret("site-0001")
    assert repr(options.api_key) == "***"


def test_default_map_options_and_overrides() -> None:
    options = default_map_options()
    assert options.identifier == "user_id"
    changed = apply_overrides(
        options,
        [
            "identifier=email",
            "send_users=true",
            "event_properties=order_id, total",
            "user_properties=[plan]",
            "route.events=Order*, Checkout*",
            "batching.max_events=50",
            "retry.timeout=30s",
            "region=eu",
            "base_url=http://127.0.0.1:9",
        ],
    )
    assert changed.identifier == "email"
    assert changed.send_users is True
    assert changed.event_properties == ["order_id", "total"]
    assert changed.user_properties == ["plan"]
    assert changed.route.events == ["Order*", "Checkout*"]
    assert changed.batching.max_events == 50
    assert changed.retry.timeout == 30.0
    assert changed.region == "eu"
    assert changed.api_key == Secret("map-only")  # the secret survives the round trip
    cleared = apply_overrides(changed, ["event_properties=", "base_url=", "route.events="])
    assert cleared.event_properties == []
    assert cleared.base_url is None
    assert cleared.route.events is None
    assert apply_overrides(options, []) is options
    assert apply_overrides(options, ["identifier=1"]).identifier == "1"  # text stays text


@pytest.mark.parametrize(
    ("assignment", "key", "message"),
    [
        ("send_users=maybe", "send_users", "Expected `bool`"),
        ("region=mars", "region", "Invalid enum value 'mars'"),
        ("colour=red", "colour", "unknown key"),
        ("route=x", "route", "group of settings"),
        ("identifier.x=1", "identifier.x", "no sub-keys"),
        ("route.properties=a", "route.properties", "does not apply to customerio"),
        ("send_users", "send_users", "expected KEY=VALUE"),
        ("identifier={a: 1}", "identifier", "expected a single value"),
    ],
)
def test_apply_overrides_errors_name_the_key(assignment: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_map_options(), [assignment])
    assert info.value.key == key
    assert message in str(info.value)


def test_region_does_not_change_the_payload() -> None:
    eu = run_case(FIXTURES / "eu_region_does_not_change_payload")
    us = run_case(FIXTURES / "plain_value_addresses_id")
    assert (FIXTURES / "eu_region_does_not_change_payload" / "input.json").read_text() == (
        FIXTURES / "plain_value_addresses_id" / "input.json"
    ).read_text()
    assert eu == us


def test_an_unsaved_identifier_is_remembered_again_until_stored() -> None:
    event, options, _ = load(FIXTURES / "identifier_learned_from_identify_without_send_users")
    value = "ada@example.com"
    assert map_event(event, options, NOW_MS, Known(identifier=value)) == Skip(
        "user updates are not sent: `send_users` is off"
    )
    again = map_event(event, options, NOW_MS, Known(identifier=value, unsaved=True))
    assert isinstance(again, dict)
    assert again["remember"]["user:cust_000123"] == {"identifier": value}


def test_events_as_the_sources_produce_them_map() -> None:
    """The SDK-shaped input the Amplitude and Segment sources turn into Events (amplitude.md §6.2
    capture; a Segment page call) maps as the golden cases say."""
    from loopwire.sources import amplitude_api, segment_api

    options = options_for(
        {
            "identifier": "user_id",
            "send_users": True,
            "user_properties": ["plan"],
            "event_properties": ["total"],
        }
    )
    track = amplitude_api.to_event(
        {
            "device_id": "dev-0001-abcd",
            "event_properties": {"order_id": "o-1", "total": 59.5},
            "event_type": "Order Completed",
            "insert_id": "evt-0001",
            "time": 1741083300000,
            "user_id": "cust_000123",
            "user_properties": {"$set": {"plan": "pro"}},
        },
        NOW_MS,
    )
    payload = map_event(track, options, NOW_MS)
    assert isinstance(payload, dict)
    assert [op["action"] for op in payload["ops"]] == ["event", "identify"]
    assert payload["ops"][0]["attributes"] == {"plan": "pro", "total": 59.5}
    identify = amplitude_api.to_event(
        amplitude_api.identify_event({"user_id": "cust_000123", "user_properties": {"plan": "team"}}), NOW_MS
    )
    payload = map_event(identify, options, NOW_MS)
    assert isinstance(payload, dict)
    assert [(op["action"], op["attributes"]) for op in payload["ops"]] == [("identify", {"plan": "team"})]
    page = segment_api.to_event(
        {"type": "page", "userId": "cust_000123", "name": "Pricing", "messageId": "m-1",
         "properties": {"url": "https://shop.example.com/pricing"}},
        NOW_MS,
    )  # fmt: skip
    payload = map_event(page, options, NOW_MS)
    assert isinstance(payload, dict)
    assert (payload["ops"][0]["action"], payload["ops"][0]["name"]) == (
        "page",
        "https://shop.example.com/pricing",
    )
