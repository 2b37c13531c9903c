"""What the three sandboxes' control APIs share: the fault-rule queue endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loopwire.httpio import json_response


class Rule(Protocol):
    def problem(self) -> str | None: ...


R = TypeVar("R", bound=Rule)


async def fault_queue(
    request: Request, faults: list[R], rule_type: type[R], error: Callable[[str], dict[str, Any]]
) -> Response:
    """`GET` lists the queued rules, `DELETE` clears them, `POST` queues one rule or a list of them
    (all or none: an invalid rule is answered 400 with `error(text)` in the vendor's error shape)."""
    if request.method == "DELETE":
        cleared = len(faults)
        faults.clear()
        return json_response({"cleared": cleared})
    if request.method == "GET":
        return json_response({"count": len(faults), "faults": faults})
    try:
        parsed = msgspec.json.decode(await request.body(), type=rule_type | list[rule_type])  # type: ignore[valid-type]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return json_response(error(f"invalid fault rule: {exc}"), 400)
    rules: list[R] = parsed if isinstance(parsed, list) else [parsed]
    for rule in rules:
        problem = rule.problem()
        if problem:
            return json_response(error(f"invalid fault rule: {problem}"), 400)
    faults.extend(rules)
    return json_response({"queued": len(rules), "pending": len(faults)})
