"""The OpenAPI document covers every route the app serves, and its references resolve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.routing import Route

from loopwire.app import create_app
from loopwire.web.openapi import openapi_document
from tests.conftest import make_config

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


async def test_every_routed_path_and_method_is_documented(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "loopwire.db",
        "http://127.0.0.1:9",
        extra_sources={
            "amplitude_api": {"api_keys": ["amp-key"]},
            "segment_api": {"write_keys": ["seg-key"]},
        },
    )
    app = create_app(config)
    try:
        routed: set[tuple[str, str]] = set(app._fast)
        for route in app.app.routes:
            assert isinstance(route, Route)
            routed |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    finally:
        await app.state.runtime.stop()
    paths = openapi_document()["paths"]
    # the sources this config enables are all routed, so the check covers them
    assert {("POST", "/webhooks/customerio"), ("POST", "/2/httpapi"), ("GET", "/identify")} <= routed
    assert {("OPTIONS", "/groupidentify"), ("POST", "/v1/batch"), ("GET", "/readyz")} <= routed
    missing = sorted((m, p) for m, p in routed if m.lower() not in paths.get(p, {}))
    assert missing == []


def test_document_is_well_formed() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    components = document["components"]
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            assert method in METHODS, (path, method)
            assert operation["responses"], (path, method)
            for requirement in operation.get("security", []):
                assert set(requirement) <= set(components["securitySchemes"]), (path, method)
    for ref in _refs(document):
        section, name = ref.removeprefix("#/components/").split("/")
        assert name in components[section], ref
    assert components["schemas"]["AmplitudeError"]["properties"]["code"] == {"type": "integer"}
    assert components["schemas"]["SegmentError"]["required"] == ["code", "message"]
    assert components["securitySchemes"]["segmentWriteKey"] == {
        **components["securitySchemes"]["segmentWriteKey"],
        "type": "http",
        "scheme": "basic",
    }
