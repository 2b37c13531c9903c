"""Logging in to the console as an operator would: the token posted to /login, the session cookie kept."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import CONSOLE_TOKEN


@contextmanager
def login(url: str, token: str = CONSOLE_TOKEN) -> Iterator[httpx.Client]:
    """An httpx client holding a console session (fails if the login is refused)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/login", data={"token": token, "next": "/"})
        assert answer.status_code == 303, answer.text
        yield client


def csrf_of(page: str) -> str:
    """The session's CSRF token, as the console's forms carry it."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)
