"""Logging in from Chromium: the login page, then the dashboard, then a service, with neither the
cookie nor the key reaching the upstream; logout; a tampered cookie; host names, each logging in
once under `service_domain: localhost` (Chromium refuses `Domain=localhost`) and once for all
under a dotted domain."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import CHROMIUM, FLAGS, ThreadGateway, screenshot
from tests.integration.conftest import upstream_service

Serve = Callable[..., ThreadGateway]


def cli_key(tmp_path: Path) -> str:
    return (tmp_path / "data" / "cli.key").read_text().strip()


def warm(gateway: ThreadGateway, service: str) -> None:
    """Start `service` and wait (bounded) until it is READY: this test is about the login, not
    the waiting page (tests/browser/test_waiting.py)."""
    supervisor = gateway.gateway.supervisors[service]  # type: ignore[union-attr]

    async def ready() -> None:
        with trio.fail_after(30):
            async with supervisor.lease():
                pass

    gateway.call(ready)


def log_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()


def received(page: Page, url: str) -> list[list[str]]:
    """The headers the upstream received for a navigation to its /echo."""
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    return json.loads(page.locator("body").inner_text())["headers"]


def test_login_then_dashboard_then_a_service_and_logout(serve: Serve, page: Page,
                                                        context: BrowserContext,
                                                        tmp_path: Path) -> None:
    gateway = serve(services={"up": upstream_service()}, auth={"enabled": True})
    key = cli_key(tmp_path)
    warm(gateway, "up")

    response = page.goto(gateway.url + "/")
    assert response is not None and response.status == 401
    assert response.headers["cache-control"] == "no-store"
    expect(page.get_by_role("heading", name="Log in to Hestia")).to_be_visible()
    expect(page.get_by_label("API key")).to_be_focused()
    screenshot(page, "login", docs=True)

    log_in(page, "hestia_" + "w" * 43)
    expect(page.get_by_role("alert")).to_have_text(
        "That is not a valid API key, or it was revoked.")
    screenshot(page, "login-failed")
    log_in(page, key)
    page.wait_for_url(gateway.url + "/")
    # The dashboard's script works on the session: its events stream, and its buttons' POSTs
    # (same origin, so the CSRF check lets them through).
    expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
    state = page.locator('li.service[data-id="up"] [data-field="state"]')
    expect(state).to_have_text("READY")
    page.get_by_role("button", name="Stop up").click()
    expect(state).to_have_text("COLD", timeout=10_000)
    page.get_by_role("button", name="Start up").click()
    expect(state).to_have_text("READY", timeout=20_000)
    [cookie] = [c for c in context.cookies() if c["name"] == "hestia_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Lax", False)

    # A service, with a cookie of the app's own beside the session's.
    context.add_cookies([{"name": "theme", "value": "dark", "url": gateway.url}])
    headers = received(page, gateway.url + "/services/up/echo")
    assert ["Cookie", "theme=dark"] in headers or ["cookie", "theme=dark"] in headers
    assert not [h for h in headers if "hestia_" in h[1] or cookie["value"] in h[1]]
    assert key not in json.dumps(headers)

    # Logout: a page with a button, then the login page, and the session is gone.
    page.goto(gateway.url + "/__hestia/logout")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(gateway.url + "/__hestia/login?out")
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    assert not [c for c in context.cookies() if c["name"] == "hestia_session"]
    response = page.goto(gateway.url + "/services/up/echo")
    assert response is not None and response.status == 401
    # Logging in again lands where the login page was asked for.
    log_in(page, key)
    page.wait_for_url(gateway.url + "/services/up/echo")


def test_a_tampered_cookie_gets_the_login_page(serve: Serve, page: Page,
                                               context: BrowserContext, tmp_path: Path) -> None:
    gateway = serve(services={"up": upstream_service()}, auth={"enabled": True})
    page.goto(gateway.url + "/")
    log_in(page, cli_key(tmp_path))
    page.wait_for_url(gateway.url + "/")
    [cookie] = [c for c in context.cookies() if c["name"] == "hestia_session"]
    context.add_cookies([{**cookie, "value": cookie["value"][::-1]}])
    response = page.goto(gateway.url + "/v1/services")
    assert response is not None and response.status == 401
    expect(page.get_by_role("alert")).to_have_text("Your session has ended: log in again.")
    assert not [c for c in context.cookies() if c["name"] == "hestia_session"]  # cleared


def test_under_localhost_each_host_name_logs_in_once(serve: Serve, page: Page,
                                                     context: BrowserContext,
                                                     tmp_path: Path) -> None:
    gateway = serve(services={"up": upstream_service()}, auth={"enabled": True},
                    service_domain="localhost")
    key = cli_key(tmp_path)
    warm(gateway, "up")
    service = f"http://up.localhost:{gateway.port}"
    response = page.goto(service + "/echo?x=1")
    assert response is not None and response.status == 401
    expect(page.locator("#key-hint")).to_contain_text(
        "stays logged in on up.localhost for 7 days. Each host name under localhost logs in on "
        "its own.")
    log_in(page, key)
    page.wait_for_url(service + "/echo?x=1")
    assert not [h for h in json.loads(page.locator("body").inner_text())["headers"]
                if "hestia_" in h[1]]
    # Chromium keeps the cookie for up.localhost only: the gateway's own name asks again.
    assert [c["domain"] for c in context.cookies() if c["name"] == "hestia_session"] == [
        "up.localhost"]
    response = page.goto(f"http://localhost:{gateway.port}/")
    assert response is not None and response.status == 401
    log_in(page, key)
    page.wait_for_url(f"http://localhost:{gateway.port}/")
    assert sorted(c["domain"] for c in context.cookies() if c["name"] == "hestia_session") == [
        "localhost", "up.localhost"]


@pytest.fixture
def resolving(chromium: Browser) -> Iterator[Page]:
    """A page in a Chromium that resolves `hestia.test` and its names to this machine."""
    browser = chromium.browser_type.launch(executable_path=CHROMIUM, headless=True, args=[
        *FLAGS, "--host-resolver-rules=MAP hestia.test 127.0.0.1, MAP *.hestia.test 127.0.0.1"])
    context = browser.new_context()
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()
        browser.close()


def test_under_a_dotted_domain_one_login_serves_every_host_name(
        serve: Serve, resolving: Page, tmp_path: Path) -> None:
    gateway = serve(services={"up": upstream_service()}, auth={"enabled": True},
                    service_domain="hestia.test")
    key = cli_key(tmp_path)
    warm(gateway, "up")
    page = resolving
    home = f"http://hestia.test:{gateway.port}"
    response = page.goto(home + "/")
    assert response is not None and response.status == 401
    expect(page.locator("#key-hint")).to_contain_text(
        "stays logged in on hestia.test and every name under it for 7 days.")
    log_in(page, key)
    page.wait_for_url(home + "/")
    headers = received(page, f"http://up.hestia.test:{gateway.port}/echo")  # no second login
    assert not [h for h in headers if "hestia_" in h[1]]
