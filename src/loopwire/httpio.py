"""HTTP plumbing shared by every server in loopwire (sources, sandboxes): bounded body reads and JSON
responses. No vendor rules here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

_encode = msgspec.json.Encoder().encode


async def read_limited(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body, or (b"", True) once it passes `limit`; the rest is drained, not kept."""
    declared = request.headers.get("content-length")
    chunks: list[bytes] = []
    size = 0
    if declared is not None and declared.isdigit() and int(declared) > limit:
        async for _ in request.stream():
            pass
        return b"", True
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
    return (b"", True) if size > limit else (b"".join(chunks), False)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_encode(body), status, dict(headers) if headers else None, "application/json")
