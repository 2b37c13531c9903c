"""`loopwire map --to <type> --set KEY=VALUE`: change a destination's options from the command line.

    --set body_content=true --set naming.style=snake --set channels=email,sms

VALUE is read as a YAML scalar (`true`, `5`, `30s`, `null`); a dotted KEY reaches into a nested group
(`route.events`, `batching.max_events`); a list option takes comma-separated items (or a YAML list
`[plan, total]`); a text option keeps VALUE as typed (`identifier=1` is the string "1"); an empty
VALUE unsets an optional key or empties a list. Errors are `ConfigError`s naming the key. One
implementation serves every destination: it reads the options struct's own type information.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml

from loopwire.errors import ConfigError
from loopwire.settings import Duration, Secret, dec_hook

T = TypeVar("T", bound=msgspec.Struct)


def _options(kind: mi.Type) -> tuple[mi.Type, ...]:
    return kind.types if isinstance(kind, mi.UnionType) else (kind,)


def _fields(kind: mi.Type) -> dict[str, mi.Type] | None:
    struct = next((m for m in _options(kind) if isinstance(m, mi.StructType)), None)
    return None if struct is None else {f.encode_name: f.type for f in struct.fields}


def _texty(kind: mi.Type) -> bool:
    return any(
        isinstance(m, mi.StrType) or (isinstance(m, mi.CustomType) and m.cls is Secret)
        for m in _options(kind)
    )


def _lookup(root: dict[str, mi.Type], key: str) -> mi.Type:
    fields, parts = root, key.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth])
        if part not in fields:
            known = ", ".join(sorted(f"{here}.{n}" if here else n for n in fields))
            raise ConfigError(f"unknown key (known keys here: {known})", key=key)
        kind = fields[part]
        nested = _fields(kind)
        if depth == len(parts) - 1:
            if nested is not None:
                raise ConfigError(
                    f"is a group of settings; set one of {', '.join(f'{key}.{n}' for n in sorted(nested))}",
                    key=key,
                )
            return kind
        if nested is None:
            raise ConfigError(f"`{'.'.join(parts[: depth + 1])}` has no sub-keys", key=key)
        fields = nested
    raise ConfigError("empty key", key=key)


def _parse(key: str, text: str, kind: mi.Type) -> Any:
    raw = text.strip()
    is_list = any(isinstance(m, mi.ListType) for m in _options(kind))
    is_dict = any(isinstance(m, mi.DictType) for m in _options(kind))
    if not raw:
        if any(isinstance(m, mi.NoneType) for m in _options(kind)):
            return None
        if is_list:
            return []
        if is_dict:
            return {}
        if _texty(kind):
            return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw  # not YAML: msgspec decides whether the text fits
    if is_list and value is not None:
        return value if isinstance(value, list) else [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(value, dict) and is_dict:
        return value  # a mapping option: `integrations={All: false, Amplitude: true}`
    if isinstance(value, dict | list):
        raise ConfigError(f"expected a single value, got {raw!r}", key=key)
    if value is not None and not isinstance(value, str) and _texty(kind):
        return raw
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Duration):
        return float(value)
    raise NotImplementedError(type(value))


def apply_struct_overrides(options: T, assignments: list[str]) -> T:
    """Each `KEY=VALUE` in order on any options struct; the result is validated as a whole."""
    if not assignments:
        return options
    kind = type(options)
    root = _fields(mi.type_info(kind)) or {}
    raw: dict[str, Any] = msgspec.to_builtins(options, enc_hook=_plain)
    raw.pop("type", None)  # the tag is not a field
    result = options
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"expected KEY=VALUE, got {assignment!r}", key=key or "(--set)")
        value = _parse(key, text, _lookup(root, key))
        *parents, leaf = key.split(".")
        target = raw
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
        try:
            result = msgspec.convert(raw, kind, dec_hook=dec_hook, str_keys=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(str(exc).rpartition(" - at `")[0] or str(exc), key=key) from None
    return result
