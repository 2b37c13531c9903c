"""Ready-made audiences from the operator guides (seeds 000, 001, 004), enabled by name:

    audiences:
      high_intent: {library: high_intent_engagers, version: 1}
      vip: {library: vip, version: 1, params: {over: 500}}
      cart_abandoners: {library: cart_abandoners, version: 1, exclude: [recent_purchasers]}
      recent_purchasers: {library: recent_purchasers, version: 1}

`params` tune an entry (each entry's params struct below lists them, with defaults); the other keys
of the audience (`description`, event names, `qualifying_values`, `exclude`, priority group) override
the library's. `resolve_audiences` expands every library reference into a full definition, so the
version check fingerprints the logic actually evaluated: a loopwire upgrade that changed a library
entry asks for a version bump like any other change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from loopwire.audiences.definitions import (
    Absent,
    Ago,
    AudienceDefinition,
    Carry,
    Condition,
    Count,
    EventRef,
    LineFor,
    State,
    Sum,
    Test,
    Timing,
    Where,
    line_near,
    validate_audiences,
)
from loopwire.errors import ConfigError
from loopwire.settings import Duration, dec_hook

HOUR = 3600.0
DAY = 86_400.0
Events = str | list[str]


class _Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    order_event: Events = "Order Completed"


class _Clicks(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    click_event: Events = "*.clicked"
    # Customer.io flags clicks made by link scanners `machine: true` (email); they are not intent.
    count_machine_clicks: bool = False


class HighIntentParams(_Clicks, frozen=True, forbid_unknown_fields=True, kw_only=True):
    within: Duration = Duration(7 * DAY)


class FatigueParams(_Clicks, frozen=True, forbid_unknown_fields=True, kw_only=True):
    delivered_event: Events = "*.delivered"
    within: Duration = Duration(14 * DAY)
    min_delivered: int = 5


class CartAbandonParams(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    checkout_event: Events = "Checkout Started"
    within: Duration = Duration(4 * HOUR)
    value_property: str = "value"  # Segment e-commerce spec: Checkout Started `value`, `products`
    items_property: str = "products"


def _cart_link() -> Where:
    return {"href": Test(contains="cart")}


class CartClickParams(_Clicks, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Which clicks are on a cart message: by default the clicked link goes to the cart. Narrow it to
    # your cart journey with e.g. {campaign_id: {in: [412]}} (Customer.io webhook `data` fields).
    cart_message: Where = msgspec.field(default_factory=_cart_link)
    wait: Duration = Duration(6 * HOUR)  # enters this long after the click, if no order since
    max_age: Duration = Duration(3 * DAY)  # and leaves this long after it (short-window retargeting)


class VipParams(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    revenue_property: str = "revenue"
    over: float = 300.0  # strictly more than this
    within: Duration | None = None  # None: lifetime


class FirstTimeParams(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    within: Duration = Duration(14 * DAY)
    revenue_property: str = "revenue"


class RecentPurchaseParams(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    within: Duration = Duration(24 * HOUR)


class LifecycleParams(_Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    active_within: Duration = Duration(30 * DAY)
    at_risk_within: Duration = Duration(90 * DAY)

    def __post_init__(self) -> None:
        if self.active_within >= self.at_risk_within:
            raise ValueError("`active_within` must be shorter than `at_risk_within`")


def span(seconds: float) -> str:
    """7 days, 4 hours, 90 minutes: a window as a person would say it."""
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", 60.0), ("second", 1.0)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def _clicks(p: _Clicks, extra: Where | None = None) -> EventRef:
    where: Where = dict(extra or {})
    if not p.count_machine_clicks:
        where["machine"] = Test(ne=True)
    return EventRef(event=p.click_event, where=where)


def high_intent_engagers(p: HighIntentParams) -> AudienceDefinition:
    clicks = _clicks(p)
    return AudienceDefinition(
        version=1,
        description=f"Clicked any message in the last {span(p.within)} (seed 001: high-intent engagers)",
        rule=Condition(count=Count(event=clicks.event, where=clicks.where, within=p.within)),
        qualifying_values={
            "clicks": Carry(event=clicks.event, where=clicks.where, within=p.within, pick="count")
        },
    )


def fatigue_risk(p: FatigueParams) -> AudienceDefinition:
    clicks = _clicks(p)
    delivered = Count(event=p.delivered_event, within=p.within, at_least=p.min_delivered)
    return AudienceDefinition(
        version=1,
        description=f"{p.min_delivered}+ messages delivered in the last {span(p.within)} and no click "
        "(seed 001: fatigue risk)",
        rule=Condition(
            all=[
                Condition(count=delivered),
                Condition(absent=Absent(event=clicks.event, where=clicks.where, within=p.within)),
            ]
        ),
        qualifying_values={"delivered": Carry(event=p.delivered_event, within=p.within, pick="count")},
    )


def cart_abandoners(p: CartAbandonParams) -> AudienceDefinition:
    return AudienceDefinition(
        version=1,
        description=f"Checkout started in the last {span(p.within)}, no order since (seed 004: cart abandoners)",
        rule=Condition(
            all=[
                Condition(count=Count(event=p.checkout_event, within=p.within)),
                Condition(absent=Absent(event=p.order_event, since=p.checkout_event)),
            ]
        ),
        entered_event_name="Entered Cart Abandon Segment",
        exited_event_name="Exited Cart Abandon Segment",
        qualifying_values={
            "cart_value": Carry(event=p.checkout_event, property=p.value_property),
            "items": Carry(event=p.checkout_event, property=p.items_property),
        },
    )


def cart_click_no_purchase(p: CartClickParams) -> AudienceDefinition:
    click = _clicks(p, p.cart_message)
    return AudienceDefinition(
        version=1,
        description=f"Clicked a cart message {span(p.wait)}+ ago (up to {span(p.max_age)}), no order since "
        "(seed 001: cart recovery escalation)",
        rule=Condition(
            all=[
                Condition(
                    last=Timing(event=click.event, where=click.where, ago=Ago(min=p.wait, max=p.max_age))
                ),
                Condition(absent=Absent(event=p.order_event, since=click)),
            ]
        ),
        qualifying_values={"href": Carry(event=click.event, where=click.where, property="href")},
    )


def _lapsed(low_days: int, high_days: int | None) -> Callable[[_Params], AudienceDefinition]:
    band = f"{low_days}–{high_days}" if high_days else f"{low_days}+"

    def build(p: _Params) -> AudienceDefinition:
        high = None if high_days is None else Duration(high_days * DAY)
        return AudienceDefinition(
            version=1,
            description=f"Last order {band} days ago (seed 004: lapsed bands)",
            rule=Condition(last=Timing(event=p.order_event, ago=Ago(min=Duration(low_days * DAY), max=high))),
            qualifying_values={"orders": Carry(event=p.order_event, pick="count")},
        )

    return build


def vip(p: VipParams) -> AudienceDefinition:
    return AudienceDefinition(
        version=1,
        description=f"Order revenue summed over {span(p.within) if p.within else 'the lifetime'} is over {p.over:g} "
        "(seed 004: VIP buyers)",
        rule=Condition(sum=Sum(event=p.order_event, property=p.revenue_property, within=p.within, gt=p.over)),
        qualifying_values={
            "lifetime_value": Carry(
                event=p.order_event, property=p.revenue_property, within=p.within, pick="sum"
            )
        },
    )


def first_time_buyers(p: FirstTimeParams) -> AudienceDefinition:
    return AudienceDefinition(
        version=1,
        description=f"Exactly one order ever, placed in the last {span(p.within)} (seed 004: first-time buyers)",
        rule=Condition(
            all=[
                Condition(count=Count(event=p.order_event, at_least=1, at_most=1)),
                Condition(first=Timing(event=p.order_event, within=p.within)),
            ]
        ),
        qualifying_values={"order_value": Carry(event=p.order_event, property=p.revenue_property)},
    )


def recent_purchasers(p: RecentPurchaseParams) -> AudienceDefinition:
    return AudienceDefinition(
        version=1,
        description=f"Ordered in the last {span(p.within)} — meant as an exclusion everywhere (seed 004)",
        rule=Condition(count=Count(event=p.order_event, within=p.within)),
    )


def lifecycle_state(p: LifecycleParams) -> AudienceDefinition:
    def ordered(within: Duration | None) -> Condition:
        return Condition(count=Count(event=p.order_event, within=within))

    return AudienceDefinition(
        version=1,
        description=f"active: ordered in the last {span(p.active_within)}; at_risk: in the last "
        f"{span(p.at_risk_within)}; lapsed: ordered before that (seed 000: lifecycle state)",
        states=[
            State(name="active", rule=ordered(p.active_within)),
            State(name="at_risk", rule=ordered(p.at_risk_within)),
            State(name="lapsed", rule=ordered(None)),
        ],
    )


Builder = Callable[[Any], AudienceDefinition]

LIBRARY: dict[str, tuple[type[msgspec.Struct], Builder]] = {
    "high_intent_engagers": (HighIntentParams, high_intent_engagers),
    "fatigue_risk": (FatigueParams, fatigue_risk),
    "cart_abandoners": (CartAbandonParams, cart_abandoners),
    "cart_click_no_purchase": (CartClickParams, cart_click_no_purchase),
    "lapsed_30_60": (_Params, _lapsed(30, 60)),
    "lapsed_60_90": (_Params, _lapsed(60, 90)),
    "lapsed_90_plus": (_Params, _lapsed(90, None)),
    "vip": (VipParams, vip),
    "first_time_buyers": (FirstTimeParams, first_time_buyers),
    "recent_purchasers": (RecentPurchaseParams, recent_purchasers),
    "lifecycle_state": (LifecycleParams, lifecycle_state),
}


class LibraryError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        self.field = field  # "library" or "params.<path>"
        super().__init__(message)


def library_definition(
    name: str, params: Mapping[str, Any] | None = None, version: int = 1
) -> AudienceDefinition:
    """The library's definition of `name`, tuned by `params`; raises `LibraryError` naming the field."""
    if name not in LIBRARY:
        raise LibraryError(
            f"unknown library audience {name!r}; the library has {', '.join(LIBRARY)}", "library"
        )
    kind, build = LIBRARY[name]
    try:
        typed = msgspec.convert(dict(params or {}), kind, dec_hook=dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).rpartition(" - at `")
        if not text:  # an error at the top level of `params` has no path
            text, where = str(exc), ""
        path = where.rstrip("`").removeprefix("$").removeprefix(".")
        if text.startswith("Object contains unknown field"):
            field = text.split("`")[1]
            if path:
                path, text = f"{path}.{field}", "unknown key"
            else:
                path, text = field, f"unknown param; {name} takes {', '.join(kind.__struct_fields__)}"
        field_key = f"params.{path}" if path else "params"
        raise LibraryError(text, field_key) from None
    return msgspec.structs.replace(build(typed), version=version)


def resolve_audiences(
    audiences: Mapping[str, AudienceDefinition], line_for: LineFor = lambda key: None
) -> dict[str, AudienceDefinition]:
    """Expand library references, then check the whole set (`validate_audiences`): the definitions
    that are evaluated and versioned. Errors are `ConfigError`s naming `audiences.<name>.<key>`."""
    resolved: dict[str, AudienceDefinition] = {}
    for name, given in audiences.items():
        if given.library is None:
            resolved[name] = given
            continue
        try:
            base = library_definition(given.library, given.params, given.version)
        except LibraryError as exc:
            key = f"audiences.{name}.{exc.field}"
            raise ConfigError(str(exc), key=key, line=line_near(key, line_for)) from None
        resolved[name] = msgspec.structs.replace(
            base,
            description=given.description or base.description,
            entered_event_name=given.entered_event_name or base.entered_event_name,
            exited_event_name=given.exited_event_name or base.exited_event_name,
            qualifying_values=given.qualifying_values or base.qualifying_values,
            exclude=given.exclude,
            priority_group=given.priority_group,
            priority=given.priority,
        )
    validate_audiences(resolved, line_for)
    return resolved
