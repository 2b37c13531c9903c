"""Amplitude HTTP I/O only: post one request body, return the answer (or why there was none)."""

from __future__ import annotations

import httpx

from loopwire.destinations.amplitude import api
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.base import Response


class AmplitudeClient:
    def __init__(self, options: AmplitudeOptions, http: httpx.AsyncClient) -> None:
        self._url = api.events_url(options)
        self._timeout = options.retry.timeout
        self._http = http

    @property
    def url(self) -> str:
        return self._url

    async def post(self, body: bytes) -> tuple[Response | None, str]:
        """Returns (response, "") or (None, a one-line description of the transport failure)."""
        try:
            answer = await self._http.post(
                self._url,
                content=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException:
            return None, f"no answer from {self._url} within {self._timeout:g}s"
        except httpx.HTTPError as exc:
            return None, f"could not reach {self._url}: {type(exc).__name__}: {exc}"
        return Response(answer.status_code, answer.content, dict(answer.headers)), ""
