"""The command line, in process (Typer's runner) and against real files and the sandbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from typer.testing import CliRunner

from loopwire.cli import app
from loopwire.model import Event
from loopwire.store import Settlement, SQLiteStore, Store
from tests.conftest import API_KEY
from tests.helpers import reference

REFERENCE = reference.FIXTURES / "customerio" / "webhooks"
runner = CliRunner()


class CliStore(NamedTuple):
    """The store a test's config names, and how the test opens it to seed it or look at it."""

    section: dict[str, Any]
    open: Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def cli_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: Any) -> CliStore:
    """A SQLite file, or a PostgreSQL database named as users name it (`${LOOPWIRE_PG_DSN}`)."""
    if request.param == "sqlite":
        path = tmp_path / "loopwire.db"
        return CliStore({"path": str(path)}, lambda: SQLiteStore(path))
    from loopwire.store.postgres import Store as PostgresStore

    dsn = request.getfixturevalue("pg_dsn")
    monkeypatch.setenv("LOOPWIRE_PG_DSN", dsn)
    return CliStore({"type": "postgres", "dsn": "${LOOPWIRE_PG_DSN}"}, lambda: PostgresStore(dsn))


def write_config(
    tmp_path: Path,
    sandbox_url: str = "http://127.0.0.1:9",
    api_key: str = "${AMP_KEY}",
    store: dict[str, Any] | None = None,
) -> Path:
    path = tmp_path / "loopwire.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": store or {"path": str(tmp_path / "loopwire.db")},
                "destinations": {
                    "amplitude": {
                        "type": "amplitude",
                        "api_key": api_key,
                        "region": "us",
                        "base_url": sandbox_url,
                    }
                },
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["sandbox"],
        ["map"],
        ["test-connection"],
        ["status"],
        ["dlq", "list"],
        ["dlq", "replay"],
        ["demo"],
        ["identity", "report"],
        ["identity", "person"],
        ["backfill"],
        ["audiences", "list"],
        ["audiences", "history"],
        ["lift"],
    ],
)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    if command:
        assert "Example" in result.output


def test_map_reads_stdin_and_prints_the_amplitude_event() -> None:
    body = (REFERENCE / "docs-openapi" / "email_sent.json").read_text()  # customer id "42"
    short = json.loads(runner.invoke(app, ["map"], input=body).stdout)
    assert "min_id_length" in short["skip"]
    result = runner.invoke(
        app, ["map", "--from", "customerio", "--to", "amplitude", "--set", "min_id_length=2"], input=body
    )
    assert result.exit_code == 0, result.output
    event = json.loads(result.stdout)
    assert event["event_type"] == "Email Sent"
    assert event["insert_id"] == json.loads(body)["event_id"]


def test_map_set_overrides_options() -> None:
    body = (REFERENCE / "docs-openapi" / "email_sent.json").read_text()
    result = runner.invoke(
        app,
        ["map", "--set", "naming.style=snake", "--set", "naming.prefix=cio_", "--set", "min_id_length=1"],
        input=body,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["event_type"] == "cio_email_sent"


def test_map_prints_skip_with_reason() -> None:
    body = (REFERENCE / "constructed" / "email_opened.email_only_person.json").read_text()
    result = runner.invoke(app, ["map"], input=body)
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"skip"}


def test_map_bad_option_and_bad_input_exit_2() -> None:
    body = (REFERENCE / "docs-openapi" / "email_sent.json").read_text()
    assert runner.invoke(app, ["map", "--set", "no_such_option=1"], input=body).exit_code == 2
    assert runner.invoke(app, ["map"], input="{not json").exit_code == 2


def test_config_error_names_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 1\n  colour: red\n")
    result = runner.invoke(app, ["status", "--config", str(path)])
    assert result.exit_code == 2
    assert "server.colour" in result.output and "line 3" in result.output


def seeded_store(cli_store: CliStore) -> Store:
    store = cli_store.open()
    events = [
        Event(
            id=f"evt-{n}",
            source="customerio",
            kind="message",
            channel="email",
            metric="sent",
            time_ms=1,
            received_ms=1,
        )
        for n in range(3)
    ]
    store.append_sync(events, [["amplitude"]] * 3)
    rows = asyncio.run(store.claim("amplitude", 3, now_ms=10))
    settle = [
        Settlement(rows[0].seq, "delivered"),
        Settlement(rows[1].seq, "dead", reason="Amplitude rejected field `time`", response="400 {}"),
        Settlement(rows[2].seq, "skipped", reason="no user id and no device id"),
    ]
    asyncio.run(store.settle("amplitude", settle, now_ms=20))
    return store


def test_status_dlq_list_and_replay(tmp_path: Path, monkeypatch: Any, cli_store: CliStore) -> None:
    monkeypatch.setenv("AMP_KEY", API_KEY)
    config = write_config(tmp_path, store=cli_store.section)
    seeded_store(cli_store).close()

    status = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"]).stdout)
    assert status["events"] == 3
    assert status["destinations"]["amplitude"] == {
        "pending": 0,
        "in_flight": 0,
        "delivered": 1,
        "dead": 1,
        "skipped": 1,
    }
    assert status["dead_reasons"][0]["reason"] == "Amplitude rejected field `time`"

    table = runner.invoke(app, ["status", "--config", str(config)])
    assert table.exit_code == 0 and "no user id and no device id" in table.output
    assert status["paused"] == [] and "(paused)" not in table.output
    paused = yaml.safe_load(config.read_text())
    paused["destinations"]["amplitude"]["paused"] = True
    config.write_text(yaml.safe_dump(paused))
    assert "amplitude (paused)" in runner.invoke(app, ["status", "--config", str(config)]).output

    dead = json.loads(runner.invoke(app, ["dlq", "list", "--config", str(config), "--json"]).stdout)
    assert [d["event_id"] for d in dead] == ["evt-1"]

    assert runner.invoke(app, ["dlq", "replay", "--config", str(config)]).exit_code == 2
    replay = runner.invoke(app, ["dlq", "replay", "--config", str(config), "--event-id", "evt-1"])
    assert replay.exit_code == 0 and "1 dead letter" in replay.output
    assert "empty" in runner.invoke(app, ["dlq", "list", "--config", str(config)]).output


def test_test_connection_reports_success_and_refusal(tmp_path: Path, sandbox: Any, monkeypatch: Any) -> None:
    box, url = sandbox
    monkeypatch.setenv("AMP_KEY", API_KEY)
    ok = runner.invoke(app, ["test-connection", "amplitude", "--config", str(write_config(tmp_path, url))])
    assert ok.exit_code == 0, ok.output
    assert "accepted" in ok.output
    assert [e["event_type"] for e in box.events] == ["Email Sent"]

    monkeypatch.setenv("AMP_KEY", "wrong-key-12345")
    refused = runner.invoke(
        app, ["test-connection", "amplitude", "--config", str(write_config(tmp_path, url))]
    )
    assert refused.exit_code == 1
    assert "400" in refused.output and "wrong-key-12345" not in refused.output


def test_backfill_queues_history_the_route_takes(
    tmp_path: Path, monkeypatch: Any, cli_store: CliStore
) -> None:
    monkeypatch.setenv("AMP_KEY", API_KEY)
    config = write_config(tmp_path, store=cli_store.section)
    store = cli_store.open()
    old = [
        Event(
            id=f"old-{n}",
            source="customerio",
            kind="message",
            channel="email",
            metric="sent",
            time_ms=1_700_000_000_000 + n,
            received_ms=1,
        )
        for n in range(4)
    ]
    ignored = Event(
        id="seg-1",
        source="segment",
        kind="track",
        name="Order Completed",
        time_ms=1_800_000_000_000,
        received_ms=1,
    )
    store.append_sync([*old, ignored], [[]] * 5)  # logged before the destination existed
    store.close()
    result = runner.invoke(
        app, ["backfill", "--to", "amplitude", "--since", "2023-11-14T22:13:20Z", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "5 events" in result.output and "4 queued" in result.output
    again = runner.invoke(
        app, ["backfill", "--to", "amplitude", "--since", "2020-01-01", "--config", str(config)]
    )
    assert "0 queued" in again.output
    status = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"]).stdout)
    assert status["destinations"]["amplitude"]["pending"] == 4
    bad = runner.invoke(
        app, ["backfill", "--to", "amplitude", "--since", "last tuesday", "--config", str(config)]
    )
    assert bad.exit_code == 2


def test_sandbox_command_serves_all_three_vendors(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from tests.helpers.servers import free_port

    def up(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    # Three consecutive ports, checked free just before: another test's client socket may still take
    # one of them in the meantime, so a sandbox that could not bind (and exits saying so) is started
    # again on other ports; any other exit fails with what the process wrote.
    for attempt in range(3):
        port = free_port()
        while any(_busy(port + n) for n in range(3)):
            port = free_port()
        log = tmp_path / f"sandbox-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "loopwire", "sandbox", "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            pending = [
                f"http://127.0.0.1:{port + offset}/_sandbox/{path}"
                for offset, path in enumerate(("amplitude/events", "customerio/people", "segment/messages"))
            ]
            deadline = time.monotonic() + 30
            while pending and process.poll() is None and time.monotonic() < deadline:
                if up(pending[0]):
                    pending.pop(0)
                else:
                    time.sleep(0.1)
            if not pending:
                return
            written = log.read_text(errors="replace")
            if process.poll() is not None and "cannot listen on" in written:
                continue
            raise AssertionError(f"the sandboxes did not all answer ({pending[0]}):\n{written}")
        finally:
            process.terminate()
            process.wait(timeout=10)
    raise AssertionError("three attempts found their ports taken")


def test_sandbox_command_says_which_port_is_taken() -> None:
    """A port in use is one line naming the vendor and the port, exit 1, and no sandbox left
    running: none starts before every port is bound."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] - 1  # the second sandbox's (customerio's) port is taken
        done = subprocess.run(
            [sys.executable, "-m", "loopwire", "sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    written = done.stdout + done.stderr
    assert done.returncode == 1, written
    assert f"customerio sandbox: cannot listen on 127.0.0.1:{port + 1}" in written
    assert "Traceback" not in written
    assert not _busy(port)  # the amplitude sandbox bound its port and let it go


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_map_to_segment_and_from_other_sources() -> None:
    body = (REFERENCE / "constructed" / "email_clicked.human.json").read_text()
    seg = runner.invoke(app, ["map", "--from", "customerio", "--to", "segment"], input=body)
    assert seg.exit_code == 0, seg.output
    (message,) = json.loads(seg.stdout)["batch"]
    assert message["type"] == "track" and message["event"] == "Email Link Clicked"
    amp_event = json.dumps({"event_type": "Order Completed", "user_id": "shopper-1", "insert_id": "ins-1"})
    forwarded = json.loads(
        runner.invoke(app, ["map", "--from", "amplitude", "--to", "amplitude"], input=amp_event).stdout
    )
    assert forwarded == json.loads(amp_event)
    seg_msg = json.dumps(
        {"type": "track", "userId": "shopper-1", "event": "Order Completed", "messageId": "m-1"}
    )
    passed = json.loads(
        runner.invoke(app, ["map", "--from", "segment", "--to", "segment"], input=seg_msg).stdout
    )
    assert passed["batch"][0]["event"] == "Order Completed"
    assert runner.invoke(app, ["map", "--from", "segment", "--to", "segment"], input="{}").exit_code == 2
    assert runner.invoke(app, ["map", "--to", "nowhere"], input=body).exit_code == 2


def test_test_connection_for_segment_and_customerio(tmp_path: Path, monkeypatch: Any) -> None:
    from loopwire.sandbox.customerio import CustomerioSandbox
    from loopwire.sandbox.segment import SegmentSandbox
    from tests.helpers.servers import serve_app

    monkeypatch.setenv("SEG_KEY", "seg-write-key")
    monkeypatch.setenv("CIO_SITE", "site-1")
    monkeypatch.setenv("CIO_TRACK", "track-key")
    segment = SegmentSandbox(write_keys=frozenset({"seg-write-key"}))
    customerio = CustomerioSandbox(credentials={"site-1": "track-key"})
    with serve_app(segment.app) as segment_url, serve_app(customerio.app) as customerio_url:
        path = tmp_path / "loopwire.yaml"
        destinations = {
            "segment": {
                "type": "segment",
                "write_key": "${SEG_KEY}",
                "region": "us",
                "base_url": segment_url,
            },
            "stream": {
                "type": "customerio",
                "site_id": "${CIO_SITE}",
                "api_key": "${CIO_TRACK}",
                "region": "us",
                "identifier": "email",
                "base_url": customerio_url,
            },
        }
        path.write_text(
            yaml.safe_dump({"store": {"path": str(tmp_path / "x.db")}, "destinations": destinations})
        )
        seg = runner.invoke(app, ["test-connection", "segment", "--config", str(path)])
        assert seg.exit_code == 0, seg.output
        assert [m["event"] for m in segment.messages] == ["Email Delivered"]
        by_type = runner.invoke(app, ["test-connection", "customerio", "--config", str(path)])
        assert by_type.exit_code == 0, by_type.output
        monkeypatch.setenv("CIO_TRACK", "wrong-key")
        refused = runner.invoke(app, ["test-connection", "stream", "--config", str(path)])
        assert refused.exit_code == 1 and "wrong-key" not in refused.output


def test_lift_reads_the_store_and_renders_table_json_and_html(
    tmp_path: Path, monkeypatch: Any, cli_store: CliStore
) -> None:
    from loopwire.audiences.holdouts import assign

    monkeypatch.setenv("AMP_KEY", API_KEY)
    path = tmp_path / "loopwire.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": cli_store.section,
                "experiments": {
                    "cart": {"name": "Cart journey", "salt": "s1", "holdout_percent": 50, "window": "7d"}
                },
            }
        )
    )
    store = cli_store.open()
    day = 86_400_000
    users = [f"user-{n:03d}" for n in range(40)]
    groups = {u: assign(u, "s1", 50) for u in users}
    seen = [
        Event(
            id=f"seen-{u}",
            source="segment",
            kind="track",
            name="Checkout Started",
            time_ms=day,
            received_ms=day,
            user_id=u,
        )
        for u in users
    ]
    # every treated user orders 2 days later; of the holdout, only those whose number is even
    orders = [
        Event(
            id=f"order-{u}",
            source="segment",
            kind="track",
            name="Order Completed",
            time_ms=3 * day,
            received_ms=3 * day,
            user_id=u,
            data={"properties": {"revenue": 10}},
        )
        for u in users
        if groups[u] == "treatment" or int(u[-3:]) % 2 == 0
    ]
    store.append_sync(seen + orders, [[]] * (len(seen) + len(orders)))
    from loopwire.store import experiments as queries

    queries.record(store, "audiences", 0, [("cart", u, g, day) for u, g in groups.items()])
    store.close()
    html = tmp_path / "lift.html"
    result = runner.invoke(
        app, ["lift", "--experiment", "cart", "--config", str(path), "--json", "--html", str(html)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_group = {"treatment": report["treatment"], "holdout": report["holdout"]}
    treated = sum(1 for g in groups.values() if g == "treatment")
    held = len(users) - treated
    held_converted = sum(1 for u, g in groups.items() if g == "holdout" and int(u[-3:]) % 2 == 0)
    assert (by_group["treatment"]["n"], by_group["treatment"]["conversions"]) == (treated, treated)
    assert (by_group["holdout"]["n"], by_group["holdout"]["conversions"]) == (held, held_converted)
    assert by_group["treatment"]["revenue"] == 10 * treated
    assert "<svg" in html.read_text()
    table = runner.invoke(app, ["lift", "--experiment", "cart", "--config", str(path)])
    assert table.exit_code == 0 and "holdout" in table.output.lower()
    assert runner.invoke(app, ["lift", "--experiment", "nope", "--config", str(path)]).exit_code == 2


def test_audience_versions_are_enforced_and_kept_in_a_changelog(tmp_path: Path) -> None:
    import pytest

    from loopwire.app import create_app
    from loopwire.config import load_config
    from loopwire.errors import ConfigError

    path = tmp_path / "loopwire.yaml"

    def write(version: int, within: str) -> None:
        rule = {"count": {"event": "*.clicked", "within": within}}
        audiences = {"clickers": {"version": version, "description": "clicked lately", "rule": rule}}
        path.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "x.db")}, "audiences": audiences}))

    def start() -> None:
        app_ = create_app(load_config(path))
        app_.state.runtime.store.close()
        for memory in app_.state.runtime.memories.values():
            memory.close()

    write(1, "7d")
    start()
    write(1, "14d")  # changed, same version
    with pytest.raises(ConfigError) as error:
        start()
    assert error.value.key == "audiences.clickers.version"
    served = runner.invoke(app, ["serve", "--config", str(path)])
    assert served.exit_code == 2 and "audiences.clickers.version" in served.output
    write(2, "14d")
    start()
    history = runner.invoke(app, ["audiences", "history", "clickers", "--config", str(path)])
    assert history.exit_code == 0, history.output
    assert "14d" in history.output or "1209600" in history.output
    listed = json.loads(runner.invoke(app, ["audiences", "list", "--config", str(path), "--json"]).stdout)
    assert listed == [{"audience": "clickers", "version": 2, "members": 0, "description": "clicked lately"}]
    assert runner.invoke(app, ["audiences", "history", "nope", "--config", str(path)]).exit_code == 1


def test_serve_tunes_the_interpreter_before_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/performance.md: the GIL switch interval and the collector's settings are worth 15 % and
    # more of the webhook rate; `loopwire serve` must make them before uvicorn starts.
    import gc
    import sys

    import uvicorn

    from loopwire import cli

    seen: dict[str, Any] = {}

    def fake_run(application: Any, **options: Any) -> None:
        seen["switch"] = sys.getswitchinterval()
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()
        seen["options"] = options

    monkeypatch.setenv("AMP_KEY", "k" * 32)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    switch, threshold = sys.getswitchinterval(), gc.get_threshold()
    try:
        result = runner.invoke(app, ["serve", "--config", str(write_config(tmp_path))])
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*threshold)
        gc.unfreeze()
    assert result.exit_code == 0, result.output
    assert seen["switch"] == pytest.approx(cli.GIL_SWITCH_INTERVAL_S)
    assert seen["threshold"][0] == cli.GC_GEN0_THRESHOLD
    assert seen["frozen"] > 0
    assert seen["options"]["loop"] == "uvloop" and seen["options"]["http"] == "httptools"
