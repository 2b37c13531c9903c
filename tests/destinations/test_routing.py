from __future__ import annotations

from loopwire.destinations.routing import (
    Route,
    accepts,
    allowed_properties,
    hash_email,
    hash_phone,
    normalise_phone,
)
from loopwire.model import Event, event_key

DEFAULT = frozenset({"customerio"})


def cio(channel: str, metric: str) -> Event:
    return Event(
        id="e", source="customerio", kind="message", channel=channel, metric=metric, time_ms=0, received_ms=0
    )


def track(name: str, source: str = "segment") -> Event:
    return Event(id="e", source=source, kind="track", name=name, time_ms=0, received_ms=0)


def test_event_keys() -> None:
    assert event_key(cio("email", "clicked")) == "email.clicked"
    assert event_key(track("Order Completed")) == "Order Completed"


def test_default_sources_kinds_and_globs() -> None:
    assert accepts(Route(), DEFAULT, cio("sms", "sent"))
    assert not accepts(Route(), DEFAULT, track("Order Completed"))
    assert accepts(Route(sources=["segment"]), DEFAULT, track("Order Completed"))
    assert not accepts(Route(kinds=["subscription"]), DEFAULT, cio("email", "sent"))
    only_email = Route(events=["email.*"])
    assert accepts(only_email, DEFAULT, cio("email", "opened"))
    assert not accepts(only_email, DEFAULT, cio("sms", "sent"))


def test_exact_names_match_even_with_glob_characters() -> None:
    route = Route(sources=["amplitude"], events=["[Amplitude] Page Viewed"])
    assert accepts(route, DEFAULT, track("[Amplitude] Page Viewed", "amplitude"))
    assert not accepts(route, DEFAULT, track("A Page Viewed", "amplitude"))


def test_property_allowlist_with_nested_keys() -> None:
    properties = {"value": 10, "cart": {"items": 3, "token": "secret"}, "email": "a@b.c"}
    assert allowed_properties(properties, None) is properties
    assert allowed_properties(properties, ["value", "cart.items", "missing"]) == {
        "value": 10,
        "cart": {"items": 3},
    }


def test_identifier_hashing_normalises_first() -> None:
    assert hash_email("  Ada@Example.COM ") == hash_email("ada@example.com")
    assert len(hash_email("ada@example.com")) == 64
    assert normalise_phone("+1 (555) 867-5309") == "+15558675309"
    assert normalise_phone("0044 20 7946 0958") == "+442079460958"
    assert normalise_phone("555-867-5309") == "+15558675309"
    assert hash_phone("(555) 867-5309") == hash_phone("+1 555 867 5309")


def test_every_destination_takes_loopwire_events_by_default() -> None:
    # Audience membership and holdout assignment reach every tool without a `route.sources` line.
    from loopwire.destinations.registry import KINDS

    own = track("Audience Entered", "loopwire")
    for name, kind in KINDS.items():
        assert "loopwire" in kind.default_sources, name
        assert accepts(Route(), kind.default_sources, own), name
        assert not accepts(Route(sources=["customerio"]), kind.default_sources, own), name
