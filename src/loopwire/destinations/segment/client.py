"""Segment HTTP I/O only: post one /v1/batch body, return the answer (or why there was none)."""

from __future__ import annotations

import base64

import httpx

from loopwire import __version__
from loopwire.destinations.base import Response
from loopwire.destinations.segment import api
from loopwire.destinations.segment.options import SegmentOptions


def basic_auth(write_key: str) -> str:
    """segment.md §2: HTTP Basic, the write key as username and an empty password (trailing colon)."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


class SegmentClient:
    def __init__(self, options: SegmentOptions, http: httpx.AsyncClient) -> None:
        self._url = api.batch_url(options)
        self._timeout = options.retry.timeout
        self._http = http
        self._headers = {
            "Content-Type": "application/json",  # required (§1)
            "Accept": "application/json",
            "Authorization": basic_auth(options.write_key.reveal()),
            "User-Agent": f"loopwire/{__version__}",
        }

    @property
    def url(self) -> str:
        return self._url

    async def post(self, body: bytes) -> tuple[Response | None, str]:
        """Returns (response, "") or (None, a one-line description of the transport failure)."""
        try:
            answer = await self._http.post(
                self._url, content=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.TimeoutException:
            return None, f"no answer from {self._url} within {self._timeout:g}s"
        except httpx.HTTPError as exc:
            return None, f"could not reach {self._url}: {type(exc).__name__}: {exc}"
        return Response(answer.status_code, answer.content, dict(answer.headers)), ""
