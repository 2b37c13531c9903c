from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopwire.errors import InputError
from loopwire.sources.customerio_parse import parse_webhook
from loopwire.sources.customerio_webhooks import keyed, verify_signature
from tests.helpers import reference

REFERENCE = reference.FIXTURES / "customerio"
VECTOR = json.loads((REFERENCE / "signature" / "v0_known_answer.json").read_text())
TS = int(VECTOR["headers"]["X-CIO-Timestamp"])


def check(key: str, ts: str, signature: str, body: bytes, now: float = TS, window: float = 300) -> None:
    verify_signature(keyed([key.encode()]), ts, signature, body, now, window)


def test_known_answer_vector_verifies() -> None:
    check(VECTOR["signing_key"], str(TS), VECTOR["headers"]["X-CIO-Signature"], VECTOR["raw_body"].encode())


@pytest.mark.parametrize(
    ("key", "ts", "body", "code"),
    [
        (VECTOR["negative_cases"]["wrong_key"], str(TS), VECTOR["raw_body"], "invalid_signature"),
        (
            VECTOR["signing_key"],
            VECTOR["negative_cases"]["tampered_timestamp"],
            VECTOR["raw_body"],
            "invalid_signature",
        ),
        (
            VECTOR["signing_key"],
            str(TS),
            VECTOR["negative_cases"]["reserialized_body_with_spaces"],
            "invalid_signature",
        ),
        (VECTOR["signing_key"], "yesterday", VECTOR["raw_body"], "invalid_timestamp"),
    ],
)
def test_negative_cases_are_refused(key: str, ts: str, body: str, code: str) -> None:
    with pytest.raises(InputError) as error:
        check(key, ts, VECTOR["headers"]["X-CIO-Signature"], body.encode())
    assert (error.value.status, error.value.code) == (401, code)


def test_replay_window_both_directions() -> None:
    good = (VECTOR["signing_key"], str(TS), VECTOR["headers"]["X-CIO-Signature"], VECTOR["raw_body"].encode())
    check(*good, now=TS + 300)
    for now in (TS + 301, TS - 301):
        with pytest.raises(InputError) as error:
            check(*good, now=now)
        assert error.value.code == "stale_timestamp"


def test_any_of_several_keys_verifies() -> None:
    keys = keyed([b"retired", VECTOR["signing_key"].encode()])
    verify_signature(
        keys, str(TS), VECTOR["headers"]["X-CIO-Signature"], VECTOR["raw_body"].encode(), TS, 300
    )


@pytest.mark.parametrize("path", sorted((REFERENCE / "webhooks").rglob("*.json")), ids=lambda p: p.stem)
def test_every_reference_webhook_parses_or_is_refused_precisely(path: Path) -> None:
    body = path.read_bytes()
    doc = json.loads(body)
    if "timestamp_invalid" in path.stem:
        with pytest.raises(InputError) as error:
            parse_webhook(body, 0)
        assert error.value.code == "invalid_field"
        return
    if "event_id" not in doc:  # the schema example in docs-openapi has no envelope
        with pytest.raises(InputError):
            parse_webhook(body, 0)
        return
    event = parse_webhook(body, received_ms=42)
    assert event.id == doc["event_id"]
    assert (event.channel, event.metric) == (doc["object_type"], doc["metric"])
    assert event.time_ms == int(float(doc["timestamp"]) * 1000)
    assert event.data == doc.get("data", {})


def test_email_only_person_has_no_user_id() -> None:
    body = (REFERENCE / "webhooks" / "constructed" / "email_opened.email_only_person.json").read_bytes()
    event = parse_webhook(body, 0)
    assert event.user_id is None and event.email


def test_customer_subscription_kind() -> None:
    body = (REFERENCE / "webhooks" / "docs-openapi" / "customer_subscribed.json").read_bytes()
    assert parse_webhook(body, 0).kind == "subscription"
