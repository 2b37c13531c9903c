"""`loopwire map --to segment`: the options it maps with (see `destinations/overrides.py` for `--set`)."""

from __future__ import annotations

from loopwire.destinations.overrides import apply_struct_overrides
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.settings import Secret


def default_map_options() -> SegmentOptions:
    """Options for `loopwire map` without a config: Customer.io's Segment source defaults, US region."""
    return SegmentOptions(write_key=Secret("map-only"), region="us")


def apply_overrides(options: SegmentOptions, assignments: list[str]) -> SegmentOptions:
    return apply_struct_overrides(options, assignments)
