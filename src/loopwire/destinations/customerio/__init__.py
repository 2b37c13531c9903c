"""The `customerio` destination: Amplitude (or Segment) events → Customer.io Track API v2, as Amplitude's
Customer.io event stream does it (seed 003), and loopwire's own audience and holdout events as person
attributes and events."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from loopwire.destinations.base import Delivered, Invalid, Memory, Outcome, Response, Retry, Skip
from loopwire.destinations.customerio import api, mapping
from loopwire.destinations.customerio.client import CustomerioClient
from loopwire.destinations.customerio.options import USER_ID, CustomerioOptions
from loopwire.destinations.routing import accepts as route_accepts
from loopwire.model import Event

log = logging.getLogger("loopwire.destinations.customerio")
LEARNED_MAX = 100_000  # identifiers awaiting storage kept in process; beyond this, start over


DEFAULT_SOURCES = frozenset({"amplitude", "segment", "loopwire"})


def takes(options: CustomerioOptions) -> Callable[[Event], bool]:
    """The destination's routing predicate. Sources and kinds as routed; `route.events` selects
    events only (user updates follow `send_users`), so the event selection itself is `mapping.wants`."""
    route = msgspec.structs.replace(options.route, events=None)

    def accepts(event: Event) -> bool:
        return route_accepts(route, DEFAULT_SOURCES, event) and mapping.wants(event, options) is None

    return accepts


class CustomerioDestination:
    default_sources = DEFAULT_SOURCES

    def __init__(
        self,
        name: str,
        options: CustomerioOptions,
        http: httpx.AsyncClient,
        memory: Memory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options
        self.client = CustomerioClient(options, http)
        self.memory = memory
        self._clock = clock
        self.max_events = min(options.batching.max_events, api.MAX_PAYLOADS)
        self.max_bytes = min(options.batching.max_bytes, api.BATCH_MAX_BYTES) - api.ENVELOPE_BYTES
        self.concurrency = options.batching.concurrency
        self.linger = float(options.batching.linger)
        self.retry = options.retry
        self._takes = takes(options)
        self._learned: dict[str, str] = {}  # identifiers seen in mapped events, not yet stored
        site_id, api_key = options.site_id.reveal(), options.api_key.reveal()
        # The Site ID is public (it ships in web snippets); the key and the Basic token are not.
        self._secrets = [base64.b64encode(f"{site_id}:{api_key}".encode()).decode(), api_key]

    def accepts(self, event: Event) -> bool:
        return self._takes(event)

    def recall(self, event: Event) -> mapping.Known:
        """What the mapping needs from memory: the identifier learned for this user or device, and
        the selected user properties last sent to the person it addresses."""
        options = self.options
        identifier: str | None = None
        unsaved = False
        if options.identifier != USER_ID:
            for key in mapping.memory_keys(event):
                if key in self._learned:
                    identifier, unsaved = self._learned[key], True
                    break
                found = self.memory.recall(key)
                if found is not None and isinstance(found.get("identifier"), str):
                    identifier = found["identifier"]
                    break
        sent: dict[str, str] | None = None
        if mapping.recalls_sent(event, options):
            who = mapping.person_for(event, options, identifier)
            if not isinstance(who, Skip):
                found = self.memory.recall(who.key)
                if found is not None and isinstance(found.get("sent"), dict):
                    sent = found["sent"]
        return mapping.Known(identifier, sent, unsaved)

    def map(self, event: Event, now_ms: int) -> dict[str, Any] | Skip | Invalid:
        unwanted = mapping.wants(event, self.options)
        if unwanted is not None:
            return unwanted
        payload = mapping.map_event(event, self.options, now_ms, self.recall(event))
        if isinstance(payload, dict):
            # The identifier is a fact about the Amplitude user, true whether or not Customer.io takes
            # this payload: later events of the same batch need it before it is stored.
            if len(self._learned) >= LEARNED_MAX:
                self._learned.clear()
            for key, value in payload.get("remember", {}).items():
                if "identifier" in value:
                    self._learned[key] = value["identifier"]
        return payload

    def encode(self, payload: dict[str, Any]) -> bytes:
        return mapping.encode_ops(payload)

    async def send(
        self, parts: list[bytes], payloads: list[dict[str, Any]]
    ) -> tuple[Response | None, tuple[Outcome, ...]]:
        op_payload: list[int] = []
        bodies: list[bytes] = []
        memory_only: set[int] = set()
        for index, (part, payload) in enumerate(zip(parts, payloads, strict=True)):
            count = len(payload.get("ops", ()))
            if count:
                bodies.append(part)
                op_payload.extend([index] * count)
            else:
                memory_only.add(index)
        outcomes: tuple[Outcome, ...] = ()
        response: Response | None = None
        if memory_only:
            outcomes = (
                Delivered(frozenset(memory_only), "nothing for Customer.io; remembered for later events"),
            )
        if bodies:
            response, failure = await self.client.post(api.BATCH_HEAD + b",".join(bodies) + api.BATCH_TAIL)
            if response is None:
                outcomes += (Retry(None, failure),)
            else:
                outcomes += api.classify(
                    response.status, response.headers, response.body, len(parts), op_payload
                )
        return response, await self._remember(payloads, outcomes, memory_only)

    async def _remember(
        self, payloads: list[dict[str, Any]], outcomes: tuple[Outcome, ...], memory_only: set[int]
    ) -> tuple[Outcome, ...]:
        """After Customer.io accepted a payload, remember what it carried (in payload order)."""
        delivered = [i for i, o in enumerate(assign(outcomes, len(payloads))) if isinstance(o, Delivered)]
        items: dict[str, dict[str, Any]] = {}
        for index in delivered:
            for key, value in payloads[index].get("remember", {}).items():
                if "sent" in value:
                    current = items.get(key) or self.memory.recall(key) or {}
                    sent = dict(current.get("sent") or {})
                    for name, text in value["sent"].items():
                        if text is None:
                            sent.pop(name, None)
                        else:
                            sent[name] = text
                    items[key] = {"sent": sent}
                else:
                    items[key] = value
        if not items:
            return outcomes
        try:
            await self.memory.remember(items, int(self._clock() * 1000))
        except Exception as exc:
            # Customer.io has the operations; only loopwire's memory is behind. Events that exist
            # only to be remembered are tried again; the others may re-send an unchanged attribute.
            log.warning("%s: could not remember %d keys after delivery: %s", self.name, len(items), exc)
            retry = memory_only & set(delivered)
            if retry:
                reason = f"could not write loopwire's memory: {type(exc).__name__}"
                return (Retry(None, reason, frozenset(retry)), *outcomes)
            return outcomes
        for key, value in items.items():
            if "identifier" in value and self._learned.get(key) == value["identifier"]:
                del self._learned[key]
        return outcomes

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        return None


def assign(outcomes: tuple[Outcome, ...], count: int) -> list[Outcome | None]:
    """Each payload's outcome as the delivery loop reads them: the first naming it, else the rest."""
    assigned: list[Outcome | None] = [None] * count
    rest: Outcome | None = None
    for outcome in outcomes:
        if outcome.indexes is None:
            rest = rest or outcome
            continue
        for index in outcome.indexes:
            if 0 <= index < count and assigned[index] is None:
                assigned[index] = outcome
    return [a if a is not None else rest for a in assigned]
