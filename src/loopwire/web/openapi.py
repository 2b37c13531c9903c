"""The OpenAPI document of `loopwire serve`, served at `GET /openapi.json`.

Limits are read from the contracts (`contracts.amplitude`, `contracts.segment`), so the document
states the numbers the server enforces; `server.max_body_bytes` caps every body limit too.
"""

from __future__ import annotations

from typing import Any

from loopwire import __version__
from loopwire.contracts import amplitude as amp
from loopwire.contracts import segment as seg
from loopwire.sources.amplitude_api import CORS

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_OBJECT: Schema = {"type": "object"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_CAP = "; `server.max_body_bytes` caps it too"
_JSON_MEDIA = ("application/json", "text/plain")
_FORM_MEDIA = ("application/x-www-form-urlencoded", "multipart/form-data")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: str = "", **extra: Any) -> Schema:
    """An object; `required` names its required properties, separated by spaces."""
    schema: Schema = {"type": "object", "properties": properties, **extra}
    return {**schema, "required": required.split()} if required else schema


def _record(**properties: Schema) -> Schema:
    """An object whose properties are all required."""
    return _obj(properties, " ".join(properties))


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def _map(values: Schema, description: str) -> Schema:
    return {"type": "object", "additionalProperties": values, "description": description}


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, component: str = "Error") -> Schema:
    return _json(description, _ref(component))


def _body(description: str, schema: Schema, media: tuple[str, ...] = _JSON_MEDIA) -> Schema:
    return {"required": True, "description": description, "content": {m: {"schema": schema} for m in media}}


def _header(name: str, schema: Schema, required: bool = False, description: str = "") -> Schema:
    parameter = {"name": name, "in": "header", "required": required, "schema": schema}
    return {**parameter, "description": description} if description else parameter


def _get(summary: str, responses: dict[str, Schema]) -> Schema:
    return {"get": {"summary": summary, "responses": responses}}


def _text(media: str, description: str) -> dict[str, Schema]:
    return {"200": {"description": description, "content": {media: {}}}}


_GZIP = _header("Content-Encoding", {"enum": ["gzip", "identity"]}, description="gzip bodies are inflated")
_INDEXES = _array(_INT)

_SCHEMAS: dict[str, Schema] = {
    "Error": _record(error=_record(code=_STR, message=_STR)),
    "Readiness": _record(
        status={"enum": ["ready", "not_ready"]},
        failing=_array(_STR, description="`store`, `ingest_process`, `backlog:<destination>`"),
        checks=_obj(
            {
                "store": _obj({"ok": _BOOL, "error": _STR}, "ok"),
                "ingest_process": _obj({"ok": _BOOL}, "ok", description="only when the ingest process runs"),
                "backlog": _map(_record(ok=_BOOL, oldest_age_seconds={"type": "number"}), "per destination"),
            },
            "store backlog",
        ),
    ),
    "AmplitudeError": _record(code=_INT, error=_STR),
    "AmplitudeSuccess": _record(
        code={"const": 200}, events_ingested=_INT, payload_size_bytes=_INT, server_upload_time=_INT
    ),
    "AmplitudeBadRequest": _obj(
        {
            "code": {"const": 400},
            "error": _STR,
            "missing_field": _STR,
            "events_with_invalid_fields": _map(_INDEXES, "field → indexes of events with an invalid value"),
            "events_with_missing_fields": _map(_INDEXES, "field → indexes of events missing it"),
            "events_with_invalid_id_lengths": _map(_INDEXES, "id field → indexes of events with a short id"),
            "detail": {**_STR, "description": "loopwire's reason (the SDKs ignore it)"},
        },
        "code error",
    ),
    "AmplitudeUpload": _obj(
        {
            "api_key": _STR,
            "events": _array(_obj({"event_type": _STR, "user_id": _STR, "device_id": _STR}, "event_type")),
            "options": _obj({"min_id_length": _INT}),
        },
        "api_key events",
    ),
    "SegmentError": _record(code=_STR, message=_STR),
    "SegmentSuccess": _obj(
        {
            "success": {"const": True},
            "rejected": _array(
                _record(index=_INT, reason=_STR, message=_STR),
                description="the batch's refused messages (the others were committed)",
            ),
        },
        "success",
    ),
    "SegmentMessage": _obj(
        {
            "writeKey": _STR,
            "type": {"enum": list(seg.CALLS)},
            **dict.fromkeys(("userId", "anonymousId", "previousId", "groupId", "event", "name"), _STR),
            "messageId": _STR,
            **dict.fromkeys(("traits", "properties", "context", "integrations"), _OBJECT),
            "timestamp": _TIME,
        },
        description="userId or anonymousId; `event` on track, `groupId` on group, `previousId` on alias",
    ),
}

_AMPLITUDE_RESPONSES = {
    "200": _json("committed (duplicates count as ingested)", _ref("AmplitudeSuccess")),
    "400": _json("refused: nothing was stored", _ref("AmplitudeBadRequest")),
    "413": _error('`{"code": 413, "error": "Payload too large"}`: send smaller batches', "AmplitudeError"),
    "503": _error("could not commit: the SDKs keep the events and retry", "AmplitudeError"),
}
_CORS_204 = {"description": "no content", "headers": {n: {"schema": {"const": v}} for n, v in CORS.items()}}
_PREFLIGHT = {"summary": "CORS preflight (any origin)", "responses": {"204": _CORS_204}}


def _amplitude_events(summary: str, max_bytes: int, max_events: int) -> Schema:
    limits = f"at most {max_bytes:,} bytes (decoded) and {max_events:,} events{_CAP}"
    return {
        "post": {
            "summary": summary,
            "parameters": [_GZIP],
            "requestBody": _body(limits, _ref("AmplitudeUpload")),
            "responses": _AMPLITUDE_RESPONSES,
        },
        "options": _PREFLIGHT,
    }


def _amplitude_form(summary: str, max_bytes: int, group: bool) -> Schema:
    """Identify / Group Identify: form fields in the body (or, for GET /identify, in the query)."""
    fields = {"api_key": _STR, "identification": {**_STR, "description": "JSON: an object or an array"}}
    if not group:
        fields["options"] = {**_STR, "description": 'JSON, e.g. `{"min_id_length": 5}`'}
    form = _obj(fields, "api_key identification")
    post = {"summary": summary, "requestBody": _body(f"at most {max_bytes:,} bytes{_CAP}", form, _FORM_MEDIA)}
    item: Schema = {"post": {**post, "responses": _AMPLITUDE_RESPONSES}, "options": _PREFLIGHT}
    if not group:
        query = [
            {"name": name, "in": "query", "required": name in form["required"], "schema": schema}
            for name, schema in fields.items()
        ]
        item["get"] = {"summary": summary, "parameters": query, "responses": _AMPLITUDE_RESPONSES}
    return item


def _segment(call: str) -> Schema:
    batch = call == "batch"
    message = f"{seg.MESSAGE_MAX_BYTES:,} bytes"
    if batch:
        envelope = {"writeKey": _STR, "batch": _array(_ref("SegmentMessage")), "sentAt": _TIME}
        schema = _obj({**envelope, "context": _OBJECT, "integrations": _OBJECT}, "batch")
        limits = f"{seg.BATCH_MAX_BYTES:,} bytes (decoded), {seg.BATCH_MAX_MESSAGES:,} messages of {message}"
    else:
        schema, limits = _ref("SegmentMessage"), f"{message} (decoded)"
    refused = "a batch lists the messages it refused in `rejected`" if batch else "nothing was refused"
    return {
        "summary": f"Segment {call}",
        "security": [{"segmentWriteKey": []}, {}],
        "parameters": [_GZIP],
        "requestBody": _body(f"at most {limits}{_CAP}; write key as `writeKey` or Basic username", schema),
        "responses": {
            "200": _json(f"committed; {refused}", _ref("SegmentSuccess")),
            "400": _error(
                "invalid_json, invalid_content_type, invalid_content_encoding, payload_too_large (400, not 413, "
                "as Segment answers), too_many_messages, or why the single message was refused",
                "SegmentError",
            ),
            "401": _error("missing_write_key or invalid_write_key: nothing was stored", "SegmentError"),
            "503": _error("unavailable: nothing was stored; retry", "SegmentError"),
        },
    }


def _customerio_webhook() -> Schema:
    signature = "hex HMAC-SHA256 of `v0:<timestamp>:<raw body>` with the signing key"
    fields = {
        **dict.fromkeys(("event_id", "object_type", "metric"), _STR),
        "timestamp": {"oneOf": [_INT, _STR]},
    }
    event = _obj({**fields, "data": _OBJECT}, " ".join(fields))
    return {
        "summary": "Customer.io reporting webhook (one event per request)",
        "parameters": [
            _header("X-CIO-Timestamp", _STR, True),
            _header("X-CIO-Signature", _STR, True, signature),
        ],
        "requestBody": _body("one reporting event", event, ("application/json",)),
        "responses": {
            "200": _json(
                "committed (or already in the log)",
                _obj({"status": {"enum": ["accepted", "duplicate"]}, "event_id": _STR}),
            ),
            "400": _error(
                "invalid_json, invalid_utf8, too_deep, number_out_of_range, missing_field, invalid_field, "
                "field_too_long or incomplete_body"
            ),
            "401": _error("missing_signature, invalid_timestamp, stale_timestamp or invalid_signature"),
            "413": _error("body_too_large"),
            "500": _error("internal_error: a loopwire defect; Customer.io retries"),
            "503": _error("store_unavailable: nothing was stored; retry"),
        },
    }


_SESSION: list[dict[str, list[str]]] = [{"consoleSession": []}, {"consoleToken": []}]
_UNAUTHENTICATED = _error("unauthenticated: log in at /login, or send the console token as a bearer")
_CSRF = _header("X-CSRF-Token", _STR, description="the session's CSRF token (or the form field `csrf_token`)")


def _page(summary: str, query: tuple[str, ...] = ()) -> Schema:
    """A console page: HTML for a session, otherwise a redirect to /login."""
    parameters = [{"name": name, "in": "query", "required": False, "schema": _STR} for name in query]
    return {
        "get": {
            "summary": summary,
            "security": [{"consoleSession": []}],
            "parameters": parameters,
            "responses": {
                "200": {"description": "HTML", "content": {"text/html": {}}},
                "303": {"description": "no session: to /login?next=<this page>"},
            },
        }
    }


def _read(summary: str, query: tuple[str, ...] = ()) -> Schema:
    parameters = [{"name": name, "in": "query", "required": False, "schema": _STR} for name in query]
    return {
        "get": {
            "summary": summary,
            "security": _SESSION,
            "parameters": parameters,
            "responses": {"200": _json("OK", _OBJECT), "401": _UNAUTHENTICATED},
        }
    }


def _action(summary: str, fields: dict[str, Schema], path_name: bool = False) -> Schema:
    form = _obj({"csrf_token": _STR, **fields})
    parameters = [_CSRF]
    if path_name:
        parameters.append({"name": "name", "in": "path", "required": True, "schema": _STR})
    return {
        "post": {
            "summary": summary,
            "security": _SESSION,
            "parameters": parameters,
            "requestBody": _body(
                "form fields or a JSON object",
                form,
                ("application/x-www-form-urlencoded", "application/json"),
            ),
            "responses": {
                "200": _json("done (JSON for a fetch or a script)", _OBJECT),
                "303": {"description": "done (a form post goes back to its page with a notice)"},
                "401": _UNAUTHENTICATED,
                "403": _error("csrf_failed: the CSRF token is missing or wrong"),
                "404": _error("unknown_destination"),
                "429": _error("too_many_attempts: too many wrong bearer tokens; see Retry-After"),
            },
        }
    }


def _console_paths() -> dict[str, Schema]:
    login_form = _obj({"token": _STR, "next": _STR}, "token")
    return {
        "/login": {
            "get": {"summary": "the login page", "responses": _text("text/html", "HTML")},
            "post": {
                "summary": "exchange the console token for a session cookie",
                "requestBody": _body("the token", login_form, ("application/x-www-form-urlencoded",)),
                "responses": {
                    "303": {
                        "description": "logged in: Set-Cookie loopwire_session (HttpOnly, SameSite=Strict)"
                    },
                    "401": {"description": "wrong token: the login page again", "content": {"text/html": {}}},
                    "403": _error("cross_origin: posted from another site's page"),
                    "429": {"description": "too many wrong tokens from this address: see Retry-After"},
                    "503": {
                        "description": "locked: no console token is configured",
                        "content": {"text/html": {}},
                    },
                },
            },
        },
        "/logout": {
            "post": {
                "summary": "end the session",
                "security": [{"consoleSession": []}],
                "parameters": [_CSRF],
                "responses": {"303": {"description": "to /login"}, "403": _error("csrf_failed")},
            }
        },
        "/": _page("console: overview", ("range",)),
        "/destinations": _page("console: destinations", ("done",)),
        "/dead-letters": _page("console: dead letters", ("destination", "reason", "event")),
        "/audiences": _page("console: audiences", ("name",)),
        "/experiments": _page("console: experiments", ("id",)),
        "/identity": _page("console: the identity report"),
        "/person": _page("console: one person (user id or email)", ("key",)),
        "/api/status": _read(
            "outbox counts and reasons, paused destinations, the store's size on disk, its oldest event"
            " and what retention deleted"
        ),
        "/api/dead-letters": _read("dead letters, newest first", ("destination", "reason", "limit")),
        "/api/dead-letters/replay": _action(
            "replay dead letters (one by event_id, or all=1 of a destination and reason)",
            {"destination": _STR, "reason": _STR, "event_id": _STR, "all": {"enum": ["1"]}},
        ),
        "/api/destinations/{name}/pause": _action("pause a destination (kept across restarts)", {}, True),
        "/api/destinations/{name}/resume": _action("resume a paused destination", {}, True),
        "/api/destinations/{name}/test": _action("send one test event and report the answer", {}, True),
    }


def openapi_document() -> dict[str, Any]:
    json_ok = {"200": _json("OK", _OBJECT)}
    readiness, not_ready = _ref("Readiness"), "not_ready: `failing` names the failing checks"
    ready = "readiness: the store takes a write, the ingest process is up, no backlog is too old"
    basic = "the Segment write key as username, empty password (or `writeKey` in the body)"
    return {
        "openapi": "3.1.0",
        "info": {"title": "loopwire", "version": __version__},
        "paths": {
            "/webhooks/customerio": {"post": _customerio_webhook()},
            "/2/httpapi": _amplitude_events(
                "Amplitude HTTP V2", amp.HTTPAPI_MAX_BYTES, amp.HTTPAPI_MAX_EVENTS
            ),
            "/batch": _amplitude_events("Amplitude Batch", amp.BATCH_MAX_BYTES, amp.BATCH_MAX_EVENTS),
            "/identify": _amplitude_form("Amplitude Identify", amp.IDENTIFY_MAX_BYTES, group=False),
            "/groupidentify": _amplitude_form(
                f"Amplitude Group Identify (at most {amp.GROUPIDENTIFY_MAX:,} identifications)",
                amp.GROUPIDENTIFY_MAX_BYTES,
                group=True,
            ),
            **{f"/v1/{call}": {"post": _segment(call)} for call in (*seg.CALLS, "batch")},
            "/healthz": _get("liveness", json_ok),
            "/readyz": _get(ready, {"200": _json("ready", readiness), "503": _json(not_ready, readiness)}),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [{"metricsToken": []}, {}],
                    "responses": {
                        **_text("text/plain", "text format"),
                        "401": _error(
                            "a bearer token is needed (LOOPWIRE_METRICS_TOKEN; see docs/console.md)"
                        ),
                    },
                }
            },
            **_console_paths(),
            "/openapi.json": _get("this document", json_ok),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "segmentWriteKey": {"type": "http", "scheme": "basic", "description": basic},
                "consoleSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "loopwire_session",
                    "description": "from POST /login; actions also need the session's CSRF token",
                },
                "consoleToken": {"type": "http", "scheme": "bearer", "description": "LOOPWIRE_CONSOLE_TOKEN"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "LOOPWIRE_METRICS_TOKEN"},
            },
        },
    }
