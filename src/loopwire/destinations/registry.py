"""Config options → a ready destination. Adding a destination adds one branch here."""

from __future__ import annotations

import httpx

from loopwire.config import DestinationOptions
from loopwire.destinations.amplitude import AmplitudeDestination
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Destination


def build_destination(name: str, options: DestinationOptions, http: httpx.AsyncClient) -> Destination:
    if isinstance(options, AmplitudeOptions):
        return AmplitudeDestination(name, options, http)
    raise TypeError(f"no destination for {type(options).__name__}")
