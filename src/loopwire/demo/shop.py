"""What the demo's shoppers do on the storefront (Segment calls) and in the app (Amplitude events).

Pure and seeded, like the webhooks: `shop_activity` draws from its own random stream, so adding or
changing storefront behaviour never changes a seed's webhooks.

Storefront (the shop's server-side Segment library):
- A customer signs in (`identify`: email, first and last name), views 1–4 products (`Product
  Viewed`) and abandons a cart (`Checkout Started`, with the cart's id, value, item count and
  products). That checkout is what starts the Customer.io journey.
- Shoppers who are not signed-in customers (the profiles with customer id "0" and the email-only
  leads) check out as guests: an `anonymousId` and the email typed at checkout in `context.traits`.
- A shopper the journey persuaded placed an `Order Completed` shortly before Customer.io reported
  the conversion, after a message click: the order carries that click's UTM campaign in
  `context.campaign`. A shopper who buys on their own (held out or not; the scenario's `Plan` says
  when) places an order with no campaign.

App (the Amplitude SDK, signed-in customers only, about half of them):
- The first session identifies the user (`$identify` setting `email` and `plan`) and sends
  `App Opened`; later sessions send `App Opened`, and the last of them identifies again (the
  account screen), with the same plan or, for some, an upgrade to `plus`.

Every call belongs to a round (1: before the journey; 2: the app's first sessions; 3: during the
journey); `runner` plays the rounds in order. Within a round a person sends at most one user-property
update, so "sent only when a selected property changed" has one right answer.
A few calls are sent twice with the same `messageId` / `insert_id`, as the libraries do when an
answer is lost, so deduplication shows on these inputs too.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

if TYPE_CHECKING:
    from loopwire.demo.scenario import Person, Plan

HOUR = 3600
SHOP = "https://shop.example.com"
CURRENCY = "USD"
APP_SHARE = 0.5  # signed-in customers who use the app
PLUS_SHARE = 0.2  # app users already on the `plus` plan
UPGRADE_SHARE = 0.3  # app users on `free` with a later session who upgrade in it
RESEND_SHARE = 0.02  # calls the library sends twice (same id), at least one per input

# (product_id, sku, name, category, price)
CATALOG = (
    ("prd_1001", "TEE-ORG", "Organic Cotton Tee", "Tops", 28.0),
    ("prd_1002", "HOOD-MRN", "Merino Hoodie", "Tops", 89.0),
    ("prd_1003", "JEAN-SLV", "Slim Selvedge Jeans", "Bottoms", 120.0),
    ("prd_1004", "SNKR-WHT", "Court Sneaker White", "Shoes", 95.0),
    ("prd_1005", "SOCK-3PK", "Everyday Socks 3-Pack", "Accessories", 14.0),
    ("prd_1006", "CAP-WOOL", "Wool Cap", "Accessories", 32.0),
    ("prd_1007", "JKT-RAIN", "Packable Rain Jacket", "Outerwear", 139.0),
    ("prd_1008", "TOTE-CNV", "Canvas Tote", "Accessories", 24.0),
)
_PLATFORMS = (("iOS", "ios", "4.12.0"), ("Android", "android", "4.11.2"))


class StoreCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call of the storefront's Segment library."""

    round: int
    person: str  # Person.key
    call: Literal["identify", "track"]
    message_id: str
    timestamp_ms: int
    user_id: str | None  # None: a guest, known by anonymous_id only
    anonymous_id: str
    event: str | None = None  # track only
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}  # identify only
    context: dict[str, Any] = {}
    resend: bool = False  # a second send of a message_id already sent


class AppEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the app's Amplitude SDK; `$identify` sets `user_properties` with `$set`."""

    round: int
    person: str
    event_type: str
    insert_id: str
    time_ms: int
    user_id: str
    device_id: str
    session_id: int
    platform: str
    os_name: str
    app_version: str
    event_properties: dict[str, Any] = {}
    user_properties: dict[str, Any] = {}
    resend: bool = False


def shop_activity(
    persons: Sequence[Person],
    plans: Mapping[str, Plan],
    journeys: Mapping[str, Sequence[dict[str, Any]]],
    seed: int,
    start: int,
    end: int,
) -> tuple[list[StoreCall], list[AppEvent]]:
    """Storefront calls and app events, each list in sending order (by round, then time).

    `plans` say when each person abandoned their cart and whether they buy on their own, `journeys`
    hold the messaged people's webhook bodies. Everything happens before `end`.
    """
    rng = random.Random(f"loopwire-demo-shop:{seed}")
    calls: list[StoreCall] = []
    events: list[AppEvent] = []
    for person in persons:
        plan = plans[person.key]
        shopper = _Shopper(rng, person, plan.abandoned)
        calls.extend(shopper.storefront(journeys.get(person.key, ()), plan.own_order_at, end))
        if person.kind == "customer" and rng.random() < APP_SHARE:
            events.extend(shopper.app(start, end))
    calls = _with_resends(rng, sorted(calls, key=lambda c: (c.round, c.timestamp_ms, c.message_id)))
    events = _with_resends(rng, sorted(events, key=lambda e: (e.round, e.time_ms, e.insert_id)))
    return calls, events


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Shopper:
    def __init__(self, rng: random.Random, person: Person, abandoned: int) -> None:
        self.rng = rng
        self.person = person
        self.abandoned = abandoned
        self.anonymous_id = _uuid(rng)
        self.signed_in = person.kind == "customer"
        self.guest_context = {} if self.signed_in else {"traits": {"email": person.email}}

    def _track(
        self, round_: int, event: str, at_ms: int, properties: dict[str, Any], **context: Any
    ) -> StoreCall:
        return StoreCall(
            round=round_,
            person=self.person.key,
            call="track",
            message_id=_uuid(self.rng),
            timestamp_ms=at_ms,
            user_id=self.person.id if self.signed_in else None,
            anonymous_id=self.anonymous_id,
            event=event,
            properties=properties,
            context={**self.guest_context, **context},
        )

    def storefront(
        self, journey: Sequence[dict[str, Any]], own_order_at: int | None, end: int
    ) -> list[StoreCall]:
        rng, person = self.rng, self.person
        at = (self.abandoned - rng.randrange(10 * 60, 3 * HOUR)) * 1000
        out: list[StoreCall] = []
        if self.signed_in:
            first, last = person.email.split("@")[0].split(".")[:2]
            traits = {"email": person.email, "first_name": first.capitalize(), "last_name": last.capitalize()}
            out.append(
                StoreCall(
                    round=1,
                    person=person.key,
                    call="identify",
                    message_id=_uuid(rng),
                    timestamp_ms=at,
                    user_id=person.id,
                    anonymous_id=self.anonymous_id,
                    traits=traits,
                )
            )
        viewed = rng.sample(CATALOG, rng.randint(1, 4))
        for product_id, sku, name, category, price in viewed:
            at += rng.randrange(20, 600) * 1000
            properties = {
                "product_id": product_id,
                "sku": sku,
                "name": name,
                "category": category,
                "price": price,
                "currency": CURRENCY,
                "url": f"{SHOP}/products/{name.lower().replace(' ', '-')}",
            }
            out.append(self._track(1, "Product Viewed", min(at, self.abandoned * 1000 - 1000), properties))
        products: list[dict[str, Any]] = [
            {"product_id": p, "sku": sku, "name": n, "price": price, "quantity": rng.choice((1, 1, 1, 2))}
            for p, sku, n, _, price in rng.sample(viewed, rng.randint(1, len(viewed)))
        ]
        cart_id = f"cart_{rng.getrandbits(40):010x}"
        cart = {
            "cart_id": cart_id,
            "value": round(sum(p["price"] * p["quantity"] for p in products), 2),
            "currency": CURRENCY,
            "items": sum(p["quantity"] for p in products),
            "products": products,
        }
        checkout = {**cart, "cart_url": f"{SHOP}/cart/recover?cart={cart_id}"}
        out.append(self._track(1, "Checkout Started", self.abandoned * 1000, checkout))
        order_at, campaign = self._order_time(journey, own_order_at, end)
        if order_at is not None:
            order = {
                "order_id": f"ord_{rng.getrandbits(40):010x}",
                "cart_id": cart_id,
                "revenue": cart["value"],
                "currency": CURRENCY,
                "items": cart["items"],
                "products": products,
            }
            extra = {"campaign": campaign} if campaign else {}
            out.append(self._track(3, "Order Completed", order_at, order, **extra))
        return out

    def _order_time(
        self, journey: Sequence[dict[str, Any]], own_order_at: int | None, end: int
    ) -> tuple[int | None, dict[str, str]]:
        """When the order was placed (ms), and the UTM campaign of the click that led to it."""
        rng = self.rng
        converted = next((b for b in journey if b["metric"] == "converted"), None)
        if converted is not None:
            delivery = converted["data"]["delivery_id"]
            click = next(
                b for b in journey if b["metric"] == "clicked" and b["data"]["delivery_id"] == delivery
            )
            # Customer.io reports the conversion when the order event reaches it, seconds later.
            at = converted["timestamp"] - rng.randrange(2, 60)
            return max(at, click["timestamp"] + 1) * 1000, _campaign(click["data"]["href"])
        if own_order_at is not None:  # on their own: no campaign
            return min(own_order_at, end - 60) * 1000, {}
        return None, {}

    def app(self, start: int, end: int) -> list[AppEvent]:
        rng, person = self.rng, self.person
        assert person.id is not None  # only signed-in customers use the app
        platform, os_name, version = rng.choice(_PLATFORMS)
        device_id = _uuid(rng)
        plan = "plus" if rng.random() < PLUS_SHARE else "free"
        at = max(start, self.abandoned + rng.randrange(-6 * HOUR, 6 * HOUR))
        sessions = [at]
        for _ in range(rng.randint(0, 2)):
            at += rng.randrange(4 * HOUR, 20 * HOUR)
            if at < end - 60:
                sessions.append(at)

        def event(round_: int, event_type: str, at_ms: int, session: int, **fields: Any) -> AppEvent:
            return AppEvent(
                round=round_,
                person=person.key,
                event_type=event_type,
                insert_id=_uuid(rng),
                time_ms=at_ms,
                user_id=str(person.id),
                device_id=device_id,
                session_id=session * 1000,
                platform=platform,
                os_name=os_name,
                app_version=version,
                **fields,
            )

        out: list[AppEvent] = []
        for index, session in enumerate(sessions):
            round_ = 2 if index == 0 else 3
            cold = {"cold_start": rng.random() < 0.6}
            out.append(event(round_, "App Opened", session * 1000 + 1200, session, event_properties=cold))
            if index == 0 or index == len(sessions) - 1:
                if index > 0 and plan == "free" and rng.random() < UPGRADE_SHARE:
                    plan = "plus"
                props = {"email": person.email, "plan": plan}
                out.append(event(round_, "$identify", (session + 30) * 1000, session, user_properties=props))
        return out


def _campaign(href: str) -> dict[str, str]:
    """The UTM parameters of a message link as Segment's `context.campaign`."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}
    keys = {"utm_source": "source", "utm_medium": "medium", "utm_campaign": "name", "utm_content": "content"}
    return {name: query[utm] for utm, name in keys.items() if utm in query}


def _with_resends(rng: random.Random, items: list[Any]) -> list[Any]:
    """About `RESEND_SHARE` of the items sent a second time, a little later in the same round."""
    if not items:
        return items
    out = list(items)
    for index in sorted(
        rng.sample(range(len(items)), max(1, round(len(items) * RESEND_SHARE))), reverse=True
    ):
        item = items[index]
        last = max(i for i, other in enumerate(out) if other.round == item.round)
        out.insert(
            min(last + 1, index + 1 + rng.randrange(3, 20)), msgspec.structs.replace(item, resend=True)
        )
    return out
