"""Rendering a lift report: a self-contained, escaped HTML page with its chart; JSON that round-trips;
a terminal table that prints user strings literally."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from rich.console import Console

from loopwire.analysis.chart import nice_ceiling
from loopwire.analysis.lift import DAY_MS, Assignment, Conversion, LiftReport, compute
from loopwire.analysis.report import from_json, headline, render_html, render_table, to_json

T0 = 1_700_000_000_000
WINDOW = 14 * DAY_MS
EVIL_NAME = '<script>alert("name")</script> & "cart" [bold red]x[/bold red]'
EVIL_CHANNEL = '<img src=x onerror=alert("channel")>'
EVIL_EVENT = "Order </b><iframe>"


def make_report(
    nh: int = 1_000, xh: int = 100, nt: int = 9_000, xt: int = 1_170, name: str = EVIL_NAME
) -> LiftReport:
    assignments: list[Assignment] = []
    conversions: list[Conversion] = []
    exposures: dict[str, frozenset[str]] = {}
    channel_sets = [frozenset(), frozenset({"sms"}), frozenset({"sms", "email"}), frozenset({EVIL_CHANNEL})]
    for group, n, x in (("holdout", nh, xh), ("treatment", nt, xt)):
        for k in range(n):
            user = f"{group}-{k}"
            assignments.append(Assignment(user, group, T0))  # type: ignore[arg-type]
            if group == "treatment":
                exposures[user] = channel_sets[k % len(channel_sets)]
            if k < x:
                conversions.append(Conversion(user, T0 + (k * 7_919_000) % WINDOW, 40.0 + k % 13))
    return compute(assignments, conversions, exposures, WINDOW, 10.0, name=name, conversion_event=EVIL_EVENT)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)


def test_html_is_self_contained_and_has_the_chart() -> None:
    page = render_html(make_report())
    assert page.startswith("<!doctype html>")
    assert "http://" not in page and "https://" not in page and "//" not in page.replace("</", "")
    parser = Tags()
    parser.feed(page)
    assert "svg" in parser.tags and parser.tags.count("polyline") == 2
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parser.tags)
    assert not {name for name, _ in parser.attributes} & {"src", "href", "onerror", "onload"}
    assert re.search(r'<polyline class="holdout" points="(\d+\.\d,\d+\.\d ?){15}"', page)
    assert re.search(r'<polyline class="treatment" points="(\d+\.\d,\d+\.\d ?){15}"', page)
    assert "Days since assignment" in page and "Cumulative conversion" in page
    assert "<style>" in page and "default-src 'none'" in page


def test_html_shows_both_groups_and_labels_the_breakdown_not_causal() -> None:
    report = make_report()
    page = render_html(report)
    assert "Holdout" in page and "Treatment" in page
    assert "1,000" in page and "9,000" in page
    assert 'data-observational="true"' in page
    assert "Observational, not causal" in page
    assert "not causal" in page.split('class="observational"')[1]
    for pattern in ("none", "sms only", "sms + email"):
        assert f"<td>{pattern}</td>" in page


def test_html_escapes_user_strings() -> None:
    page = render_html(make_report())
    assert "<script" not in page and "<iframe" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt; &amp; &quot;cart&quot;" in page
    assert "&lt;img src=x onerror=alert(&quot;channel&quot;)&gt; only" in page
    assert "Order &lt;/b&gt;&lt;iframe&gt;" in page


def test_headline_says_what_the_journey_caused() -> None:
    report = make_report(name="Cart abandon")
    assert report.lift is not None and report.lift.significant
    text = headline(report)
    assert text.startswith("The journey caused an estimated 270 more orders (95% CI ")
    assert "p = 0.007" in text and "13.0% of treated users converted vs 10.0% in the holdout" in text
    assert headline(report) in render_html(report)


def test_headline_says_when_there_is_no_detectable_lift() -> None:
    report = make_report(xt=910, name="Winback")
    assert report.lift is not None and not report.lift.significant
    text = headline(report)
    assert text.startswith("No detectable lift: 10.1% of treated users converted vs 10.0% in the holdout")
    assert " to " in text and "p = " in text


def test_headline_says_when_the_journey_cost_orders() -> None:
    text = headline(make_report(xt=700))
    assert text.startswith("The journey cost an estimated 200 orders (95% CI ")


def test_headline_warns_of_a_sample_ratio_mismatch() -> None:
    report = make_report(nh=2_000, xh=200)
    assert report.srm.mismatch
    assert headline(report).startswith("Sample ratio mismatch")


def test_json_round_trips() -> None:
    report = make_report()
    data = to_json(report)
    assert data["breakdown"]["observational"] is True
    assert data["holdout"]["group"] == "holdout" and data["treatment"]["n"] == 9_000
    assert len(data["treatment"]["cumulative"]) == 15
    text = json.dumps(data)
    assert from_json(json.loads(text)) == report


def test_table_renders_with_user_strings_printed_literally() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_table(make_report()))
    text = console.export_text()
    assert "Holdout" in text and "Treatment" in text
    assert "OBSERVATIONAL, NOT CAUSAL" in text and "not causal" in text
    assert EVIL_NAME in text  # Rich markup in a name is shown, not interpreted
    assert "sms + email" in text and "incremental orders" in text


def test_a_report_without_a_lift_still_renders() -> None:
    report = compute([Assignment("t", "treatment", T0)], [], {}, WINDOW, 10.0, name="Too early")
    assert report.lift is None
    assert headline(report).startswith("Not enough data yet")
    page = render_html(report)
    assert "<svg" in page and "Not enough data yet" in page
    console = Console(record=True, width=120)
    console.print(render_table(report))
    assert "Too early" in console.export_text()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, (0.01, 0.002)), (0.123, (0.125, 0.025)), (0.1, (0.1, 0.02)), (0.87, (1.0, 0.2))],
)
def test_the_chart_axis_ends_on_a_round_number(value: float, expected: tuple[float, float]) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)
