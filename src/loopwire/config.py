"""One YAML file → typed config objects.

`${ENV}` (or `${ENV:-default}`) is replaced from the environment; unknown keys are rejected; every
error names the key and its line, e.g. `destinations.amplitude.region (line 12): Expected 'us' or 'eu'`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from loopwire.audiences.definitions import AudienceDefinition
from loopwire.audiences.holdouts import Experiment
from loopwire.audiences.library import resolve_audiences
from loopwire.destinations.amplitude.options import AmplitudeOptions
from loopwire.destinations.customerio.options import CustomerioOptions
from loopwire.destinations.segment.options import SegmentOptions
from loopwire.errors import ConfigError
from loopwire.settings import Duration, Secret, dec_hook

DestinationOptions = AmplitudeOptions | SegmentOptions | CustomerioOptions


# Customer.io retries a webhook for up to 7 days (reference/customerio.md §1.1) and Amplitude
# dedupes an insert_id for 7 days (amplitude.md §2.4). The log is loopwire's dedupe of event ids,
# so an event must stay at least that long, or a late redelivery would be taken for a new event.
MIN_EVENTS_RETENTION = Duration(7 * 86_400.0)


class RetentionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long rows stay (docs/operations.md#retention). Every window is unset by default: nothing
    is deleted unless the operator says so."""

    events: Duration | None = None  # events received longer ago go (with their delivered rows)
    delivered: Duration | None = None  # delivered and skipped outbox rows settled longer ago go
    dead: Duration | None = None  # dead letters that died longer ago go (unset: kept until replayed)
    interval: Duration = Duration(3600.0)  # how often `loopwire serve` trims

    @property
    def enabled(self) -> bool:
        return self.events is not None or self.delivered is not None or self.dead is not None


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # `sqlite`: one file (`path`), the embedded default. `postgres`: one database (`dsn`, a libpq
    # connection string, e.g. `${LOOPWIRE_PG_DSN}`) that several `loopwire serve` nodes share
    # (store/postgres.py). The DSN may hold a password: it is a Secret, printed as ***, never logged.
    type: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "loopwire.db"
    dsn: Secret | None = None
    group_commit_max: int = 512  # most writes folded into one durable transaction
    pool_max: int = 8  # PostgreSQL: read connections per node (and one writer, one lease)
    retention: RetentionConfig = RetentionConfig()  # off: every row is kept

    def __post_init__(self) -> None:
        if self.type == "postgres" and self.dsn is None:
            raise ValueError("type: postgres needs `dsn` (e.g. dsn: ${LOOPWIRE_PG_DSN})")
        if self.type == "sqlite" and self.dsn is not None:
            raise ValueError("`dsn` is for type: postgres; a SQLite store is a file: `path`")


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8411
    max_body_bytes: int = 1_048_576  # larger bodies get 413 before they are read in full
    # Customer.io webhooks are checked and committed in a process of their own beside the server
    # (loopwire/ingest_process.py), so the server's event loop only does HTTP for them; false keeps
    # it all in the server's process (one core, or an app embedded in another ASGI server).
    ingest_process: bool = True
    # `GET /readyz` fails once a destination's oldest undelivered event is older than this; unset,
    # it reports the age without judging it (a paused destination grows old on purpose).
    ready_max_backlog_age: Duration | None = None


class ConsoleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The operator's token for the console and /api/* (docs/console.md). Unset here, it is read
    # from LOOPWIRE_CONSOLE_TOKEN; with neither, the console stays locked and `loopwire serve`
    # refuses a non-loopback `server.host`.
    token: Secret | None = None
    # A bearer token for GET /metrics (LOOPWIRE_METRICS_TOKEN when unset here). With none, /metrics
    # is open on a loopback bind and takes the console token as its bearer on any other.
    metrics_token: Secret | None = None
    session_ttl: Duration = Duration(12 * 3600.0)  # a login lasts this long, then asks again
    max_login_failures: int = 5  # wrong tokens per client address per minute before 429


class CustomerioWebhooksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Several keys verify at once so a signing key can be rotated without dropping events.
    signing_keys: list[Secret]
    # Customer.io does not document a replay window (customerio.md §1.2); 900 s is generous
    # enough for its retries and clock skew, and rejects captured requests replayed later.
    replay_window: Duration = Duration(900.0)


class AmplitudeApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Project API keys the apps' SDKs send; others get Amplitude's "Invalid API key" answer.
    api_keys: list[Secret]


class SegmentApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Write keys the storefront's Segment library sends (body `writeKey` or HTTP Basic username).
    write_keys: list[Secret]


class SourcesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customerio_webhooks: CustomerioWebhooksConfig | None = None
    amplitude_api: AmplitudeApiConfig | None = None  # POST /2/httpapi, /batch, /identify, /groupidentify
    segment_api: SegmentApiConfig | None = None  # POST /v1/track|identify|group|page|screen|alias|batch


class IdentityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The one identifier a person is known by: `user_id`, `email`, or the name of the attribute
    # (a trait / user property) holding an external id. The identity report counts the people
    # without it (docs/identity.md).
    primary: str = "user_id"
    # Keep the identity graph (a follower of the log in `loopwire serve`); false: no graph, no report.
    graph: bool = True

    def __post_init__(self) -> None:
        if not self.primary.strip() or self.primary != self.primary.strip():
            raise ValueError("`primary` must be user_id, email, or an attribute name without spaces")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    console: ConsoleConfig = ConsoleConfig()
    sources: SourcesConfig = SourcesConfig()
    destinations: dict[str, DestinationOptions] = {}
    audiences: dict[str, AudienceDefinition] = {}  # resolved: library references expanded
    experiments: dict[str, Experiment] = {}  # holdout experiments by id (see docs/lift.md)
    identity: IdentityConfig = IdentityConfig()  # the primary identifier and the graph (docs/identity.md)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping key and sequence item by its path."""


def _compose_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _compose_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, f"{path}[{index}]", lines)


def _interpolate(value: Any, path: str, lines: dict[str, int], env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), lines, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", lines, env) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", key=path, line=lines.get(path))

        return _ENV.sub(replace, value)
    return value


def _path_from_msgspec(message: str) -> tuple[str, str]:
    # msgspec: "Expected `int`, got `str` - at `$.server.port`" or "Object has no field ..."
    text, _, where = message.rpartition(" - at `")
    if not text:
        return message, ""
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    return text, path


def _line_for(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        shorter = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        path = "" if shorter == path else shorter
    return None


def parse_config(text: str, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        raw = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {exc}", key="(file)", line=mark.line + 1 if mark else None
        ) from None
    lines: dict[str, int] = {}
    if root is not None:
        _compose_lines(root, "", lines)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config file must be a mapping at the top level", key="(file)", line=1)
    raw = _interpolate(raw, "", lines, env)
    destinations = raw.pop("destinations", None) or {}
    if not isinstance(destinations, dict):
        raise ConfigError(
            "must be a mapping of name → settings", key="destinations", line=lines.get("destinations")
        )
    audiences = raw.pop("audiences", None) or {}
    if not isinstance(audiences, dict):
        raise ConfigError(
            "must be a mapping of name → definition", key="audiences", line=lines.get("audiences")
        )
    config = _convert(raw, Config, "", lines)
    # One by one, like destinations, so an error names the audience; then library references are
    # expanded and the set checked (member_of / exclude targets, priority ties, cycles).
    given = {
        str(name): _convert(body, AudienceDefinition, f"audiences.{name}", lines)
        for name, body in audiences.items()
    }
    resolved = resolve_audiences(given, line_for=lambda key: _line_for(key, lines))
    # Converted one by one so an error can name the destination (msgspec elides dict keys).
    typed = {
        str(name): _convert(body, DestinationOptions, f"destinations.{name}", lines)
        for name, body in destinations.items()
    }
    for key, experiment in config.experiments.items():
        if experiment.audience is not None and experiment.audience not in resolved:
            raise ConfigError(
                f"audience {experiment.audience!r} is not defined under `audiences:`",
                key=f"experiments.{key}.audience",
                line=_line_for(f"experiments.{key}.audience", lines),
            )
    _check_retention(config.store.retention, resolved, config.experiments, lines)
    console = _console_secrets(config.console, env, lines)
    result: Config = msgspec.structs.replace(config, destinations=typed, audiences=resolved, console=console)
    return _on_postgres(result, raw, lines) if config.store.type == "postgres" else result


# What `loopwire serve` does not do yet on a PostgreSQL store (issue 11): both keep files beside a
# SQLite log (the ingest process appends to it from a process of its own; the identity graph is a
# SQLite file next to it). Their defaults are off there; asked for, they are an error, not ignored.
_SQLITE_ONLY = (("server", "ingest_process"), ("identity", "graph"))


def _on_postgres(config: Config, raw: dict[str, Any], lines: dict[str, int]) -> Config:
    for section, key in _SQLITE_ONLY:
        given = raw.get(section) or {}
        if isinstance(given, dict) and given.get(key) is True:
            raise ConfigError(
                "needs a SQLite store for now (store.type is postgres): set it to false",
                key=f"{section}.{key}",
                line=lines.get(f"{section}.{key}"),
            )
    return msgspec.structs.replace(
        config,
        server=msgspec.structs.replace(config.server, ingest_process=False),
        identity=msgspec.structs.replace(config.identity, graph=False),
    )


def _check_retention(
    retention: RetentionConfig,
    audiences: dict[str, AudienceDefinition],
    experiments: dict[str, Experiment],
    lines: dict[str, int],
) -> None:
    """`store.retention.events` covers every window that looks back a bounded time: an audience's
    `within` / `ago.max` (events an unbounded `first`, `last`, `since` or `sum` selects, and the
    rows a `profile` condition reads, are kept whatever their age: store/retention.py), and an
    experiment's conversion window (the lift report counts the conversions and messages in it)."""

    def fail(message: str, name: str) -> ConfigError:
        key = f"store.retention.{name}"
        return ConfigError(message, key=key, line=_line_for(key, lines))

    for name in ("events", "delivered", "dead", "interval"):
        value = getattr(retention, name)
        if value is not None and value <= 0:
            keep = "" if name == "interval" else " (leave it out to keep these rows)"
            raise fail(f"must be longer than zero{keep}", name)
    events = retention.events
    if events is None:
        return
    # Imported here: the recompute's module (and the engine it uses) is not needed to read a config
    # without retention, nor by the ingest process, which imports this module.
    from loopwire.audiences.recompute import longest_window

    if events < MIN_EVENTS_RETENTION:
        raise fail(
            f"must be at least 7d (got {_span(events)}): the log is loopwire's dedupe of event ids, and"
            " Customer.io retries a webhook for up to 7 days",
            "events",
        )
    if retention.delivered is not None and retention.delivered > events:
        raise fail(
            f"{_span(retention.delivered)} is longer than `events` ({_span(events)}): a delivered row"
            " goes with its event; make it at most that or leave it out",
            "delivered",
        )
    needed: list[tuple[float, str]] = [
        (longest_window(definition) / 1000, f"audience {name!r} looks back {{span}}")
        for name, definition in audiences.items()
    ]
    needed += [
        (float(experiment.window), f"experiment {name!r} has a {{span}} conversion window")
        for name, experiment in experiments.items()
    ]
    for seconds, what in sorted(needed, key=lambda item: -item[0]):
        if seconds > events:
            raise fail(
                f"{_span(events)} is shorter than what the log must hold: {what.format(span=_span(seconds))};"
                f" make it at least {_span(seconds)}",
                "events",
            )


CONSOLE_TOKEN_ENV = "LOOPWIRE_CONSOLE_TOKEN"
METRICS_TOKEN_ENV = "LOOPWIRE_METRICS_TOKEN"
TOKEN_MIN_LENGTH = 16


def _console_secrets(console: ConsoleConfig, env: dict[str, str], lines: dict[str, int]) -> ConsoleConfig:
    """The console's tokens: the config's keys, else the environment variables (an empty one is unset)."""
    token = console.token or (Secret(env[CONSOLE_TOKEN_ENV]) if env.get(CONSOLE_TOKEN_ENV) else None)
    metrics = console.metrics_token or (
        Secret(env[METRICS_TOKEN_ENV]) if env.get(METRICS_TOKEN_ENV) else None
    )
    for key, secret, variable in (
        ("token", token, CONSOLE_TOKEN_ENV),
        ("metrics_token", metrics, METRICS_TOKEN_ENV),
    ):
        if secret is not None and len(secret.reveal()) < TOKEN_MIN_LENGTH:
            raise ConfigError(
                f"{variable} must be at least {TOKEN_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)",
                key=f"console.{key}",
                line=lines.get(f"console.{key}"),
            )
    return msgspec.structs.replace(console, token=token, metrics_token=metrics)


def _convert(raw: Any, kind: Any, prefix: str, lines: dict[str, int]) -> Any:
    try:
        return msgspec.convert(raw, kind, dec_hook=dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        text, path = _path_from_msgspec(str(exc))
        unknown = re.match(r"Object contains unknown field `([^`]+)`", text)
        if unknown:
            path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
            text = "unknown key (check the spelling against examples/loopwire.yaml)"
        elif "Object missing required field" in text:
            missing = re.search(r"`([^`]+)`", text)
            if missing:
                text = f"required key `{missing.group(1)}` is missing"
        elif text.startswith("Invalid value") and path.endswith("type"):
            text = f"{text}: known destination types are amplitude, segment, customerio"
        full = ".".join(part for part in (prefix, path) if part)
        raise ConfigError(text, key=full or "(file)", line=_line_for(full, lines)) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", key=str(file)) from None
    return parse_config(text, env)
