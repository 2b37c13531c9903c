"""The OpenAPI document of `loopwire serve`, served at `GET /openapi.json`."""

from __future__ import annotations

from typing import Any

from loopwire import __version__

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_document() -> dict[str, Any]:
    webhook = {
        "post": {
            "summary": "Customer.io reporting webhook (one event per request)",
            "parameters": [
                {"name": "X-CIO-Timestamp", "in": "header", "required": True, "schema": {"type": "string"}},
                {
                    "name": "X-CIO-Signature",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "hex HMAC-SHA256 of `v0:<timestamp>:<raw body>` with the signing key",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["event_id", "object_type", "metric", "timestamp"],
                            "properties": {
                                "event_id": {"type": "string"},
                                "object_type": {"type": "string"},
                                "metric": {"type": "string"},
                                "timestamp": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                                "data": {"type": "object"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "committed (or already in the log)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"enum": ["accepted", "duplicate"]},
                                    "event_id": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "400": _error("invalid_json, missing_field or invalid_field"),
                "401": _error("missing_signature, invalid_timestamp, stale_timestamp or invalid_signature"),
                "413": _error("body_too_large"),
                "503": _error("store_unavailable: nothing was stored; retry"),
            },
        }
    }
    json_ok = {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "loopwire", "version": __version__},
        "paths": {
            "/webhooks/customerio": webhook,
            "/healthz": {"get": {"summary": "liveness", "responses": json_ok}},
            "/api/status": {"get": {"summary": "outbox counts and reasons", "responses": json_ok}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "console",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
            "/openapi.json": {"get": {"summary": "this document", "responses": json_ok}},
        },
        "components": {"schemas": {"Error": _ERROR}},
    }
