"""`loopwire migrate --from sqlite:PATH --to postgres:` (issue 11, item 4): a SQLite store copied into
a real PostgreSQL database, twice as a running installation would be moved; a foreign target refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from loopwire.cli import app
from loopwire.model import decode_event
from loopwire.store import Settlement, SQLiteStore
from loopwire.store.postgres import Store as PostgresStore
from tests.store.conftest import event


def _flat(output: str) -> str:
    return " ".join(output.split())  # (the console wraps long lines)


def _delivered_and_dead(store: SQLiteStore | PostgresStore) -> None:
    claimed = asyncio.run(store.claim("amplitude", 3, now_ms=10_000))
    asyncio.run(
        store.settle(
            "amplitude",
            [
                Settlement(claimed[0].seq, "delivered"),
                Settlement(claimed[1].seq, "dead", reason="http_400_invalid", response='{"code":400}'),
                Settlement(claimed[2].seq, "pending", next_ms=40_000, reason="429"),
            ],
            now_ms=10_001,
        )
    )


def test_migrate_copies_the_store_and_then_only_what_came_since(tmp_path: Path, pg_dsn: str) -> None:
    path = tmp_path / "loopwire.db"
    source = SQLiteStore(path)
    source.append_sync([event(n) for n in range(10)], [["amplitude"]] * 10)
    _delivered_and_dead(source)
    source.close()
    runner = CliRunner()

    first = runner.invoke(
        app, ["migrate", "--from", f"sqlite:{path}", "--to", "postgres:"], env={"LOOPWIRE_PG_DSN": pg_dsn}
    )
    assert first.exit_code == 0, first.output
    said = _flat(first.output)
    assert "events 10," in said and "outbox 10," in said
    assert pg_dsn not in said  # the DSN is not printed (it may hold a password): dbname@host

    # the installation runs on: more events, and the retried row delivered
    source = SQLiteStore(path)
    source.append_sync([event(n) for n in range(10, 14)], [["amplitude"]] * 4)
    (retried,) = [c for c in asyncio.run(source.claim("amplitude", 20, now_ms=50_000)) if c.attempts == 2]
    asyncio.run(source.settle("amplitude", [Settlement(retried.seq, "delivered")], now_ms=50_001))
    expected = source.counts(["amplitude"])
    source.close()

    second = runner.invoke(app, ["migrate", "--from", f"sqlite:{path}", "--to", f"postgres:{pg_dsn}"])
    assert second.exit_code == 0, second.output
    assert "events 4," in _flat(second.output)  # the log: only what came since

    target = PostgresStore(pg_dsn, recover=False)
    try:
        assert target.event_count() == 14
        assert target.counts(["amplitude"]) == expected
        assert target.dead_letters()[0]["reason"] == "http_400_invalid"
        bodies = target.read(lambda c: c.execute("SELECT seq, body FROM events ORDER BY seq").fetchall())
        assert [decode_event(bytes(body)).id for _, body in bodies] == [f"evt-{n:05d}" for n in range(14)]
        assert [seq for seq, _ in bodies] == list(range(1, 15))
    finally:
        target.close()

    # run once more with nothing new: nothing appended, the same state
    third = runner.invoke(app, ["migrate", "--from", f"sqlite:{path}", "--to", f"postgres:{pg_dsn}"])
    assert third.exit_code == 0, third.output
    assert "events" not in _flat(third.output).split(" s: ", 1)[1]


def test_migrate_refuses_a_target_that_holds_another_log(tmp_path: Path, pg_dsn: str) -> None:
    other = PostgresStore(pg_dsn)
    other.append_sync([event(99)], [["amplitude"]])
    other.close()
    path = tmp_path / "loopwire.db"
    source = SQLiteStore(path)
    source.append_sync([event(1)], [["amplitude"]])
    source.close()
    result = CliRunner().invoke(app, ["migrate", "--from", f"sqlite:{path}", "--to", f"postgres:{pg_dsn}"])
    assert result.exit_code == 1
    assert "not this store's" in result.output
    target = PostgresStore(pg_dsn, recover=False)
    try:
        assert target.event_count() == 1  # nothing written
    finally:
        target.close()


def test_migrate_names_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["migrate", "--from", "x.db", "--to", "postgres:dbname=x"]).exit_code == 2
    assert runner.invoke(app, ["migrate", "--from", "sqlite:x.db", "--to", "mysql:x"]).exit_code == 2
    missing = runner.invoke(
        app, ["migrate", "--from", "sqlite:x.db", "--to", "postgres:"], env={"LOOPWIRE_PG_DSN": ""}
    )
    assert missing.exit_code == 2 and "no DSN" in missing.output
