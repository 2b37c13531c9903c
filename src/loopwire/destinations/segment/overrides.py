"""`loopwire map --to segment --set KEY=VALUE`: change `SegmentOptions` from the command line.

    --set send_identify=true --set route.hash_identifiers=true --set naming.style=title
    --set 'naming.events={email.dropped: Email Dropped}' --set route.properties=campaign_id,subject

VALUE is read as a YAML scalar (`true`, `5`, `30s`, `null`); a dotted KEY reaches into a nested
group (`naming.style`, `route.properties`); a list option takes comma-separated items (or a YAML list
`[a, b]`); a map option takes a YAML mapping (`{All: false, Amplitude: true}`); a text option keeps
VALUE as typed (`message_id_prefix=1` is the string "1"); an empty VALUE unsets an optional key.
Errors are `ConfigError`s naming the key.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from loopwire.destinations.segment.options import SegmentOptions
from loopwire.errors import ConfigError
from loopwire.settings import Duration, Secret, dec_hook


def default_map_options() -> SegmentOptions:
    """Options for `loopwire map` without a config: Customer.io's Segment source defaults, US region."""
    return SegmentOptions(write_key=Secret("map-only"), region="us")


def _members(kind: mi.Type) -> tuple[mi.Type, ...]:
    return kind.types if isinstance(kind, mi.UnionType) else (kind,)


def _struct_fields(kind: mi.Type) -> dict[str, mi.Type] | None:
    for member in _members(kind):
        if isinstance(member, mi.StructType):
            return {field.encode_name: field.type for field in member.fields}
    return None


def _is_text(kind: mi.Type) -> bool:
    return any(
        isinstance(member, mi.StrType) or (isinstance(member, mi.CustomType) and member.cls is Secret)
        for member in _members(kind)
    )


_ROOT = _struct_fields(mi.type_info(SegmentOptions)) or {}


def _field_type(key: str) -> mi.Type:
    fields = _ROOT
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if part not in fields:
            where = ".".join(parts[:depth])
            known = ", ".join(sorted(f"{where}.{name}" if where else name for name in fields))
            raise ConfigError(f"unknown key (known keys here: {known})", key=key)
        kind = fields[part]
        nested = _struct_fields(kind)
        if depth == len(parts) - 1:
            if nested is not None:
                names = ", ".join(f"{key}.{name}" for name in sorted(nested))
                raise ConfigError(f"is a group of settings; set one of {names}", key=key)
            return kind
        if nested is None:
            raise ConfigError(f"`{'.'.join(parts[: depth + 1])}` has no sub-keys", key=key)
        fields = nested
    raise ConfigError("empty key", key=key)


def _value(key: str, text: str, kind: mi.Type) -> Any:
    stripped = text.strip()
    members = _members(kind)
    if stripped == "":
        if any(isinstance(m, mi.NoneType) for m in members):
            return None
        if any(isinstance(m, mi.DictType) for m in members):
            return {}
        if _is_text(kind):
            return ""
    try:
        parsed = yaml.safe_load(stripped)
    except yaml.YAMLError:
        parsed = stripped  # not YAML: take it as typed (msgspec decides whether it fits)
    if any(isinstance(m, mi.DictType) for m in members) and isinstance(parsed, dict):
        return parsed
    if any(isinstance(m, mi.ListType) for m in members) and parsed is not None:
        if isinstance(parsed, list):
            return parsed
        return [item.strip() for item in stripped.split(",") if item.strip()]
    if isinstance(parsed, dict | list):
        raise ConfigError(f"expected a single value, got {stripped!r}", key=key)
    if parsed is not None and not isinstance(parsed, str) and _is_text(kind):
        return stripped  # `message_id_prefix=1` means the text "1"
    return parsed


def _builtin(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Duration):
        return float(value)
    raise NotImplementedError(type(value))


def apply_overrides(options: SegmentOptions, assignments: list[str]) -> SegmentOptions:
    """Each `KEY=VALUE` in order; the result is validated as a whole, like the config file."""
    if not assignments:
        return options
    raw: dict[str, Any] = msgspec.to_builtins(options, enc_hook=_builtin)
    result = options
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"expected KEY=VALUE, got {assignment!r}", key=key or "(--set)")
        value = _value(key, text, _field_type(key))
        *parents, leaf = key.split(".")
        target = raw
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
        try:
            result = msgspec.convert(raw, SegmentOptions, dec_hook=dec_hook, str_keys=True)
        except msgspec.ValidationError as exc:
            message = str(exc).rpartition(" - at `")[0] or str(exc)
            raise ConfigError(message, key=key) from None
    return result
