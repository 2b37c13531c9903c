"""Config options → a ready destination. Adding a destination adds one branch here."""

from __future__ import annotations

import httpx

from loopwire.config import DestinationOptions
from loopwire.destinations.amplitude import AmplitudeDestination
from loopwire.destinations.amplitude import testing as amplitude_testing
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.destinations.base import Destination


def build_destination(name: str, options: DestinationOptions, http: httpx.AsyncClient) -> Destination:
    if isinstance(options, AmplitudeOptions):
        return AmplitudeDestination(name, options, http)
    raise TypeError(f"no destination for {type(options).__name__}")


async def test_connection(options: DestinationOptions) -> ConnectionResult:
    """`loopwire test-connection`: one harmless call that proves the credentials and the region."""
    if isinstance(options, AmplitudeOptions):
        return await amplitude_testing.send_test_event(options)
    raise TypeError(f"no connection test for {type(options).__name__}")
