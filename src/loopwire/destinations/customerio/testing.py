"""`loopwire test-connection customerio`: check the Track credentials and the account's region.

Customer.io's `GET /api/v1/accounts/region` answers 401 on bad credentials and names the account's
region otherwise (customerio.md §2.1), so it proves both without creating a test person in the
workspace (a test event would: Customer.io creates unknown people, seed 003).
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.destinations.customerio import api
from loopwire.destinations.customerio.client import CustomerioClient
from loopwire.destinations.customerio.options import CustomerioOptions

__all__ = ["ConnectionResult", "send_test_event"]


def _doc(raw: bytes) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def send_test_event(options: CustomerioOptions) -> ConnectionResult:
    async with httpx.AsyncClient() as http:
        client = CustomerioClient(options, http)
        response, failure = await client.region()
    where = client.region_url
    if response is None:
        return ConnectionResult(False, f"no answer from {where}", failure)
    body = response.body.decode("utf-8", "replace")[:500].replace(options.api_key.reveal(), "***")
    if response.status in (401, 403):
        return ConnectionResult(
            False, f"Customer.io refused the credentials ({response.status}): {api.CREDENTIALS_FIX}", body
        )
    if response.status != 200:
        return ConnectionResult(False, f"{where} answered {response.status}", body)
    doc = _doc(response.body)
    region = doc.get("region")
    if not isinstance(region, str) or not region:
        return ConnectionResult(False, f"{where} accepted the credentials but did not name a region", body)
    region = region.lower()
    host = doc.get("url") if isinstance(doc.get("url"), str) else api.HOSTS.get(region, "?")
    if region != options.region:
        # §2.1: an EU account sent to the US host is redirected through the US; a US account sent
        # to the EU host fails. Either way the setting is wrong.
        return ConnectionResult(
            False,
            f"Customer.io accepted the credentials, but the account is in region `{region}` and this "
            f"destination says `region: {options.region}`: set `region: {region}`",
            f"The account's Track API host is {host}.",
        )
    return ConnectionResult(
        True,
        f"Customer.io accepted the credentials at {where}; the account is in region `{region}`, as configured",
        f"Track API host: {host}.",
    )
