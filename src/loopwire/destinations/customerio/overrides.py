"""`loopwire map --to customerio --set KEY=VALUE`: change `CustomerioOptions` from the command line.

    --set identifier=email --set send_users=true --set event_properties=plan,total

VALUE is read as a YAML scalar (`true`, `5`, `30s`, `null`); a dotted KEY reaches into a nested group
(`route.events`, `batching.max_events`); a list option takes comma-separated items (or a YAML list
`[plan, total]`); a text option keeps VALUE as typed (`identifier=1` is the string "1"); an empty
VALUE unsets an optional key or empties a list. Errors are `ConfigError`s naming the key.
"""

from __future__ import annotations

from loopwire.destinations.customerio.options import USER_ID, CustomerioOptions
from loopwire.destinations.overrides import apply_struct_overrides
from loopwire.settings import Secret


def default_map_options() -> CustomerioOptions:
    """Options for `loopwire map` without a config: the event's user_id as identifier, US region,
    events on, users on (so the identify operation shows), no properties selected (seed 003)."""
    return CustomerioOptions(
        site_id=Secret("map-only"),
        api_key=Secret("map-only"),
        region="us",
        identifier=USER_ID,
        send_users=True,
    )


def apply_overrides(options: CustomerioOptions, assignments: list[str]) -> CustomerioOptions:
    return apply_struct_overrides(options, assignments)
