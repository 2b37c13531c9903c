"""The login page: the console token in, a session cookie out. It says why when the console is locked
(no token configured) and when the cookie could not be kept (plain HTTP on a non-loopback address)."""

from __future__ import annotations

from html import escape

from loopwire.config import CONSOLE_TOKEN_ENV
from loopwire.web.layout import document

LOCKED = (
    "The console is locked: no console token is configured. Set "
    f"<code>{CONSOLE_TOKEN_ENV}</code> (at least 16 characters, e.g. <code>openssl rand -hex 32</code>)"
    " in the environment of <code>loopwire serve</code> and restart it."
)


def render(next_path: str, message: str = "", locked: bool = False, insecure: bool = False) -> str:
    notes = ""
    if locked:
        notes += f'<div class="notice bad">{LOCKED}</div>'
    if insecure:
        notes += (
            '<div class="notice bad">This page came over plain HTTP to a non-loopback address: the session'
            " cookie is Secure, so your browser will not keep it. Serve loopwire behind HTTPS (docs/console.md).</div>"
        )
    if message:
        notes += f'<div class="notice bad" role="alert">{escape(message)}</div>'
    form = (
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="token">Console token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button class="primary" type="submit">Log in</button></form>'
    )
    body = (
        '<div class="login"><h1>loopwire</h1>'
        f"<p>Log in with the console token ({CONSOLE_TOKEN_ENV}).</p>{notes}{'' if locked else form}</div>"
    )
    return document("Log in", body)
