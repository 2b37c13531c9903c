"""`loopwire ...` — every command has --help with an example."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from loopwire.config import Config, load_config
from loopwire.errors import ConfigError, InputError
from loopwire.model import Event

app = typer.Typer(
    name="loopwire",
    help="Self-hosted retention data bridge: Customer.io ⇄ Amplitude ⇄ Segment.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
dlq_app = typer.Typer(help="Inspect and replay the dead-letter queue.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
audiences_app = typer.Typer(
    help="Audience sizes and the changelog of their definitions.", no_args_is_help=True
)
app.add_typer(audiences_app, name="audiences")
identity_app = typer.Typer(
    help="Who is split across ids, and what loopwire knows and sent about one person.", no_args_is_help=True
)
app.add_typer(identity_app, name="identity")

out = Console()
err = Console(stderr=True)
GIL_SWITCH_INTERVAL_S = 0.0005  # `loopwire serve` only; see serve()
# The cyclic collector's youngest-generation threshold for `loopwire serve` (CPython's default: 700).
# Requests allocate a few hundred short-lived containers each and free them by reference counting;
# at 700 the collector ran every few requests for nothing (docs/performance.md).
GC_GEN0_THRESHOLD = 20_000

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="LOOPWIRE_CONFIG", help="The config file (see examples/loopwire.yaml)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]config error[/red] in {path}: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _pick_destination(cfg: Config, wanted: str, config: Path) -> tuple[str, Any]:
    """A destination by name, or by type when exactly one has that type."""
    if wanted in cfg.destinations:
        return wanted, cfg.destinations[wanted]
    from loopwire.destinations.registry import type_of

    typed = {n: o for n, o in cfg.destinations.items() if type_of(o) == wanted}
    if len(typed) != 1:
        err.print(
            f"no single destination named or typed {wanted!r} in {config} (have {sorted(cfg.destinations)})"
        )
        raise typer.Exit(2)
    return next(iter(typed.items()))


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


@app.command()
def serve(
    config: ConfigOption = Path("loopwire.yaml"),
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
) -> None:
    """Run the sources, the log, delivery and the console.

    Customer.io webhooks are checked and committed by an ingest process the server starts beside
    itself and stops with itself (`server.ingest_process: false` keeps it all in one process).
    With `store.retention` set, old rows of the log and the outboxes are trimmed in the background
    (docs/operations.md#retention).

    The console (`/`) and `/api/*` need the token in `LOOPWIRE_CONSOLE_TOKEN` (log in at `/login`);
    without one the console stays locked and the server refuses to listen on a non-loopback address.
    `/metrics` takes `LOOPWIRE_METRICS_TOKEN` as a bearer token when it is set (docs/console.md).

    Example: `LOOPWIRE_CONSOLE_TOKEN=$(openssl rand -hex 32) loopwire serve --config loopwire.yaml`
    """
    import uvicorn

    from loopwire.app import create_app
    from loopwire.web.auth import refusal

    cfg = _load(config)
    if host is not None or port is not None:
        server = msgspec.structs.replace(
            cfg.server, host=host or cfg.server.host, port=port or cfg.server.port
        )
        cfg = msgspec.structs.replace(cfg, server=server)
    why = refusal(cfg.server.host) if cfg.console.token is None else None
    if why is not None:
        err.print(why, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        application = create_app(cfg)
    except ConfigError as exc:
        err.print(f"[red]config error[/red] in {config}: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    # The store's writer thread takes the GIL back after each call into SQLite; while the event loop
    # is busy it waits for the interpreter's switch interval each time (5 ms by default). At 0.5 ms a
    # group commit is not held up by the requests being parsed for the next one (docs/performance.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # What exists now (modules, config, the app) lives as long as the process: the collector need not
    # walk it again, and runs less often for the garbage-free churn of requests.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    uvicorn.run(
        application,
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


VENDORS = ("amplitude", "customerio", "segment")


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port of the first sandbox; the others take the next ports.")
    ] = 8420,
    vendor: Annotated[
        list[str] | None,
        typer.Option("--vendor", help="amplitude, customerio or segment (repeat; default: all)."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key", help="Accepted Amplitude API key / Segment write key (repeat; default: any)."
        ),
    ] = None,
) -> None:
    """Run local sandboxes of the vendor APIs (documented validation, limits, throttling, dedupe, faults).

    Amplitude on PORT, Customer.io Track on PORT+1, Segment on PORT+2 (in the order given). Point a
    destination's `base_url` at one, then read what it accepted under `/_sandbox/<vendor>/`.

    Example: `loopwire sandbox --port 8420 --vendor amplitude --api-key demo-key`
    """
    import uvicorn

    from loopwire.sandbox.amplitude import AmplitudeSandbox
    from loopwire.sandbox.customerio import CustomerioSandbox
    from loopwire.sandbox.segment import SegmentSandbox

    chosen = vendor or list(VENDORS)
    unknown = sorted(set(chosen) - set(VENDORS))
    if unknown:
        err.print(f"unknown vendor {', '.join(unknown)}; choose from {', '.join(VENDORS)}")
        raise typer.Exit(2)
    keys = frozenset(api_key) if api_key else None
    apps = {
        "amplitude": lambda: AmplitudeSandbox(api_keys=keys).app,
        "customerio": lambda: CustomerioSandbox().app,
        "segment": lambda: SegmentSandbox(write_keys=keys).app,
    }
    # Every port is bound before any sandbox starts (uvicorn's own `bind_socket`, which logs why and
    # exits when it cannot): a port already taken is a line and exit 1, not a sandbox or two left
    # half started and uvicorn's tracebacks.
    listening: list[tuple[uvicorn.Server, socket.socket]] = []
    for offset, name in enumerate(chosen):
        config = uvicorn.Config(
            apps[name](), host=host, port=port + offset, loop="uvloop", http="httptools", log_level="warning"
        )
        try:
            sock = config.bind_socket()
        except SystemExit:
            err.print(f"{name} sandbox: cannot listen on {host}:{port + offset}")
            for _, other in listening:
                other.close()
            raise typer.Exit(1) from None
        listening.append((uvicorn.Server(config), sock))
        err.print(f"{name} sandbox on http://{host}:{port + offset} (what it accepted: /_sandbox/{name}/)")

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in listening))

    asyncio.run(serve_all())


SOURCES = ("customerio", "amplitude", "segment")


def _read_event(source: str, raw: bytes, now_ms: int) -> Event:
    """One input document as its source would turn it into an Event."""
    from loopwire.sources import amplitude_api, segment_api
    from loopwire.sources.customerio_parse import parse_webhook

    if source == "customerio":
        return parse_webhook(raw, now_ms)
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InputError(400, "invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(400, "invalid_json", "expected one JSON object")
    if source == "amplitude":
        if not isinstance(doc.get("event_type"), str):
            raise InputError(400, "missing_field", "an Amplitude event needs `event_type`")
        return amplitude_api.to_event(doc, now_ms)
    if doc.get("type") not in segment_api.CALLS:
        raise InputError(
            400, "missing_field", f"a Segment message needs `type`: one of {', '.join(segment_api.CALLS)}"
        )
    return segment_api.to_event(doc, now_ms)


@app.command("map")
def map_command(
    source: Annotated[
        str,
        typer.Option("--from", help="customerio (a webhook), amplitude (an event) or segment (a message)."),
    ] = "customerio",
    target: Annotated[
        str, typer.Option("--to", help="Destination type: amplitude, segment or customerio.")
    ] = "amplitude",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Take the destination's options from this config.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Which destination of that type in the config (default: the only one).")
    ] = None,
    assignments: Annotated[
        list[str] | None, typer.Option("--set", help="Override an option: KEY=VALUE (repeat).")
    ] = None,
) -> None:
    """Map one input JSON (stdin) to the destination's payload (stdout) — the pure mapping.

    Prints `{"skip": "<reason>"}` when the event would not be sent, `{"invalid": "<reason>"}` when
    it breaks a limit of the destination (it would be dead-lettered).

    Example: `loopwire map --from customerio --to amplitude --set body_content=true < webhook.json`
    """
    from loopwire.destinations.base import Invalid, Skip
    from loopwire.destinations.registry import KINDS, type_of

    if source not in SOURCES or target not in KINDS:
        err.print(f"map --from one of {', '.join(SOURCES)} --to one of {', '.join(KINDS)}")
        raise typer.Exit(2)
    kind = KINDS[target]
    options = kind.default_map_options()
    if config is not None:
        cfg = _load(config)
        candidates = {n: o for n, o in cfg.destinations.items() if type_of(o) == target}
        if destination is not None:
            candidates = {n: o for n, o in candidates.items() if n == destination}
        if len(candidates) != 1:
            err.print(
                f"{config}: name one {target} destination with --destination (found {sorted(candidates)})"
            )
            raise typer.Exit(2)
        options = next(iter(candidates.values()))
    try:
        options = kind.apply_overrides(options, assignments or [])
    except ConfigError as exc:
        err.print(f"--set: {exc}", highlight=False)
        raise typer.Exit(2) from None
    now_ms = int(time.time() * 1000)
    try:
        event = _read_event(source, sys.stdin.buffer.read(), now_ms)
    except InputError as exc:
        err.print(f"input: {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    result = kind.map_event(event, options, now_ms)
    if isinstance(result, Skip):
        _print_json({"skip": result.reason})
    elif isinstance(result, Invalid):
        _print_json({"invalid": result.reason})
    else:
        _print_json(result)


@app.command("test-connection")
def test_connection(
    target: Annotated[str, typer.Argument(help="Destination name (or type) from the config.")],
    config: ConfigOption = Path("loopwire.yaml"),
) -> None:
    """Send one `Email Sent` test event, as Customer.io's native integration does, and report the answer.

    Example: `loopwire test-connection amplitude --config loopwire.yaml`
    """
    from loopwire.destinations.registry import test_connection as check

    cfg = _load(config)
    name, options = _pick_destination(cfg, target, config)
    result = asyncio.run(check(options))
    colour = "green" if result.ok else "red"
    out.print(f"[{colour}]{name}: {result.summary}[/{colour}]", highlight=False)
    if result.detail:
        out.print(result.detail, highlight=False, markup=False)
    raise typer.Exit(0 if result.ok else 1)


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"  # unreachable; for the type checker


def _when(ms: int | None) -> str:
    return "—" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


@app.command()
def status(config: ConfigOption = Path("loopwire.yaml"), as_json: JsonOption = False) -> None:
    """Counts per state, per destination, and the reasons for dead and skipped events; the store's
    size on disk (file + WAL), when its oldest event was received, and what retention deleted.

    Delivered and skipped are lifetime totals (retention's deletes leave them); pending, in flight
    and dead are the rows there now.

    Example: `loopwire status --config loopwire.yaml`
    """
    from loopwire.app import status_report
    from loopwire.store import open_store

    cfg = _load(config)
    store = open_store(cfg.store, recover=False)
    try:
        report = status_report(store, cfg.destinations)
    finally:
        store.close()
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"{report['events']} events in {store.path}")
    for column in ("destination", "pending", "in_flight", "delivered", "skipped", "dead"):
        table.add_column(column, justify="right" if column != "destination" else "left")
    for dest, states in sorted(report["destinations"].items()):
        label = f"{dest} (paused)" if dest in report["paused"] else dest
        table.add_row(
            label, *(str(states.get(s, 0)) for s in ("pending", "in_flight", "delivered", "skipped", "dead"))
        )
    out.print(table)
    disk = report["store"]
    line = f"store    {_bytes(disk['bytes'])} on disk (WAL {_bytes(disk['wal_bytes'])}"
    if disk["free_bytes"]:
        line += f", {_bytes(disk['free_bytes'])} free inside"
        if not disk["incremental_vacuum"]:
            line += "; `loopwire vacuum` gives it back"
    out.print(line + ")", highlight=False)
    out.print(f"oldest   event received {_when(report['oldest_event_ms'])}", highlight=False)
    trimmed = report["retention_deleted"]
    if any(trimmed.values()):
        out.print(
            f"retention deleted {trimmed['events']} events, {trimmed['delivered']} delivered,"
            f" {trimmed['skipped']} skipped and {trimmed['dead']} dead outbox rows",
            highlight=False,
        )
    for title, key in (("dead", "dead_reasons"), ("skipped", "skip_reasons")):
        for row in report[key]:
            out.print(f"{title:8} {row['count']:>7}  {row['destination']}: {row['reason']}", highlight=False)


@app.command()
def vacuum(config: ConfigOption = Path("loopwire.yaml")) -> None:
    """Rewrite the store file compactly and make it give freed pages back from now on.

    Stores made before loopwire's retention (migration 11) keep the pages retention frees inside the
    file, for reuse; this rewrites the file once (`VACUUM`, with `auto_vacuum=INCREMENTAL`), after
    which `loopwire serve` gives them back after every retention run. It holds the store's write
    lock throughout and needs free disk space about the size of the file: stop `loopwire serve`
    first (ingest would wait, then answer 503). On PostgreSQL there is nothing to do: retention
    drops old partitions whole, which gives their space back (docs/postgres.md).

    Example: `loopwire vacuum --config loopwire.yaml`
    """
    from loopwire.store import SQLiteStore

    cfg = _load(config)
    if cfg.store.type != "sqlite":  # docs/postgres.md, "Retention"
        out.print(
            "nothing to do on PostgreSQL: retention drops old partitions of the log whole, which gives"
            " their space back at once, and autovacuum reuses the space of rows trimmed one by one"
        )
        return
    store = SQLiteStore(cfg.store.path, recover=False)
    try:
        before = store.size_on_disk()
        started = time.monotonic()
        store.vacuum()
        after = store.size_on_disk()
    finally:
        store.close()
    out.print(
        f"{cfg.store.path}: {_bytes(before.file_bytes + before.wal_bytes)} → "
        f"{_bytes(after.file_bytes + after.wal_bytes)} in {time.monotonic() - started:.1f} s;"
        " freed pages are now given back after each retention run",
        highlight=False,
    )


PG_DSN_ENV = "LOOPWIRE_PG_DSN"


@app.command()
def migrate(
    source: Annotated[str, typer.Option("--from", help="sqlite:PATH, the store to copy.")],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            help=f"postgres:DSN, or postgres: alone to read the DSN from ${PG_DSN_ENV} (it keeps a"
            " password out of the shell's history and the process list).",
        ),
    ],
) -> None:
    """Copy a SQLite store into a PostgreSQL database, with progress (docs/postgres.md).

    The log is appended after what the target already holds; every other table is replaced. To
    move a running installation: migrate once while `loopwire serve` runs on SQLite, stop it,
    migrate again (only what it logged meanwhile is copied from the log), then start it with
    `store: {type: postgres, dsn: ${LOOPWIRE_PG_DSN}}`. One transaction of the target: an
    interrupted migrate leaves it as it was.

    Example: `LOOPWIRE_PG_DSN=postgresql://loopwire@db/loopwire loopwire migrate --from sqlite:loopwire.db --to postgres:`
    """
    import os

    from rich.progress import Progress

    from loopwire.store.migrate import MigrateError, migrate_store
    from loopwire.store.postgres import describe

    kind, _, path = source.partition(":")
    if kind != "sqlite" or not path:
        err.print(f"--from takes sqlite:PATH, not {source!r}")
        raise typer.Exit(2)
    kind, _, dsn = target.partition(":")
    if kind != "postgres":
        err.print("--to takes postgres:DSN (or postgres: with the DSN in $LOOPWIRE_PG_DSN)")
        raise typer.Exit(2)
    dsn = dsn or os.environ.get(PG_DSN_ENV, "")
    if not dsn:
        err.print(f"no DSN: give --to postgres:DSN or set ${PG_DSN_ENV}")
        raise typer.Exit(2)
    tasks: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with Progress(console=err, transient=False, disable=not err.is_terminal) as progress:

            def report(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = progress.add_task(table, total=total or 1)
                progress.update(tasks[table], completed=done if total else 1)

            copied = migrate_store(path, dsn, report)
    except MigrateError as exc:
        err.print(f"migrate: {exc}")
        raise typer.Exit(1) from None
    summary = ", ".join(f"{table} {rows:,}" for table, rows in copied if rows)
    out.print(
        f"{path} → {describe(dsn)} in {time.monotonic() - started:.1f} s: {summary or 'nothing new'}",
        highlight=False,
    )


@dlq_app.command("list")
def dlq_list(
    config: ConfigOption = Path("loopwire.yaml"),
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Dead letters with their reason and the destination's last response.

    Example: `loopwire dlq list --destination amplitude --limit 20`
    """
    from loopwire.store import open_store

    cfg = _load(config)
    store = open_store(cfg.store, recover=False)
    try:
        rows = store.dead_letters(destination, limit)
    finally:
        store.close()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("The dead-letter queue is empty.")
        return
    table = Table(title="dead letters")
    for column in ("destination", "event_id", "event", "attempts", "reason"):
        table.add_column(column)
    for row in rows:
        label = f"{row['channel'] or ''} {row['metric'] or row['name'] or ''}".strip()
        table.add_row(row["destination"], row["event_id"], label, str(row["attempts"]), row["reason"])
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOption = Path("loopwire.yaml"),
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    event_id: Annotated[
        list[str] | None, typer.Option("--event-id", help="Only these events (repeat).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (of --destination).")
    ] = False,
) -> None:
    """Send dead letters again: they return to pending with fresh attempts; a running server picks them up.

    Example: `loopwire dlq replay --destination amplitude --all`
    """
    from loopwire.store import open_store

    if not event_id and not replay_all:
        err.print("say which: --event-id ID (repeatable) or --all")
        raise typer.Exit(2)
    cfg = _load(config)
    store = open_store(cfg.store, recover=False)
    try:
        count = store.replay_dead(int(time.time() * 1000), destination, event_id)
    finally:
        store.close()
    out.print(f"{count} dead letter(s) back to pending.")


def _parse_since(text: str) -> int:
    """`2026-11-01`, `2026-11-01T12:00:00Z` or a duration back from now (`7d`, `36h`) → epoch ms."""
    from datetime import UTC, datetime

    from loopwire.settings import Duration

    try:
        return int((time.time() - Duration.parse(text)) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        err.print(
            f"--since {text!r}: use a date (2026-11-01), a timestamp (2026-11-01T12:00:00Z) or a duration (7d)"
        )
        raise typer.Exit(2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@app.command()
def backfill(
    to: Annotated[str, typer.Option("--to", help="Destination name (or type) from the config.")],
    since: Annotated[
        str, typer.Option(help="Events that happened since: a date, a timestamp or a duration (7d).")
    ],
    config: ConfigOption = Path("loopwire.yaml"),
    resend: Annotated[
        bool,
        typer.Option(help="Also send again events the destination already has (ids make it idempotent)."),
    ] = False,
) -> None:
    """Replay history from the log into a destination's outbox; a running server delivers it.

    Only events the destination's `route:` takes are queued. Without --resend, events already queued
    for (or delivered to) the destination are left alone.

    Example: `loopwire backfill --to customerio --since 2026-11-01`
    """
    from rich.progress import Progress

    from loopwire.destinations.registry import kind_of
    from loopwire.destinations.routing import accepts
    from loopwire.model import decode_event
    from loopwire.store import open_store

    cfg = _load(config)
    name, options = _pick_destination(cfg, to, config)
    since_ms = _parse_since(since)
    default_sources = kind_of(options).default_sources
    store = open_store(cfg.store, recover=False)
    queued = scanned = 0
    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"backfill → {name}", total=None)
            after = 0
            while True:
                rows = store.scan_events(since_ms, after, 5000)
                if not rows:
                    break
                after = rows[-1][0]
                scanned += len(rows)
                seqs = [
                    seq for seq, body in rows if accepts(options.route, default_sources, decode_event(body))
                ]
                queued += store.enqueue(name, seqs, int(time.time() * 1000), resend)
                progress.update(task, advance=len(rows), description=f"backfill → {name}: {queued} queued")
    finally:
        store.close()
    out.print(f"{scanned} events since {since} scanned; {queued} queued for {name}.")


@audiences_app.command("list")
def audiences_list(config: ConfigOption = Path("loopwire.yaml"), as_json: JsonOption = False) -> None:
    """Each configured audience: its version, its members now, and how it is defined.

    Example: `loopwire audiences list --config loopwire.yaml`
    """
    from loopwire.store import open_store
    from loopwire.store.audiences import Reader

    cfg = _load(config)
    store = open_store(cfg.store, recover=False)
    reader = Reader(store)
    try:
        sizes = reader.sizes()
    finally:
        reader.close()
        store.close()
    rows: list[dict[str, Any]] = [
        {
            "audience": name,
            "version": d.version,
            "members": sizes.get(name, 0),
            "description": d.description or "",
        }
        for name, d in cfg.audiences.items()
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="audiences")
    for column in ("audience", "version", "members", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["audience"], str(row["version"]), str(row["members"]), row["description"])
    out.print(table)


@audiences_app.command("history")
def audiences_history(name: str, config: ConfigOption = Path("loopwire.yaml")) -> None:
    """Every recorded version of an audience's definition, with what changed (seed 000: version your
    segment logic). Versions are recorded when `loopwire serve` starts with a new definition.

    Example: `loopwire audiences history cart_abandoners`
    """
    from loopwire.audiences.engine import history_of
    from loopwire.audiences.versions import render_history
    from loopwire.store import open_store

    cfg = _load(config)
    store = open_store(cfg.store, recover=False)
    try:
        records = history_of(store, name)
    finally:
        store.close()
    if not records:
        err.print(f"no recorded versions of {name!r} (they are recorded when `loopwire serve` starts)")
        raise typer.Exit(1)
    out.print(render_history(records))


UpdateOption = Annotated[
    bool,
    typer.Option(
        "--update/--no-update",
        help="Fold the events logged since the graph was last updated first (`loopwire serve` keeps it"
        " current on its own; --no-update reads it as it is).",
    ),
]


def _identity_store(cfg: Config, update: bool) -> Any:
    """The store, with the identity graph brought up to the end of the log (unless told not to):
    safe beside a running `loopwire serve`, whose follower and this one never fold an event twice."""
    from loopwire.identity import external_attribute
    from loopwire.pipeline.identity_graph import Follower
    from loopwire.store import open_store

    if not cfg.identity.graph:
        err.print(
            "the identity graph is off (`identity.graph: false` in the config): set it to true (docs/identity.md)"
        )
        raise typer.Exit(1)
    store = open_store(cfg.store, recover=False)
    if update:
        follower = Follower(store, external_attribute(cfg))
        try:
            while follower.fold_once():
                pass
        except BaseException:
            store.close()
            raise
        if follower.folded:
            err.print(f"{follower.folded:,} events folded into the identity graph")
    return store


@identity_app.command("report")
def identity_report(
    config: ConfigOption = Path("loopwire.yaml"),
    as_json: JsonOption = False,
    update: UpdateOption = True,
    examples: Annotated[int, typer.Option(help="At most this many examples of each problem.")] = 5,
) -> None:
    """What breaks attribution: one email on several user ids, one user id with several emails,
    people without the primary identifier (`identity.primary`), device and anonymous ids never tied
    to a user; and each destination's match rate (the share of people it can reach).

    Example: `loopwire identity report --json`
    """
    from loopwire.identity import PROBLEMS
    from loopwire.identity import report as build_report

    cfg = _load(config)
    store = _identity_store(cfg, update)
    try:
        found = build_report(store, cfg, examples=examples)
    finally:
        store.close()
    if as_json:
        _print_json(found)
        return
    titles = {
        "email_on_many_users": "emails on several user ids",
        "user_with_many_emails": "user ids with several emails",
        "without_primary": f"people without {found.primary}",
        "untied_anonymous": "device/anonymous ids never tied to a user",
    }
    table = Table(title=f"identity: {found.people:,} people (primary identifier: {found.primary})")
    table.add_column("problem")
    table.add_column("count", justify="right")
    table.add_column("examples")
    for name in PROBLEMS:
        groups = found.examples.get(name, [])
        shown = "; ".join(", ".join(group) for group in groups[:3])
        table.add_row(titles[name], f"{getattr(found, name):,}", shown)
    out.print(table)
    rates = Table(title="match rate per destination")
    for column in ("destination", "people reached", "match rate"):
        rates.add_column(column, justify="left" if column == "destination" else "right")
    for name in sorted(found.match_rates):
        rates.add_row(name, f"{found.matched[name]:,}", f"{found.match_rates[name]:.1%}")
    out.print(rates)
    if found.lag_events:
        out.print(f"{found.lag_events:,} logged events are not in the graph yet.")


@identity_app.command("person")
def identity_person(
    key: Annotated[
        str, typer.Argument(help="A user id, an email, a cio_id (cio_…), a device or anonymous id.")
    ],
    config: ConfigOption = Path("loopwire.yaml"),
    as_json: JsonOption = False,
    update: UpdateOption = True,
    limit: Annotated[int, typer.Option(help="At most this many events, newest first.")] = 50,
) -> None:
    """Everything loopwire knows and sent about one person: their identifiers and each event with
    its delivery state per destination (validate a setup with a known test profile).

    Example: `loopwire identity person jane@example.com`
    """
    from loopwire.identity import person as find_person

    cfg = _load(config)
    store = _identity_store(cfg, update)
    try:
        found = find_person(store, cfg, key, limit=limit)
    finally:
        store.close()
    if found is None:
        err.print(f"no person known by {key!r}: no event carried it")
        raise typer.Exit(1)
    if as_json:
        _print_json(found)
        return
    for kind, values in found.identifiers.items():
        out.print(f"{kind:13} {', '.join(values)}", highlight=False)
    table = Table(title=f"{len(found.events)} events, newest first")
    dests = list(cfg.destinations)
    for column in ("time", "source", "event", *dests):
        table.add_column(column)
    for event in found.events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.time_ms / 1000))
        cells = []
        for dest in dests:
            state = event.deliveries.get(dest)
            cells.append(
                "—" if state is None else state.state + (f": {state.reason}" if state.reason else "")
            )
        table.add_row(when, event.source, event.key, *cells)
    out.print(table)


@app.command()
def lift(
    experiment: Annotated[str, typer.Option(help="Experiment id from the config's `experiments:`.")],
    config: ConfigOption = Path("loopwire.yaml"),
    conversion: Annotated[
        str | None, typer.Option(help="Conversion event (default: the experiment's).")
    ] = None,
    window: Annotated[str | None, typer.Option(help="Conversion window after assignment, e.g. 14d.")] = None,
    as_json: JsonOption = False,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
) -> None:
    """Did the journey cause the conversions? Holdout vs treated, intent-to-treat, with 95% intervals.

    Example: `loopwire lift --experiment cart_journey --conversion "Order Completed" --window 14d`
    """
    from loopwire.analysis.inputs import lift_report
    from loopwire.analysis.report import render_html, render_table, to_json
    from loopwire.settings import Duration
    from loopwire.store import open_store

    cfg = _load(config)
    if experiment not in cfg.experiments:
        err.print(f"no experiment {experiment!r} in {config} (have {sorted(cfg.experiments)})")
        raise typer.Exit(2)
    window_ms = None
    if window is not None:
        try:
            window_ms = int(Duration.parse(window) * 1000)
        except ValueError as exc:
            err.print(f"--window: {exc}")
            raise typer.Exit(2) from None
    store = open_store(cfg.store, recover=False)
    try:
        report = lift_report(store, experiment, cfg.experiments[experiment], conversion, window_ms)
    finally:
        store.close()
    if html is not None:
        html.write_text(render_html(report))
        err.print(f"HTML report written to {html}")
    if as_json:
        _print_json(to_json(report))
    else:
        out.print(render_table(report))


@app.command()
def demo(
    as_json: JsonOption = False,
    people: Annotated[int, typer.Option(min=1, help="Shoppers who abandon a cart.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed of the scenario.")] = 7,
    keep: Annotated[Path | None, typer.Option(help="Keep the store and config in this folder.")] = None,
) -> None:
    """Play a D2C cart-abandonment journey as signed webhooks into loopwire, delivered to the sandbox.

    Runs on the embedded default: a SQLite file and the local Amplitude sandbox; needs no account.

    Example: `loopwire demo --people 500 --json`
    """
    from loopwire.demo.runner import run_demo

    report = run_demo(people=people, seed=seed, keep=keep, progress=not as_json, console=out)
    if as_json:
        _print_json(report)
    raise typer.Exit(0 if report["ok"] else 1)
