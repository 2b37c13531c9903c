"""Value types used by config structs: `Duration` ("30s", "5m", "24h", "7d" or seconds) and `Secret`."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


class Duration(float):
    """Seconds, written in the config as a number or with a unit."""

    @classmethod
    def parse(cls, value: Any) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30s, 5m, 24h or 7d")
        if isinstance(value, int | float):
            return cls(value)
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return cls(float(match.group(1)) * _UNITS[match.group(2) or "s"])
        raise ValueError(f"expected a duration such as 30s, 5m, 24h or 7d, got {value!r}")


class Secret:
    """A credential: prints as *** everywhere; `.reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        return Duration.parse(value)
    if kind is Secret:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty string (use ${ENV_VAR} to read it from the environment)")
        return Secret(value)
    raise NotImplementedError(kind)


def enc_hook(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***"
    raise NotImplementedError(type(value))
