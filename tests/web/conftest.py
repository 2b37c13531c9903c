"""The demo's store behind a fresh `loopwire serve` app, its destinations pointed at new sandboxes, and
a real headless Chromium (Debian's `chromium`, driven by Playwright through `executable_path`: no
browser of Playwright's own is downloaded). Built once per session: the demo takes a few seconds."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loopwire.app import Runtime, create_app
from loopwire.config import load_config
from loopwire.demo import wiring
from loopwire.demo.runner import run_demo
from loopwire.pipeline.identity_graph import Follower
from loopwire.sandbox.amplitude import AmplitudeSandbox
from loopwire.sandbox.customerio import CustomerioSandbox
from loopwire.sandbox.segment import SegmentSandbox
from loopwire.store import SQLiteStore
from tests.conftest import CONSOLE_TOKEN
from tests.helpers.servers import serve_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"  # gitignored screenshots


@dataclass
class Site:
    url: str
    runtime: Runtime
    amplitude: AmplitudeSandbox
    keys: dict[str, str]
    report: dict[str, Any]


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("console-demo")
    report = run_demo(people=30, seed=11, keep=folder, progress=False, console=Console(file=io.StringIO()))
    assert report["ok"], "the demo did not add up"
    keys = _read_env(folder / "demo.env")
    amplitude = AmplitudeSandbox(api_keys=frozenset({keys[wiring.AMPLITUDE_ENV]}))
    customerio = CustomerioSandbox(credentials={keys[wiring.CIO_SITE_ENV]: keys[wiring.CIO_KEY_ENV]})
    segment = SegmentSandbox(write_keys=frozenset({keys[wiring.SEGMENT_ENV]}))
    with ExitStack() as stack:
        urls = {
            wiring.AMPLITUDE: stack.enter_context(serve_app(amplitude.app)),
            wiring.CUSTOMERIO: stack.enter_context(serve_app(customerio.app)),
            wiring.SEGMENT: stack.enter_context(serve_app(segment.app)),
        }
        config_path = wiring.write_config(folder, urls, keys, kept=False)  # the same store, new sandboxes
        config = load_config(config_path, env={**keys, "LOOPWIRE_CONSOLE_TOKEN": CONSOLE_TOKEN})
        # the identity graph of the demo's log, folded as the CLI or the server's follower does
        store = SQLiteStore(config.store.path, recover=False)
        follower = Follower(store)
        while follower.fold_once():
            pass
        store.close()
        app = create_app(config)
        url = stack.enter_context(serve_app(app))
        yield Site(url, app.state.runtime, amplitude, keys, report)


@pytest.fixture(scope="module")
def chromium(demo_site: Site) -> Iterator[Any]:
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is open, and
    the tests of other modules (and the demo) need the thread without one."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed (`make test` installs it with apt)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class Tab:
    """A browser tab that records every console error, page error and request it sees."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on(
            "console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def login(self, token: str = CONSOLE_TOKEN) -> None:
        self.go("/login")
        self.page.fill("#token", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def tab(chromium: Any, demo_site: Site) -> Iterator[Tab]:
    opened = Tab(chromium, demo_site.url)
    yield opened
    opened.context.close()
    assert opened.errors == []
    assert all(u.startswith(demo_site.url) for u in opened.requests), "the console fetched from elsewhere"
