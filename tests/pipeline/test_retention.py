"""Retention in the background of a served app: webhooks delivered to the sandbox, the clock moved
40 days on, and the old rows go while the server keeps taking webhooks; /metrics counts what went,
and the lifetime delivered count stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from loopwire.app import create_app
from loopwire.config import RetentionConfig
from loopwire.settings import Duration
from tests.conftest import Clock, make_config, wait_until
from tests.helpers.cio import webhook
from tests.helpers.servers import serve_app
from tests.test_app import delivered, send
from tests.test_monitoring import caught_up, scrape, value

DAY = 86_400.0


def test_retention_runs_in_the_background_and_metrics_count_it(
    tmp_path: Path, sandbox: Any, clock: Clock
) -> None:
    box, sandbox_url = sandbox
    config = make_config(tmp_path / "loopwire.db", sandbox_url)
    retention = RetentionConfig(
        events=Duration(30 * DAY), delivered=Duration(30 * DAY), interval=Duration(0.2)
    )
    config = msgspec.structs.replace(config, store=msgspec.structs.replace(config.store, retention=retention))
    app = create_app(config, clock=clock)
    with serve_app(app) as url:
        runtime = app.state.runtime
        for n in range(5):
            assert send(url, webhook("email", "delivered", user_id=f"user-{n}")).status_code == 200
        wait_until(lambda: delivered(runtime) == 5, what="five deliveries")
        wait_until(lambda: caught_up(url), what="the identity graph to fold them")
        samples = scrape(url)
        assert value(samples, "loopwire_retention_deleted_rows_total", kind="events") == 0

        clock.advance(40 * DAY)  # the five are now 40 days old (by the server's clock)
        # The ingest process stamps receipt in real time, so by the server's clock this one is as
        # old as the five; it stays because the newest event of the log never goes (its seq would
        # be given out again), and its delivered row was settled by the server's clock: recent.
        assert send(url, webhook("email", "delivered", user_id="user-new")).status_code == 200
        wait_until(lambda: delivered(runtime) == 6, what="the sixth delivery")
        wait_until(lambda: caught_up(url), what="the identity graph to fold the sixth")

        def trimmed() -> Any:
            found = scrape(url)
            return (
                found if value(found, "loopwire_retention_deleted_rows_total", kind="events") == 5 else None
            )

        samples = wait_until(trimmed, what="retention to delete the five old events")
        assert value(samples, "loopwire_retention_deleted_rows_total", kind="delivered") == 5
        assert value(samples, "loopwire_retention_deleted_rows_total", kind="dead") == 0
        assert value(samples, "loopwire_outbox_events", destination="amplitude", state="delivered") == 6
        assert value(samples, "loopwire_store_size_bytes", file="db") > 0
        assert value(samples, "loopwire_log_oldest_event_age_seconds") >= 40 * DAY - 60
        status = runtime.status()
        assert status["events"] == 1 and status["retention_deleted"]["events"] == 5
        assert status["destinations"]["amplitude"]["delivered"] == 6  # a lifetime total
        # ingest goes on beside it
        assert send(url, webhook("email", "opened", user_id="user-new")).status_code == 200
        wait_until(lambda: delivered(runtime) == 7, what="a delivery after the trim")
    assert len(box.events) == 7
