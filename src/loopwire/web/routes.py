"""The console's routes: its pages, the login, `/api/*` (reads and actions) and the guard of
`/metrics`. Every page's reads run in a thread (`asyncio.to_thread`), never on the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.destinations.registry import test_connection
from loopwire.store import console as queries
from loopwire.web import auth as guard
from loopwire.web.auth import Auth, Session
from loopwire.web.context import Console
from loopwire.web.layout import html_response, notice, page
from loopwire.web.lift_cache import LiftCache
from loopwire.web.pages import (
    audiences,
    dead_letters,
    destinations,
    experiments,
    identity,
    login,
    overview,
    person,
)
from loopwire.web.trend import Trend

if TYPE_CHECKING:
    from loopwire.app import Runtime

log = logging.getLogger("loopwire.console")
Endpoint = Callable[[Request], Awaitable[Response]]


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


def _from_form(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")


def _done(request: Request, target: str, key: str, body: dict[str, Any], status: int = 200) -> Response:
    """A form post goes back to its page with a notice (303); a fetch or script gets JSON."""
    if _from_form(request):
        joiner = "&" if "?" in target else "?"
        count = f"&n={body['replayed']}" if "replayed" in body else ""
        anchor = (
            f"#{quote(body['destination'])}" if "destination" in body and target == "/destinations" else ""
        )
        return RedirectResponse(f"{target}{joiner}done={key}{count}{anchor}", 303)
    return _json(body, status)


def console_routes(runtime: Runtime, metrics: Endpoint) -> tuple[list[Route], Console]:
    """The routes of the console and /api/*, and `/metrics` behind its guard."""
    auth = Auth(runtime.config.console, runtime.config.server.host, runtime.clock)
    trend = Trend(runtime.store, runtime.config.destinations, runtime.metrics.registry, runtime.clock)
    console = Console(
        runtime, auth, trend, LiftCache(lambda key: experiments.compute(console, key), runtime.clock)
    )
    dests = runtime.config.destinations

    # -- login -----------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        target = guard.local_path(request.query_params.get("next"))
        if auth.session(request) is not None:
            return RedirectResponse(target, 303)
        insecure = not auth.loopback and request.url.scheme == "http"
        return _secured(html_response(login.render(target, locked=auth.locked, insecure=insecure)))

    async def login_submit(request: Request) -> Response:
        form = await guard.read_form(request)
        target = guard.local_path(form.get("next"))
        client = guard.client_of(request)
        if auth.locked:
            return _secured(html_response(login.render(target, locked=True), 503))
        if not guard.same_origin(request):
            return guard.error(403, "cross_origin", "a login from another site's page is refused")
        wait = auth.retry_after(client)
        if wait is not None:
            seconds = int(wait) + 1
            text = f"Too many wrong tokens from your address: try again in {seconds} s."
            response = html_response(login.render(target, text), 429)
            response.headers["Retry-After"] = str(seconds)
            return _secured(response)
        if not auth.check_token(client, form.get("token", "")):
            log.warning("console login refused for %s: wrong token", client)
            return _secured(html_response(login.render(target, "That is not the console token."), 401))
        cookie, _ = auth.start_session()
        moved = RedirectResponse(target, 303)
        auth.set_cookie(moved, request, cookie)
        return _secured(moved)

    async def logout(request: Request, form: dict[str, str]) -> Response:
        auth.end_session(request)
        response = RedirectResponse(guard.LOGIN_PATH, 303)
        response.delete_cookie(
            guard.COOKIE, path="/", httponly=True, samesite="strict", secure=auth.secure_cookie(request)
        )
        return response

    # -- pages -----------------------------------------------------------------------------------
    def view(
        title: str, active: str, build: Callable[[Request, Session], Awaitable[str | tuple[str, int]]]
    ) -> Endpoint:
        async def handler(request: Request, session: Session) -> Response:
            built = await build(request, session)
            content, refresh = built if isinstance(built, tuple) else (built, None)  # seconds to reload in
            return page(
                title, active, content, session.csrf, notice(dict(request.query_params)), refresh=refresh
            )

        return guard.page(auth, handler)

    async def overview_page(request: Request, session: Session) -> str:
        data = await asyncio.to_thread(overview.gather, console, request.query_params.get("range", "24h"))
        return overview.render(data)

    async def destinations_page(request: Request, session: Session) -> str:
        return destinations.render(await asyncio.to_thread(destinations.gather, console), session.csrf)

    async def dead_letters_page(request: Request, session: Session) -> str:
        q = request.query_params
        data = await asyncio.to_thread(
            dead_letters.gather,
            console,
            q.get("destination") or None,
            q.get("reason") or None,
            q.get("event") or None,
        )
        return dead_letters.render(data, session.csrf)

    async def audiences_page(request: Request, session: Session) -> str:
        return audiences.render(
            await asyncio.to_thread(audiences.gather, console, request.query_params.get("name"))
        )

    async def experiments_page(request: Request, session: Session) -> str | tuple[str, int]:
        key = experiments.pick(console, request.query_params.get("id"))
        found = await console.lifts.get(key) if key is not None else None
        content = experiments.render(experiments.gather(console, key, found))
        return (content, 3) if key is not None and found is None else content

    async def identity_page(request: Request, session: Session) -> str:
        return identity.render(await asyncio.to_thread(identity.gather, console))

    async def person_page(request: Request, session: Session) -> str:
        key = request.query_params.get("key", "").strip()[:200]
        return person.render(await asyncio.to_thread(person.gather, console, key))

    # -- /api ------------------------------------------------------------------------------------
    async def status(request: Request) -> Response:
        return _json(await asyncio.to_thread(runtime.status))

    async def dead_letter_list(request: Request) -> Response:
        q = request.query_params
        limit = min(int(q["limit"]) if q.get("limit", "").isdigit() else 100, 1000)
        rows = await asyncio.to_thread(
            queries.dead_letters, runtime.store, q.get("destination") or None, q.get("reason") or None, limit
        )
        return _json(rows)

    async def replay(request: Request, form: dict[str, str]) -> Response:
        dest = form.get("destination") or None
        reason = form.get("reason") or None
        event_id = form.get("event_id") or None
        if dest is not None and dest not in dests:
            return guard.error(404, "unknown_destination", f"no destination {dest!r} in the config")
        if event_id is None and form.get("all") != "1":
            return guard.error(
                400, "say_which", "send event_id, or all=1 to replay every dead letter that matches"
            )
        now = console.now_ms()
        count = await asyncio.to_thread(
            runtime.store.replay_dead, now, dest, [event_id] if event_id else None, reason
        )
        for name in [dest] if dest else list(dests):
            runtime._wake(name)
        log.warning(
            "console: %d dead letter(s) replayed (destination %s, reason %s)",
            count,
            dest or "any",
            reason or "any",
        )
        target = "/dead-letters" + (f"?destination={quote(dest)}" if dest else "")
        return _done(request, target, "replayed" if count else "nothing", {"replayed": count})

    def toggle(pause: bool) -> guard.FormHandler:
        async def handler(request: Request, form: dict[str, str]) -> Response:
            name = request.path_params["name"]
            if name not in dests:
                return guard.error(404, "unknown_destination", f"no destination {name!r} in the config")
            if not pause and dests[name].paused:
                return guard.error(
                    409, "paused_by_config", "`paused: true` in the config: change the config to resume it"
                )
            await runtime.set_paused(name, pause)
            return _done(
                request,
                "/destinations",
                "paused" if pause else "resumed",
                {"destination": name, "paused": pause},
            )

        return handler

    async def test(request: Request, form: dict[str, str]) -> Response:
        name = request.path_params["name"]
        if name not in dests:
            return guard.error(404, "unknown_destination", f"no destination {name!r} in the config")
        found = await test_connection(dests[name])
        result = ConnectionResult(  # the vendor may echo a key back: never show it
            found.ok,
            destinations.scrub(found.summary, dests[name]),
            destinations.scrub(found.detail, dests[name]),
        )
        console.tests[name] = (console.now_ms(), result)
        body = {"destination": name, "ok": result.ok, "summary": result.summary, "detail": result.detail}
        return _done(request, "/destinations", "tested", body)

    async def metrics_guarded(request: Request) -> Response:
        if not auth.metrics_allowed(request):
            return guard.error(
                401,
                "unauthenticated",
                "send Authorization: Bearer <LOOPWIRE_METRICS_TOKEN>",
                {"WWW-Authenticate": "Bearer"},
            )
        return await metrics(request)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", guard.action(auth, logout), methods=["POST"]),
        Route("/", view("Overview", "overview", overview_page)),
        Route("/destinations", view("Destinations", "destinations", destinations_page)),
        Route("/dead-letters", view("Dead letters", "dead_letters", dead_letters_page)),
        Route("/audiences", view("Audiences", "audiences", audiences_page)),
        Route("/experiments", view("Experiments", "experiments", experiments_page)),
        Route("/identity", view("Identity", "identity", identity_page)),
        Route("/person", view("Person", "person", person_page)),
        Route("/api/status", guard.api(auth, status)),
        Route("/api/dead-letters", guard.api(auth, dead_letter_list)),
        Route("/api/dead-letters/replay", guard.action(auth, replay), methods=["POST"]),
        Route("/api/destinations/{name}/pause", guard.action(auth, toggle(True)), methods=["POST"]),
        Route("/api/destinations/{name}/resume", guard.action(auth, toggle(False)), methods=["POST"]),
        Route("/api/destinations/{name}/test", guard.action(auth, test), methods=["POST"]),
        Route("/metrics", metrics_guarded),
    ]
    return routes, console


def _secured(response: Response) -> Response:
    response.headers.update(guard.SECURITY_HEADERS)
    return response
