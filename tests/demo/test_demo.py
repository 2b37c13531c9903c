"""`loopwire demo` end to end: real servers on loopback, the official Segment and Amplitude libraries,
signed webhooks, three sandboxes, and a report that adds up in every direction."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from loopwire.analysis.report import from_json
from loopwire.config import load_config
from loopwire.demo import wiring
from loopwire.demo.experiment import truth
from loopwire.demo.runner import run_demo
from loopwire.demo.scenario import EXPERIMENT_ID, build_scenario


def test_demo_report_adds_up(tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, width=100, force_terminal=False)
    report = run_demo(people=40, seed=3, keep=tmp_path, progress=True, console=console)

    assert report["ok"], {k: v for k, v in report["checks"].items() if not v}
    scenario = build_scenario(40, 3, start=0)  # ids, holdout and shop behaviour depend on the seed only
    expected = scenario.expected
    inputs, dests = report["inputs"], report["destinations"]
    amp, cio, seg = dests["amplitude"], dests["customerio"], dests["segment"]

    # IN: every input answered, each event logged once, redeliveries and resends deduplicated
    hooks, shop, app = inputs["customerio_webhooks"], inputs["segment_api"], inputs["amplitude_api"]
    assert hooks["accepted"] + hooks["duplicates"] == hooks["sent"] == expected.webhooks
    assert shop["accepted"] + shop["duplicates"] == shop["sent"] == expected.store_calls
    assert app["accepted"] + app["duplicates"] == app["sent"] == expected.app_calls
    assert min(hooks["duplicates"], shop["duplicates"], app["duplicates"]) > 0
    assert hooks["refused"] == shop["refused"] == app["refused"] == shop["failed"] == app["failed"] == 0
    log = report["log"]
    assigned = len(expected.assignments)  # loopwire's engine logs one holdout trait per assigned id
    assert log["by_source"]["loopwire"] == assigned > 0
    assert (
        log["events"]
        == sum(log["by_source"].values())
        == hooks["accepted"] + shop["accepted"] + app["accepted"] + assigned
    )

    # OUT: every routed row settled, and each sandbox holds what was delivered, once
    for dest in dests.values():
        assert dest["delivered"] + dest["skipped"] + dest["dead"] == dest["routed"]
        assert dest["pending"] == dest["in_flight"] == 0
    assert amp["routed"] == expected.events + expected.app_events + assigned
    assert amp["sandbox"]["events"] == amp["delivered"] == sum(amp["sandbox"]["by_event_type"].values())
    assert amp["sandbox"]["from_the_app_unchanged"] == amp["sandbox"]["from_the_app"] > 0
    assert seg["routed"] == seg["delivered"] == seg["sandbox"]["messages"] == expected.events + assigned
    assert seg["sandbox"]["by_event"]["identify"] == assigned
    assert "Email Link Clicked" in seg["sandbox"]["by_event"]
    assert cio["sandbox"]["events"] == sum(cio["sandbox"]["events_by_name"].values())
    assert set(cio["sandbox"]["events_by_name"]) <= set(wiring.CIO_EVENTS)
    ops = cio["sandbox"]["operations_by_action"]
    assert ops["event"] == cio["sandbox"]["events"] and cio["delivered"] == ops["event"] + ops["identify"]
    assert cio["skipped"] == sum(r["count"] for r in cio["skip_reasons"]) > 0

    # the arranged faults: Amplitude 503 (retried) and 400 naming one event (dead-lettered, rest
    # resent); Customer.io 503 and Segment 429 (retried, nothing lost)
    assert amp["requests_by_status"]["503"] == 1 and amp["requests_by_status"]["400"] == 1
    assert amp["dead"] == 1 and amp["retried"] > 0
    assert "time" in amp["dead_reasons"][0]["reason"]
    assert amp["dead_letters"][0]["response"].startswith("400 ")
    assert all("no id" in r["reason"] for r in amp["skip_reasons"])
    assert cio["requests_by_status"]["503"] == 1 and cio["retried"] > 0 and cio["dead"] == 0
    assert seg["requests_by_status"]["429"] == 1 and seg["retried"] > 0 and seg["dead"] == 0

    # the holdout: as many as the scenario says; no message anywhere, but their shopping flowed
    holdout = report["holdout"]
    assert holdout["people"] == sum(p.holdout for p in scenario.people) > 0
    assert holdout["webhooks"] == holdout["engagement_in_amplitude"] == holdout["engagement_in_segment"] == 0
    assert holdout["checkouts_in_customerio"] == sum(
        p.holdout and p.kind == "customer" for p in scenario.people
    )

    # one example per flow, as the receiver holds it (no sandbox bookkeeping)
    examples = report["examples"]
    assert len(examples) == 6 and not any(k.startswith("_") for e in examples.values() for k in e)
    assert examples["storefront (Segment library) → Customer.io"]["name"] == "Order Completed"
    assert examples["app (Amplitude SDK) → Customer.io"]["action"] == "identify"
    holdout_trait = examples["loopwire's holdout assignment → Customer.io"]["attributes"]
    assert set(holdout_trait) == {wiring.HOLDOUT_TRAIT}

    # the experiment: loopwire assigned exactly the scenario's ids, and its lift report agrees with
    # the scenario group by group; the true lift stands beside the estimate
    lift = report["lift"]
    assert lift["experiment"] == EXPERIMENT_ID and lift["placeholder_ids"] == ["0"]
    assert lift["assigned"] == {
        "holdout": sum(g == "holdout" for g in expected.assignments.values()),
        "treatment": sum(g == "treatment" for g in expected.assignments.values()),
    }
    lift_report = from_json(lift["report"])
    sample = truth(scenario)["sample"]
    for group in (lift_report.holdout, lift_report.treatment):
        assert (group.n, group.conversions) == (
            sample[group.group]["users"],
            sample[group.group]["converted"],
        )
    assert lift_report.holdout_exposed == 0 and lift_report.breakdown.observational
    assert lift["true"]["absolute_lift"] == 0.08 and lift["estimate"]["covers_true_lift"] in (True, False)
    page = (tmp_path / wiring.LIFT_HTML).read_text()
    assert lift["html"] == str(tmp_path / wiring.LIFT_HTML)
    assert "default-src 'none'" in page and "Cart abandon journey" in page

    printed = output.getvalue()
    for text in (
        "all checks passed",
        "IN: what came into loopwire",
        "OUT: what loopwire delivered",
        "Holdout",
        "Did the journey cause the orders?",
        "Lift: Cart abandon journey",
        "OBSERVATIONAL, NOT CAUSAL",
        "True lift",
        str(tmp_path / wiring.LIFT_HTML),
    ):
        assert text in printed
    # the demo ends with the lift report: nothing but its lines follow the table
    assert printed.index("Lift: Cart abandon journey") > printed.index("all checks passed")
    assert printed.count("Arranged on purpose") == 3
    # the servers and the SDK clients are stopped; the kept folder holds a config that loads with demo.env
    assert not [t for t in threading.enumerate() if t.name.startswith("demo-")]
    env = dict(line.split("=", 1) for line in (tmp_path / "demo.env").read_text().splitlines())
    config = load_config(tmp_path / "demo.yaml", env=env)
    assert config.store.path == str(tmp_path / "demo.db")
    assert set(config.destinations) == set(wiring.DESTINATIONS)
    assert set(config.experiments) == {EXPERIMENT_ID}
    text = (tmp_path / "demo.yaml").read_text()
    assert not any(secret in text for secret in env.values())


def test_cli_demo_json() -> None:
    script = Path(sys.executable).parent / "loopwire"
    if not script.exists():
        pytest.skip("the loopwire console script is not installed next to this Python")
    done = subprocess.run(
        [str(script), "demo", "--json", "--people", "30", "--seed", "9"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "120"},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = msgspec.json.decode(done.stdout)
    assert report["ok"], report["checks"]
    assert report["scenario"]["people"] == 30
    assert set(report["inputs"]) == {"customerio_webhooks", "segment_api", "amplitude_api"}
    for dest in report["destinations"].values():
        assert dest["delivered"] + dest["skipped"] + dest["dead"] == dest["routed"]
    lift = from_json(report["lift"]["report"])  # the lift report, whole, in the JSON
    assert lift.holdout.n + lift.treatment.n == len(build_scenario(30, 9, start=0).expected.assignments)
    assert report["lift"]["html"] is None  # written only into a --keep folder
