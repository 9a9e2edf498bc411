"""The dashboard at `/`, in Chromium: complete without JavaScript, live with it, its buttons
working through the `/v1` API; and `/` still JSON for everyone who is not a browser."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import ThreadGateway, screenshot
from tests.integration.conftest import upstream_service

Serve = Callable[..., ThreadGateway]
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html,*/*;q=0.8"}


def card(page: Page, service: str) -> Any:
    return page.locator(f'li.service[data-id="{service}"]')


def state_of(page: Page, service: str) -> Any:
    return card(page, service).locator('[data-field="state"]')


def open_live(page: Page, gateway: ThreadGateway) -> None:
    """The dashboard, once its script follows the events stream."""
    page.goto(gateway.url + "/")
    expect(page.locator("#live")).to_have_text("Live", timeout=10_000)


def api(gateway: ThreadGateway, method: str, path: str) -> httpx.Response:
    return httpx.request(method, gateway.url + path, timeout=10)


def test_every_service_is_listed_without_javascript(serve: Serve, chromium: Browser) -> None:
    gateway = serve(services={
        "notebook": upstream_service(hosts=["notebook.localhost"], idle_timeout="5m"),
        "ollama": upstream_service(machine="gpu-box"),
        "duo": {**upstream_service(), "backends": {"a": {}, "b": {}}},
    }, machines={"gpu-box": {}})
    context = chromium.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        response = page.goto(gateway.url + "/")
        assert response is not None and response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        expect(page.locator("li.service")).to_have_count(4)
        expect(page.locator("#summary")).to_have_text("4 services: 4 cold")
        expect(state_of(page, "notebook")).to_have_text("COLD")
        expect(state_of(page, "ollama")).to_have_text("COLD")
        # Its host name on the scheme and port the browser used; else its path route.
        notebook = card(page, "notebook").get_by_role("link", name="notebook")
        expect(notebook).to_have_attribute("href", f"http://notebook.localhost:{gateway.port}/")
        ollama = card(page, "ollama").get_by_role("link", name="ollama")
        expect(ollama).to_have_attribute("href", "/services/ollama/")
        # Each backend of a service with several has a card of its own, linking to the service.
        for backend in ("a", "b"):
            duo = card(page, f"duo@{backend}")
            expect(duo.get_by_role("heading")).to_have_text(f"duo backend {backend}")
            expect(duo.get_by_role("link")).to_have_attribute("href", "/services/duo/")
        expect(card(page, "notebook")).to_contain_text("Cold: starts on the next request")
        expect(card(page, "notebook").locator('[data-field="idle"]')).to_have_text(
            "after 5 min 0 s idle")
        expect(card(page, "ollama").locator('[data-field="machine"]')).to_have_text(
            "gpu-box (process)")
        machines = page.locator("#machines tbody tr")
        expect(machines).to_have_count(2)
        expect(page.locator('#machines tr[data-machine="gpu-box"]')).to_contain_text(
            "in rotation")
        # The buttons need the script: without it they say so by being disabled.
        expect(page.get_by_role("button", name="Start notebook")).to_be_disabled()
        expect(page.locator("noscript")).to_have_count(1)
    finally:
        context.close()


def test_a_start_made_elsewhere_shows_live(serve: Serve, page: Page) -> None:
    gateway = serve(services={"slow": upstream_service("--start-delay", "1.5")})
    open_live(page, gateway)
    slow = card(page, "slow")

    assert api(gateway, "POST", "/v1/services/slow/start").status_code == 202
    expect(state_of(page, "slow")).to_have_text("STARTING", timeout=5_000)
    expect(slow.locator('[data-field="detail"]')).to_have_text(
        re.compile(r"^Starting for \d+ s; no earlier start to go by$"))
    expect(state_of(page, "slow")).to_have_text("READY", timeout=20_000)
    expect(slow.locator('[data-field="detail"]')).to_have_text(re.compile(r"^Ready for \d+ s$"))
    expect(slow.locator('[data-field="machine"]')).to_have_text(
        re.compile(r"^local \(process, pid \d+\)$"))
    expect(page.locator("#feed")).to_contain_text("ready on local after")
    expect(page.locator("#summary")).to_have_text("1 service: 1 ready")

    # The second start knows how long the first took.
    assert api(gateway, "POST", "/v1/services/slow/stop").status_code == 202
    expect(state_of(page, "slow")).to_have_text("COLD", timeout=10_000)
    expect(page.locator("#feed")).to_contain_text("stopped (api)")
    assert api(gateway, "POST", "/v1/services/slow/start").status_code == 202
    expect(slow.locator('[data-field="detail"]')).to_have_text(
        re.compile(r"^Starting for \d+ s; usually ready in \d\.\d s$"), timeout=5_000)
    expect(state_of(page, "slow")).to_have_text("READY", timeout=20_000)


def test_start_and_stop_buttons(serve: Serve, page: Page) -> None:
    gateway = serve(services={"app": upstream_service(idle_timeout="10m")})
    open_live(page, gateway)
    app = card(page, "app")
    start = page.get_by_role("button", name="Start app")
    stop = page.get_by_role("button", name="Stop app")
    expect(stop).to_be_disabled()

    start.click()
    expect(state_of(page, "app")).to_have_text("READY", timeout=20_000)
    assert api(gateway, "GET", "/v1/services/app/status").json()["state"] == "READY"
    expect(app.locator('[data-field="idle"]')).to_have_text(re.compile(r"^in (9|10) min \d+ s$"))
    expect(start).to_be_disabled()

    # A page that had not heard yet shows what the gateway answers (409) in words. (Pressed
    # in one go: the page's next tick would disable the button again.)
    start.evaluate("button => { button.disabled = false; button.click(); }")
    expect(app.locator('[data-field="message"]')).to_have_text(
        "Start refused: 'app' is already READY")

    stop.click()
    expect(state_of(page, "app")).to_have_text("COLD", timeout=10_000)
    assert api(gateway, "GET", "/v1/services/app/status").json()["state"] == "COLD"

    page.get_by_label("Filter services").fill("nothing like it")
    expect(app).to_be_hidden()
    page.get_by_label("Filter services").fill("ap")
    expect(app).to_be_visible()


def test_machines_are_enabled_and_disabled(serve: Serve, page: Page) -> None:
    gateway = serve(services={"model": upstream_service(machine="gpu-box")},
                    machines={"gpu-box": {}})
    open_live(page, gateway)
    row = page.locator('#machines tr[data-machine="gpu-box"]')
    expect(row.locator("td").nth(2)).to_have_text("model")

    page.get_by_role("button", name="Disable gpu-box").click()
    expect(row.locator('[data-field="status"]')).to_have_text("disabled")
    machines = api(gateway, "GET", "/v1/machines").json()["machines"]
    assert next(m for m in machines if m["machineId"] == "gpu-box")["enabled"] is False
    expect(page.locator("#feed")).to_contain_text("machine gpu-box disabled")

    # Its only machine disabled, a start fails, and the card says why.
    page.get_by_role("button", name="Start model").click()
    expect(state_of(page, "model")).to_have_text("FAILED", timeout=10_000)
    expect(card(page, "model").locator('[data-field="detail"]')).to_contain_text(
        "machine 'gpu-box' is disabled")

    page.get_by_role("button", name="Enable gpu-box").click()
    expect(row.locator('[data-field="status"]')).to_have_text("in rotation")
    expect(page.locator("#feed")).to_contain_text("machine gpu-box enabled")


def test_the_activity_feed_keeps_what_happened_before_the_page(serve: Serve,
                                                                page: Page) -> None:
    gateway = serve(services={"app": upstream_service()})
    assert api(gateway, "POST", "/v1/services/app/start").status_code == 202
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        assert http.get("/services/app/health").status_code == 200  # waits until READY
    page.goto(gateway.url + "/")
    feed = page.locator("#feed")
    expect(feed).to_contain_text("COLD → STARTING")
    expect(feed).to_contain_text("ready on local after")
    expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
    # After the script merged /v1/activity in, still each event once.
    expect(feed.locator("li", has_text="COLD → STARTING")).to_have_count(1)
    assert api(gateway, "POST", "/v1/services/app/stop").status_code == 202
    expect(feed.locator("li").first).to_contain_text("stopped (api)", timeout=10_000)


def test_log_in_then_the_dashboard_then_a_service(serve: Serve, page: Page,
                                                  tmp_path: Path) -> None:
    gateway = serve(services={"app": upstream_service()}, auth={"enabled": True})
    key = (tmp_path / "data" / "cli.key").read_text().strip()
    page.goto(gateway.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
    expect(page.locator("header.site")).to_contain_text("Log out")
    # The buttons' requests ride on the session cookie and pass the same-origin check.
    page.get_by_role("button", name="Start app").click()
    expect(state_of(page, "app")).to_have_text("READY", timeout=20_000)
    page.get_by_role("link", name="app", exact=True).click()
    expect(page.locator("body")).to_contain_text('"path": "/"')  # the upstream's own 404


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "text/html"])
def test_the_json_index_is_unchanged_for_clients_that_do_not_navigate(
        serve: Serve, accept: str | None) -> None:
    gateway = serve(services={"app": upstream_service()})
    headers = {"Accept": accept} if accept else {}
    if accept == "text/html":
        headers["Sec-Fetch-Mode"] = "cors"  # a fetch() that asks for HTML is still not a page
    response = httpx.get(gateway.url + "/", headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "name": "hestia",
        "services": {"app": {"url": "/services/app/", "state": "COLD", "backends": ["app"]}},
        "api": ["/v1/services", "/v1/services/{id}/status", "/v1/services/{id}/start",
                "/v1/services/{id}/stop", "/v1/machines", "/v1/machines/{id}/disable",
                "/v1/machines/{id}/enable", "/v1/semaphore/status", "/v1/semaphore/start",
                "/v1/semaphore/stop", "/v1/events", "/v1/activity", "/v1/metrics", "/metrics",
                "/v1/requests", "/v1/strategies", "/v1/status", "/v1/reload",
                "/v1/openapi.json", "/__health"]}
    assert "Sec-Fetch-Mode" in response.headers["vary"]
    page = httpx.get(gateway.url + "/", headers=NAVIGATE, timeout=10)
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot(serve: Serve, chromium: Browser, scheme: str) -> None:
    gateway = serve(services={
        "notebook": upstream_service(hosts=["notebook.localhost"], idle_timeout="15m"),
        "comfyui": upstream_service("--start-delay", "60", machine="gpu-box",
                                    readiness={"http": "/health", "timeout": "90s"}),
        "whisper": upstream_service("--fail-start", "3", startup={"cooldown": "5m"}),
        "ollama": upstream_service(machine="gpu-box"),
    }, machines={"gpu-box": {}})
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        assert http.get("/services/notebook/health").status_code == 200
        for service in ("comfyui", "whisper"):
            assert http.post(f"/v1/services/{service}/start").status_code == 202
    context = chromium.new_context(viewport={"width": 1280, "height": 900},
                                   color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        open_live(page, gateway)
        expect(state_of(page, "notebook")).to_have_text("READY")
        expect(state_of(page, "comfyui")).to_have_text("STARTING")
        expect(state_of(page, "whisper")).to_have_text("FAILED", timeout=10_000)
        expect(card(page, "whisper").locator('[data-field="detail"]')).to_contain_text(
            "exit")
        expect(card(page, "whisper").locator('[data-field="log"]')).to_contain_text(
            "fatal: simulated start failure")
        screenshot(page, "dashboard" if scheme == "light" else "dashboard-dark",
                   docs=scheme == "light")
    finally:
        context.close()


def test_a_reload_that_adds_a_service_shows_it_on_the_open_dashboard(serve: Serve,
                                                                      page: Page) -> None:
    gateway = serve(services={"app": upstream_service()})
    page.goto(gateway.url + "/")
    expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
    assert gateway.gateway is not None and gateway.gateway.config_file is not None
    path = gateway.gateway.config_file
    raw = yaml.safe_load(path.read_text())
    raw["services"]["second"] = upstream_service()
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert api(gateway, "POST", "/v1/reload").status_code == 200
    # The page is made again with the new card; the feed says what the reload did.
    expect(state_of(page, "second")).to_have_text("COLD", timeout=10_000)
    expect(page.locator("#feed li").first).to_contain_text(
        "configuration reloaded: 1 added", timeout=10_000)
    screenshot(page, "dashboard-reloaded")
