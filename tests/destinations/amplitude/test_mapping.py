"""Golden tests for the Customer.io → Amplitude mapping, plus its option overrides and request body.

Each folder under tests/fixtures/amplitude/ is one case: `input.json` (a reporting-webhook body) or,
for events that do not come from a webhook (loopwire's own), `event.json` (a msgspec-encoded
`loopwire.model.Event`), `options.yaml` (overrides of `AmplitudeOptions`) and `expected.json` (the
Amplitude event, or `{"skip": "<reason>"}`). `LOOPWIRE_REGEN_GOLDEN=1 pytest tests/destinations/amplitude` rewrites the
expected files — read every changed one against seed 002 before committing it.
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

from loopwire.destinations.amplitude.mapping import event_type, map_event, request_body
from loopwire.destinations.amplitude.options import AmplitudeOptions, Naming
from loopwire.destinations.amplitude.overrides import apply_overrides, default_map_options
from loopwire.destinations.base import Skip
from loopwire.errors import ConfigError
from loopwire.model import Event, decode_event
from loopwire.settings import Secret, dec_hook
from loopwire.sources.customerio_parse import parse_webhook

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "amplitude"
WEBHOOK, EVENT = "input.json", "event.json"  # a case holds one or the other
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / WEBHOOK).is_file() or (p / EVENT).is_file())
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the injected clock (also the receive time)
REGEN = os.environ.get("LOOPWIRE_REGEN_GOLDEN") == "1"

# customerio.md §1.5–1.6: every documented object_type × metric has a golden case of that name.
CATALOGUE = {
    "email": "drafted attempted sent delivered opened clicked converted unsubscribed bounced dropped "
    "spammed failed undeliverable",
    "push": "drafted attempted sent delivered opened converted clicked bounced dropped failed undeliverable",
    "sms": "drafted attempted failed undeliverable sent delivered converted clicked bounced replied",
    "whatsapp": "drafted attempted sent delivered opened clicked converted bounced dropped failed "
    "undeliverable replied",
    "slack": "drafted attempted failed undeliverable sent clicked",
    "webhook": "drafted attempted failed undeliverable sent clicked",
    "in_app": "drafted attempted failed undeliverable sent opened clicked converted",
    "customer": "subscribed unsubscribed cio_subscription_preferences_changed",
}


def options_for(raw: dict[str, Any] | None) -> AmplitudeOptions:
    body = {"api_key": "map-only", "region": "us", **(raw or {})}
    result: AmplitudeOptions = msgspec.convert(body, AmplitudeOptions, dec_hook=dec_hook, str_keys=True)
    return result


def event_for(folder: Path) -> Event:
    """The case's input as the log holds it: a webhook parsed as the source parses it, or an Event."""
    if (folder / EVENT).is_file():
        return decode_event((folder / EVENT).read_bytes())
    return parse_webhook((folder / WEBHOOK).read_bytes(), NOW_MS)


def run_case(folder: Path) -> dict[str, Any]:
    options = options_for(yaml.safe_load((folder / "options.yaml").read_text()))
    result = map_event(event_for(folder), options, NOW_MS)
    return {"skip": result.reason} if isinstance(result, Skip) else result


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


@pytest.mark.parametrize("pair", [f"{c}_{m}" for c, ms in CATALOGUE.items() for m in ms.split()])
def test_every_documented_pair_has_a_golden_case(pair: str) -> None:
    assert pair in CASES
    doc = json.loads((FIXTURES / pair / "input.json").read_text())
    assert f"{doc['object_type']}_{doc['metric']}" == pair


def test_all_fields_cases_cover_every_output_key() -> None:
    # The "all fields" cases exercise every top-level key the mapping can produce.
    keys: set[str] = set()
    for case in ("all_fields_push_sent", "all_fields_email_sent"):
        keys |= set(run_case(FIXTURES / case))
    assert keys == {
        "user_id", "device_id", "platform", "event_type", "time", "insert_id", "groups", "event_properties",
    }  # fmt: skip


def test_mapping_leaves_the_event_unchanged() -> None:
    body = (FIXTURES / "long_strings_cut_to_1024" / "input.json").read_bytes()
    event = parse_webhook(body, NOW_MS)
    before = copy.deepcopy(event.data)
    first = map_event(event, options_for({"body_content": True}), NOW_MS)
    assert event.data == before
    assert first == map_event(event, options_for({"body_content": True}), NOW_MS)


def test_strings_nested_in_lists_and_maps_are_cut() -> None:
    body = json.dumps(
        {
            "event_id": "01JC0000000000000000000N01",
            "object_type": "email",
            "metric": "sent",
            "timestamp": 1735689000,
            "data": {
                "identifiers": {"id": "cust_000123"},
                "headers": {"X-Long": ["h" * 2000, "short"]},
                "extra": {"deep": [{"text": "t" * 1025}]},
            },
        }
    ).encode()
    result = map_event(parse_webhook(body, NOW_MS), options_for({"body_content": True}), NOW_MS)
    assert not isinstance(result, Skip)
    props = result["event_properties"]
    assert props["headers"] == {"X-Long": ["h" * 1024, "short"]}
    assert props["extra"] == {"deep": [{"text": "t" * 1024}]}


@pytest.mark.parametrize(
    ("channel", "metric", "naming", "expected"),
    [
        ("email", "sent", Naming(), "Email Sent"),
        ("sms", "sent", Naming(), "Sms Sent"),
        ("push", "delivered", Naming(), "Push Delivered"),
        ("in_app", "clicked", Naming(), "In App Clicked"),
        ("whatsapp", "opened", Naming(), "Whatsapp Opened"),
        ("customer", "subscribed", Naming(), "Customer Subscribed"),
        ("email", "cio_subscription_preferences_changed", Naming(), "Email Subscription Preferences Changed"),
        ("email", "sent", Naming(style="snake", prefix="cio_"), "cio_email_sent"),
        ("in_app", "clicked", Naming(style="snake"), "in_app_clicked"),
        ("customer", "cio_subscription_preferences_changed", Naming(style="snake"),
         "customer_subscription_preferences_changed"),
    ],
)  # fmt: skip
def test_event_type(channel: str, metric: str, naming: Naming, expected: str) -> None:
    assert event_type(channel, metric, naming.style, naming.prefix) == expected


def test_request_body_carries_min_id_length_only_when_set() -> None:
    payloads = [{"user_id": "cust_000123", "event_type": "Email Sent"}]
    plain = json.loads(request_body(payloads, options_for(None)))
    assert plain == {"api_key": "map-only", "events": payloads}
    with_option = json.loads(request_body(payloads, options_for({"min_id_length": 2})))
    assert with_option == {"api_key": "map-only", "events": payloads, "options": {"min_id_length": 2}}


def test_default_map_options() -> None:
    options = default_map_options()
    assert options.api_key == Secret("map-only")
    assert options.region == "us"
    assert options.body_content is False
    assert options.naming == Naming()


def test_apply_overrides() -> None:
    options = apply_overrides(
        default_map_options(),
        [
            "body_content=true",
            "naming.style=snake",
            "naming.prefix=cio_",
            "channels=email, sms",
            "metrics=[sent, opened]",
            "account_id=1",
            "min_id_length=3",
            "retry.timeout=30s",
            "machine_activity=exclude",
        ],
    )
    assert options.body_content is True
    assert options.naming == Naming(style="snake", prefix="cio_")
    assert options.channels == ["email", "sms"]
    assert options.metrics == ["sent", "opened"]
    assert options.account_id == "1"
    assert options.min_id_length == 3
    assert options.retry.timeout == 30.0
    assert options.machine_activity == "exclude"
    assert options.api_key == Secret("map-only")  # the secret survives the round trip
    unset = apply_overrides(options, ["channels=", "account_id="])
    assert unset.channels is None
    assert unset.account_id is None
    assert apply_overrides(options, []) is options


@pytest.mark.parametrize(
    ("assignment", "key", "message"),
    [
        ("body_content=maybe", "body_content", "Expected `bool`"),
        ("naming.style=camel", "naming.style", "Invalid enum value 'camel'"),
        ("naming.colour=red", "naming.colour", "unknown key"),
        ("colour=red", "colour", "unknown key"),
        ("naming=snake", "naming", "group of settings"),
        ("channels.email=true", "channels.email", "no sub-keys"),
        ("region=mars", "region", "Invalid enum value 'mars'"),
        ("min_id_length=short", "min_id_length", "Expected `int | null`"),
        ("body_content", "body_content", "expected KEY=VALUE"),
        ("naming.prefix={a: 1}", "naming.prefix", "expected a single value"),
    ],
)
def test_apply_overrides_errors_name_the_key(assignment: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_map_options(), [assignment])
    assert info.value.key == key
    assert message in str(info.value)
    assert str(info.value).startswith(f"{key}: ")


def test_region_and_endpoint_do_not_change_the_payload() -> None:
    eu = json.loads((FIXTURES / "eu_options_do_not_change_payload" / "expected.json").read_text())
    us = json.loads((FIXTURES / "email_clicked" / "expected.json").read_text())
    assert (FIXTURES / "eu_options_do_not_change_payload" / "input.json").read_text() == (
        FIXTURES / "email_clicked" / "input.json"
    ).read_text()
    assert eu == us


# --- loopwire's own events ---------------------------------------------------------------------


LOOPWIRE_CASES = [case for case in CASES if (FIXTURES / case / EVENT).is_file()]


@pytest.mark.parametrize("case", LOOPWIRE_CASES)
def test_loopwire_events_pass_amplitudes_event_checks(case: str) -> None:
    """What the loopwire cases send is what Amplitude's HTTP V2 takes (the sandbox's own checks)."""
    from loopwire.contracts.amplitude import check_events

    assert event_for(FIXTURES / case).source == "loopwire"
    got = run_case(FIXTURES / case)
    if "skip" in got:
        return
    options = options_for(yaml.safe_load((FIXTURES / case / "options.yaml").read_text()))
    assert not check_events([copy.deepcopy(got)], options.min_id_length or 5)
    assert got["insert_id"] == event_for(FIXTURES / case).id  # Amplitude dedupes on the log's id


def test_loopwire_traits_are_user_properties_of_an_identify() -> None:
    got = run_case(FIXTURES / "loopwire_identify_traits_as_user_properties")
    assert got["event_type"] == "$identify"
    assert got["user_properties"] == {
        "$set": {
            "holdout_cart_journey": "holdout",
            "audience_cart_abandoners": True,
            "lifecycle_state": "at_risk",
        }
    }
    assert "event_properties" not in got


def test_loopwire_kinds_other_than_identify_and_track_are_skipped() -> None:
    event = decode_event((FIXTURES / "loopwire_audience_entered_event" / EVENT).read_bytes())
    page = msgspec.structs.replace(event, kind="page")
    assert map_event(page, options_for(None), NOW_MS) == Skip(
        "loopwire page events are not sent to Amplitude (it takes identify and track)", "unsupported"
    )
    bare = msgspec.structs.replace(event, kind="identify", data={"traits": {}})
    assert map_event(bare, options_for(None), NOW_MS) == Skip(
        "loopwire identify without traits: no user property to set", "nothing_to_send"
    )
