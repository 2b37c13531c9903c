"""The console's locks over plain HTTP: sessions, wrong tokens, CSRF, the rate limit, expiry, the
/metrics bearer and the refusal to listen on a non-loopback address without a token."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from loopwire.app import Runtime, create_app
from loopwire.errors import ConfigError
from loopwire.sandbox.amplitude import AmplitudeSandbox
from tests.conftest import API_KEY, CONSOLE_TOKEN, SIGNING_KEY, Clock, make_config
from tests.helpers.console import csrf_of, login
from tests.helpers.servers import serve_app

PAGES = (
    "/",
    "/destinations",
    "/dead-letters",
    "/audiences",
    "/experiments",
    "/identity",
    "/person?key=cust_000123",
)
ACTIONS = (
    "/api/dead-letters/replay",
    "/api/destinations/amplitude/pause",
    "/api/destinations/amplitude/resume",
    "/api/destinations/amplitude/test",
)
METRICS_TOKEN = "metrics-token-0123456789"


@contextmanager
def serve(
    tmp_path: Path, clock: Clock | None = None, env: dict[str, str] | None = None, **server: Any
) -> Iterator[tuple[str, Runtime]]:
    box = AmplitudeSandbox(api_keys=frozenset({API_KEY}))
    with serve_app(box.app) as sandbox_url:
        config = make_config(tmp_path / "loopwire.db", sandbox_url, env=env)
        if server:
            config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, **server))
        app = create_app(config, clock=clock or Clock())
        with serve_app(app) as url:
            yield url, app.state.runtime


def test_without_a_session_pages_redirect_to_login_and_api_answers_401(tmp_path: Path) -> None:
    with serve(tmp_path) as (url, _):
        for path in PAGES:
            answer = httpx.get(url + path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login?next=%2F"), path
        for path in ("/api/status", "/api/dead-letters"):
            answer = httpx.get(url + path)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthenticated"
        for path in ACTIONS:
            assert httpx.post(url + path, data={"all": "1"}).status_code == 401, path
        # the ingest, health and readiness endpoints keep their own rules
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert (
            httpx.post(f"{url}/webhooks/customerio", content=b"{}").json()["error"]["code"]
            == "missing_signature"
        )
        assert httpx.get(f"{url}/openapi.json").status_code == 200


def test_a_wrong_token_is_refused_and_the_right_one_gives_a_locked_down_cookie(tmp_path: Path) -> None:
    with serve(tmp_path) as (url, _):
        wrong = httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN + "x"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "That is not the console token." in wrong.text and CONSOLE_TOKEN not in wrong.text
        assert (
            httpx.get(
                f"{url}/api/status", headers={"Authorization": "Bearer nope-nope-nope-nope"}
            ).status_code
            == 401
        )
        right = httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN, "next": "/dead-letters"})
        assert right.status_code == 303 and right.headers["location"] == "/dead-letters"
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=43200" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback; see the next test for the rest
        assert (
            httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN, "next": "//evil.example"}).headers[
                "location"
            ]
            == "/"
        )
        with login(url) as operator:
            assert operator.get("/api/status").status_code == 200
            page = operator.get("/destinations")
            assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
            assert "api_key" in page.text and API_KEY not in page.text and SIGNING_KEY not in page.text
            assert "<td>***</td>" in page.text
            operator.post("/logout", data={"csrf_token": csrf_of(page.text)})
            assert operator.get("/api/status").status_code == 401  # the session is gone from the server
        # a script may use the token as a bearer instead of a session
        bearer = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
        assert bearer.status_code == 200 and bearer.json()["paused"] == []


def test_the_cookie_is_secure_except_on_loopback_over_plain_http(tmp_path: Path) -> None:
    with serve(tmp_path, host="0.0.0.0") as (url, _):  # a token is set, so it may start
        cookie = httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN}).headers["set-cookie"].lower()
        assert "secure" in cookie
        page = httpx.get(f"{url}/login").text
        assert "will not keep it" in page  # says why a login over plain HTTP cannot stick


def test_state_changing_actions_need_the_csrf_token(tmp_path: Path) -> None:
    with serve(tmp_path) as (url, runtime), login(url) as operator:
        page = operator.get("/destinations").text
        csrf = csrf_of(page)
        for path in ACTIONS:
            missing = operator.post(path, data={"all": "1"})
            assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed", path
            # another last character (a token's last one is one of 16: "A" one time in 16)
            other = "B" if csrf.endswith("A") else "A"
            wrong = operator.post(path, data={"all": "1"}, headers={"X-CSRF-Token": csrf[:-1] + other})
            assert wrong.status_code == 403, path
        assert runtime.paused == set()
        cross = operator.post(
            "/api/destinations/amplitude/pause",
            data={"csrf_token": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        # the form field or the header, and the action is done
        paused = operator.post("/api/destinations/amplitude/pause", data={"csrf_token": csrf})
        assert (
            paused.status_code == 303 and paused.headers["location"] == "/destinations?done=paused#amplitude"
        )
        assert runtime.paused == {"amplitude"}
        resumed = operator.post("/api/destinations/amplitude/resume", headers={"X-CSRF-Token": csrf}, json={})
        assert resumed.status_code == 200 and resumed.json() == {"destination": "amplitude", "paused": False}
        assert runtime.paused == set()
        assert operator.post("/logout").status_code == 403  # logging out is an action too


def test_login_attempts_are_rate_limited(tmp_path: Path) -> None:
    clock = Clock()
    with serve(tmp_path, clock=clock) as (url, _):
        for _ in range(5):
            assert httpx.post(f"{url}/login", data={"token": "wrong-wrong-wrong"}).status_code == 401
        limited = httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN})  # even the right one waits
        assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 60
        bearer = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
        assert bearer.status_code == 429
        clock.advance(61)
        assert httpx.post(f"{url}/login", data={"token": CONSOLE_TOKEN}).status_code == 303


def test_sessions_expire(tmp_path: Path) -> None:
    clock = Clock()
    with serve(tmp_path, clock=clock) as (url, _), login(url) as operator:
        assert operator.get("/").status_code == 200
        clock.advance(12 * 3600 + 1)  # console.session_ttl: 12 h
        assert operator.get("/").status_code == 303
        assert operator.get("/api/status").status_code == 401


def test_metrics_bearer_token(tmp_path: Path) -> None:
    with serve(tmp_path, env={"LOOPWIRE_METRICS_TOKEN": METRICS_TOKEN}) as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert (
            httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"}).status_code
            == 401
        )
        answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert answer.status_code == 200 and "loopwire_ingest_requests_total" in answer.text


def test_metrics_without_its_token_is_open_on_loopback_and_takes_the_console_token_elsewhere(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 200
    (tmp_path / "wide").mkdir()
    with serve(tmp_path / "wide", host="0.0.0.0") as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert (
            httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"}).status_code
            == 200
        )


def test_without_a_token_the_console_is_locked_on_loopback(tmp_path: Path) -> None:
    with serve(tmp_path, env={"LOOPWIRE_CONSOLE_TOKEN": ""}) as (url, _):
        page = httpx.get(f"{url}/login")
        assert "The console is locked" in page.text and "LOOPWIRE_CONSOLE_TOKEN" in page.text
        assert httpx.post(f"{url}/login", data={"token": ""}).status_code == 503
        assert httpx.get(f"{url}/").status_code == 303
        assert (
            httpx.get(f"{url}/api/status", headers={"Authorization": "Bearer anything-anything"}).status_code
            == 401
        )


def test_refuses_to_serve_on_a_wide_address_without_a_token(tmp_path: Path) -> None:
    config = make_config(tmp_path / "x.db", "http://127.0.0.1:9", env={"LOOPWIRE_CONSOLE_TOKEN": ""})
    wide = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="set LOOPWIRE_CONSOLE_TOKEN"):
        create_app(wide)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        make_config(tmp_path / "y.db", "http://127.0.0.1:9", env={"LOOPWIRE_CONSOLE_TOKEN": "short"})
    (tmp_path / "loopwire.yaml").write_text(
        "sources:\n  customerio_webhooks:\n    signing_keys: [abc]\n"
        "destinations:\n  amplitude: {type: amplitude, api_key: k, region: us}\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopwire",
            "serve",
            "--config",
            str(tmp_path / "loopwire.yaml"),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    message = done.stderr.strip()
    assert message == (
        "loopwire serve will not listen on 0.0.0.0 without a console token: set LOOPWIRE_CONSOLE_TOKEN"
        " (at least 16 characters) so the console and /api/* are locked, or bind 127.0.0.1."
    )


def test_serve_help_says_how_the_console_is_locked() -> None:
    from typer.testing import CliRunner

    from loopwire.cli import app

    text = " ".join(CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output.split())
    assert "LOOPWIRE_CONSOLE_TOKEN" in text and "LOOPWIRE_METRICS_TOKEN" in text
    assert "refuses to listen on a non-loopback address" in text
