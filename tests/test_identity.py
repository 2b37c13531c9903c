"""The identity graph and its report, on a synthetic history with planted collisions (issue 10, item 1).

Every count and rate below is worked out by hand from the history in `HISTORY`:

    P1  user u-1, u-2, email a@x.test, cio_id c-1     (a@x.test on two user ids)
    P2  user u-3, emails b@x.test, c@x.test           (u-3 with two emails)
    P3  email d@x.test only                           (no primary identifier: a Customer.io lead)
    P4  Segment anonymous s-1 only                    (untied)
    P5  Segment anonymous s-2, user u-4
    P6  Amplitude device dev-1 only                   (untied)
    P7  user u-5, Amplitude device dev-2, push device push-5 (from Customer.io push recipients)
    P8  Segment anonymous s-3, phone +15551234567     (no primary identifier)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopwire import identity
from loopwire.config import Config, parse_config
from loopwire.errors import ConfigError
from loopwire.model import Event
from loopwire.pipeline.identity_graph import Follower
from loopwire.store import SQLiteStore
from loopwire.store import identity as graph


def cio(n: int, user: str | None, email: str | None, cio_id: str | None = None, **data: Any) -> Event:
    return Event(
        id=f"cio-{n}",
        source="customerio",
        kind="message",
        channel=data.pop("channel", "email"),
        metric="sent",
        time_ms=1_000 + n,
        received_ms=1_000 + n,
        user_id=user,
        email=email,
        data={"identifiers": {"id": user, "email": email, "cio_id": cio_id}, **data},
    )


def seg(n: int, kind: str, user: str | None, anonymous: str | None, **traits: Any) -> Event:
    message: dict[str, Any] = {"type": kind, "userId": user, "anonymousId": anonymous}
    if traits:
        message["traits"] = traits
    return Event(
        id=f"seg-{n}",
        source="segment",
        kind=kind,
        name="Viewed" if kind == "track" else None,
        time_ms=1_000 + n,
        received_ms=1_000 + n,
        user_id=user,
        anonymous_id=anonymous,
        email=traits.get("email"),
        data=message,
    )


def amp(n: int, user: str | None, device: str | None) -> Event:
    return Event(
        id=f"amp-{n}",
        source="amplitude",
        kind="track",
        name="Added To Cart",
        time_ms=1_000 + n,
        received_ms=1_000 + n,
        user_id=user,
        anonymous_id=device,
        data={"event_type": "Added To Cart", "user_id": user, "device_id": device},
    )


HISTORY = [
    cio(1, "u-1", "a@x.test", "c-1"),
    cio(2, "u-2", "A@X.test"),  # the same email, case aside: a@x.test on a second user id
    cio(3, "u-1", "a@x.test", "c-1"),  # repeats change nothing
    cio(4, "u-3", "b@x.test"),
    cio(5, "u-3", "c@x.test"),  # u-3 with a second email
    cio(6, None, "d@x.test"),  # an email-only person (identifiers.id null)
    cio(7, "0", "d@x.test"),  # Customer.io's id 0 is no id (the native integration sends the email)
    seg(8, "track", None, "s-1"),
    seg(9, "track", None, "s-2"),
    seg(10, "identify", "u-4", "s-2"),
    amp(11, None, "dev-1"),
    amp(12, "u-5", "dev-2"),
    cio(13, "u-5", None, channel="push", recipients=[{"device_id": "push-5", "device_platform": "ios"}]),
    seg(14, "identify", None, "s-3", phone="+1 (555) 123-4567"),
    Event(id="own-1", source="loopwire", kind="track", name="x", time_ms=1, received_ms=1, user_id="u-9"),
]
ROUTES = [["amplitude", "segment"] if e.source == "customerio" else ["customerio"] for e in HISTORY]


def config(store: Path, primary: str = "user_id", graph_on: bool = True) -> Config:
    document = {
        "store": {"path": str(store)},
        "identity": {"primary": primary, "graph": graph_on},
        "destinations": {
            "amplitude": {"type": "amplitude", "api_key": "k", "region": "us"},
            "segment": {"type": "segment", "write_key": "w", "region": "us"},
            "ads": {"type": "segment", "write_key": "w", "region": "us", "route": {"hash_identifiers": True}},
            "customerio": {
                "type": "customerio",
                "site_id": "s",
                "api_key": "k",
                "region": "us",
                "identifier": "user_id",
            },
        },
    }
    return parse_config(yaml.safe_dump(document), env={})


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "log.db")
    yield store
    store.close()


def test_identifiers_of_each_source() -> None:
    from loopwire.model import encode_event

    assert identity.identifiers_of(encode_event(HISTORY[0])) == [
        ("user_id", "u-1"),
        ("email", "a@x.test"),
        ("cio_id", "c-1"),
    ]
    assert identity.identifiers_of(encode_event(HISTORY[6])) == [("email", "d@x.test")]
    assert identity.identifiers_of(encode_event(HISTORY[12])) == [("user_id", "u-5"), ("device_id", "push-5")]
    assert identity.identifiers_of(encode_event(HISTORY[13])) == [
        ("anonymous_id", "s-3"),
        ("phone", "+15551234567"),
    ]
    assert identity.identifiers_of(encode_event(HISTORY[-1])) == []
    external = seg(20, "identify", "u-1", None, shop_id=42)
    assert identity.identifiers_of(encode_event(external), "shop_id") == [
        ("user_id", "u-1"),
        ("external_id", "42"),
    ]
    # a body that is not an event loopwire wrote (a damaged row) identifies no one, and stops nothing
    assert identity.identifiers_of(b"\x00") == identity.identifiers_of(b'{"source": 3}') == []


def test_report_counts_every_planted_problem_exactly(store: SQLiteStore, tmp_path: Path) -> None:
    cfg = config(tmp_path / "log.db")
    store.append_sync(HISTORY, ROUTES)
    assert identity.report(store, cfg).lag_events == len(HISTORY)
    assert Follower(store, batch=4).catch_up() == len(HISTORY)
    report = identity.report(store, cfg)
    assert report.lag_events == 0
    assert report.people == 8
    assert report.email_on_many_users == 1
    assert report.user_with_many_emails == 1
    assert report.without_primary == 2
    assert report.untied_anonymous == 2
    assert report.match_rates == {"amplitude": 5 / 8, "segment": 7 / 8, "ads": 4 / 8, "customerio": 4 / 8}
    assert report.matched == {"amplitude": 5, "segment": 7, "ads": 4, "customerio": 4}
    assert report.identifiers == {
        "user_id": 5,
        "email": 4,
        "cio_id": 1,
        "anonymous_id": 3,
        "device_id": 3,
        "phone": 1,
    }
    assert report.examples == {
        "email_on_many_users": [["email:a@x.test", "user_id:u-1", "user_id:u-2"]],
        "user_with_many_emails": [["user_id:u-3", "email:b@x.test", "email:c@x.test"]],
        "without_primary": [["email:d@x.test"], ["anonymous_id:s-3", "phone:+15551234567"]],
        "untied_anonymous": [["anonymous_id:s-1"], ["device_id:dev-1"]],
    }


def test_primary_email_changes_who_lacks_it(store: SQLiteStore, tmp_path: Path) -> None:
    store.append_sync(HISTORY, ROUTES)
    Follower(store).catch_up()
    report = identity.report(store, config(tmp_path / "log.db", primary="email"))
    # known people without an email: P5 (u-4, s-2), P7 (u-5, devices), P8 (s-3, phone)
    assert report.without_primary == 3
    assert report.untied_anonymous == 2


def _graph_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(graph.graph_path(str(path))) as conn:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
            for table in ("id_nodes", "id_pairs", "id_tally", "id_events")
        }


def test_follower_catches_up_after_restart_and_never_double_counts(tmp_path: Path) -> None:
    # One pass over everything, in a store of its own: the reference.
    reference = SQLiteStore(tmp_path / "reference.db")
    reference.append_sync(HISTORY, ROUTES)
    Follower(reference, batch=1000).catch_up()
    reference.close()
    expected = _graph_rows(tmp_path / "reference.db")

    # The same history folded by a follower that stops after some batches, while more events
    # arrive, and by a new process (a new Store and follower) that goes on from its cursor.
    path = tmp_path / "log.db"
    store = SQLiteStore(path)
    store.append_sync(HISTORY[:9], ROUTES[:9])
    first = Follower(store, batch=2)
    assert first.fold_once() == 2 and first.fold_once() == 2
    store.close()  # "crash": nothing of the follower survives but what it committed
    store = SQLiteStore(path)
    store.append_sync(HISTORY[9:], ROUTES[9:])
    assert graph.cursor(store) == 4
    second = Follower(store, batch=3)
    assert second.catch_up() == len(HISTORY) - 4
    assert second.catch_up() == 0  # caught up: nothing folded twice
    # A second follower on the same store (a CLI beside the server) folds nothing again either.
    assert Follower(store, batch=3).catch_up() == 0
    report = identity.report(store, config(path))
    store.close()
    assert _graph_rows(path) == expected
    assert (report.people, report.email_on_many_users, report.user_with_many_emails) == (8, 1, 1)


def test_a_batch_that_fails_to_commit_writes_nothing_and_is_folded_again(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.append_sync(HISTORY, ROUTES)
    follower = Follower(store, batch=5)
    real_apply = graph.apply
    calls = {"n": 0}

    def failing(store_: SQLiteStore, fold: graph.Fold) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch: its job fails inside the transaction

            def job(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE id_cursor SET seq = 999")
                raise OSError("disk full")

            graph.of(store_).run(job)
        real_apply(store_, fold)

    graph.apply = failing  # type: ignore[assignment]
    try:
        assert follower.fold_once() == 5
        with pytest.raises(OSError):
            follower.fold_once()
        assert graph.cursor(store) == 5  # the failed job left nothing behind
    finally:
        graph.apply = real_apply  # type: ignore[assignment]
    follower.catch_up()
    report = identity.report(store, config(tmp_path / "log.db"))
    assert (report.people, report.without_primary, report.untied_anonymous) == (8, 2, 2)


def test_two_followers_at_once_fold_each_batch_once(store: SQLiteStore, tmp_path: Path) -> None:
    store.append_sync(HISTORY, ROUTES)
    one, two = Follower(store, batch=3), Follower(store, batch=3)
    # `two` plans from the same cursor as `one` but commits after it: its batch is refused.
    after = graph.cursor(store)
    rows = graph.read_batch(store, after, 3)
    fold, _ = two._plan(after, [(seq, identity.identifiers_of(body)) for seq, body in rows])
    one.fold_once()
    with pytest.raises(graph.Conflict):
        graph.apply(store, fold)
    one.catch_up()
    assert identity.report(store, config(tmp_path / "log.db")).people == 8


def test_merging_people_keeps_the_tallies_right(store: SQLiteStore, tmp_path: Path) -> None:
    # Three people, then one event that ties all three together.
    events = [
        seg(1, "track", None, "s-a"),
        seg(2, "identify", "u-b", None, email="b@x.test"),
        amp(3, None, "dev-c"),
        Event(
            id="tie",
            source="segment",
            kind="identify",
            time_ms=9,
            received_ms=9,
            user_id="u-b",
            anonymous_id="s-a",
            data={"type": "identify", "context": {"traits": {"email": "b@x.test"}}},
        ),
        amp(4, "u-b", "dev-c"),
    ]
    store.append_sync(events, [[] for _ in events])
    follower = Follower(store, batch=3)
    follower.fold_once()
    assert identity.report(store, config(tmp_path / "log.db")).people == 3
    follower.catch_up()
    report = identity.report(store, config(tmp_path / "log.db"))
    assert report.people == 1
    assert report.untied_anonymous == 0
    assert graph.tally(store).masks == {
        identity.BIT["user_id"] | identity.BIT["email"] | identity.ANONYMOUS: 1
    }


def test_person_by_any_identifier_with_events_and_deliveries(store: SQLiteStore, tmp_path: Path) -> None:
    import asyncio

    from loopwire.store import Settlement

    cfg = config(tmp_path / "log.db")
    store.append_sync(HISTORY, ROUTES)
    Follower(store).catch_up()
    claimed = asyncio.run(store.claim("amplitude", 1, 5_000))  # cio-1: delivered to amplitude
    asyncio.run(store.settle("amplitude", [Settlement(claimed[0].seq, "delivered")], 6_000))
    asyncio.run(
        store.settle(
            "segment", [Settlement(claimed[0].seq, "dead", reason="Segment refused this event (400)")], 6_000
        )
    )
    found = identity.person(store, cfg, "A@x.TEST")
    assert found is not None
    assert found.identifiers == {"cio_id": ["c-1"], "email": ["a@x.test"], "user_id": ["u-1", "u-2"]}
    assert [e.event_id for e in found.events] == ["cio-3", "cio-2", "cio-1"]
    oldest = found.events[-1]
    assert oldest.key == "email.sent" and oldest.source == "customerio"
    assert oldest.deliveries["amplitude"].state == "delivered"
    assert oldest.deliveries["amplitude"].delivered_ms == 6_000
    assert oldest.deliveries["segment"].state == "dead"
    assert oldest.deliveries["segment"].reason == "Segment refused this event (400)"
    assert found.events[0].deliveries["amplitude"].state == "pending"
    for key in ("u-2", "cio_c-1", "c-1"):
        again = identity.person(store, cfg, key)
        assert again is not None and again.identifiers == found.identifiers
    anonymous = identity.person(store, cfg, "s-2")  # events without a user id are found too
    assert anonymous is not None
    assert [e.event_id for e in anonymous.events] == ["seg-10", "seg-9"]
    lead = identity.person(store, cfg, "d@x.test")
    assert lead is not None and [e.event_id for e in lead.events] == ["cio-7", "cio-6"]
    assert identity.person(store, cfg, "nobody") is None
    # Not folded yet (or the graph is off): a user id is still found in the log.
    store.append_sync([cio(30, "u-new", None)], [["amplitude"]])
    late = identity.person(store, cfg, "u-new")
    assert late is not None and not late.in_graph and [e.event_id for e in late.events] == ["cio-30"]


def test_report_and_person_encode_as_json(store: SQLiteStore, tmp_path: Path) -> None:
    import msgspec

    store.append_sync(HISTORY, ROUTES)
    Follower(store).catch_up()
    cfg = config(tmp_path / "log.db")
    assert msgspec.json.decode(msgspec.json.encode(identity.report(store, cfg, examples=1)))["people"] == 8
    found = identity.person(store, cfg, "u-1", limit=1)
    assert found is not None and len(found.events) == 1
    assert msgspec.json.decode(msgspec.json.encode(found))["identifiers"]["user_id"] == ["u-1", "u-2"]


def test_identity_config_rejects_unknown_keys_and_blank_primary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as unknown:
        parse_config("identity:\n  primary: email\n  colour: red\n", env={})
    assert unknown.value.key == "identity.colour"
    with pytest.raises(ConfigError):
        parse_config("identity:\n  primary: ' '\n", env={})
    assert parse_config("", env={}).identity.primary == "user_id"
    assert identity.external_attribute(parse_config("identity: {primary: shop_id}", env={})) == "shop_id"


def test_a_changed_external_attribute_rebuilds_the_graph(store: SQLiteStore) -> None:
    events = [seg(1, "identify", "u-1", None, shop_id="S1", crm_id="C1")]
    store.append_sync(events, [[]])
    Follower(store, external="shop_id").catch_up()
    assert graph.tally(store).identifiers.get("external_id") == 1
    rebuilt = Follower(store, external="crm_id")
    assert rebuilt.catch_up() == 1
    assert graph.component(store, [("external_id", "C1")]) == [("external_id", "C1"), ("user_id", "u-1")]
    assert graph.component(store, [("external_id", "S1")]) == []


def test_identity_report_and_person_on_the_command_line(tmp_path: Path) -> None:
    """`loopwire identity report|person` fold what the graph has not seen, then answer as the API does."""
    import json

    from typer.testing import CliRunner

    from loopwire.cli import app

    path = tmp_path / "log.db"
    cfg_file = tmp_path / "loopwire.yaml"
    cfg = config(path)
    document = yaml.safe_load(yaml.safe_dump({"store": {"path": str(path)}}))
    document["destinations"] = {
        "amplitude": {"type": "amplitude", "api_key": "k", "region": "us"},
        "segment": {"type": "segment", "write_key": "w", "region": "us"},
        "ads": {"type": "segment", "write_key": "w", "region": "us", "route": {"hash_identifiers": True}},
        "customerio": {
            "type": "customerio",
            "site_id": "s",
            "api_key": "k",
            "region": "us",
            "identifier": "user_id",
        },
    }
    cfg_file.write_text(yaml.safe_dump(document))
    store = SQLiteStore(path)
    store.append_sync(HISTORY, ROUTES)
    store.close()
    runner = CliRunner()

    stale = runner.invoke(app, ["identity", "report", "-c", str(cfg_file), "--json", "--no-update"])
    assert stale.exit_code == 0, stale.output
    assert json.loads(stale.stdout)["lag_events"] == len(HISTORY)  # nothing folded: it read as it was

    result = runner.invoke(app, ["identity", "report", "-c", str(cfg_file), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["lag_events"] == 0 and found["people"] == 8
    assert (found["email_on_many_users"], found["user_with_many_emails"]) == (1, 1)
    assert (found["without_primary"], found["untied_anonymous"]) == (2, 2)
    assert found["match_rates"] == {"amplitude": 5 / 8, "segment": 7 / 8, "ads": 4 / 8, "customerio": 4 / 8}
    store = SQLiteStore(path, recover=False)
    try:
        assert msgspec_roundtrip(identity.report(store, cfg)) == found  # the CLI's JSON is the report
    finally:
        store.close()

    table = runner.invoke(app, ["identity", "report", "-c", str(cfg_file)])
    assert table.exit_code == 0, table.output
    assert "emails on several user ids" in table.stdout and "email:a@x.test" in table.stdout
    assert "62.5%" in table.stdout  # amplitude: 5 of 8

    person = runner.invoke(app, ["identity", "person", "A@x.TEST", "-c", str(cfg_file), "--json"])
    assert person.exit_code == 0, person.output
    assert json.loads(person.stdout)["identifiers"] == {
        "cio_id": ["c-1"],
        "email": ["a@x.test"],
        "user_id": ["u-1", "u-2"],
    }
    text = runner.invoke(app, ["identity", "person", "u-2", "-c", str(cfg_file)])
    assert text.exit_code == 0 and "a@x.test" in text.stdout and "email.sent" in text.stdout
    missing = runner.invoke(app, ["identity", "person", "nobody", "-c", str(cfg_file)])
    assert missing.exit_code == 1 and "no person known by 'nobody'" in missing.stderr

    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({**document, "identity": {"graph": False}}))
    refused = runner.invoke(app, ["identity", "report", "-c", str(off)])
    assert refused.exit_code == 1 and "identity.graph: false" in refused.stderr


def msgspec_roundtrip(value: Any) -> Any:
    import msgspec

    return msgspec.json.decode(msgspec.json.encode(value))


def test_the_graph_is_a_file_of_its_own_and_folding_writes_nothing_to_the_log(tmp_path: Path) -> None:
    """Its writes must not take the log's write lock nor add to its fsyncs (ingest commits there)."""
    path = tmp_path / "log.db"
    store = SQLiteStore(path)
    store.append_sync(HISTORY, ROUTES)
    commits = store.commits
    log_size = path.stat().st_size, (tmp_path / "log.db-wal").stat().st_size
    assert Follower(store, batch=4).catch_up() == len(HISTORY)
    assert store.commits == commits  # not one transaction on the log
    assert (path.stat().st_size, (tmp_path / "log.db-wal").stat().st_size) == log_size
    store.close()
    side = Path(graph.graph_path(str(path)))
    assert side.exists() and side.stat().st_mode & 0o077 == 0  # owner-only: it holds emails
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("id_")}  # migration 10 took them out of the log
    reopened = SQLiteStore(path)
    try:
        assert graph.cursor(reopened) == len(HISTORY)  # the cursor is kept with the graph
    finally:
        reopened.close()


class _Recording:
    """A stop event that records each wait instead of sleeping, and stops at the first idle wait."""

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self.waits: list[float] = []
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> bool:
        self.waits.append(round(seconds, 6))
        if seconds == self.poll:  # caught up
            self._set = True
        return self._set


def test_the_follower_gives_way_while_ingest_is_appending(store: SQLiteStore) -> None:
    store.append_sync(HISTORY, ROUTES)
    follower = Follower(store, batch=4, poll=0.5)
    ticks = iter(range(1_000))
    heads = iter([100, 101, 102, 102, 102, 102, 102, 102])  # the log grows during the first two batches
    stop = _Recording(poll=0.5)
    follower.follow(stop, cpu=lambda: next(ticks) * 0.01, head=lambda: next(heads))  # type: ignore[arg-type]
    full, rest = divmod(len(HISTORY), 4)
    assert rest and full >= 3
    # each full batch spent 0.01 s of CPU: while the log grew, the follower waited 9× that (a tenth
    # of a core); once it stopped growing, none; caught up, the idle poll
    assert stop.waits == [0.09, 0.09, 0.5]
    assert follower.folded == len(HISTORY)


def _open_graph(path: str, barrier: Any) -> None:
    barrier.wait()
    graph.Graph(path).close()


def test_processes_that_open_a_new_graph_file_at_once_all_succeed(tmp_path: Path) -> None:
    # the server and its follower's process may both be first to open `<store>.identity`
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for trial in range(5):
        path = str(tmp_path / f"{trial}.identity")
        barrier = context.Barrier(3)
        workers = [context.Process(target=_open_graph, args=(path, barrier)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0]
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == graph.SCHEMA_VERSION
        conn.close()
