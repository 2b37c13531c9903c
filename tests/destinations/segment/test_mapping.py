"""Golden tests for the `segment` mapping, plus its names, ids, option overrides and request body.

Each folder under tests/fixtures/segment/ is one case: `input.json`, `options.yaml` (overrides of
`SegmentOptions`) and `expected.json` (`{"batch": [...]}`, `{"skip": "<reason>"}` or
`{"invalid": "<reason>"}`). `input.json` is a Customer.io reporting-webhook body (it has `event_id`),
or a canonical `Event` (it has `source` and `kind`) for calls forwarded from other sources. The
loopwire version in `context.library` is written as `<version>` so a release changes no golden file.
`LOOPWIRE_REGEN_GOLDEN=1 pytest tests/destinations/segment` rewrites the expected files — read every
changed one against segment.md §8 and docs/mapping-segment.md before committing it.
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

from loopwire import __version__
from loopwire.destinations.base import Invalid, Skip
from loopwire.destinations.routing import hash_email, hash_phone
from loopwire.destinations.segment.mapping import (
    LIBRARY,
    event_name,
    iso_ms,
    map_event,
    message_id,
    request_body,
    segment_name,
)
from loopwire.destinations.segment.options import Naming, SegmentOptions
from loopwire.destinations.segment.overrides import apply_overrides, default_map_options
from loopwire.errors import ConfigError
from loopwire.model import Event
from loopwire.settings import Secret, dec_hook
from loopwire.sources.customerio_parse import parse_webhook

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "segment"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "input.json").is_file())
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the injected clock (also the receive time)
REGEN = os.environ.get("LOOPWIRE_REGEN_GOLDEN") == "1"
VERSION = "<version>"

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


def options_for(raw: dict[str, Any] | None) -> SegmentOptions:
    body = {"write_key": "map-only", "region": "us", **(raw or {})}
    result: SegmentOptions = msgspec.convert(body, SegmentOptions, dec_hook=dec_hook, str_keys=True)
    return result


def event_for(folder: Path) -> Event:
    body = (folder / "input.json").read_bytes()
    doc = json.loads(body)
    if "event_id" in doc:
        return parse_webhook(body, NOW_MS)
    return msgspec.json.decode(body, type=Event)


def _versionless(payload: dict[str, Any]) -> dict[str, Any]:
    messages = []
    for message in payload["batch"]:
        context = message.get("context", {})
        if context.get("library") == LIBRARY:
            message = {**message, "context": {**context, "library": {**LIBRARY, "version": VERSION}}}
        messages.append(message)
    return {"batch": messages}


def run_case(folder: Path) -> dict[str, Any]:
    options = options_for(yaml.safe_load((folder / "options.yaml").read_text()))
    result = map_event(event_for(folder), options, NOW_MS)
    if isinstance(result, Skip):
        return {"skip": result.reason}
    if isinstance(result, Invalid):
        return {"invalid": result.reason}
    return _versionless(result)


def expected(case: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((FIXTURES / case / "expected.json").read_text())
    return result


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
    assert got == expected(case)


@pytest.mark.parametrize("pair", [f"{c}_{m}" for c, ms in CATALOGUE.items() for m in ms.split()])
def test_every_documented_pair_has_a_golden_case(pair: str) -> None:
    assert pair in CASES
    doc = json.loads((FIXTURES / pair / "input.json").read_text())
    assert f"{doc['object_type']}_{doc['metric']}" == pair


def test_catalogue_inputs_are_the_amplitude_golden_inputs() -> None:
    # One set of webhook bodies specifies both destinations.
    amplitude = FIXTURES.parent / "amplitude"
    for channel, metrics in CATALOGUE.items():
        for metric in metrics.split():
            case = f"{channel}_{metric}"
            assert (FIXTURES / case / "input.json").read_text() == (
                amplitude / case / "input.json"
            ).read_text()


def test_all_fields_cases_cover_every_output_key() -> None:
    keys: set[str] = set()
    for case in ("all_fields_email_sent", "all_fields_customer_unsubscribed"):
        for message in run_case(FIXTURES / case)["batch"]:
            keys |= set(message)
    assert keys == {
        "type", "event", "userId", "properties", "traits", "context", "integrations", "messageId", "timestamp",
    }  # fmt: skip
    assert {"anonymousId"} <= set(run_case(FIXTURES / "identity_email_only_becomes_anonymous_id")["batch"][0])


# --- the six names Segment documents, and the pattern for the rest ---------------------------


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("email_delivered", "Email Delivered"),
        ("email_opened", "Email Opened"),
        ("email_clicked", "Email Link Clicked"),
        ("email_unsubscribed", "Email Unsubscribed"),
        ("email_bounced", "Email Bounced"),
        ("email_spammed", "Email Marked as Spam"),
    ],
)
def test_segment_documented_email_names(case: str, name: str) -> None:
    (track,) = run_case(FIXTURES / case)["batch"]
    assert track["event"] == name


@pytest.mark.parametrize(
    ("channel", "metric", "naming", "name"),
    [
        ("email", "dropped", Naming(), "Email Suppressed"),
        ("email", "sent", Naming(), "Email Sent"),
        ("sms", "clicked", Naming(), "SMS Link Clicked"),
        ("push", "delivered", Naming(), "Push Delivered"),
        ("whatsapp", "opened", Naming(), "WhatsApp Opened"),
        ("in_app", "clicked", Naming(), "In-App Message Link Clicked"),
        ("slack", "sent", Naming(), "Slack Message Sent"),
        ("webhook", "failed", Naming(), "Webhook Message Failed"),
        ("customer", "subscribed", Naming(), "Customer Subscribed"),
        ("customer", "cio_subscription_preferences_changed", Naming(),
         "Customer Subscription Preferences Changed"),
        ("email", "deferred", Naming(), "Email Deferred"),
        ("carrier_pigeon", "lost_at_sea", Naming(), "Carrier Pigeon Lost At Sea"),
        ("email", "clicked", Naming(style="title"), "Email Clicked"),
        ("email", "clicked", Naming(style="snake", prefix="cio_"), "cio_email_clicked"),
        ("email", "clicked", Naming(prefix="CIO "), "CIO Email Link Clicked"),
        ("email", "dropped", Naming(prefix="CIO ", events={"email.dropped": "Email Dropped"}), "Email Dropped"),
    ],
)  # fmt: skip
def test_event_name(channel: str, metric: str, naming: Naming, name: str) -> None:
    assert event_name(channel, metric, naming) == name


def test_segment_name_is_cached_and_pure() -> None:
    assert segment_name("email", "spammed") is segment_name("email", "spammed")


# --- identity ---------------------------------------------------------------------------------


def test_identity_rules() -> None:
    by_id = run_case(FIXTURES / "identity_id_becomes_user_id")["batch"][0]
    assert by_id["userId"] == "cust_000123"
    assert "anonymousId" not in by_id
    email_only = run_case(FIXTURES / "identity_email_only_becomes_anonymous_id")["batch"][0]
    assert email_only["anonymousId"] == "lead@example.com"
    assert "userId" not in email_only
    assert run_case(FIXTURES / "identity_neither_id_nor_email_skipped") == {
        "skip": "no userId or anonymousId: the Customer.io event names no id and no email "
        "(Segment would drop it, segment.md §5)"
    }


def test_message_id_is_the_event_id_and_stable() -> None:
    folder = FIXTURES / "email_clicked"
    first = run_case(folder)["batch"][0]
    assert first["messageId"] == json.loads((folder / "input.json").read_text())["event_id"]
    assert run_case(folder) == run_case(folder)  # every retry carries the same messageId


def test_long_message_ids_are_hashed_deterministically_within_99_characters() -> None:
    short = message_id("", "01J9Z7B1B2C3D4E5F6G7H8J9KN")
    assert short == "01J9Z7B1B2C3D4E5F6G7H8J9KN"
    assert message_id("p-", "x" * 97) == "p-" + "x" * 97  # exactly 99: kept
    long = message_id("p-", "x" * 98)
    assert long.startswith("lw-") and len(long) == 67
    assert long == message_id("p-", "x" * 98)
    assert message_id("p-", "x" * 98, "-identify") != long


def test_subscription_identify_and_track_have_distinct_message_ids() -> None:
    identify, track = run_case(FIXTURES / "send_identify_customer_unsubscribed")["batch"]
    assert identify["type"] == "identify" and track["type"] == "track"
    assert identify["traits"] == {"unsubscribed": True, "email": "ada@example.com"}
    assert identify["messageId"] == track["messageId"] + "-identify"


def test_iso_ms() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_735_689_720_007) == "2025-01-01T00:02:00.007Z"
    assert iso_ms(NOW_MS) == "2026-01-01T00:00:00.000Z"


# --- hashing ----------------------------------------------------------------------------------


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_all_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    return []


@pytest.mark.parametrize("case", [c for c in CASES if "hash_identifiers" in c])
def test_hash_identifiers_never_sends_a_raw_email_or_phone(case: str) -> None:
    got = run_case(FIXTURES / case)
    strings = _all_strings(got)
    assert not any("@" in s for s in strings), case
    assert not any(s.replace(" ", "").lstrip("+").isdigit() and len(s) > 6 for s in strings), case


def test_hash_identifiers_email_sha256() -> None:
    (track,) = run_case(FIXTURES / "hash_identifiers_email_sha256")["batch"]
    digest = hash_email("ada@example.com")
    assert track["context"]["traits"] == {"email_sha256": digest, "cio_id": "a3000001"}
    assert track["properties"]["recipient_sha256"] == digest
    assert "recipient" not in track["properties"]


def test_hash_identifiers_normalises_before_hashing() -> None:
    (track,) = run_case(FIXTURES / "hash_identifiers_email_user_id_hashed")["batch"]
    assert track["userId"] == hash_email("ada@example.com")  # "Ada@Example.com", lower-cased
    (sms,) = run_case(FIXTURES / "hash_identifiers_phone_default_country_code")["batch"]
    assert sms["context"]["traits"]["phone_sha256"] == hash_phone("+15551234567")
    (anonymous,) = run_case(FIXTURES / "hash_identifiers_anonymous_id_hashed")["batch"]
    assert anonymous["anonymousId"] == hash_email("lead@example.com")


# --- allowlist, body content, limits ----------------------------------------------------------


def test_property_allowlist_keeps_only_listed_keys() -> None:
    (track,) = run_case(FIXTURES / "property_allowlist")["batch"]
    assert set(track["properties"]) == {"campaign_id", "subject", "href"}
    assert track["userId"] == "cust_000123"  # identity is never filtered
    (dotted,) = run_case(FIXTURES / "property_allowlist_dotted_key")["batch"]
    assert dotted["properties"] == {"campaign_id": 412, "headers": {"X-Campaign": ["spring"]}}


def test_message_over_32kb_is_invalid_naming_the_limit() -> None:
    got = run_case(FIXTURES / "message_over_32kb_invalid")
    assert "32 KB (32,768 bytes) per message (segment.md §4)" in got["invalid"]
    assert "body_content" in got["invalid"]
    assert "batch" in run_case(FIXTURES / "message_over_32kb_without_body_content_sent")


def test_mapping_leaves_the_event_unchanged() -> None:
    for case in (
        "all_fields_email_sent",
        "passthrough_segment_track_hash_identifiers",
        "passthrough_amplitude_track",
    ):
        event = event_for(FIXTURES / case)
        before = copy.deepcopy(event.data)
        options = options_for(yaml.safe_load((FIXTURES / case / "options.yaml").read_text()))
        first = map_event(event, options, NOW_MS)
        assert event.data == before
        assert first == map_event(event, options, NOW_MS)


def test_mapping_does_not_read_the_clock() -> None:
    event = event_for(FIXTURES / "email_clicked")
    assert map_event(event, options_for(None), 0) == map_event(event, options_for(None), NOW_MS)


def test_library_version_is_the_package_version() -> None:
    event = event_for(FIXTURES / "email_clicked")
    result = map_event(event, options_for(None), NOW_MS)
    assert isinstance(result, dict)
    assert result["batch"][0]["context"]["library"] == {"name": "loopwire", "version": __version__}


def test_request_body_is_the_concatenation_of_every_rows_messages() -> None:
    rows = [run_case(FIXTURES / "send_identify_customer_unsubscribed"), run_case(FIXTURES / "email_clicked")]
    body = json.loads(request_body(rows, "2026-01-01T00:00:05.000Z"))
    assert body == {"batch": rows[0]["batch"] + rows[1]["batch"], "sentAt": "2026-01-01T00:00:05.000Z"}
    assert "writeKey" not in body  # the key travels in the Authorization header


# --- pass-through from the real inputs ----------------------------------------------------------


def test_a_message_from_the_segment_input_passes_through_unchanged_in_substance() -> None:
    from loopwire.sources.segment_api import to_event

    fixture = event_for(FIXTURES / "passthrough_segment_track")
    message = {k: v for k, v in fixture.data.items() if k != "writeKey"}
    result = map_event(to_event(message, NOW_MS), options_for(None), NOW_MS)
    assert not isinstance(result, Skip | Invalid)
    assert _versionless(result) == expected("passthrough_segment_track")


def test_an_event_from_the_amplitude_input_passes_through() -> None:
    from loopwire.sources.amplitude_api import to_event

    fixture = event_for(FIXTURES / "passthrough_amplitude_track")
    result = map_event(to_event(fixture.data, NOW_MS), options_for(None), NOW_MS)
    assert not isinstance(result, Skip | Invalid)
    assert _versionless(result) == expected("passthrough_amplitude_track")


# --- options: defaults and `loopwire map --set` -----------------------------------------------


def test_default_map_options() -> None:
    options = default_map_options()
    assert options.write_key == Secret("map-only")
    assert options.region == "us"
    assert options.send_identify is False
    assert options.body_content is False
    assert options.naming == Naming()
    assert options.route.hash_identifiers is False


def test_options_require_a_region_and_a_write_key() -> None:
    with pytest.raises(msgspec.ValidationError, match="region"):
        msgspec.convert({"write_key": "k"}, SegmentOptions, dec_hook=dec_hook)
    with pytest.raises(msgspec.ValidationError, match="write_key"):
        msgspec.convert({"region": "eu"}, SegmentOptions, dec_hook=dec_hook)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"write_key": "k", "region": "eu", "colour": 1}, SegmentOptions, dec_hook=dec_hook)
    tagged = msgspec.convert(
        {"type": "segment", "write_key": "k", "region": "eu"}, SegmentOptions, dec_hook=dec_hook
    )
    assert repr(tagged.write_key) == "***"


def test_options_join_the_config_union_by_type() -> None:
    # What config.py's `DestinationOptions = AmplitudeOptions | SegmentOptions` will decode.
    from loopwire.destinations.amplitude.options import AmplitudeOptions

    raw = {"type": "segment", "write_key": "k", "region": "eu", "naming": {"style": "title"}}
    got = msgspec.convert(raw, AmplitudeOptions | SegmentOptions, dec_hook=dec_hook, str_keys=True)
    assert isinstance(got, SegmentOptions) and got.naming.style == "title"


def test_apply_overrides() -> None:
    options = apply_overrides(
        default_map_options(),
        [
            "send_identify=true",
            "body_content=true",
            "naming.style=title",
            "naming.prefix=cio_",
            "naming.events={email.dropped: Email Dropped}",
            "route.hash_identifiers=true",
            "route.properties=campaign_id, subject",
            "integrations={All: false, Amplitude: true}",
            "message_id_prefix=1",
            "retry.timeout=30s",
            "region=eu",
        ],
    )
    assert options.send_identify is True
    assert options.body_content is True
    assert options.naming == Naming(style="title", prefix="cio_", events={"email.dropped": "Email Dropped"})
    assert options.route.hash_identifiers is True
    assert options.route.properties == ["campaign_id", "subject"]
    assert options.integrations == {"All": False, "Amplitude": True}
    assert options.message_id_prefix == "1"
    assert options.retry.timeout == 30.0
    assert options.region == "eu"
    assert options.write_key == Secret("map-only")  # the secret survives the round trip
    unset = apply_overrides(options, ["integrations=", "route.properties=", "naming.events="])
    assert unset.integrations is None
    assert unset.route.properties is None
    assert unset.naming.events == {}
    assert apply_overrides(options, []) is options


@pytest.mark.parametrize(
    ("assignment", "key", "message"),
    [
        ("send_identify=maybe", "send_identify", "Expected `bool`"),
        ("naming.style=camel", "naming.style", "Invalid enum value 'camel'"),
        ("naming.colour=red", "naming.colour", "unknown key"),
        ("colour=red", "colour", "unknown key"),
        ("naming=snake", "naming", "group of settings"),
        ("send_identify.x=true", "send_identify.x", "no sub-keys"),
        ("region=mars", "region", "Invalid enum value 'mars'"),
        ("body_content", "body_content", "expected KEY=VALUE"),
        ("naming.prefix={a: 1}", "naming.prefix", "expected a single value"),
        ("integrations={All: maybe}", "integrations", "Expected `bool`"),
    ],
)
def test_apply_overrides_errors_name_the_key(assignment: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_map_options(), [assignment])
    assert info.value.key == key
    assert message in str(info.value)
