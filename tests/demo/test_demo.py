"""`loopwire demo` end to end: real servers on loopback, real signed requests, a report that adds up."""

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

from loopwire.config import load_config
from loopwire.demo.runner import run_demo
from loopwire.demo.scenario import build_scenario


def test_demo_report_adds_up(tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, width=100, force_terminal=False)
    report = run_demo(people=40, seed=3, keep=tmp_path, progress=True, console=console)

    assert report["ok"], report["checks"]
    amp, hooks, sandbox = report["amplitude"], report["webhooks"], report["sandbox"]
    events = report["log"]["events"]
    assert amp["delivered"] + amp["skipped"] + amp["dead"] == amp["routed"] == events
    assert amp["pending"] == amp["in_flight"] == 0
    assert hooks["accepted"] + hooks["duplicates"] == hooks["sent"]
    assert hooks["accepted"] == events == report["scenario"]["events"]
    assert hooks["duplicates"] > 0 and hooks["refused"] == 0
    assert sandbox["events"] == amp["delivered"] == sum(sandbox["by_event_type"].values())
    # the arranged faults: one 503 (retried), one 400 naming one event (dead-lettered, rest resent)
    assert amp["requests_by_status"]["503"] == 1 and amp["requests_by_status"]["400"] == 1
    assert amp["dead"] == 1 and amp["retried"] > 0
    assert "time" in amp["dead_reasons"][0]["reason"]
    assert amp["dead_letters"][0]["response"].startswith("400 ")
    assert amp["skipped"] == sum(r["count"] for r in amp["skip_reasons"])
    assert all("no id" in r["reason"] for r in amp["skip_reasons"])
    # the holdout: as many as the scenario says, and nothing of theirs reached Amplitude
    scenario = build_scenario(40, 3, start=0)  # holdout depends on ids, which depend on the seed only
    assert report["holdout"]["people"] == sum(p.holdout for p in scenario.people) > 0
    assert report["holdout"]["webhooks"] == report["holdout"]["events_in_sandbox"] == 0
    assert report["examples"] and all("insert_id" in e and "_endpoint" not in e for e in report["examples"])

    printed = output.getvalue()
    assert "all checks passed" in printed and "Holdout" in printed and "dead-lettered" in printed
    # the servers are stopped and the kept folder holds a config that loads with demo.env
    assert not [t for t in threading.enumerate() if t.name.startswith("demo-")]
    env = dict(line.split("=", 1) for line in (tmp_path / "demo.env").read_text().splitlines())
    assert load_config(tmp_path / "demo.yaml", env=env).store.path == str(tmp_path / "demo.db")
    assert env["LOOPWIRE_DEMO_SIGNING_KEY"] not in (tmp_path / "demo.yaml").read_text()


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
    amp = report["amplitude"]
    assert amp["delivered"] + amp["skipped"] + amp["dead"] == report["log"]["events"]
