"""The baseline servers: hello-world apps on the same stack `loopwire serve` runs on.

`app` is a bare ASGI app: it reads the whole request body (as the webhook source must) and answers a
small JSON 200 — no framework, no signature check, no parsing, no commit. `starlette_app` does the
same through Starlette (routing, Request, Response), the framework loopwire is built on, to show how
much of the distance to the bare app is the framework's. Both run the way cli.py runs loopwire:
uvicorn, one process, uvloop, httptools, warning-level log, no access log.

    python -m bench.hello_app --port 8500 [--framework starlette]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_BODY = b'{"status":"accepted"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body to the end, like a webhook handler
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


async def _hello(request: Request) -> Response:
    await request.body()
    return Response(_BODY, media_type="application/json")


async def _healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


starlette_app = Starlette(
    routes=[
        Route("/healthz", _healthz),
        Route("/webhooks/customerio", _hello, methods=["POST"]),
    ]
)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Hello-world baseline server (loopback only).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--framework", choices=["none", "starlette"], default="none")
    args = parser.parse_args()
    uvicorn.run(
        starlette_app if args.framework == "starlette" else app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
