"""`GET /metrics` read with prometheus-client's own parser: outbox depth and the age of the oldest
waiting event, retries, dead letters and skips by reason code, and the identity graph's collisions
and match rates, each checked against what the test sent."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loopwire.metrics import REASON_CODES
from tests.conftest import Clock, wait_until
from tests.helpers.cio import webhook
from tests.test_app import fault, send

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def caught_up(url: str) -> Samples | None:
    samples = scrape(url)
    return samples if value(samples, "loopwire_identity_lag_events") == 0 else None


def person(user_id: str | None, email: str | None, cio_id: str) -> dict[str, Any]:
    doc = webhook("email", "delivered", user_id=user_id, email=email)
    doc["data"]["identifiers"]["cio_id"] = cio_id
    doc["data"]["recipient"] = email
    return doc


def test_metrics_count_reasons_backlog_and_identity_exactly(loopwire: Any, sandbox: Any) -> None:
    box, sandbox_url = sandbox
    with loopwire() as (url, runtime):
        # three people; one email on two user ids (a collision), one person with no user id
        people = [
            person("user-0001", "ada@example.com", "c1"),
            person("user-0002", "shared@example.com", "c2"),
            person("user-0003", "shared@example.com", "c3"),
        ]
        for doc in people:
            assert send(url, doc).status_code == 200
        wait_until(lambda: runtime.store.counts()["amplitude"]["delivered"] == 3, what="three deliveries")
        fault(sandbox_url, {"status": 503, "times": 1})
        assert send(url, person("user-0004", "bo@example.com", "c4")).status_code == 200
        wait_until(lambda: runtime.store.counts()["amplitude"]["delivered"] == 4, what="delivery after a 503")
        fault(sandbox_url, {"status": 400, "invalid_indexes": [0], "times": 1})
        assert send(url, person("user-0005", "cy@example.com", "c5")).status_code == 200
        wait_until(lambda: runtime.store.counts()["amplitude"]["dead"] == 1, what="the dead letter")
        assert send(url, person(None, None, "c6")).status_code == 200  # no id Amplitude accepts
        wait_until(lambda: runtime.store.counts()["amplitude"]["skipped"] == 1, what="the skip")
        samples = wait_until(lambda: caught_up(url), what="the identity graph to catch up")

    reasons = "loopwire_delivery_reasons_total"
    assert value(samples, reasons, destination="amplitude", outcome="retried", reason="http_503") == 1
    assert value(samples, reasons, destination="amplitude", outcome="dead", reason="http_400") == 1
    assert value(samples, reasons, destination="amplitude", outcome="skipped", reason="no_identifier") == 1
    counted = [(dict(labels), v) for (name, labels), v in samples.items() if name == reasons]
    assert sum(v for _, v in counted) == 3  # nothing else was retried, dead-lettered or skipped
    assert all(
        labels["reason"] in REASON_CODES or labels["reason"].startswith("http_") for labels, _ in counted
    )

    depth = "loopwire_outbox_events"
    assert value(samples, depth, destination="amplitude", state="delivered") == 4
    assert value(samples, depth, destination="amplitude", state="dead") == 1
    assert value(samples, depth, destination="amplitude", state="skipped") == 1
    assert value(samples, depth, destination="amplitude", state="pending") == 0
    assert value(samples, "loopwire_outbox_oldest_pending_age_seconds", destination="amplitude") == 0

    # six webhooks, five people: user-0002 and user-0003 share an email (one person in the graph), c6 has only a cio_id
    assert value(samples, "loopwire_identity_people") == 5
    assert value(samples, "loopwire_identity_problems", problem="email_on_many_users") == 1
    assert value(samples, "loopwire_identity_problems", problem="user_with_many_emails") == 0
    assert value(samples, "loopwire_identity_problems", problem="without_primary") == 1
    assert value(samples, "loopwire_identity_problems", problem="untied_anonymous") == 0
    # Amplitude reaches a person by user id or device id: all but the one with only a cio_id
    assert value(samples, "loopwire_identity_matched_people", destination="amplitude") == 4
    assert value(samples, "loopwire_identity_match_rate", destination="amplitude") == 4 / 5
    assert len(box.events) == 4


def test_the_oldest_waiting_event_ages_while_its_destination_is_paused(
    loopwire: Any, sandbox: Any, clock: Clock
) -> None:
    with loopwire(paused=True) as (url, runtime):
        send(url, person("user-0001", "ada@example.com", "c1"))
        send(url, person("user-0002", "bo@example.com", "c2"))
        clock.advance(120)
        send(url, person("user-0003", "cy@example.com", "c3"))
        samples = scrape(url)
    assert value(samples, "loopwire_outbox_events", destination="amplitude", state="pending") == 3
    age = value(samples, "loopwire_outbox_oldest_pending_age_seconds", destination="amplitude")
    assert age is not None and 120 <= age < 130  # the first two, not the newest


def test_the_follower_process_runs_idle_is_restarted_and_stops_with_the_server(
    loopwire: Any, sandbox: Any
) -> None:
    import os
    import signal

    with loopwire() as (url, runtime):
        follower = runtime.identity
        first = follower.pid
        assert first is not None
        # ingest first: the graph gets only the CPU nothing else wants
        assert os.sched_getscheduler(first) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, first) == 19
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: follower.starts == 2, what="a new follower process")
        send(url, person("user-0001", "ada@example.com", "c1"))
        samples = wait_until(lambda: caught_up(url), what="the new follower to fold the event")
        assert value(samples, "loopwire_identity_people") == 1
        assert value(samples, "loopwire_identity_follower_restarts_total") == 1
        second = follower.pid
    assert second != first
    assert not os.path.exists(f"/proc/{second}")  # stopped and reaped with the server
