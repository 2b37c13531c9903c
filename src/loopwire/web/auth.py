"""Who may use the console, `/api/*` and its actions, and `/metrics`.

- One operator token (`console.token`, else `LOOPWIRE_CONSOLE_TOKEN`). The login page exchanges it
  for a session: a random id in a cookie (HttpOnly, SameSite=Strict, Secure unless the server binds a
  loopback address and the request came over plain HTTP), kept here in memory as its SHA-256, so the
  process never holds a usable cookie value. Sessions expire after `console.session_ttl`; a restart
  logs everyone out.
- Every state-changing request carries the session's CSRF token: the `csrf_token` field of a form or
  the `X-CSRF-Token` header of a fetch. A script may instead send `Authorization: Bearer <token>` to
  `/api/*`; a browser never attaches that on its own, so it needs no CSRF token.
- Tokens are compared as SHA-256 digests with `hmac.compare_digest`: constant time, length hidden.
- Wrong tokens are rate-limited per client address (`console.max_login_failures` a minute) and in
  total (ten times that), answered 429 with Retry-After.
- `/metrics`: a bearer `console.metrics_token` (LOOPWIRE_METRICS_TOKEN) when set; otherwise open on a
  loopback bind, and on any other bind it takes the console token as its bearer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from loopwire.config import CONSOLE_TOKEN_ENV, ConsoleConfig
from loopwire.settings import Secret

COOKIE = "loopwire_session"
LOGIN_PATH = "/login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
FAILURE_WINDOW_S = 60.0
MAX_SESSIONS = 1_000  # the oldest are dropped past this: a session costs memory until it expires
MAX_FORM_BYTES = 16_384
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # Origin stays on our own posts (CSRF check); nothing leaks out
    "Cache-Control": "no-store",  # pages carry personal data: no copy in a shared cache or history
}


def is_loopback(host: str) -> bool:
    """Does `server.host` listen on loopback only (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(host: str) -> str | None:
    """Why `loopwire serve` must not start on `host` without a console token, or None if it may."""
    if is_loopback(host):
        return None
    return (
        f"loopwire serve will not listen on {host} without a console token: set {CONSOLE_TOKEN_ENV}"
        " (at least 16 characters) so the console and /api/* are locked, or bind 127.0.0.1."
    )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def same(given: str, expected: Secret) -> bool:
    return hmac.compare_digest(_digest(given), _digest(expected.reveal()))


@dataclass
class Session:
    csrf: str
    created: float
    expires: float


class Auth:
    def __init__(self, console: ConsoleConfig, host: str, clock: Callable[[], float] = time.time) -> None:
        self._token = console.token
        self._metrics_token = console.metrics_token
        self.ttl = float(console.session_ttl)
        self.max_failures = console.max_login_failures
        self.loopback = is_loopback(host)
        self._clock = clock
        self._sessions: dict[bytes, Session] = {}
        self._failures: dict[str, deque[float]] = {}
        self._all_failures: deque[float] = deque()

    @property
    def locked(self) -> bool:
        """No token is configured: nobody can log in."""
        return self._token is None

    # -- sessions ------------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        key = _digest(cookie)
        found = self._sessions.get(key)
        if found is None:
            return None
        if self._clock() >= found.expires:
            del self._sessions[key]
            return None
        return found

    def start_session(self) -> tuple[str, Session]:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]  # dicts keep insertion order: the oldest
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created=now, expires=now + self.ttl)
        self._sessions[_digest(cookie)] = session
        return cookie, session

    def end_session(self, request: Request) -> None:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            self._sessions.pop(_digest(cookie), None)

    def secure_cookie(self, request: Request) -> bool:
        """Secure everywhere but plain HTTP on a loopback bind, where a browser could not send it back
        over http://127.0.0.1 in every browser (behind a TLS proxy the request's scheme is https)."""
        return not (self.loopback and request.url.scheme == "http")

    def set_cookie(self, response: Response, request: Request, cookie: str) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookie(request),
        )

    # -- tokens and the rate limit ---------------------------------------------------------------
    def retry_after(self, client: str) -> float | None:
        """Seconds this client must wait before trying a token again (None: it may try now)."""
        now = self._clock()
        waits = []
        for window, limit in (
            (self._failures.get(client), self.max_failures),
            (self._all_failures, self.max_failures * 10),
        ):
            if window is None:
                continue
            while window and window[0] <= now - FAILURE_WINDOW_S:
                window.popleft()
            if len(window) >= limit:
                waits.append(window[0] + FAILURE_WINDOW_S - now)
        return max(waits) if waits else None

    def check_token(self, client: str, given: str) -> bool:
        """Is `given` the console token? A wrong one counts against the client's rate limit."""
        if self._token is not None and same(given, self._token):
            return True
        now = self._clock()
        if len(self._failures) > 10_000:  # addresses seen once, long ago: forget them
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - FAILURE_WINDOW_S}
        self._failures.setdefault(client, deque()).append(now)
        self._all_failures.append(now)
        return False

    def bearer(self, request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def metrics_allowed(self, request: Request) -> bool:
        given = self.bearer(request)
        if self._metrics_token is not None:
            return given is not None and same(given, self._metrics_token)
        if self.loopback:
            return True
        return given is not None and self._token is not None and same(given, self._token)

    def csrf_ok(self, request: Request, session: Session, form: dict[str, str]) -> bool:
        given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD) or ""
        if not hmac.compare_digest(_digest(given), _digest(session.csrf)):
            return False
        return same_origin(request)


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def same_origin(request: Request) -> bool:
    """A request a page of another site made carries its Origin: refuse it (SameSite=Strict already
    keeps the cookie off it; this covers browsers that send no SameSite)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    # the host only: behind a TLS proxy that does not say so, the page is https and the request http
    return urlsplit(origin).netloc == request.headers.get("host", "")


def local_path(target: str | None) -> str:
    """Where to go after logging in: a path of this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form or a JSON object body (strings only), bounded in size."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return {}
        return {str(k): v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status, headers={**SECURITY_HEADERS, **(headers or {})}
    )


Handler = Callable[[Request, Session | None], Awaitable[Response]]
FormHandler = Callable[[Request, dict[str, str]], Awaitable[Response]]


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", 303, headers=SECURITY_HEADERS)


def page(
    auth: Auth, handler: Callable[[Request, Session], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """A console page: a session or a redirect to the login page."""

    async def endpoint(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return _login_redirect(request)
        response = await handler(request, session)
        response.headers.update(SECURITY_HEADERS)
        return response

    return endpoint


def _unauthenticated() -> Response:
    return error(401, "unauthenticated", "log in at /login, or send Authorization: Bearer <console token>")


def api(
    auth: Auth, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """A read under /api/: a session cookie or the console token as a bearer, else 401."""

    async def endpoint(request: Request) -> Response:
        if auth.session(request) is None:
            refused = _bearer_refused(auth, request)
            if refused is not None:
                return refused
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return endpoint


def _bearer_refused(auth: Auth, request: Request) -> Response | None:
    given = auth.bearer(request)
    if given is None:
        return _unauthenticated()
    client = client_of(request)
    wait = auth.retry_after(client)
    if wait is not None:
        return error(
            429, "too_many_attempts", "too many wrong tokens; wait", {"Retry-After": str(int(wait) + 1)}
        )
    if not auth.check_token(client, given):
        return _unauthenticated()
    return None


def action(auth: Auth, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A state-changing POST: a session and its CSRF token (form field or header), or a bearer token."""

    async def endpoint(request: Request) -> Response:
        form = await read_form(request)
        session = auth.session(request)
        if session is None:
            refused = _bearer_refused(auth, request)
            if refused is not None:
                return refused
        elif not auth.csrf_ok(request, session, form):
            return error(
                403, "csrf_failed", "the CSRF token is missing or wrong: reload the page and try again"
            )
        response = await handler(request, form)
        response.headers.update(SECURITY_HEADERS)
        return response

    return endpoint
