"""The waiting page in a real browser: a cold service's page, then the app by itself; a failed
start's reasons and its Retry; the same without JavaScript; the 404 page; host routes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import trio
from playwright.sync_api import Page, expect

from hestia.lifecycle.supervisor import State
from tests.browser.conftest import ThreadGateway, screenshot
from tests.integration.conftest import UPSTREAM_APP, upstream_service

APP_TEXT = '"path": "/echo?from=browser"'  # what the app (tests/upstream_app.py) answers
# Fails with a reason in its log until `marker` exists, then runs the test upstream.
FAILS_UNTIL = """
import os, runpy, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    print("loading weights from", marker)
    print("error: weights not found; download them first")
    sys.exit(3)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def fails_until(marker: Path) -> dict:
    return upstream_service(
        launcher={"process": {"command": [sys.executable, "-c", FAILS_UNTIL, str(marker),
                                          UPSTREAM_APP], "stop_timeout": "2s"}},
        startup={"attempts": 2, "delay": "0.1s", "cooldown": "60s"})


def started_once(gateway: ThreadGateway, service: str) -> None:
    """Start `service`, then stop it: from now on its page knows how long a start takes."""
    supervisor = gateway.gateway.supervisors[service]

    async def start_and_stop() -> None:
        with trio.fail_after(20):
            async with supervisor.lease():
                pass
            supervisor.request_stop()
            await supervisor.wait_until(State.COLD)

    gateway.call(start_and_stop)


def test_a_cold_service_shows_the_waiting_page_then_the_app_by_itself(serve, page: Page):
    gateway = serve(services={"notebook": upstream_service("--start-delay", "2.5")})
    started_once(gateway, "notebook")
    response = page.goto(f"{gateway.url}/services/notebook/echo?from=browser")
    assert response is not None and response.status == 503
    assert response.headers["cache-control"] == "no-store"
    expect(page.locator("#state")).to_have_text("STARTING")
    expect(page.locator("#headline")).to_contain_text("Starting notebook.")
    expect(page.locator("#expected")).to_contain_text("(the median of its last 1 start)")
    expect(page.locator("#elapsed")).to_have_text(re.compile(r"^1\.\d s$"))  # it counts
    screenshot(page, "waiting-page", docs=True)
    expect(page.locator("body")).to_contain_text(APP_TEXT, timeout=20_000)
    assert page.url == f"{gateway.url}/services/notebook/echo?from=browser"


def test_a_failed_start_says_why_and_retry_opens_the_app(serve, page: Page, tmp_path: Path):
    marker = tmp_path / "weights.bin"
    gateway = serve(services={"imagegen": fails_until(marker)})
    page.goto(f"{gateway.url}/services/imagegen/echo?from=browser")
    expect(page.locator("#state")).to_have_text("FAILED")
    expect(page.locator("#headline")).to_have_text("imagegen could not be started.")
    expect(page.locator("#failure-summary")).to_contain_text(
        "Hestia tried 2 times to start it, and every attempt failed. "
        "The process exited with status 3.")
    expect(page.locator("#failure-log")).to_contain_text(
        "error: weights not found; download them first")
    retry = page.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    screenshot(page, "waiting-page-failed", docs=True)
    marker.write_bytes(b"weights")
    retry.click()
    expect(page.locator("body")).to_contain_text(APP_TEXT, timeout=20_000)


def test_without_javascript_the_page_reloads_into_the_app(serve, chromium, tmp_path: Path):
    marker = tmp_path / "weights.bin"
    gateway = serve(services={"slow": upstream_service("--start-delay", "1"),
                              "broken": fails_until(marker)})
    context = chromium.new_context(java_script_enabled=False)
    context.set_default_timeout(20_000)
    try:
        page = context.new_page()
        page.goto(f"{gateway.url}/services/slow/echo?from=browser")
        expect(page.locator("#state")).to_have_text("STARTING")
        expect(page.locator("body")).to_contain_text(APP_TEXT)  # the <noscript> refresh
        page.goto(f"{gateway.url}/services/broken/echo?from=retry")
        # No script follows the start: the refresh shows its end, and then stops refreshing.
        expect(page.locator("#state")).to_have_text("FAILED")
        expect(page.locator("#failure-log")).to_contain_text("weights not found")
        marker.write_bytes(b"weights")
        page.get_by_role("button", name="Retry").click()  # a form post, back to the page
        expect(page.locator("body")).to_contain_text('"path": "/echo?from=retry"')
    finally:
        context.close()


def test_a_service_on_its_own_host_name_gets_its_waiting_page(serve, page: Page):
    gateway = serve(service_domain="localhost",
                    services={"notebook": upstream_service("--start-delay", "1")})
    url = f"http://notebook.localhost:{gateway.port}/echo?from=browser"
    response = page.goto(url)
    assert response is not None and response.status == 503
    expect(page.locator("#state")).to_have_text("STARTING")
    expect(page.locator("body")).to_contain_text(APP_TEXT)
    assert page.url == url


def test_an_unknown_service_lists_the_services(serve, page: Page):
    gateway = serve(services={"notebook": upstream_service(), "chat": upstream_service()})
    response = page.goto(f"{gateway.url}/services/notbook/")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="No such service")).to_be_visible()
    links = page.get_by_role("listitem")
    expect(links).to_have_text(["chat", "notebook"])
    page.get_by_role("link", name="notebook").click()
    expect(page.locator("body")).to_contain_text('"path": "/"')
    assert json.loads(page.locator("body").inner_text())["error"] == "not found"
