"""The one exception tree.

LoopwireError
├── ConfigError(key, line)      the config file is wrong; fix the named key
├── InputError(status, code)    a request we received is wrong; answered with a 4xx
├── RetryableError              a destination failed in a way worth retrying
└── PermanentError              a destination refused for good; dead-letter it
"""

from __future__ import annotations


class LoopwireError(Exception):
    """Base of every error loopwire raises on purpose."""


class ConfigError(LoopwireError):
    def __init__(self, message: str, key: str | None = None, line: int | None = None) -> None:
        self.key = key
        self.line = line
        where = ""
        if key is not None:
            where = f"{key}"
            if line is not None:
                where += f" (line {line})"
            where += ": "
        super().__init__(f"{where}{message}")


class InputError(LoopwireError):
    """Bad input from a client: the status and a stable machine-readable code go into the response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class RetryableError(LoopwireError):
    pass


class PermanentError(LoopwireError):
    pass
