"""Customer.io Track API HTTP I/O only: post one v2 batch, read the account region."""

from __future__ import annotations

import httpx

from loopwire.destinations.base import Response
from loopwire.destinations.customerio import api
from loopwire.destinations.customerio.options import CustomerioOptions


class CustomerioClient:
    def __init__(self, options: CustomerioOptions, http: httpx.AsyncClient) -> None:
        self._batch_url = api.batch_url(options)
        self._region_url = api.region_url(options)
        self._timeout = options.retry.timeout
        # §2.1: HTTP Basic, site_id:api_key.
        self._auth = httpx.BasicAuth(options.site_id.reveal(), options.api_key.reveal())
        self._http = http

    @property
    def url(self) -> str:
        return self._batch_url

    @property
    def region_url(self) -> str:
        return self._region_url

    async def post(self, body: bytes) -> tuple[Response | None, str]:
        """Returns (response, "") or (None, a one-line description of the transport failure)."""
        return await self._request("POST", self._batch_url, body)

    async def region(self) -> tuple[Response | None, str]:
        return await self._request("GET", self._region_url, None)

    async def _request(self, method: str, url: str, body: bytes | None) -> tuple[Response | None, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            answer = await self._http.request(
                method, url, content=body, headers=headers, auth=self._auth, timeout=self._timeout
            )
        except httpx.TimeoutException:
            return None, f"no answer from {url} within {self._timeout:g}s"
        except httpx.HTTPError as exc:
            return None, f"could not reach {url}: {type(exc).__name__}: {exc}"
        return Response(answer.status_code, answer.content, dict(answer.headers)), ""
