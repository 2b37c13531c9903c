"""Versioned audience logic: a changed definition needs a new version, versions never go down, and the
fingerprint ignores what does not change the logic (key order, `7d` vs `168h`, the description)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
import yaml
from rich.console import Console

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.audiences.library import resolve_audiences
from loopwire.audiences.versions import (
    VersionRecord,
    canonical_json,
    changes,
    check_versions,
    fingerprint,
    render_history,
)
from loopwire.errors import ConfigError
from loopwire.settings import dec_hook

NOW = 1_700_000_000_000

CART_V1 = """
version: 1
description: Cart abandoners
rule:
  all:
    - count: {event: Checkout Started, within: 4h}
    - absent: {event: Order Completed, since: Checkout Started}
qualifying_values:
  cart_value: {event: Checkout Started, property: value}
  items: {event: Checkout Started, property: products}
"""

# The same logic: keys in another order, 4h written as 240m, an explicit default (at_least: 1).
CART_V1_REORDERED = """
qualifying_values:
  items: {property: products, event: Checkout Started}
  cart_value: {property: value, event: Checkout Started}
rule:
  all:
    - count: {within: 240m, at_least: 1, event: Checkout Started}
    - absent: {since: Checkout Started, event: Order Completed}
description: Cart abandoners
version: 1
"""


def load(text: str, **changes_: Any) -> AudienceDefinition:
    raw = yaml.safe_load(text)
    raw.update(changes_)
    return msgspec.convert(raw, AudienceDefinition, dec_hook=dec_hook)


def record(definition: AudienceDefinition, name: str = "cart", at: int = NOW) -> VersionRecord:
    (only,) = check_versions({name: definition}, {}, at)
    return only


def test_fingerprint_ignores_key_order_spelling_and_defaults() -> None:
    assert fingerprint(load(CART_V1)) == fingerprint(load(CART_V1_REORDERED))
    assert canonical_json(load(CART_V1)) == canonical_json(load(CART_V1_REORDERED))


def test_fingerprint_is_sha256_of_the_canonical_logic() -> None:
    definition = load("version: 7\ndescription: anything\nrule: {count: {event: x, within: 1h}}")
    # Sorted keys, no defaults, durations in seconds, without version and description:
    expected = b'{"rule":{"count":{"event":"x","within":3600}}}'
    assert fingerprint(definition) == hashlib.sha256(expected).hexdigest()
    assert canonical_json(definition) == (
        '{"description":"anything","rule":{"count":{"event":"x","within":3600}},"version":7}'
    )


def test_fingerprint_changes_with_the_logic() -> None:
    base = fingerprint(load(CART_V1))
    assert fingerprint(load(CART_V1.replace("4h", "2h"))) != base
    assert fingerprint(load(CART_V1, exclude=["recent"])) != base
    assert fingerprint(load(CART_V1, entered_event_name="Entered Cart")) != base  # downstream sees it
    assert fingerprint(load(CART_V1, description="Reworded")) == base  # wording is not logic
    assert fingerprint(load(CART_V1, version=2)) == base


def test_a_new_audience_is_recorded() -> None:
    (first,) = check_versions({"cart": load(CART_V1)}, {}, NOW)
    assert (first.name, first.version, first.recorded_ms) == ("cart", 1, NOW)
    assert first.fingerprint == fingerprint(load(CART_V1))
    assert msgspec.json.decode(first.definition_json)["rule"]["all"][0]["count"]["within"] == 14400


def test_unchanged_definition_records_nothing() -> None:
    history = {"cart": [record(load(CART_V1))]}
    assert check_versions({"cart": load(CART_V1_REORDERED)}, history, NOW + 1) == []


def test_changed_definition_with_the_same_version_is_a_config_error() -> None:
    history = {"cart": [record(load(CART_V1))]}
    with pytest.raises(ConfigError) as caught:
        check_versions({"cart": load(CART_V1.replace("4h", "2h"))}, history, NOW + 1)
    assert caught.value.key == "audiences.cart.version"
    message = str(caught.value)
    assert "the definition changed but its version is still 1" in message
    assert "rule.all[0].count.within: 14400 → 7200" in message
    assert "set `version: 2`" in message


def test_bumped_version_is_recorded() -> None:
    history = {"cart": [record(load(CART_V1))]}
    (bumped,) = check_versions({"cart": load(CART_V1.replace("4h", "2h"), version=2)}, history, NOW + 5)
    assert (bumped.version, bumped.recorded_ms) == (2, NOW + 5)
    # A bump with no change in logic is recorded too: someone meant to cut a version.
    (same,) = check_versions({"cart": load(CART_V1, version=2)}, history, NOW + 6)
    assert same.fingerprint == history["cart"][0].fingerprint


def test_version_going_backwards_is_a_config_error() -> None:
    history = {"cart": [record(load(CART_V1)), record(load(CART_V1.replace("4h", "2h"), version=3))]}
    # Even going back to version 1's exact logic: the changelog only goes forward.
    with pytest.raises(
        ConfigError, match=r"version 1 is lower than the recorded version 3.*`version: 4`"
    ) as caught:
        check_versions({"cart": load(CART_V1)}, history, NOW + 1)
    assert caught.value.key == "audiences.cart.version"


def test_other_audiences_and_removed_ones() -> None:
    history = {"cart": [record(load(CART_V1))], "old": [record(load(CART_V1), name="old")]}
    new = load("version: 1\nrule: {count: {event: Order Completed, within: 24h}}")
    appended = check_versions({"cart": load(CART_V1), "recent": new}, history, NOW)
    assert [r.name for r in appended] == ["recent"]  # `old` left the config: its history stays as it is


def test_a_library_change_under_the_same_version_is_caught() -> None:
    # What a loopwire upgrade that changed the library would look like: the expanded definitions differ.
    v1 = resolve_audiences({"vip": AudienceDefinition(version=1, library="vip")})
    history = {"vip": check_versions(v1, {}, NOW)}
    tuned = resolve_audiences({"vip": AudienceDefinition(version=1, library="vip", params={"over": 500})})
    with pytest.raises(ConfigError, match=r"rule\.sum\.gt: 300 → 500"):
        check_versions(tuned, history, NOW + 1)


def test_changes_lists_leaf_differences() -> None:
    old = canonical_json(load(CART_V1))
    new = canonical_json(load(CART_V1.replace("4h", "2h"), version=2, exclude=["recent"]))
    assert changes(old, new) == ['exclude[0]: (none) → "recent"', "rule.all[0].count.within: 14400 → 7200"]


def test_render_history() -> None:
    records = [
        record(load(CART_V1), at=NOW),
        record(load(CART_V1.replace("4h", "2h"), version=2), at=NOW + 86_400_000),
        record(load(CART_V1, version=3, description="Back to 4h"), at=NOW + 2 * 86_400_000),
    ]
    console = Console(width=160, record=True)
    console.print(render_history(list(reversed(records))))
    text = console.export_text()
    assert "Audience cart: version history" in text
    assert "2023-11-14 22:13:20" in text and "2023-11-15 22:13:20" in text
    assert "first recorded: Cart abandoners" in text
    assert "rule.all[0].count.within: 14400 → 7200" in text
    assert "rule.all[0].count.within: 7200 → 14400" in text
    assert 'description: "Cart abandoners" → "Back to 4h"' in text
    assert records[0].fingerprint[:12] in text
    assert text.index("14400 → 7200") < text.index("7200 → 14400")  # oldest first
