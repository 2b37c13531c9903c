"""The demo's report, direction by direction, checked against the scenario. `build_report` is pure:
the scenario and what the run observed (dicts) in, one dict out; `render` prints it.

The expectations are worked out from the scenario and the demo's settings, independently of
loopwire's code, so a check fails when loopwire does something other than what its docs promise.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from loopwire.demo import wiring
from loopwire.demo.experiment import amplitude_refused, experiment_section, is_holdout_trait
from loopwire.demo.scenario import Scenario

STATES = ("delivered", "skipped", "dead", "pending", "in_flight")
SKIP_NOTES = {
    wiring.AMPLITUDE: (
        "The email-only people (identifiers.id is null, no device): like Customer.io's native "
        "integration, loopwire sends Amplitude nothing for a person with neither an id nor a device id. "
        'And the holdout trait of the id "0": Amplitude refuses it, and a trait has no email to stand in.'
    ),
    wiring.CUSTOMERIO: (
        "Guests (no user id) are skipped as Amplitude's stream skips anonymous events: with "
        "`identifier: user_id` they have no Customer.io identifier. An update whose selected values "
        "Customer.io already has is not sent again."
    ),
}
ANONYMOUS = "without a user"  # in the customerio destination's skip reason
UNCHANGED = "no selected user property changed"


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}  # the sandboxes' own bookkeeping


def _scalars(properties: dict[str, Any]) -> dict[str, Any]:
    """The selected event properties Customer.io gets: JSON scalars only (arrays/objects are not sent)."""
    return {
        k: v
        for k in wiring.CIO_EVENT_PROPERTIES
        if (v := properties.get(k)) is not None and type(v) in (str, int, float, bool)
    }


def _key(name: str, data: dict[str, Any]) -> str:
    return str(data.get("order_id") if name == "Order Completed" else data.get("cart_id"))


class CioExpected:
    """What the customerio destination should do with the scenario, worked out from its settings."""

    def __init__(self, scenario: Scenario) -> None:
        selected = set(wiring.CIO_USER_PROPERTIES)
        calls = [c for c in scenario.storefront if not c.resend]
        app = [e for e in scenario.app if not e.resend]
        self.events: dict[tuple[str, str, str], dict[str, Any]] = {}  # (user id, name, cart/order id)
        self.anonymous = 0  # routed storefront calls of guests: skipped
        self.routed = 0
        for call in calls:
            touches = bool(
                selected & set(call.traits if call.call == "identify" else call.context.get("traits", {}))
            )
            wanted = call.call == "track" and call.event in wiring.CIO_EVENTS
            if not (wanted or touches):
                continue
            self.routed += 1
            if call.user_id is None:
                self.anonymous += 1
            elif wanted:
                data = _scalars(call.properties)
                self.events[(call.user_id, str(call.event), _key(str(call.event), data))] = data
        # User-property updates in sending order (round, then time), each compared with what was
        # last sent to the person: the rounds are settled, so "last sent" is unambiguous.
        updates: list[tuple[int, int, str, dict[str, Any]]] = [
            (c.round, c.timestamp_ms, str(c.user_id), c.traits) for c in calls if c.call == "identify"
        ]
        updates += [
            (e.round, e.time_ms, e.user_id, e.user_properties) for e in app if e.event_type == "$identify"
        ]
        self.routed += sum(e.event_type == "$identify" for e in app)
        self.people: dict[str, dict[str, str]] = {}
        self.identifies = self.unchanged = 0
        for _, _, user_id, values in sorted(updates, key=lambda u: (u[0], u[1])):
            state = self.people.setdefault(user_id, {})
            changes = {k: str(v) for k, v in values.items() if k in selected and state.get(k) != str(v)}
            if changes:
                self.identifies += 1
                state.update(changes)
            else:
                self.unchanged += 1

    @property
    def delivered(self) -> int:
        return len(self.events) + self.identifies

    @property
    def skipped(self) -> int:
        return self.anonymous + self.unchanged


def _destination(name: str, status: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    states = {s: int(status["destinations"].get(name, {}).get(s, 0)) for s in STATES}
    return {
        "routed": sum(states.values()),
        **states,
        "retried": seen["retried"],
        "requests_by_status": seen["requests_by_status"],
        "skip_reasons": [r for r in status["skip_reasons"] if r["destination"] == name],
        "dead_reasons": [r for r in status["dead_reasons"] if r["destination"] == name],
        "dead_letters": [
            {
                "event_id": d["event_id"],
                "event": d["name"] or (f"{d['channel']} {d['metric']}" if d["channel"] else "identify"),
                "attempts": d["attempts"],
                "reason": d["reason"],
                "response": (d["response"] or "")[:300],
            }
            for d in seen["dead_letters"]
        ],
        "note": wiring.FAULT_NOTES[name],
    }


def _skipped(dest: dict[str, Any], fragment: str) -> int:
    return sum(r["count"] for r in dest["skip_reasons"] if fragment in r["reason"])


def _first(items: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for item in items:
        if all(item.get(k) == v for k, v in match.items()):
            return _strip(item)
    return None


def build_report(
    scenario: Scenario, observed: dict[str, Any], *, seed: int, folder: str | None, seconds: float
) -> dict[str, Any]:
    expected = scenario.expected
    status, ingest = observed["status"], observed["ingest"]
    hooks, shop, app = observed["webhooks"], observed["storefront"], observed["app"]
    dests = {name: _destination(name, status, observed["destinations"][name]) for name in wiring.DESTINATIONS}
    amp, cio, seg = dests[wiring.AMPLITUDE], dests[wiring.CUSTOMERIO], dests[wiring.SEGMENT]
    amp_events: list[dict[str, Any]] = observed["amplitude_events"]
    cio_people: list[dict[str, Any]] = observed["customerio_people"]
    cio_events: list[dict[str, Any]] = observed["customerio_events"]
    cio_ops: list[dict[str, Any]] = observed["customerio_operations"]
    seg_messages: list[dict[str, Any]] = observed["segment_messages"]
    want = CioExpected(scenario)
    # loopwire's engine writes one identify per assigned id (the trait holdout_cart_journey), and it
    # routes to every destination like any other event.
    assigned = len(expected.assignments)

    # Amplitude: the app's events must arrive exactly as the SDK sent them.
    app_bodies: dict[str, dict[str, Any]] = observed["app_bodies"]
    forwarded = [e for e in amp_events if e.get("insert_id") in app_bodies]
    unchanged = sum(_strip(e) == app_bodies[e["insert_id"]] for e in forwarded)
    dead_ids = {d["event_id"] for d in amp["dead_letters"]}
    app_dead = len(dead_ids & set(app_bodies))
    deliverable = expected.events - expected.skipped + expected.app_events
    expected_dead = wiring.ARRANGED_DEAD if deliverable > 0 else 0

    # Customer.io: events by (user id, name, cart/order id) with their data; people by id.
    by_cio_id = {p["cio_id"]: p for p in cio_people}
    got: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in cio_events:
        person = by_cio_id.get(event["person"]) or {}
        got[(str(person.get("id")), event["name"], _key(event["name"], event["data"]))] = event["data"]
    people = {str(p["id"]): p for p in cio_people if p.get("id") is not None}

    def holds(user_id: str, values: dict[str, str]) -> bool:
        person = people.get(user_id)
        if person is None:
            return False
        have = {**person["attributes"], "email": person["email"]}
        return all(have.get(k) == v for k, v in values.items())

    operations = Counter(str(op.get("action")) for op in cio_ops)

    # The holdout: no messages, so no engagement anywhere; their shopping still flows.
    held = [p for p in scenario.people if p.holdout]
    held_keys = {p.key for p in held}
    held_ids = {p.id for p in held if p.kind == "customer"} | {p.email for p in held if p.kind == "zero_id"}
    held_emails = {p.email for p in held}
    held_webhooks = sum(w.person in held_keys for w in scenario.webhooks)
    held_amplitude = sum(
        e.get("user_id") in held_ids
        for e in amp_events
        if e.get("insert_id") not in app_bodies and not is_holdout_trait(e)
    )
    held_segment = sum(
        ((m.get("context") or {}).get("traits") or {}).get("email") in held_emails for m in seg_messages
    )
    held_checkouts = {
        p.id
        for p in held
        if p.kind == "customer" and any(k[0] == p.id and k[1] == "Checkout Started" for k in got)
    }
    held_customers = sum(p.kind == "customer" for p in held)
    orders = [c for c in scenario.storefront if c.event == "Order Completed" and not c.resend]

    def settled(dest: dict[str, Any]) -> bool:
        return dest["pending"] + dest["in_flight"] == 0 and observed["settled"] is True

    lift, lift_checks = experiment_section(scenario, observed, dead_ids)
    checks = {
        "every webhook was answered 200": hooks["refused"] == 0,
        "webhooks: accepted = distinct events, duplicates = redeliveries": (
            hooks["accepted"] == expected.events and hooks["duplicates"] == expected.redeliveries
        ),
        "storefront (Segment library): every message taken once, resends deduplicated": (
            ingest["segment"]["accepted"] == expected.store_messages
            and ingest["segment"]["duplicates"] == expected.store_resends
            and ingest["segment"]["refused"] == 0
            and shop["failed"] == 0
        ),
        "app (Amplitude SDK): every event answered 200, taken once, resends deduplicated": (
            app["answered_200"] == expected.app_calls
            and ingest["amplitude"]["accepted"] == expected.app_events
            and ingest["amplitude"]["duplicates"] == expected.app_resends
        ),
        "the log holds each event once (and one holdout trait per assigned id)": (
            status["events"] == expected.events + expected.store_messages + expected.app_events + assigned
        ),
        "delivery settled everywhere (nothing pending or in flight)": all(settled(d) for d in dests.values()),
        "amplitude took every Customer.io, app and holdout-trait event: delivered + skipped + dead": (
            amp["routed"] == expected.events + expected.app_events + assigned
            and amp["delivered"] + amp["skipped"] + amp["dead"] == amp["routed"]
        ),
        "amplitude skipped = the email-only people's events, and the trait of id 0": (
            amp["skipped"] == expected.skipped + len(amplitude_refused(scenario))
        ),
        "amplitude dead-lettered = the one event the sandbox refused": amp["dead"] == expected_dead,
        "Amplitude holds each delivered event once": len(amp_events) == amp["delivered"],
        "the app's events reached Amplitude unchanged (all but a dead letter)": (
            unchanged == len(forwarded) == expected.app_events - app_dead
        ),
        "customerio took the selected events, every user update and holdout trait: delivered + skipped": (
            cio["routed"] == want.routed + assigned
            and cio["delivered"] == want.delivered + assigned
            and cio["skipped"] == want.skipped
            and cio["dead"] == 0
        ),
        "every Checkout Started and Order Completed of a signed-in shopper reached Customer.io, "
        "with the selected properties only": got == want.events and len(cio_events) == len(want.events),
        "every Order Completed of a shopper with an id is in Customer.io": (
            {k for k in want.events if k[1] == "Order Completed"} <= set(got)
        ),
        "guests' events were skipped (no user id: no Customer.io identifier)": (
            _skipped(cio, ANONYMOUS) == want.anonymous
        ),
        "identify only when a selected property changed (plus one per holdout trait)": (
            operations["identify"] == want.identifies + assigned
            and _skipped(cio, UNCHANGED) == want.unchanged
        ),
        "Customer.io holds each person's latest email, first name and plan": all(
            holds(user_id, values) for user_id, values in want.people.items()
        ),
        "segment took every Customer.io event and holdout trait, and Segment holds each once": (
            seg["routed"] == seg["delivered"] == expected.events + assigned
            and len(seg_messages) == seg["delivered"]
            and not observed["segment_dropped"]
        ),
        "the holdout got no message: no webhook, no engagement in Amplitude or Segment": (
            held_webhooks == 0 and held_amplitude == 0 and held_segment == 0
        ),
        "the holdout's own shopping still reached Customer.io": len(held_checkouts) == held_customers,
        **lift_checks,
    }
    return {
        "ok": all(checks.values()),
        "seconds": round(seconds, 2),
        "scenario": {
            "people": expected.people,
            "seed": seed,
            "holdout_people": expected.holdout,
            "customer_id_0_people": expected.zero_id_people,
            "email_only_people": expected.email_only_people,
            "app_users": len({e.person for e in scenario.app}),
            "events": expected.events,
            "machine_opens": expected.machine_opens,
            "events_by_kind": dict(sorted(expected.by_pair.items())),
            "storefront_by_event": expected.by_store_event,
            "app_by_event": expected.by_app_event,
            "orders": len(orders),
            "orders_after_a_click": sum("campaign" in c.context for c in orders),
            "orders_on_their_own": sum("campaign" not in c.context for c in orders),
            "orders_by_guests": sum(c.user_id is None for c in orders),
        },
        "inputs": _inputs(hooks, shop, app, ingest),
        "log": {
            "events": status["events"],
            "by_source": {
                **{k: v["accepted"] for k, v in ingest.items()},
                # loopwire's own events: what the log holds beyond the inputs (the holdout traits)
                "loopwire": status["events"] - sum(v["accepted"] for v in ingest.values()),
            },
        },
        "destinations": {
            wiring.AMPLITUDE: {
                **amp,
                "skip_note": SKIP_NOTES[wiring.AMPLITUDE],
                "sandbox": {
                    "events": len(amp_events),
                    "by_event_type": dict(
                        Counter(str(e.get("event_type")) for e in amp_events).most_common()
                    ),
                    "from_the_app": len(forwarded),
                    "from_the_app_unchanged": unchanged,
                },
            },
            wiring.CUSTOMERIO: {
                **cio,
                "skip_note": SKIP_NOTES[wiring.CUSTOMERIO],
                "sandbox": {
                    "people": len(cio_people),
                    "events": len(cio_events),
                    "events_by_name": dict(Counter(str(e["name"]) for e in cio_events).most_common()),
                    "operations_by_action": dict(operations.most_common()),
                    "people_by_plan": dict(
                        Counter(str(p["attributes"].get("plan", "not set")) for p in cio_people).most_common()
                    ),
                },
            },
            wiring.SEGMENT: {
                **seg,
                "sandbox": {
                    "messages": len(seg_messages),
                    "by_event": dict(
                        Counter(str(m.get("event") or m.get("type")) for m in seg_messages).most_common()
                    ),
                    "dropped": len(observed["segment_dropped"]),
                },
            },
        },
        "holdout": {
            "people": len(held),
            "share": round(len(held) / max(1, expected.people), 3),
            "webhooks": held_webhooks,
            "engagement_in_amplitude": held_amplitude,
            "engagement_in_segment": held_segment,
            "checkouts_in_customerio": len(held_checkouts),
            "orders": sum(c.person in held_keys for c in orders),
        },
        "examples": _examples(amp_events, app_bodies, cio_ops, seg_messages),
        "checks": checks,
        "folder": folder,
        "lift": lift,
    }


def _inputs(
    hooks: dict[str, Any], shop: dict[str, Any], app: dict[str, Any], ingest: dict[str, Any]
) -> dict[str, Any]:
    return {
        "customerio_webhooks": {
            "client": "signed HTTP requests, 8 in flight, as Customer.io sends them",
            "endpoint": "POST /webhooks/customerio",
            **hooks,
        },
        "segment_api": {
            "client": "the official Segment Python library (segment-analytics-python)",
            "endpoint": "POST /v1/batch",
            "sent": shop["sent"],
            **ingest["segment"],
            "failed": shop["failed"],
            "errors": shop["errors"],
        },
        "amplitude_api": {
            "client": "the official Amplitude Python SDK (amplitude-analytics)",
            "endpoint": "POST /2/httpapi",
            "sent": app["sent"],
            **ingest["amplitude"],
            "failed": app["failed"] + app["unanswered"],
            "errors": app["errors"],
        },
    }


def _examples(
    amp_events: list[dict[str, Any]],
    app_bodies: dict[str, dict[str, Any]],
    cio_ops: list[dict[str, Any]],
    seg_messages: list[dict[str, Any]],
) -> dict[str, Any]:
    """One payload per flow, as the receiving side got it."""
    app_in_amplitude = [e for e in amp_events if e.get("insert_id") in app_bodies]
    plan_update = next(
        (op for op in cio_ops if op.get("action") == "identify" and "plan" in op["attributes"]), None
    )
    found = {
        "Customer.io webhooks → Amplitude": _first(amp_events, event_type="Email Clicked"),
        "app (Amplitude SDK) → Amplitude, unchanged": _first(app_in_amplitude, event_type="App Opened"),
        "storefront (Segment library) → Customer.io": _first(cio_ops, action="event", name="Order Completed"),
        "app (Amplitude SDK) → Customer.io": plan_update,
        "loopwire's holdout assignment → Customer.io": next(
            (
                op
                for op in cio_ops
                if op.get("action") == "identify" and wiring.HOLDOUT_TRAIT in op["attributes"]
            ),
            None,
        ),
        "Customer.io webhooks → Segment": _first(seg_messages, event="Email Link Clicked"),
    }
    return {flow: example for flow, example in found.items() if example is not None}
