"""A D2C cart-abandonment journey as Customer.io reporting-webhook bodies (customerio.md §1.3–1.5).

Pure and seeded: the same `(people, seed, start)` gives the same bodies, byte for byte.

The journey is seed 000's: a shopper abandons a cart; an SMS goes out after 1 h (to shoppers with a
phone number), an email after 20 h and a "last call" email after 48 h. A shopper who clicks and then
buys converts and leaves the journey; so does one who buys on their own (Customer.io's exit
condition), and a hard bounce or an unsubscribe ends it too. The 10 % holdout is loopwire's
experiment `cart_journey`: the group is `loopwire.audiences.holdouts.assign(user id, salt, 10)`, the
very function loopwire's engine applies, so the journey (which branches on the holdout attribute)
and loopwire's stored assignment agree. A held-out shopper gets nothing, so Customer.io reports
nothing for them. People without a user id are not in the experiment and get the journey. Opens come
as Customer.io reports them with "first occurrence only" (the default): one open per message, Apple
Mail Privacy Protection opens flagged `prefetched` and `proxied`, an open inferred from a click
flagged `synthetic`.

The scenario has a known true lift. Every shopper buys on their own with probability `BASE_RATE`
(12 %), at a random moment within 13 days of abandoning, messages or not. Of the treated shoppers who
would not, the journey persuades `PERSUADED_SHARE` (1 in 11): they click a message and buy. So a
treated shopper buys with probability `TREATED_RATE` (20 %), a held-out one with 12 %: the journey
causes +8 percentage points, +66.7 %. Every draw is seeded.

People who exercise the mapping's identity rules are mixed in: a few profiles with customer id `"0"`
(Amplitude refuses that id, so their email stands in) and a few email-only leads (`identifiers.id` is
null: no id and no device id, so the Amplitude mapping skips them). A few events are sent twice with
the same `event_id`, as Customer.io does when a delivery timed out, so deduplication shows.

The same shoppers' storefront calls (Segment) and app events (Amplitude) come from `shop`, drawn
from a random stream of their own, so they never change a seed's webhooks.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Literal

import msgspec
from ulid import ULID

from loopwire.audiences.holdouts import Group, assign
from loopwire.demo.shop import AppEvent, StoreCall, shop_activity

HOUR = 3600
DAY = 24 * HOUR
EXPERIMENT_ID = "cart_journey"  # loopwire's experiment (demo.yaml); the trait is holdout_cart_journey
HOLDOUT_PERCENT = 10.0
HOLDOUT_SHARE = HOLDOUT_PERCENT / 100
# A new salt draws a new holdout; keep it for the life of a test. With this one, the placeholder id
# "0" (shared by the zero-id profiles) is in treatment, so the demo shows Amplitude's id-0 rule.
HOLDOUT_SALT = "cart_abandon_v1"
BASE_RATE = 0.12  # shoppers who buy on their own within 13 days of abandoning, messaged or not
TREATED_RATE = 0.20  # treated shoppers who buy: on their own, or persuaded by the journey
PERSUADED_SHARE = (TREATED_RATE - BASE_RATE) / (1 - BASE_RATE)  # of treated shoppers who would not buy
OWN_ORDER_AFTER = (2 * HOUR, 13 * DAY)  # an order on their own comes this long after the checkout
CAMPAIGN_ID = 87
SMS_ACTION, EMAIL_ACTION, LAST_CALL_ACTION = 301, 302, 305
SHOP = "https://shop.example.com"
SUBJECT = "You left something behind"
LAST_CALL_SUBJECT = "Last call: your cart expires tonight"
SPAN = 20 * HOUR  # carts are abandoned over this long, from `start`
DURATION = SPAN + OWN_ORDER_AFTER[1]  # every event happens before start + DURATION (the journey: 56 h)

_FIRST = ("ada", "grace", "alan", "linus", "maya", "omar", "lena", "kenji", "sofia", "noah", "ines", "ravi")
_LAST = ("lovelace", "hopper", "turing", "okafor", "silva", "novak", "tanaka", "haddad", "berg", "moreau")
_BOUNCES = (
    "550 5.1.1 The email account that you tried to reach does not exist",
    "552 5.2.2 The recipient's mailbox is full and can't accept messages now",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
)
_SMS_FAILURES = (
    "Twilio error 30003: Unreachable destination handset",
    "Twilio error 30006: Landline or unreachable carrier",
)
_ALPHANUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

Kind = Literal["customer", "zero_id", "email_only"]


class Person(msgspec.Struct, frozen=True):
    key: str  # stable handle: identifiers.id, or cio_id when the id is "0" or null
    id: str | None  # identifiers.id as Customer.io sends it
    email: str
    cio_id: str
    phone: str | None  # None: no SMS consent, so no SMS step
    kind: Kind
    holdout: bool  # held out of the journey: their id is in the experiment's holdout


class Plan(msgspec.Struct, frozen=True):
    """What a shopper does, drawn before anything is sent (unix seconds)."""

    abandoned: int  # the checkout that starts the journey
    own_order_at: int | None  # they buy on their own then (BASE_RATE), messaged or not
    persuaded: bool  # treated, would not buy on their own, and the journey wins them: click, then buy


class Webhook(msgspec.Struct, frozen=True):
    body: dict[str, Any]  # one reporting-webhook body, Customer.io's documented shape
    person: str  # Person.key
    redelivery: bool = False  # a second delivery of an event_id already sent


class Expected(msgspec.Struct, frozen=True):
    """What the scenario holds, so a run can check itself."""

    people: int
    holdout: int
    zero_id_people: int
    email_only_people: int
    webhooks: int  # requests, redeliveries included
    events: int  # distinct event_ids
    redeliveries: int
    skipped: int  # events of email-only people: no id and no device id
    machine_opens: int
    by_pair: dict[str, int]  # "email opened" → distinct events
    store_calls: int  # storefront Segment calls, resends included
    store_messages: int  # distinct messageIds
    store_resends: int
    app_calls: int  # app Amplitude events, resends included
    app_events: int  # distinct insert_ids
    app_resends: int
    by_store_event: dict[str, int]  # "identify", "Product Viewed", ... → distinct messages
    by_app_event: dict[str, int]  # "$identify", "App Opened" → distinct events
    assignments: dict[str, Group]  # every user id loopwire sees → its experiment group


class Scenario(msgspec.Struct, frozen=True):
    people: list[Person]
    plans: dict[str, Plan]  # by Person.key
    webhooks: list[Webhook]
    storefront: list[StoreCall]  # in sending order: by round, then time
    app: list[AppEvent]
    expected: Expected


def group_of(user_id: str) -> Group:
    """The experiment group of a user id: loopwire's own rule (docs/lift.md), not a copy of it."""
    return assign(user_id, HOLDOUT_SALT, HOLDOUT_PERCENT)


def in_holdout(user_id: str | None) -> bool:
    """Is this person held out of the journey? Only a person with a user id is in the experiment."""
    return user_id is not None and group_of(user_id) == "holdout"


def build_scenario(people: int, seed: int, start: int) -> Scenario:
    """`people` shoppers abandon a cart between `start` and `start` + 20 h (unix seconds)."""
    if people < 1:
        raise ValueError("people must be at least 1")
    rng = random.Random(seed)
    persons = _people(rng, people)
    plans = {person.key: _plan(rng, person, start) for person in persons}
    bodies: list[tuple[dict[str, Any], str]] = []
    journeys: dict[str, list[dict[str, Any]]] = {}
    for person in persons:
        if not person.holdout:
            journeys[person.key] = _Journey(rng, person, plans[person.key]).play()
            bodies.extend((body, person.key) for body in journeys[person.key])
    bodies.sort(key=lambda item: (item[0]["timestamp"], item[0]["event_id"]))
    webhooks = [Webhook(body, key) for body, key in bodies]
    # Customer.io retries a delivery that got no 2xx within 4 s (customerio.md §1.1); the retry
    # arrives later, same event_id. About 2 % of events, at least one.
    chosen = sorted(rng.sample(range(len(bodies)), max(1, len(bodies) // 50))) if bodies else []
    for index in reversed(chosen):
        body, key = bodies[index]
        webhooks.insert(min(len(webhooks), index + 1 + rng.randrange(5, 40)), Webhook(body, key, True))
    storefront, app = shop_activity(persons, plans, journeys, seed, start, start + DURATION)
    return Scenario(persons, plans, webhooks, storefront, app, _expect(persons, webhooks, storefront, app))


def _plan(rng: random.Random, person: Person, start: int) -> Plan:
    abandoned = start + rng.randrange(SPAN)
    own = rng.random() < BASE_RATE
    own_order_at = abandoned + rng.randrange(*OWN_ORDER_AFTER) if own else None
    persuaded = not person.holdout and not own and rng.random() < PERSUADED_SHARE
    return Plan(abandoned, own_order_at, persuaded)


def _people(rng: random.Random, count: int) -> list[Person]:
    zero = set(rng.sample(range(count), min(count, max(1, count // 60))))
    rest = [i for i in range(count) if i not in zero]
    email_only = set(rng.sample(rest, min(len(rest), max(1, count // 25))))
    numbers = rng.sample(range(100_000, 1_000_000), count)
    persons: list[Person] = []
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}.{numbers[i]}@example.com"  # unique: Customer.io keys people by email
        cio_id = f"{rng.getrandbits(48):012x}"
        kind: Kind = "zero_id" if i in zero else "email_only" if i in email_only else "customer"
        person_id = {"customer": f"cust_{numbers[i]}", "zero_id": "0", "email_only": None}[kind]
        has_phone = kind == "customer" and rng.random() < 0.7
        phone = f"+1555{rng.randrange(10**6, 10**7)}" if has_phone else None
        key = person_id if kind == "customer" and person_id is not None else cio_id
        persons.append(Person(key, person_id, email, cio_id, phone, kind, in_holdout(person_id)))
    return persons


class _Journey:
    """One treated shopper's path through the campaign; `play()` returns their webhook bodies.

    A persuaded shopper clicks one of the messages they get (chosen up front) and buys after the
    click; their messages before it neither bounce nor unsubscribe, so the persuasion the plan drew
    always happens. Other clicks convert nobody. A shopper who buys on their own leaves the journey
    then: no message is sent after their order.
    """

    def __init__(self, rng: random.Random, person: Person, plan: Plan) -> None:
        self.rng = rng
        self.person = person
        self.plan = plan
        self.abandoned = plan.abandoned
        self.common: dict[str, Any] = {
            "customer_id": person.id if person.id is not None else "",
            "identifiers": {"id": person.id, "email": person.email, "cio_id": person.cio_id},
            "campaign_id": CAMPAIGN_ID,
            "journey_id": self._ulid(self.abandoned),
            "trigger_event_id": self._ulid(self.abandoned),  # the shop's cart_abandoned event
        }
        self.out: list[dict[str, Any]] = []
        steps = (SMS_ACTION,) * (person.phone is not None) + (EMAIL_ACTION, LAST_CALL_ACTION)
        self.persuading = rng.choice(steps) if plan.persuaded else None  # the step whose click converts

    def play(self) -> list[dict[str, Any]]:
        if self.person.phone is not None and self._sms():
            return self.out
        if self._email(EMAIL_ACTION, SUBJECT, 20 * HOUR, last_call=False):
            return self.out
        self._email(LAST_CALL_ACTION, LAST_CALL_SUBJECT, 48 * HOUR, last_call=True)
        return self.out

    def _bought_by(self, at: int) -> bool:
        """Has the shopper bought on their own by `at`? Customer.io's exit condition then ends it."""
        return self.plan.own_order_at is not None and self.plan.own_order_at <= at

    def _may_fail(self) -> bool:
        """A persuaded shopper's messages up to the persuading one reach them (no bounce, no unsubscribe)."""
        return self.persuading is None

    def _ulid(self, seconds: int) -> str:
        return str(ULID.from_bytes((seconds * 1000).to_bytes(6, "big") + self.rng.randbytes(10)))

    def _emit(self, object_type: str, metric: str, at: int, fields: dict[str, Any]) -> None:
        data = {**self.common, **fields}
        body = {"event_id": self._ulid(at), "object_type": object_type, "metric": metric, "timestamp": at}
        self.out.append({**body, "data": data})

    def _link(self, channel: str, action: int) -> tuple[str, int]:
        link_id = 1 if channel == "sms" else self.rng.choice((1, 1, 1, 2, 3))
        path = {1: "/cart/recover", 2: "/products/bestsellers", 3: "/pages/free-returns"}[link_id]
        query = f"utm_source=customerio&utm_medium={channel}&utm_campaign=cart_abandon&utm_content={action}"
        return f"{SHOP}{path}?{query}", link_id

    def _delivery_id(self) -> str:
        return "RPI" + "".join(self.rng.choice(_ALPHANUM) for _ in range(25))

    def _sms(self) -> bool:
        """The 1 h SMS; True when the journey ends here (the shopper bought)."""
        rng = self.rng
        at = self.abandoned + HOUR + rng.randrange(60)
        if self._bought_by(at):
            return True
        persuades = self.persuading == SMS_ACTION
        fields = {"delivery_id": self._delivery_id(), "action_id": SMS_ACTION, "recipient": self.person.phone}
        self._emit("sms", "sent", at, fields)
        at += rng.randrange(2, 30)
        if rng.random() < 0.04 and self._may_fail():
            self._emit("sms", "bounced", at, {**fields, "failure_message": rng.choice(_SMS_FAILURES)})
            return False
        self._emit("sms", "delivered", at, fields)
        if rng.random() >= 0.14 and not persuades:
            return False
        at += rng.randrange(60, 90 * 60)
        href, link_id = self._link("sms", SMS_ACTION)
        self._emit("sms", "clicked", at, {**fields, "href": href, "link_id": link_id})
        if not persuades:
            return False
        self._emit("sms", "converted", at + rng.randrange(5 * 60, HOUR), fields)
        return True

    def _email(self, action: int, subject: str, delay: int, *, last_call: bool) -> bool:
        """One email step; True when the journey ends here (bought, bounced or unsubscribed)."""
        rng = self.rng
        at = self.abandoned + delay + rng.randrange(120)
        if self._bought_by(at):
            return True
        persuades = self.persuading == action
        fields = {
            "delivery_id": self._delivery_id(),
            "action_id": action,
            "recipient": self.person.email,
            "subject": subject,
        }
        self._emit("email", "sent", at, fields)
        at += rng.randrange(1, 20)
        # a hard bounce suppresses the address from then on
        if not last_call and rng.random() < 0.04 and self._may_fail():
            self._emit("email", "bounced", at, {**fields, "failure_message": rng.choice(_BOUNCES)})
            return True
        self._emit("email", "delivered", at, fields)
        seen = at  # the last time the shopper was seen on this message
        opened = False
        if rng.random() < 0.35:  # Apple Mail Privacy Protection fetches the pixel within seconds
            flags = {"proxied": True, "prefetched": True, "synthetic": False}
            self._emit("email", "opened", at + rng.randrange(1, 120), {**fields, **flags})
            opened = True
        human_open = rng.random() < 0.30 or persuades
        if human_open:
            seen = at + rng.randrange(5 * 60, 6 * HOUR)
            if not opened:  # "first occurrence only": a human open after an MPP fetch is not reported
                flags = {"proxied": False, "prefetched": False, "synthetic": False}
                self._emit("email", "opened", seen, {**fields, **flags})
                opened = True
        if last_call and rng.random() < 0.03 and self._may_fail():
            self._emit("email", "unsubscribed", seen + rng.randrange(30, 600), fields)
            return True
        if rng.random() >= (0.35 if human_open else 0.04) and not persuades:
            return False
        at = seen + rng.randrange(20, 30 * 60)
        if not opened:  # a click proves an open the pixel missed
            flags = {"proxied": False, "prefetched": False, "synthetic": True}
            self._emit("email", "opened", at, {**fields, **flags})
        href, link_id = self._link("email", action)
        self._emit("email", "clicked", at, {**fields, "href": href, "link_id": link_id, "machine": False})
        if not persuades:
            return False
        self._emit("email", "converted", at + rng.randrange(5 * 60, HOUR), fields)
        return True


def _expect(
    persons: list[Person], webhooks: list[Webhook], storefront: list[StoreCall], app: list[AppEvent]
) -> Expected:
    originals = [w for w in webhooks if not w.redelivery]
    calls = [c for c in storefront if not c.resend]
    events = [e for e in app if not e.resend]
    email_only = {p.key for p in persons if p.kind == "email_only"}
    # loopwire's engine assigns every user id it sees: the signed-in customers (the storefront), and
    # the placeholder id "0" of the zero-id profiles when Customer.io reports on them (their storefront
    # calls are a guest's). A person with no id is never assigned.
    seen = {c.user_id for c in calls} | {e.user_id for e in events}
    seen |= {w.body["data"]["identifiers"]["id"] for w in originals}
    return Expected(
        people=len(persons),
        holdout=sum(p.holdout for p in persons),
        zero_id_people=sum(p.kind == "zero_id" for p in persons),
        email_only_people=len(email_only),
        webhooks=len(webhooks),
        events=len(originals),
        redeliveries=len(webhooks) - len(originals),
        skipped=sum(w.person in email_only for w in originals),
        machine_opens=sum(w.body["data"].get("prefetched") is True for w in originals),
        by_pair=dict(Counter(f"{w.body['object_type']} {w.body['metric']}" for w in originals)),
        store_calls=len(storefront),
        store_messages=len(calls),
        store_resends=len(storefront) - len(calls),
        app_calls=len(app),
        app_events=len(events),
        app_resends=len(app) - len(events),
        by_store_event=dict(Counter(c.event or c.call for c in calls)),
        by_app_event=dict(Counter(e.event_type for e in events)),
        assignments={user_id: group_of(user_id) for user_id in sorted(i for i in seen if i is not None)},
    )
