"""The console's page shell: one inline style sheet (allowed by its hash in the CSP), the navigation,
flash notices and small building blocks (tables, forms with the CSRF token, empty states). Pages load
nothing from anywhere: no script, no font, no image that is not inline SVG."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from html import escape

from starlette.responses import HTMLResponse

from loopwire.web.auth import CSRF_FIELD

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--accent:#2563eb;--bad:#b42318;--ok:#1a7f37;--warn:#9a6700}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:var(--fg);background:#fff}
header{display:flex;align-items:center;gap:1.2rem;padding:.6rem 1.5rem;border-bottom:1px solid var(--line);background:var(--soft);flex-wrap:wrap}
header .brand{font-weight:700;font-size:16px;color:var(--fg);text-decoration:none}
nav a{color:var(--muted);text-decoration:none;margin-right:.9rem;padding:.2rem 0}
nav a.on{color:var(--fg);border-bottom:2px solid var(--accent)}
header form{margin-left:auto}
main{padding:1rem 1.5rem 3rem;max-width:1200px}
h1{font-size:22px;margin:.6rem 0 1rem}h2{font-size:17px;margin:1.6rem 0 .6rem}
table{border-collapse:collapse;margin:.4rem 0 1rem;width:100%}
td,th{border-bottom:1px solid var(--line);padding:.35rem .6rem;text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);background:var(--soft)}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:.4rem 0 1rem}
.card{border:1px solid var(--line);border-radius:6px;padding:.6rem .9rem;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1rem}
svg.chart{width:100%;max-width:680px;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
.empty{border:1px dashed var(--line);border-radius:6px;padding:1rem;color:var(--muted);background:var(--soft)}
.bad{color:var(--bad)}.ok{color:var(--ok)}.warn{color:var(--warn)}.muted{color:var(--muted)}
.notice{border-left:4px solid var(--accent);background:#eef4ff;padding:.6rem .9rem;margin:.6rem 0}
.notice.bad{border-color:var(--bad);background:#fdf0ee;color:var(--fg)}
.notice.ok{border-color:var(--ok);background:#eefaf1;color:var(--fg)}
button{font:inherit;padding:.3rem .8rem;border:1px solid var(--line);border-radius:6px;background:#fff;cursor:pointer}
button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
button.danger{color:var(--bad)}
form.inline{display:inline}
input,select{font:inherit;padding:.3rem .5rem;border:1px solid var(--line);border-radius:6px}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.6rem;overflow:auto;max-height:22rem;white-space:pre-wrap;word-break:break-all}
details summary{cursor:pointer;color:var(--accent)}
code{background:var(--soft);padding:0 .25rem;border-radius:4px}
.login{max-width:440px;margin:4rem auto;border:1px solid var(--line);border-radius:8px;padding:1.5rem}
.login input{width:100%;margin:.4rem 0 1rem}
.pill{display:inline-block;border-radius:10px;padding:0 .5rem;font-size:12px;background:var(--soft);border:1px solid var(--line)}
.pill.delivered{color:var(--ok)}.pill.dead{color:var(--bad)}.pill.pending,.pill.in_flight{color:var(--warn)}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
# Nothing but the inline style sheet and same-origin form posts; no script at all.
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self' data:; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)

NAV = (
    ("/", "overview", "Overview"),
    ("/destinations", "destinations", "Destinations"),
    ("/dead-letters", "dead_letters", "Dead letters"),
    ("/audiences", "audiences", "Audiences"),
    ("/experiments", "experiments", "Experiments"),
    ("/identity", "identity", "Identity"),
    ("/person", "person", "Person"),
)


def csrf_input(csrf: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">'


def button_form(
    action: str, csrf: str, label: str, fields: dict[str, str] | None = None, kind: str = ""
) -> str:
    """A one-button POST form carrying the CSRF token (works without any script)."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in (fields or {}).items()
    )
    css = f' class="{kind}"' if kind else ""
    return (
        f'<form class="inline" method="post" action="{escape(action)}">{csrf_input(csrf)}{hidden}'
        f"<button{css} type=submit>{escape(label)}</button></form>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """A table of already-escaped cells; `numeric` column indexes are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th{' class=n' if i in right else ''}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in right else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def empty(message: str) -> str:
    """An empty state: what is missing and what to do next (`message` is HTML)."""
    return f'<div class="empty">{message}</div>'


def cards(items: Iterable[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b><span>{escape(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def document(title: str, body: str, refresh: int | None = None) -> str:
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{reload}"
        '<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{escape(title)} · loopwire</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def page(
    title: str,
    active: str,
    content: str,
    csrf: str,
    notice: str = "",
    status: int = 200,
    refresh: int | None = None,
) -> HTMLResponse:
    links = "".join(
        f'<a href="{href}"{" class=on" if key == active else ""}>{label}</a>' for href, key, label in NAV
    )
    header = (
        f'<header><a class="brand" href="/">loopwire</a><nav>{links}</nav>'
        f"{button_form('/logout', csrf, 'Log out')}</header>"
    )
    body = f"{header}<main><h1>{escape(title)}</h1>{notice}{content}</main>"
    return html_response(document(title, body, refresh), status)


def html_response(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers={"Content-Security-Policy": CSP})


NOTICES = {
    "paused": ("ok", "Paused: its events are queued, not sent, until you resume it."),
    "resumed": ("ok", "Resumed: its queue is being delivered."),
    "tested": ("", "Connection tested: the answer is below."),
    "replayed": ("ok", "Replayed: back to pending with fresh attempts; delivery picks them up now."),
    "nothing": ("", "Nothing matched: no dead letter was replayed."),
    "unknown": ("bad", "No such destination in the config."),
    "config_paused": ("bad", "Paused by `paused: true` in the config: change the config to resume it."),
}


def notice(request_query: dict[str, str]) -> str:
    """The flash notice an action's redirect asked for (`?done=<key>&n=<count>`), from a fixed list."""
    key = request_query.get("done", "")
    if key not in NOTICES:
        return ""
    kind, message = NOTICES[key]
    amount = request_query.get("n", "")
    if key == "replayed" and amount.isdigit():
        message = f"{int(amount):,} dead letter(s) replayed: back to pending with fresh attempts."
    return f'<div class="notice {kind}">{escape(message)}</div>'
