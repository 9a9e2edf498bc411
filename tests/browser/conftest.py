"""End-to-end tests in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package (its sync API, in plain tests) with `executable_path`; Playwright never downloads a
browser here. `.ci/run` installs Chromium when it is missing.

The real gateway runs in a thread of its own (its own `trio.run`), in front of real child
processes, on 127.0.0.1 port 0. Screenshots go to `SHOTS` (and, for the docs, `docs/img/`).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from hestia import Gateway, load_config, run

CHROMIUM = os.environ.get("HESTIA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("HESTIA_SCREENSHOTS", "/tmp/hestia-screenshots"))
DOCS_IMG = Path(__file__).parents[2] / "docs" / "img"
# As this machine's Chromium needs them: no sandbox as root, no GPU, and no background
# connections (the network is closed; each would be refused or time out).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


class ThreadGateway:
    """The real gateway, served by `trio.run` in a thread, for tests that are not trio's."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.gateway: Gateway | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._main, name="gateway", daemon=True)

    def start(self) -> ThreadGateway:
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("the gateway did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.gateway = await nursery.start(partial(run, self._config, handle_signals=False))
            self._started.set()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in the gateway's trio thread (sync or async) and return its result."""
        assert self._token is not None
        if inspect.iscoroutinefunction(fn):
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def stop(self) -> None:
        if self.gateway is not None and self._thread.is_alive():
            self.call(self.gateway.shutdown)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the gateway did not stop within 30 s"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ThreadGateway]]:
    """`serve(services={...}, **top_level)` → the real gateway, running, stopped afterwards."""
    running: list[ThreadGateway] = []

    def start(**top: Any) -> ThreadGateway:
        raw = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
               "grace_period": "2s", "strategies_dir": str(tmp_path / "no-strategies"), **top}
        # From a file, as a person runs it: the gateway can reload it (`gateway.config_file`).
        path = tmp_path / f"hestia-{len(running) + 1}.yml"
        path.write_text(yaml.safe_dump(json.loads(json.dumps(raw, default=str)),
                                       sort_keys=False))
        gateway = ThreadGateway(load_config(path, env={})).start()
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    # `*.localhost` resolves to loopback in Chromium itself, as the docs promise users.
    ctx = chromium.new_context(viewport={"width": 1200, "height": 800})
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def screenshot(page: Page, name: str, *, docs: bool = False) -> Path:
    """Save a screenshot in `SHOTS`; with `docs`, and `HESTIA_DOCS_SCREENSHOTS=1` set, also
    in docs/img/ (the docs' current pictures; a plain test run leaves the tree unchanged)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("HESTIA_DOCS_SCREENSHOTS") == "1" and DOCS_IMG.is_dir():
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")
    return path
