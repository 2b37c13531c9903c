"""Untrusted JSON in. Every body loopwire receives is decoded here, so the only thing bad input can
raise is an `InputError` that says what is wrong; nothing a client sends can crash a process or earn
a 5xx (issue 12).

Three things msgspec lets through, or raises as something other than a decode error:
  - invalid UTF-8 raises `UnicodeDecodeError`, and nesting past ~1,000 levels `RecursionError`;
  - nesting under that decodes, and would be stored and forwarded as is: deeper than `MAX_DEPTH` is
    refused (Amplitude takes properties nested at most 40 deep, amplitude.md §2.2; 64 leaves room
    for the envelopes around them);
  - integers past 64 bits decode to Python ints that SQLite cannot bind and no vendor takes: refused
    with the path of the first one. (msgspec itself refuses floats past ±1.8e308 and very long
    integer literals.)

The walk that finds the last two runs only when the body could hold them (more brackets than
`MAX_DEPTH`, or a run of 19 digits), so a small webhook pays one `bytes.translate`, one
`bytes.count` and one search of the result: about 0.75 µs for 460 bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from loopwire.errors import InputError

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# One pass over the body for both signs: digits become "9", opening brackets ("[" and "{") become
# "[", every other byte a space. More than MAX_DEPTH "[" in the result may be a document too deep; a
# run of 19 nines, a number past 64 bits. (Five times faster than a regex, and one pass fewer than
# counting each bracket in the body.)
_SIGNS = bytes(
    ord("9") if 48 <= i <= 57 else ord("[") if i in (ord("["), ord("{")) else ord(" ") for i in range(256)
)
_LONG_RUN = b"9" * 19
_decoder = msgspec.json.Decoder()


def _path(entry: tuple[Any, ...] | None, key: Any) -> str:
    parts = [key]
    while entry is not None:
        parts.append(entry[3])
        entry = entry[2]
    parts.pop()  # the root's own key
    path = "$" + "".join(f".{k}" if type(k) is str else f"[{k}]" for k in reversed(parts))
    return path if len(path) <= 200 else path[:199] + "…"  # keys are the client's: keep errors short


def _walk(doc: Any) -> tuple[str, str] | None:
    """(code, JSON path) of the first container deeper than MAX_DEPTH or integer outside int64.
    A stack entry is (container, depth, parent entry, key in parent): paths are built only for the
    one that is reported."""
    stack: list[tuple[Any, ...]] = [(doc, 1, None, None)]
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        for key, item in value.items() if type(value) is dict else enumerate(value):
            kind = type(item)
            if kind is dict or kind is list:
                if depth == MAX_DEPTH:
                    return "too_deep", _path(entry, key)
                if item:
                    stack.append((item, depth + 1, entry, key))
            elif kind is int and not INT_MIN <= item <= INT_MAX:
                return "number_out_of_range", _path(entry, key)
    return None


def problem(doc: Any) -> InputError | None:
    """The InputError for a decoded document that nests too deep or holds a too-large integer."""
    if type(doc) is not dict and type(doc) is not list:
        if type(doc) is int and not INT_MIN <= doc <= INT_MAX:
            return InputError(400, "number_out_of_range", "the number at `$` is outside the 64-bit range")
        return None
    found = _walk(doc)
    if found is None:
        return None
    code, path = found
    if code == "too_deep":
        return InputError(400, code, f"JSON nests deeper than {MAX_DEPTH} levels (at `{path}`)")
    return InputError(400, code, f"the integer at `{path}` is outside the 64-bit range")


def decode(body: bytes | str) -> Any:
    """The JSON document of `body`, or InputError 400 with code invalid_utf8, invalid_json, too_deep
    or number_out_of_range."""
    try:
        doc = _decoder.decode(body)
    except UnicodeDecodeError:
        raise InputError(400, "invalid_utf8", "body is not valid UTF-8") from None
    except RecursionError:
        raise InputError(400, "too_deep", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except msgspec.DecodeError as exc:
        if "out of range" in str(exc):
            raise InputError(400, "number_out_of_range", f"a number is out of range: {exc}") from None
        raise InputError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    signs = raw.translate(_SIGNS)
    suspect = signs.count(b"[") > MAX_DEPTH or _LONG_RUN in signs
    if suspect:
        found = problem(doc)
        if found is not None:
            raise found
    return doc


def decode_as(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """`decoder.decode(body)` for a typed decoder (such as one that picks out an API key and skips
    the rest), with every failure as None: the caller answers for it once it knows who is asking."""
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
