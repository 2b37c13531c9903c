"""Audience versions and their changelog (seed 000: "version your segment logic in a changelog").

Every audience carries `version`. At start-up the current definitions are checked against the
recorded history: a definition whose logic changed under the same version, or whose version went
down, is a config error; a new audience or a bumped version appends a `VersionRecord`. The store keeps
the records; `loopwire audiences history NAME` prints them with `render_history`.

The fingerprint covers what decides membership and what downstream tools receive — everything but
`version` and `description` — as canonical JSON (sorted keys, defaults left out, durations as
seconds, whole floats as integers), so key order and spelling (`7d` vs `168h`) do not count as change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.table import Table

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.errors import ConfigError

_UNVERSIONED = ("version", "description")


class VersionRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int
    fingerprint: str
    definition_json: str  # the full (library-expanded) definition, canonical JSON
    recorded_ms: int


def _plain(value: Any) -> Any:
    if isinstance(value, float):  # Duration is a float subclass
        number = float(value)
        return int(number) if number.is_integer() else number
    raise NotImplementedError(type(value))


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _builtins(definition: AudienceDefinition) -> dict[str, Any]:
    tree: dict[str, Any] = _normalise(msgspec.to_builtins(definition, enc_hook=_plain))
    return tree


def canonical_json(definition: AudienceDefinition) -> str:
    return msgspec.json.encode(_builtins(definition), order="sorted").decode()


def fingerprint(definition: AudienceDefinition) -> str:
    logic = {k: v for k, v in _builtins(definition).items() if k not in _UNVERSIONED}
    return hashlib.sha256(msgspec.json.encode(logic, order="sorted")).hexdigest()


def changes(old_json: str, new_json: str) -> list[str]:
    """What differs between two recorded definitions, one `path: old → new` line per leaf."""
    old, new = _flatten(msgspec.json.decode(old_json)), _flatten(msgspec.json.decode(new_json))
    lines = []
    for path in sorted(old.keys() | new.keys()):
        if path in ("version",) or old.get(path, _ABSENT) == new.get(path, _ABSENT):
            continue
        lines.append(f"{path}: {_show(old.get(path, _ABSENT))} → {_show(new.get(path, _ABSENT))}")
    return lines


_ABSENT: Any = object()


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else msgspec.json.encode(value).decode()


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{path}.{key}" if path else key))
        return flat
    if isinstance(value, list) and value:
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{path}[{index}]"))
        return flat
    return {path: value}


def check_versions(
    current: Mapping[str, AudienceDefinition],
    recorded: Mapping[str, Sequence[VersionRecord]],
    now_ms: int,
) -> list[VersionRecord]:
    """The records to append for `current` (resolved definitions) given the history so far.

    Raises `ConfigError(key="audiences.<name>.version")` when a definition changed but kept its
    version, or when its version is lower than one already recorded."""
    appended: list[VersionRecord] = []
    for name in sorted(current):
        definition = current[name]
        record = VersionRecord(
            name=name,
            version=definition.version,
            fingerprint=fingerprint(definition),
            definition_json=canonical_json(definition),
            recorded_ms=now_ms,
        )
        history = recorded.get(name) or []
        if not history:
            appended.append(record)
            continue
        latest = max(history, key=lambda r: r.version)
        key = f"audiences.{name}.version"
        if definition.version < latest.version:
            raise ConfigError(
                f"version {definition.version} is lower than the recorded version {latest.version}; versions "
                f"only go up (the changelog is append-only) — set `version: {latest.version + 1}`",
                key=key,
            )
        if definition.version == latest.version and record.fingerprint != latest.fingerprint:
            what = changes(latest.definition_json, record.definition_json)
            summary = "; ".join(what[:3]) + (f"; and {len(what) - 3} more" if len(what) > 3 else "")
            raise ConfigError(
                f"the definition changed but its version is still {latest.version} ({summary}); set "
                f"`version: {latest.version + 1}` so the change is recorded and analyses can tell the "
                "definitions apart",
                key=key,
            )
        if definition.version > latest.version:
            appended.append(record)
    return appended


def render_history(records: Sequence[VersionRecord]) -> Table:
    """A table of one audience's versions, oldest first, each with what changed from the one before."""
    ordered = sorted(records, key=lambda r: (r.version, r.recorded_ms))
    title = f"Audience {ordered[0].name}: version history" if ordered else "No recorded versions"
    table = Table(title=title)
    table.add_column("version", justify="right")
    table.add_column("recorded (UTC)")
    table.add_column("fingerprint")
    table.add_column("changes")
    previous: VersionRecord | None = None
    for record in ordered:
        when = datetime.fromtimestamp(record.recorded_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        if previous is None:
            described = msgspec.json.decode(record.definition_json).get("description", "")
            what = f"first recorded: {described}" if described else "first recorded"
        else:
            lines = changes(previous.definition_json, record.definition_json)
            what = "\n".join(lines) if lines else "no change in logic (version bumped)"
        table.add_row(str(record.version), when, record.fingerprint[:12], what)
        previous = record
    return table
