"""`loopwire map --to amplitude`: the options it maps with (see `destinations/overrides.py` for `--set`)."""

from __future__ import annotations

from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.overrides import apply_struct_overrides
from loopwire.settings import Secret


def default_map_options() -> AmplitudeOptions:
    """Options for `loopwire map` without a config: the native integration's defaults, US region."""
    return AmplitudeOptions(api_key=Secret("map-only"), region="us")


def apply_overrides(options: AmplitudeOptions, assignments: list[str]) -> AmplitudeOptions:
    return apply_struct_overrides(options, assignments)
