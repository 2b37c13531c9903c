"""Destinations: redacted settings, Test connection, pause and resume, and the vendor's recent answers
(events being retried with their last answer, the newest dead letters with theirs)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from loopwire.destinations.registry import type_of
from loopwire.settings import Secret
from loopwire.store import console as queries
from loopwire.web import format as fmt
from loopwire.web.context import Console
from loopwire.web.layout import button_form, empty, table


def _flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [
            item
            for key, child in value.items()
            for item in _flatten(child, f"{path}.{key}" if path else str(key))
        ]
    return [(path, value)]


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, float):  # Duration
        return float(value)
    raise NotImplementedError(type(value))


def scrub(text: str, options: Any) -> str:
    """`text` (a vendor's answer, say) with every secret of the destination's options replaced by ***."""
    found: list[str] = []

    def collect(value: Any) -> Any:
        if isinstance(value, Secret):
            found.append(value.reveal())
            return "***"
        return _plain(value)

    msgspec.to_builtins(options, enc_hook=collect)
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redacted_settings(options: Any) -> list[tuple[str, str]]:
    """Every setting as (key, value text): secrets are ***, a URL loses any user:password in it."""
    tree = msgspec.to_builtins(options, enc_hook=_plain)
    rows = []
    for key, value in _flatten(tree):
        if isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            if parts.username or parts.password:
                value = urlunsplit(
                    parts._replace(
                        netloc=f"***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
                    )
                )
        rows.append((key, value if isinstance(value, str) else json.dumps(value)))
    return rows


def gather(console: Console) -> dict[str, Any]:
    runtime = console.runtime
    counts = runtime.store.counts(runtime.config.destinations)
    paused_at = queries.paused(runtime.store)
    found = []
    for name, options in runtime.config.destinations.items():
        found.append(
            {
                "name": name,
                "type": type_of(options),
                "config_paused": options.paused,
                "paused": name in runtime.paused,
                "paused_ms": paused_at.get(name),
                "settings": redacted_settings(options),
                "counts": counts.get(name, {}),
                "retrying": queries.retrying(runtime.store, name, 5),
                "dead": queries.dead_letters(runtime.store, name, None, 5),
                "test": console.tests.get(name),
            }
        )
    return {"now": console.now_ms(), "destinations": found}


def _answer(text: str | None) -> str:
    return (
        f"<pre>{fmt.text(text)}</pre>"
        if text
        else '<span class="muted">no answer (timeout or connection error)</span>'
    )


def render(data: dict[str, Any], csrf: str) -> str:
    now = data["now"]
    if not data["destinations"]:
        return empty(
            "No destination is configured. Add Amplitude, Segment or Customer.io under <code>destinations:</code>"
            " in the config (see examples/loopwire.yaml) and restart <code>loopwire serve</code>."
        )
    parts = []
    for d in data["destinations"]:
        name = fmt.text(d["name"])
        if d["config_paused"]:
            state = '<span class="warn">paused by the config</span> (<code>paused: true</code>; change the config to resume)'
            toggle = ""
        elif d["paused"]:
            since = f" {fmt.moment(d['paused_ms'], now)}" if d["paused_ms"] else ""
            state = f'<span class="warn">paused from the console{since}</span>: events are queued, not sent'
            toggle = button_form(f"/api/destinations/{d['name']}/resume", csrf, "Resume", kind="primary")
        else:
            state = '<span class="ok">sending</span>'
            toggle = button_form(f"/api/destinations/{d['name']}/pause", csrf, "Pause")
        test = button_form(f"/api/destinations/{d['name']}/test", csrf, "Test connection")
        result = ""
        if d["test"] is not None:
            at, outcome = d["test"]
            kind = "ok" if outcome.ok else "bad"
            detail = f"<pre>{fmt.text(outcome.detail)}</pre>" if outcome.detail else ""
            result = (
                f'<div class="notice {kind} test-result"><b>{"Connected" if outcome.ok else "Failed"}</b>'
                f" ({fmt.moment(at, now)}): {fmt.text(outcome.summary)}{detail}</div>"
            )
        c = d["counts"]
        numbers = " · ".join(
            f"{label} {fmt.count(c.get(key, 0))}"
            for key, label in (
                ("pending", "pending"),
                ("in_flight", "in flight"),
                ("delivered", "delivered"),
                ("dead", "dead"),
                ("skipped", "skipped"),
            )
        )
        settings = table(
            ["setting", "value"], [[f"<code>{fmt.text(k)}</code>", fmt.text(v)] for k, v in d["settings"]]
        )
        retrying = (
            table(
                ["event", "attempts", "next try", "last failed", "reason", "vendor's answer"],
                [
                    [
                        fmt.text(r["event_id"]),
                        fmt.count(r["attempts"]),
                        fmt.moment(r["next_ms"], now),
                        fmt.moment(r["updated_ms"], now),
                        fmt.text(r["reason"]),
                        _answer(r["response"]),
                    ]
                    for r in d["retrying"]
                ],
            )
            if d["retrying"]
            else '<p class="muted">Nothing is being retried.</p>'
        )
        dead = (
            table(
                ["event", "dead since", "reason", "vendor's answer"],
                [
                    [
                        f'<a href="/dead-letters?destination={name}&amp;event={fmt.text(r["event_id"])}">{fmt.text(r["event_id"])}</a>',
                        fmt.moment(r["dead_ms"], now),
                        fmt.text(r["reason"]),
                        _answer(r["response"]),
                    ]
                    for r in d["dead"]
                ],
            )
            if d["dead"]
            else '<p class="muted">No dead letters.</p>'
        )
        parts.append(
            f'<section id="{name}" class="destination"><h2>{name} <span class="pill">{fmt.text(d["type"])}</span></h2>'
            f"<p>{state}. {numbers}.</p><p>{toggle} {test}</p>{result}"
            f"<h3>Retrying now</h3>{retrying}<h3>Newest dead letters</h3>{dead}"
            f"<details><summary>Settings (secrets shown as ***)</summary>{settings}</details></section>"
        )
    return "".join(parts)
