"""Every destination type, in one table: its options, how to build it, test it and map with it.
Adding a destination adds one row here (and its options to `config.DestinationOptions`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple

import httpx

from loopwire.config import DestinationOptions
from loopwire.destinations import amplitude, customerio, segment
from loopwire.destinations.amplitude import mapping as amplitude_mapping
from loopwire.destinations.amplitude import overrides as amplitude_overrides
from loopwire.destinations.amplitude import testing as amplitude_testing
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.destinations.base import Destination, Invalid, Memory, Skip
from loopwire.destinations.customerio import mapping as customerio_mapping
from loopwire.destinations.customerio import overrides as customerio_overrides
from loopwire.destinations.customerio import testing as customerio_testing
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.destinations.routing import accepts
from loopwire.destinations.segment import mapping as segment_mapping
from loopwire.destinations.segment import overrides as segment_overrides
from loopwire.destinations.segment import testing as segment_testing
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.model import Event


class Kind(NamedTuple):
    options: type
    default_sources: frozenset[str]
    build: Callable[[str, Any, httpx.AsyncClient, Memory], Destination]
    test_connection: Callable[[Any], Awaitable[ConnectionResult]]
    map_event: Callable[[Event, Any, int], dict[str, Any] | Skip | Invalid]
    apply_overrides: Callable[[Any, list[str]], Any]
    default_map_options: Callable[[], Any]
    # The destination's routing predicate (what `Destination.accepts` answers), built from its
    # options alone: the ingest process routes webhooks with it, without building the destination.
    takes: Callable[[Any], Callable[[Event], bool]]


KINDS: dict[str, Kind] = {
    "amplitude": Kind(
        AmplitudeOptions,
        amplitude.AmplitudeDestination.default_sources,
        lambda name, options, http, memory: amplitude.AmplitudeDestination(name, options, http),
        amplitude_testing.send_test_event,
        amplitude_mapping.map_event,
        amplitude_overrides.apply_overrides,
        amplitude_overrides.default_map_options,
        lambda options: partial(accepts, options.route, amplitude.AmplitudeDestination.default_sources),
    ),
    "segment": Kind(
        SegmentOptions,
        segment.SegmentDestination.default_sources,
        lambda name, options, http, memory: segment.SegmentDestination(name, options, http),
        segment_testing.send_test_event,
        segment_mapping.map_event,
        segment_overrides.apply_overrides,
        segment_overrides.default_map_options,
        lambda options: partial(accepts, options.route, segment.SegmentDestination.default_sources),
    ),
    "customerio": Kind(
        CustomerioOptions,
        customerio.CustomerioDestination.default_sources,
        lambda name, options, http, memory: customerio.CustomerioDestination(name, options, http, memory),
        customerio_testing.send_test_event,
        customerio_mapping.map_event,
        customerio_overrides.apply_overrides,
        customerio_overrides.default_map_options,
        customerio.takes,
    ),
}


def type_of(options: DestinationOptions) -> str:
    """The `type:` a destination was configured with (its options struct's tag)."""
    return str(type(options).__struct_config__.tag)


def kind_of(options: DestinationOptions) -> Kind:
    return KINDS[type_of(options)]


def build_destination(
    name: str, options: DestinationOptions, http: httpx.AsyncClient, memory: Memory
) -> Destination:
    return kind_of(options).build(name, options, http, memory)


def router(options: DestinationOptions) -> Callable[[Event], bool]:
    return kind_of(options).takes(options)


async def test_connection(options: DestinationOptions) -> ConnectionResult:
    """`loopwire test-connection`: one harmless call that proves the credentials and the region."""
    return await kind_of(options).test_connection(options)
