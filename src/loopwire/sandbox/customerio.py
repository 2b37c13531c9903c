"""A local Customer.io Track API that keeps Customer.io's documented contract, with fault controls.

    sb = CustomerioSandbox(credentials={"site-1": "track-key-1"})
    uvicorn.run(sb.app, port=8788)   # then send Track calls to http://127.0.0.1:8788/api/v1/...

The rules (identifiers, limits, bodies) live in `contracts.customerio`; this module holds the state (people,
events, event-id memory, suppressions, the request rate window, queued faults) and the HTTP layer.
See docs/sandbox.md for every endpoint, fault and each choice made where the reference is unconfirmed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import http
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loopwire import jsonsafe
from loopwire.contracts.customerio import (
    ANONYMOUS_MERGE_SECONDS,
    ATTRIBUTES_MAX,
    BATCH_MAX_BYTES,
    ENTITY_MAX_BYTES,
    RATE_LIMIT,
    SUBSCRIPTION_PREFERENCES,
    V1_MAX_BYTES,
    AddDevice,
    Delete,
    DeleteDevice,
    Identify,
    Op,
    Problem,
    Suppress,
    Track,
    Unmodelled,
    Who,
    check_op,
    check_v1_device,
    check_v1_event,
    check_v1_identify,
    is_json_media,
    op_size_problem,
    v1_error,
    v1_problems,
    v2_error,
    v2_partial,
    who_from_path,
)
from loopwire.errors import InputError
from loopwire.httpio import json_response
from loopwire.sandbox.control import fault_queue

CONTROL = "/_sandbox/customerio"
Endpoint = Literal[
    "identify", "delete", "event", "anonymous_event", "device", "suppress", "region", "entity", "batch"
]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_REGION_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


class FaultRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One queued fault; the first pending rule matching a request is used, `times` times."""

    status: int | None = None
    fail_batch_indexes: list[NonNegative] | None = None  # forces a 207 on /api/v2/batch
    slow_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    times: Annotated[int, msgspec.Meta(ge=1)] = 1
    endpoint: Endpoint | Literal["any"] = "any"
    retry_after: NonNegative | None = None
    error: str | None = None  # replaces the message of a status answer

    def problem(self) -> str | None:
        if self.status is not None and self.fail_batch_indexes is not None:
            return "a rule takes one of status, fail_batch_indexes"
        if self.status is None and self.fail_batch_indexes is None and self.slow_ms is None:
            return "a rule needs status, fail_batch_indexes or slow_ms"
        if self.status is not None and not (400 <= self.status <= 599 and _known(self.status)):
            return "status must be an HTTP error status (400-599)"
        if self.fail_batch_indexes is not None and not self.fail_batch_indexes:
            return "fail_batch_indexes must name at least one index"
        if self.fail_batch_indexes is not None and self.endpoint not in ("any", "batch"):
            return "fail_batch_indexes applies to the batch endpoint only"
        if self.retry_after is not None and self.status is None:
            return "retry_after goes with status"
        return None

    def matches(self, endpoint: Endpoint) -> bool:
        if self.fail_batch_indexes is not None and endpoint != "batch":
            return False
        return self.endpoint in ("any", endpoint)


def _known(status: int) -> bool:
    try:
        http.HTTPStatus(status)
    except ValueError:
        return False
    return True


async def _read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body, or (b"", True) once it passes `limit` (the rest is drained, not kept)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
    return (b"", True) if size > limit else (b"".join(chunks), False)


def _raw_segments(request: Request) -> list[str]:
    """Path segments still percent-encoded, so `user%2Fwith%2Fslashes` stays one segment (§2.4)."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    return raw.decode("latin-1").split("?", 1)[0].split("/")[1:]


def _route(method: str, parts: list[str]) -> tuple[Endpoint | None, dict[str, str], bool]:
    """(endpoint, still-encoded path params, whether the path is known) for a Track API path."""
    match parts:
        case ["api", "v1", "customers", ident]:
            return _pick(method, {"PUT": "identify", "DELETE": "delete"}), {"identifier": ident}, True
        case ["api", "v1", "customers", ident, "events"]:
            return _pick(method, {"POST": "event"}), {"identifier": ident}, True
        case ["api", "v1", "customers", ident, "devices"]:
            return _pick(method, {"PUT": "device"}), {"identifier": ident}, True
        case ["api", "v1", "customers", ident, "devices", device]:
            return _pick(method, {"DELETE": "device"}), {"identifier": ident, "device_id": device}, True
        case ["api", "v1", "customers", ident, ("suppress" | "unsuppress") as what]:
            return _pick(method, {"POST": "suppress"}), {"identifier": ident, "what": what}, True
        case ["api", "v1", "events"]:
            return _pick(method, {"POST": "anonymous_event"}), {}, True
        case ["api", "v1", "accounts", "region"]:
            return _pick(method, {"GET": "region"}), {}, True
        case ["api", "v2", "entity"]:
            return _pick(method, {"POST": "entity"}), {}, True
        case ["api", "v2", "batch"]:
            return _pick(method, {"POST": "batch"}), {}, True
    return None, {}, False


def _pick(method: str, endpoints: dict[str, Endpoint]) -> Endpoint | None:
    return endpoints.get(method)


class _Reject(Exception):
    """A whole request refused before anything is applied."""

    def __init__(self, status: int, problems: list[Problem], headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.problems = problems
        self.headers = headers


class CustomerioSandbox:
    """Customer.io's Track API (v1 people/events/devices, v2 entity and batch), in memory.

    One workspace: every accepted credential pair writes to the same people and events. `people`,
    `events`, `requests` and `activity` are changed on the server's event loop; tests in another
    thread may read them at any time.
    """

    def __init__(
        self,
        credentials: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        rate_limit: int | None = RATE_LIMIT,
        region: Literal["us", "eu"] = "us",
        region_url: str | None = None,
        environment_id: int = 1,
        allow_email_update_by_id: bool = False,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 request per second (or None)")
        if region not in _REGION_HOSTS:
            raise ValueError("region must be us or eu")
        self.credentials = None if credentials is None else dict(credentials)
        self.clock = clock
        self.rate_limit = rate_limit
        self.region = region
        self.region_url = region_url  # None: this sandbox's own address, so discovery stays local
        self.environment_id = environment_id
        self.allow_email_update_by_id = allow_email_update_by_id
        self.people: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        # Customer.io reports most semantic failures only in the workspace activity log (§2.6); so does
        # the sandbox: a dropped call, an attribute update failure, an unmodelled operation.
        self.activity: list[dict[str, Any]] = []
        self._by_id: dict[str, str] = {}
        self._by_email: dict[str, str] = {}  # lower-cased email → cio_id
        self._attribute_times: dict[str, dict[str, float]] = {}  # cio_id → attribute → order
        self._anonymous_owner: dict[str, str] = {}  # anonymous_id → cio_id it was merged into
        self._suppressed: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
        self._seen_ids: set[str] = set()
        self._hits: dict[str, deque[float]] = {}
        self._faults: list[FaultRule] = []
        self._statuses: dict[int, int] = {}
        self._next_cio = 0
        self._duplicates = 0
        self._rate_limited = 0
        self.app = self._build_app()

    # ---- public helpers ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: people, events, request and activity logs, stats, faults, rate state."""
        for store in (self.people, self._by_id, self._by_email, self._attribute_times):
            store.clear()
        for log in (self.events, self.requests, self.activity, self._faults):
            log.clear()
        self._anonymous_owner.clear()
        self._suppressed.clear()
        self._seen_ids.clear()
        self._hits.clear()
        self._statuses.clear()
        self._next_cio = self._duplicates = self._rate_limited = 0

    def add_fault(self, **rule: Any) -> None:
        """Queue a fault in-process, same keys as `POST /_sandbox/customerio/faults`."""
        parsed = msgspec.convert(rule, FaultRule)
        problem = parsed.problem()
        if problem:
            raise ValueError(problem)
        self._faults.append(parsed)

    def find(self, key: str) -> dict[str, Any] | None:
        """A person by cio_id, then id, then email (case-insensitive)."""
        cio_id = key if key in self.people else self._by_id.get(key) or self._by_email.get(key.lower())
        return None if cio_id is None else self.people.get(cio_id)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "statuses": {str(status): n for status, n in sorted(self._statuses.items())},
            "people": len(self.people),
            "events": len(self.events),
            "duplicates": self._duplicates,
            "rate_limited": self._rate_limited,
            "activity": len(self.activity),
            "faults_pending": len(self._faults),
        }

    # ---- people ------------------------------------------------------------------------------

    def _lookup(self, who: Who) -> dict[str, Any] | None:
        if who.kind == "cio_id":
            return self.people.get(who.value)
        index = self._by_id if who.kind == "id" else self._by_email
        cio_id = index.get(who.value if who.kind == "id" else who.value.lower())
        return None if cio_id is None else self.people[cio_id]

    def _create(self, id_: str | None, email: str | None) -> dict[str, Any]:
        self._next_cio += 1
        cio_id = f"{0xA3000000 + self._next_cio:08x}"  # shaped like the reference's "a3000001"
        person: dict[str, Any] = {
            "cio_id": cio_id,
            "id": None,
            "email": None,
            "attributes": {},
            "devices": {},
            "created_at": int(self.clock()),
        }
        self.people[cio_id] = person
        self._set_identifiers(person, id_, email)
        return person

    def _set_identifiers(self, person: dict[str, Any], id_: str | None, email: str | None) -> None:
        cio_id = person["cio_id"]
        if id_ is not None and id_ != person["id"]:
            if person["id"] is not None:
                del self._by_id[person["id"]]
            person["id"] = id_
            self._by_id[id_] = cio_id
        if email is not None and email != person["email"]:
            if person["email"] is not None:
                del self._by_email[person["email"].lower()]
            person["email"] = email
            self._by_email[email.lower()] = cio_id

    def _remove(self, person: dict[str, Any]) -> None:
        del self.people[person["cio_id"]]
        self._attribute_times.pop(person["cio_id"], None)
        if person["id"] is not None:
            del self._by_id[person["id"]]
        if person["email"] is not None:
            del self._by_email[person["email"].lower()]

    def _note(self, kind: str, who: Who | None, message: str) -> None:
        identifier = None if who is None else f"{who.kind}:{who.value}"
        self.activity.append(
            {"time": self.clock(), "kind": kind, "identifier": identifier, "message": message}
        )

    def _suppression(self, who: Who) -> bool:
        value = who.value.lower() if who.kind == "email" else who.value
        return (who.kind, value) in self._suppressed

    def _target(self, who: Who, create: bool) -> dict[str, Any] | None:
        """The person a call addresses, auto-created by id or email when `create` (§2.4, S12); an
        unknown cio_id or a suppressed identifier drops the call."""
        if self._suppression(who):
            self._note("dropped", who, "identifier is suppressed")
            return None
        person = self._lookup(who)
        if person is None and who.kind == "cio_id":
            self._note("dropped", who, "no person has this cio_id")
        elif person is None and create:
            person = self._create(*((who.value, None) if who.kind == "id" else (None, who.value)))
        return person

    def _identify(self, op: Identify) -> Problem | None:
        """Apply an identify; an answer-changing problem is returned (the 300-attribute person limit),
        anything Customer.io reports only in its activity log is noted there (§2.4)."""
        who = op.who
        if self._suppression(who) or (op.email and self._suppression(Who("email", op.email))):
            self._note("dropped", who, "identifier is suppressed")
            return None
        person = self._lookup(who)
        body_id_owner = self._lookup(Who("id", op.id)) if op.id else None
        email_owner = self._lookup(Who("email", op.email)) if op.email else None
        if person is None:
            if who.kind == "cio_id":
                self._note("dropped", who, "no person has this cio_id")
                return None
            if who.kind == "id" and op.id is not None and op.id != who.value:
                return self._failure(who, "to change an id, address the person by cio_id")
            if who.kind == "email" and op.email is not None and op.email.lower() != who.value.lower():
                return self._failure(who, "to change an email, address the person by cio_id")
            if who.kind == "id" and email_owner is not None:
                return self._apply(email_owner, op, who.value, None)  # a known email takes the new id (§2.4)
            if op.update_only:
                message = "person not found and _update: true never creates"
                return self._failure(who, message, "failed_attribute_change")
            if body_id_owner is not None:
                return self._failure(who, "the id in the body belongs to another person")
            id_ = who.value if who.kind == "id" else op.id
            email = who.value if who.kind == "email" else op.email
            return self._apply(self._create(id_, email), op, None, None)
        new_id = op.id if op.id is not None and op.id != person["id"] else None
        old_email = person["email"]
        # A different case is the same email (§2.4): its spelling is updated, it isn't a change.
        email_change = op.email is not None and (old_email is None or op.email.lower() != old_email.lower())
        if new_id is not None and body_id_owner is not None:
            return self._failure(who, "the id in the body belongs to another person")
        if email_change and email_owner is not None:
            return self._failure(who, "the email in the body belongs to another person")
        if who.kind != "cio_id":
            if new_id is not None and person["id"] is not None:
                return self._failure(who, "to change an id, address the person by cio_id")
            by_id_allowed = who.kind == "id" and self.allow_email_update_by_id
            if email_change and old_email is not None and not by_id_allowed:
                return self._failure(who, "to change an email, address the person by cio_id")
        return self._apply(person, op, new_id, op.email)

    def _failure(self, who: Who, message: str, kind: str = "attribute_update_failure") -> Problem | None:
        """Note a failure Customer.io shows only in its activity log; the caller still answers 200,
        so there is no problem to return (§2.4, §2.6)."""
        self._note(kind, who, message)
        return None

    @staticmethod
    def _attribute_limit(person: dict[str, Any], op: Identify) -> Problem | None:
        """300 unique attributes per person (§2.5); one call can't pass it alone (checked per call)."""
        names = {n.split(".", 1)[0] for n in op.attributes if n.startswith(SUBSCRIPTION_PREFERENCES)}
        names |= {n for n in op.attributes if not n.startswith(SUBSCRIPTION_PREFERENCES)}
        names |= set(person["attributes"])
        if len(names) > ATTRIBUTES_MAX:
            message = f"a person cannot have more than {ATTRIBUTES_MAX} attributes"
            return Problem("attributes", "invalid", message)
        return None

    def _apply(
        self, person: dict[str, Any], op: Identify, new_id: str | None, new_email: str | None
    ) -> Problem | None:
        limit = self._attribute_limit(person, op)
        if limit is not None:
            return limit
        self._set_identifiers(person, new_id, new_email)
        # `_timestamp` / v2 `timestamp` order attribute updates; without one the receipt time does.
        order = float(op.timestamp) if op.timestamp is not None else self.clock()
        times = self._attribute_times.setdefault(person["cio_id"], {})
        attributes = person["attributes"]
        for name, value in op.attributes.items():
            if times.get(name, -math.inf) > order:
                continue
            times[name] = order
            if name.startswith(SUBSCRIPTION_PREFERENCES + "."):  # dot-notation: one topic (§2.4)
                node = attributes
                *path, leaf = name.split(".")
                for key in path:
                    child = node.get(key)
                    if type(child) is not dict:
                        child = node[key] = {}
                    node = child
                node[leaf] = value
            else:
                attributes[name] = value
        if op.created_at is not None:
            person["created_at"] = op.created_at
        if op.anonymous_id is not None:
            self._merge_anonymous(person, op.anonymous_id)
        return None

    def _merge_anonymous(self, person: dict[str, Any], anonymous_id: str) -> None:
        """§2.4: an `anonymous_id` attribute links the earlier anonymous events (within 30 days) to the
        person; it is not reusable, so a second person naming it gets nothing."""
        owner = self._anonymous_owner.get(anonymous_id)
        if owner is not None and owner != person["cio_id"]:
            self._note(
                "attribute_update_failure", Who("cio_id", person["cio_id"]), "anonymous_id already used"
            )
            return
        self._anonymous_owner[anonymous_id] = person["cio_id"]
        edge = self.clock() - ANONYMOUS_MERGE_SECONDS
        for event in self.events:
            if (
                event["person"] is None
                and event["anonymous_id"] == anonymous_id
                and event["timestamp"] >= edge
            ):
                event["person"] = person["cio_id"]

    def _track(self, op: Track) -> None:
        if op.id is not None and op.id in self._seen_ids:
            self._duplicates += 1  # duplicates are ignored (§2.4)
            return
        person = None if op.who is None else self._target(op.who, create=True)
        if op.who is not None and person is None:
            return
        if op.id is not None:
            self._seen_ids.add(op.id)
        self.events.append(
            {
                "person": None if person is None else person["cio_id"],
                "anonymous_id": op.anonymous_id,
                "name": op.name,
                "type": op.type,
                "id": op.id,
                "timestamp": op.timestamp if op.timestamp is not None else int(self.clock()),
                "data": op.data,
            }
        )

    def _apply_op(self, op: Op) -> Problem | None:
        if isinstance(op, Identify):
            return self._identify(op)
        if isinstance(op, Track):
            self._track(op)
        elif isinstance(op, Delete):
            person = self._lookup(op.who)
            if person is None:
                self._note("dropped", op.who, "delete: no such person")
            else:
                self._remove(person)  # later calls may create them again (§2.2)
        elif isinstance(op, AddDevice):
            person = self._target(op.who, create=True)  # auto-creates like events (unconfirmed)
            if person is not None:
                person["devices"][op.device["id"]] = op.device
        elif isinstance(op, DeleteDevice):
            person = self._lookup(op.who)
            if person is None or person["devices"].pop(op.device_id, None) is None:
                self._note("dropped", op.who, "delete_device: no such person or device")
        elif isinstance(op, Suppress):
            self._suppress(op)
        elif isinstance(op, Unmodelled):
            self._note("not_modelled", None, f"{op.what} accepted; the sandbox does not model it")
        return None

    def _suppress(self, op: Suppress) -> None:
        """Suppress deletes the person and blocks their identifiers; unsuppress lifts the block (§2.2)."""
        value = op.who.value.lower() if op.who.kind == "email" else op.who.value
        key = (op.who.kind, value)
        if not op.suppress:
            for blocked in self._suppressed.pop(key, frozenset()):
                self._suppressed.pop(blocked, None)
            return
        person = self._lookup(op.who)
        group = {key}
        if person is not None:
            if person["id"] is not None:
                group.add(("id", person["id"]))
            if person["email"] is not None:
                group.add(("email", person["email"].lower()))
            self._remove(person)
        frozen = frozenset(group)
        for blocked in frozen:
            self._suppressed[blocked] = frozen

    # ---- Track API over HTTP -------------------------------------------------------------------

    async def _track_api(self, request: Request) -> Response:
        endpoint, params, known = _route(request.method, _raw_segments(request))
        v2 = request.url.path.startswith("/api/v2/")
        if endpoint is None:
            status = 405 if known else 404
            message = http.HTTPStatus(status).phrase
            body = v2_error([Problem("", "invalid", message)]) if v2 else v1_error(message)
            return self._answer(request, status, body)
        limit = {"entity": ENTITY_MAX_BYTES, "batch": BATCH_MAX_BYTES}.get(endpoint, V1_MAX_BYTES)
        raw, over = await _read_body(request, limit)
        try:
            forced = await self._fault(endpoint)
            site_id = self._authenticate(request)
            self._throttle(site_id)
            if over:
                message = f"request body cannot be larger than {limit} bytes"
                raise _Reject(413, [Problem("body", "invalid", message)])  # 413: unconfirmed (§2.5)
            if endpoint == "region":
                return self._answer(request, 200, self._region(request))
            if endpoint in ("entity", "batch"):
                status, body = self._v2(endpoint, raw, request, forced)
                return self._answer(request, status, body)
            self._v1(endpoint, params, raw, request)
        except _Reject as reject:
            body = v2_error(reject.problems) if v2 else v1_problems(reject.problems)
            return self._answer(request, reject.status, body, reject.headers)
        return self._answer(request, 200, {})

    def _authenticate(self, request: Request) -> str:
        """HTTP Basic `site_id:api_key` (§2.1); 401 otherwise. The 401 body is unconfirmed: the
        sandbox uses the endpoint family's error shape with the message below."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        site_id = api_key = ""
        if scheme.lower() == "basic":
            try:
                site_id, _, api_key = base64.b64decode(token, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                site_id = api_key = ""
        if site_id and api_key:
            if self.credentials is None:
                return site_id
            expected = self.credentials.get(site_id)
            if expected is not None and hmac.compare_digest(expected.encode(), api_key.encode()):
                return site_id
        raise _Reject(
            401,
            [Problem("", "unauthorized", "Unauthorized request: check your site ID and Track API key")],
            {"WWW-Authenticate": 'Basic realm="Customer.io Track API"'},
        )

    def _throttle(self, site_id: str) -> None:
        """A sliding one-second window of requests per site (§2.5: 429 is unconfirmed for the Track
        API; the sandbox sends it, with Retry-After, so clients can be tested against it)."""
        if self.rate_limit is None:
            return
        now = self.clock()
        hits = self._hits.setdefault(site_id, deque())
        while hits and hits[0] <= now - 1.0:
            hits.popleft()
        if len(hits) >= self.rate_limit:
            self._rate_limited += 1
            wait = max(1, math.ceil(hits[0] + 1.0 - now))
            message = f"rate limit exceeded: more than {self.rate_limit} requests per second"
            raise _Reject(429, [Problem("", "rate_limited", message)], {"Retry-After": str(wait)})
        hits.append(now)

    def _region(self, request: Request) -> dict[str, Any]:
        url = self.region_url or str(request.base_url).rstrip("/")
        return {"url": url, "region": self.region, "environment_id": self.environment_id}

    @staticmethod
    def _decode(raw: bytes, request: Request, required: bool) -> Any:
        """A JSON object body sent as application/json (§2.1); an empty body is `{}` where allowed."""
        if not raw:
            if required:
                raise _Reject(400, [Problem("", "required", "request body is required")])
            return {}
        if not is_json_media(request.headers.get("content-type", "")):
            raise _Reject(400, [Problem("", "invalid", "Content-Type must be application/json")])
        try:
            doc = jsonsafe.decode(raw)
        except InputError:
            raise _Reject(400, [Problem("", "invalid", "request body is not valid JSON")]) from None
        if type(doc) is not dict:
            raise _Reject(400, [Problem("", "invalid", "request body must be a JSON object")])
        return doc

    def _v1(self, endpoint: Endpoint, params: dict[str, str], raw: bytes, request: Request) -> None:
        who: Who | None = None
        if "identifier" in params:
            try:
                checked = who_from_path(unquote(params["identifier"], errors="strict"))
            except UnicodeDecodeError:
                checked = Problem("identifier", "invalid", "identifier is not valid UTF-8")
            if isinstance(checked, Problem):
                raise _Reject(400, [checked])
            who = checked
        op: Op | list[Problem]
        if endpoint == "delete":
            op = Delete(_need(who))
        elif endpoint == "suppress":
            op = Suppress(_need(who), params["what"] == "suppress")
        elif endpoint == "device" and request.method == "DELETE":
            op = DeleteDevice(_need(who), unquote(params["device_id"]))
        else:
            body = self._decode(raw, request, required=endpoint != "identify")
            if endpoint == "identify":
                op = check_v1_identify(_need(who), body)
            elif endpoint == "device":
                op = check_v1_device(_need(who), body)
            else:
                op = check_v1_event(who, body)
        if isinstance(op, list):
            raise _Reject(400, op)
        problem = self._apply_op(op)
        if problem is not None:
            raise _Reject(400, [problem])

    def _v2(
        self, endpoint: Endpoint, raw: bytes, request: Request, forced: set[int]
    ) -> tuple[int, dict[str, Any]]:
        doc = self._decode(raw, request, required=True)
        if endpoint == "entity":
            op = check_op(doc)
            if isinstance(op, list):
                raise _Reject(400, op)
            problem = self._apply_op(op)
            if problem is not None:
                raise _Reject(400, [problem])
            return 200, {}
        batch = doc.get("batch")
        if type(batch) is not list or not batch:
            raise _Reject(400, [Problem("batch", "required", "batch must be a non-empty list of operations")])
        # Every operation is checked before any is applied; the failed ones are listed, the rest
        # applied in order (§2.3).
        failed: list[tuple[int, Problem]] = []
        valid: list[tuple[int, Op]] = []
        for index, item in enumerate(batch):
            size = op_size_problem(item)
            op = [size] if size is not None else check_op(item)
            if isinstance(op, list):
                failed.extend((index, p) for p in op)
            elif index in forced:
                failed.append((index, Problem("", "invalid", "sandbox fault: operation failed on purpose")))
            else:
                valid.append((index, op))
        for index, op in valid:
            problem = self._apply_op(op)
            if problem is not None:
                failed.append((index, problem))
        if not failed:
            return 200, {}
        failed.sort(key=lambda pair: pair[0])
        return 207, v2_partial(failed)

    # ---- faults and the request log --------------------------------------------------------------

    async def _fault(self, endpoint: Endpoint) -> set[int]:
        """Sleep and/or raise the queued answer; a batch fault returns the indexes to fail."""
        rule = next((r for r in self._faults if r.matches(endpoint)), None)
        if rule is None:
            return set()
        rule.times -= 1
        if rule.times == 0:
            self._faults.remove(rule)
        if rule.slow_ms:
            await asyncio.sleep(rule.slow_ms / 1000)
        if rule.fail_batch_indexes is not None:
            return set(rule.fail_batch_indexes)
        if rule.status is None:
            return set()
        message = rule.error or http.HTTPStatus(rule.status).phrase
        headers = None if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
        if rule.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": 'Basic realm="Customer.io Track API"'}
        raise _Reject(rule.status, [Problem("", "invalid", message)], headers)

    def _answer(
        self, request: Request, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> Response:
        path = "/" + "/".join(_raw_segments(request))
        self.requests.append({"method": request.method, "path": path, "status": status, "time": self.clock()})
        self._statuses[status] = self._statuses.get(status, 0) + 1
        return json_response(body, status, headers)

    # ---- control API ---------------------------------------------------------------------------

    async def _get_people(self, request: Request) -> Response:
        return json_response({"count": len(self.people), "people": list(self.people.values())})

    async def _get_person(self, request: Request) -> Response:
        key = unquote("/".join(_raw_segments(request)[3:]))  # after /_sandbox/customerio/people/
        person = self.find(key)
        if person is None:
            return json_response({"code": 404, "error": f"no person has cio_id, id or email {key!r}"}, 404)
        return json_response(person)

    async def _get_events(self, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit")
        if limit is not None and not limit.isdigit():
            return json_response({"code": 400, "error": "limit must be a non-negative integer"}, 400)
        found = self.events
        if "person" in query:
            person = self.find(query["person"])
            wanted = query["person"] if person is None else person["cio_id"]
            found = [e for e in found if e["person"] == wanted]
        for key in ("name", "type", "anonymous_id"):
            if key in query:
                found = [e for e in found if e[key] == query[key]]
        shown = found if limit is None else found[: int(limit)]
        return json_response({"count": len(found), "events": shown})

    async def _get_requests(self, request: Request) -> Response:
        return json_response({"count": len(self.requests), "requests": self.requests})

    async def _get_activity(self, request: Request) -> Response:
        return json_response({"count": len(self.activity), "activity": self.activity})

    async def _get_stats(self, request: Request) -> Response:
        return json_response(self.stats())

    async def _faults_endpoint(self, request: Request) -> Response:
        return await fault_queue(request, self._faults, FaultRule, lambda text: {"code": 400, "error": text})

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"reset": True})

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if not request.url.path.startswith(CONTROL):
            return self._answer(request, 404, v1_error("Not Found"))
        return json_response({"code": status, "error": http.HTTPStatus(status).phrase}, status)

    def _build_app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        routes = [
            Route("/api/{rest:path}", self._track_api, methods=methods),
            Route(f"{CONTROL}/people", self._get_people, methods=["GET"]),
            Route(f"{CONTROL}/people/{{key:path}}", self._get_person, methods=["GET"]),
            Route(f"{CONTROL}/events", self._get_events, methods=["GET"]),
            Route(f"{CONTROL}/requests", self._get_requests, methods=["GET"]),
            Route(f"{CONTROL}/activity", self._get_activity, methods=["GET"]),
            Route(f"{CONTROL}/stats", self._get_stats, methods=["GET"]),
            Route(f"{CONTROL}/faults", self._faults_endpoint, methods=["GET", "POST", "DELETE"]),
            Route(f"{CONTROL}/reset", self._reset, methods=["POST"]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: self._no_route, 405: self._no_route})
        app.router.redirect_slashes = False  # Customer.io's paths are exact
        return app


def _need(who: Who | None) -> Who:
    assert who is not None  # every route but /api/v1/events carries an identifier
    return who
