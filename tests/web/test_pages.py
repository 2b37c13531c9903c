"""The console's pages on a store with everything in it — an audience with entries and exits, an
experiment with assignments and orders, dead letters of four reasons, a backlog — built the way the
page benchmark builds it, served by `loopwire serve`'s app; the sampled delivery charts; a pause that
outlasts a restart; numbers written for people."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.console_pages import CONFIG, TOKEN, build
from loopwire.app import create_app
from loopwire.config import parse_config
from loopwire.store import console as queries
from loopwire.web import format as fmt
from tests.conftest import CONSOLE_TOKEN, make_config
from tests.helpers.console import login
from tests.helpers.servers import serve_app

EVENTS = 20_000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console-pages") / "loopwire.db"
    build(path, EVENTS)
    return path


def test_every_page_shows_what_the_store_holds(synthetic: Path) -> None:
    config = parse_config(CONFIG.format(path=synthetic), env={"LOOPWIRE_CONSOLE_TOKEN": TOKEN})
    app = create_app(config)
    with serve_app(app) as url, login(url, TOKEN) as operator:
        overview = operator.get("/").text
        assert "20,000" in overview and "events in the log" in overview
        assert overview.count("<svg") == 1  # the log's volume; the sampled charts need two samples
        for day in ("/?range=7d",):
            assert operator.get(day).status_code == 200

        dead = operator.get("/dead-letters?destination=amplitude&reason=http_400_1").text
        rows = re.findall(r"<tr><td>amplitude</td>", dead)
        expected = len(queries.dead_letters(app.state.runtime.store, "amplitude", "http_400_1", 100))
        assert len(rows) == expected > 0
        assert "http_400_2" not in dead.split("<table>")[1]  # the filter holds in the table

        audiences = operator.get("/audiences").text
        size = queries.audience_size(app.state.runtime.store, "cart_abandoners")
        assert f"<b>{fmt.count(size)}</b><span>members now</span>" in audiences
        assert "Entered Cart Abandon Segment" in audiences  # the definition
        assert "entered" in audiences and "exited" in audiences and "first recorded" in audiences

        experiments = operator.get("/experiments").text
        assert "Lift: Cart journey" in experiments and "Computed" in experiments
        assert "<svg" in experiments

        person = operator.get("/person?key=user-1234").text
        assert "Events and what each destination got" in person and "cart_abandoners" in person
        assert operator.get("/identity").status_code == 200


def test_the_sampled_delivery_charts(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path / "loopwire.db", "http://127.0.0.1:9"))
    with serve_app(app) as url:
        console = app.state.console
        console.trend.take()
        console.trend.take()
        with httpx.Client(base_url=url) as client:
            client.post("/login", data={"token": CONSOLE_TOKEN})
            page = client.get("/").text
    titles = re.findall(r'font-weight="600" font-size="13">([^<]+)<', page)
    assert titles == [
        "Events in per hour (24h)",
        "Delivered per interval",
        "Failures per interval (dead letters + retries)",
        "Backlog (pending + in flight)",
        "Delivery latency, mean (receipt → delivered)",
    ]


def test_a_pause_from_the_console_outlasts_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path / "loopwire.db", "http://127.0.0.1:9")
    bearer = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
    app = create_app(config)
    with serve_app(app) as url:
        assert httpx.post(f"{url}/api/destinations/amplitude/pause", headers=bearer).status_code == 200
    app = create_app(config)
    with serve_app(app) as url:
        assert httpx.get(f"{url}/api/status", headers=bearer).json()["paused"] == ["amplitude"]
        assert app.state.runtime.couriers == {}
        assert httpx.post(f"{url}/api/destinations/amplitude/resume", headers=bearer).status_code == 200
        assert "amplitude" in app.state.runtime.couriers
    app = create_app(config)
    with serve_app(app) as url:
        assert httpx.get(f"{url}/api/status", headers=bearer).json()["paused"] == []


def test_numbers_and_times_are_written_for_people() -> None:
    assert [fmt.count(n) for n in (0, 999, 1234, 999_999, 1_000_000, 1_250_000, 3_400_000_000)] == [
        "0",
        "999",
        "1,234",
        "999,999",
        "1 M",
        "1.2 M",
        "3.4 B",
    ]
    now = 1_800_000_000_000
    assert [fmt.ago(now - ms, now) for ms in (500, 42_000, 300_000, 3 * 3_600_000, 3 * 86_400_000)] == [
        "just now",
        "42 s ago",
        "5 min ago",
        "3 h ago",
        "3 days ago",
    ]
    assert fmt.ago(now + 120_000, now) == "in 2 min"
    assert fmt.seconds(0.24) == "240 ms" and fmt.seconds(1.25) == "1.2 s"
    assert fmt.share(0.9333) == "93.3%"


def test_a_vendor_echoing_the_key_never_shows_it(tmp_path: Path) -> None:
    from loopwire.sandbox.amplitude import AmplitudeSandbox
    from loopwire.web.pages.destinations import scrub
    from tests.conftest import API_KEY

    box = AmplitudeSandbox(api_keys=frozenset({"another-key-entirely"}))  # ours is refused
    with serve_app(box.app) as sandbox_url:
        config = make_config(tmp_path / "loopwire.db", sandbox_url)
        assert (
            scrub(f"Invalid API key: {API_KEY}", config.destinations["amplitude"]) == "Invalid API key: ***"
        )
        app = create_app(config)
        with serve_app(app) as url, login(url) as operator:
            bearer = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
            answer = httpx.post(f"{url}/api/destinations/amplitude/test", headers=bearer)
            assert answer.status_code == 200 and answer.json()["ok"] is False
            assert API_KEY not in answer.text
            page = operator.get("/destinations").text
            assert "Failed" in page and API_KEY not in page


def test_metrics_report_the_demo_identity(demo_site: Any) -> None:
    """The identity figures in `/metrics` (prometheus-client's parser) against the identity report."""
    from prometheus_client.parser import text_string_to_metric_families

    from loopwire import identity

    runtime = demo_site.runtime
    text = httpx.get(f"{demo_site.url}/metrics", timeout=10).text
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    report = identity.report(runtime.store, runtime.config)
    assert report.lag_events == 0 and found[("loopwire_identity_lag_events", ())] == 0
    assert found[("loopwire_identity_people", ())] == report.people > 0
    for problem in identity.PROBLEMS:
        assert found[("loopwire_identity_problems", (("problem", problem),))] == getattr(report, problem)
    for dest, rate in report.match_rates.items():
        assert found[("loopwire_identity_match_rate", (("destination", dest),))] == rate
        assert found[("loopwire_identity_matched_people", (("destination", dest),))] == report.matched[dest]
