"""The waiting page and the 404 page as rendered, and the `/__hestia/` endpoints' rules, in
virtual time (fake launchers, Quart's test client)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio

from hestia.http.addressing import Address, Addressing
from hestia.http.app import create_app
from hestia.http.browser import CSP
from hestia.http.waiting import (
    duration_text,
    not_found_response,
    service_links,
    waiting_response,
)
from hestia.lifecycle.supervisor import State, Supervisor
from hestia.routing.router import Route
from tests.fakes import FakeLauncher, FakeProbe, service, supervisor


def named(name: str, **launcher: Any) -> Supervisor:
    """A supervisor of a fake backend with this id (`service@backend` for one of several)."""
    fake = FakeLauncher(**launcher)
    return Supervisor(name, service(), fake, FakeProbe(fake),
                      backend=name.partition("@")[2] or "default")

PAGE = Address("echo", b"/lab/tree", prefix=b"/services/echo")


def headers_of(answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in answer[1]}


def text(body: bytes) -> str:
    """The page's words, tags dropped and white space folded, to assert sentences."""
    return " ".join(re.sub(r"<[^>]+>", " ", body.decode()).split())


async def started_once(nursery: trio.Nursery, sup: Supervisor) -> None:
    """Run `sup` and let one start finish, so that it has a start history; back to COLD."""
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    sup.request_stop()
    await sup.wait_until(State.COLD)


async def test_the_page_names_a_starting_service_with_its_elapsed_and_expected_time(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=4))
    await started_once(nursery, sup)
    sup.request_start()
    await trio.sleep(1.5)
    assert sup.state is State.STARTING
    status, _, body = answer = waiting_response(sup, PAGE, "rid-1", query=b"a=1")
    headers = headers_of(answer)
    assert status == 503
    assert headers["retry-after"] == "3"  # 2.5 s left of the usual 4 s
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-request-id"] == "rid-1"
    assert headers["content-security-policy"] == CSP.decode()
    words = text(body)
    assert "echo STARTING" in words
    assert "Elapsed 1.5 s" in words
    assert "Expected start time about 4.0 s (the median of its last 1 start)" in words
    assert '<meta http-equiv="refresh" content="3">' in body.decode()
    assert 'data-events="/__hestia/events/echo"' in body.decode()
    assert "/__hestia/static/waiting.js" in body.decode()
    assert "/services/echo/lab/tree?a=1" in words


async def test_a_cold_service_the_caller_asked_to_start_is_shown_starting(nursery,
                                                                          autojump_clock):
    sup = supervisor(FakeLauncher(start_s=4))
    await nursery.start(sup.run)
    status, _, body = waiting_response(sup, PAGE, "rid")
    words = text(body)
    assert status == 503
    assert "echo STARTING" in words and "Starting echo." in words
    assert "not known yet: no start of it has finished here so far" in words


async def test_a_failed_start_is_told_in_words_with_a_retry_button(nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="port 8888 is taken <by someone>")
    sup = supervisor(launcher, startup={"attempts": 2, "delay": "1s", "cooldown": "30s"})
    await nursery.start(sup.run)
    sup.request_start()
    await sup.wait_until(State.FAILED)
    await trio.sleep(10)
    _, _, body = answer = waiting_response(sup, PAGE, "rid")
    page = body.decode()
    words = text(body)
    assert headers_of(answer)["retry-after"] == "20"  # what is left of the cool-down
    assert "echo FAILED" in words
    assert "echo could not be started." in words
    assert ("Hestia tried 2 times to start it, and every attempt failed. Requests start it "
            "again in 20 s, or Retry does now.") in words
    assert "Attempt 2 on local (FakeLauncher), 0.0 s: port 8888 is taken &lt;by someone&gt;" in page
    assert "<by someone>" not in page
    assert '<form id="retry-form" method="post" action="/__hestia/retry/echo">' in page
    assert '<input type="hidden" name="next" value="/services/echo/lab/tree">' in page
    assert 'http-equiv="refresh"' not in page  # without JavaScript, Retry it is


async def test_a_crash_loop_shows_the_exit_status_and_the_log(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1, exit_after=2, exit_status=7))
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    await trio.sleep(5)
    assert sup.state is State.COLD and sup.failures_in_a_row == 1
    words = text(waiting_response(sup, PAGE, "rid", starting=False)[2])
    assert "It stopped by itself while it was serving. The process exited with status 7." in words
    assert "The last lines of its log fake log of pid 1001" in words


async def test_the_page_of_a_backend_of_several_names_the_service_and_the_backend(
        nursery, autojump_clock):
    sup = named("models@big")
    page = waiting_response(sup, Address("models", b"/", prefix=b"/services/models"),
                            "rid")[2].decode()
    assert '<h1 id="service-name">models</h1>' in page
    assert "Backend <code>models@big</code>" in page
    assert 'data-events="/__hestia/events/models@big"' in page


def test_the_not_found_page_lists_every_service_with_a_link():
    status, headers, body = not_found_response(["b", "a"], "rid", "nope.localhost",
                                               links={"b": "//b.localhost:8080/"})
    page = body.decode()
    assert status == 404
    assert ("cache-control", b"no-store") in [(k.decode(), v) for k, v in headers]
    assert "No service lives at <code>nope.localhost</code>." in page
    assert page.index('href="/services/a/"') < page.index('href="//b.localhost:8080/"')


def test_links_go_to_a_services_host_name_with_the_requests_port():
    addressing = Addressing(["notebook", "api"], {"api": []}, service_domain="localhost")
    assert service_links(addressing, [(b"host", b"nope.localhost:8080")]) == {
        "api": "//api.localhost:8080/", "notebook": "//notebook.localhost:8080/"}
    assert service_links(Addressing(["api"]), [(b"host", b"[::1]:9")]) == {
        "api": "/services/api/"}


@pytest.mark.parametrize(("seconds", "expected"), [
    (0.04, "0.0 s"), (9.94, "9.9 s"), (12.4, "12 s"), (60, "1 min"), (185, "3 min 5 s"),
    (7800, "2 h 10 min")])
def test_durations_read_as_a_person_says_them(seconds: float, expected: str):
    assert duration_text(seconds) == expected


# --- the endpoints ------------------------------------------------------------------------


def app_for(supervisors: dict[str, Supervisor], routes: dict[str, Route] | None = None,
            ) -> Any:
    names = routes or supervisors
    return create_app(supervisors, routes=routes,
                      addressing=Addressing(names, service_domain="localhost"))


async def test_retry_asks_for_a_start_and_says_so(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=5))
    await nursery.start(sup.run)
    http = app_for({"echo": sup}).test_client()
    response = await http.post("/__hestia/retry/echo")
    assert response.status_code == 202
    assert await response.get_json() == {"serviceId": "echo", "state": "STARTING",
                                         "accepted": True}
    await sup.wait_until(State.STARTING)
    response = await http.post("/__hestia/retry/echo")
    assert response.status_code == 409
    assert (await response.get_json())["state"] == "STARTING"


async def test_a_retry_from_the_form_goes_back_to_the_page_and_only_to_this_origin(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=5))
    await nursery.start(sup.run)
    http = app_for({"echo": sup}).test_client()
    response = await http.post("/__hestia/retry/echo", form={"next": "/services/echo/lab?x=1"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/services/echo/lab?x=1"
    for elsewhere in ("//evil.example/", "/\\evil.example", "https://evil.example/"):
        response = await http.post("/__hestia/retry/echo", form={"next": elsewhere})
        assert response.status_code == 409  # the first post started it already
        assert "Location" not in response.headers


async def test_a_services_host_name_knows_only_that_services_ids(autojump_clock):
    one, two = named("one"), named("two")
    http = app_for({"one": one, "two": two}).test_client()

    async def retry(backend: str, host: str) -> int:
        response = await http.post(f"/__hestia/retry/{backend}", headers={"Host": host})
        return response.status_code

    assert await retry("two", "one.localhost:8080") == 404
    assert await retry("one", "ONE.localhost:8080") == 202
    assert await retry("two", "localhost:8080") == 202  # the gateway's own host
    assert await retry("one", "nope.localhost") == 404  # a name under the domain, no service
    assert await retry("three", "localhost") == 404
    response = await http.get("/__hestia/events/two", headers={"Host": "one.localhost"})
    assert response.status_code == 404
    body = await response.get_json()
    assert body["error"] == "unknown_service" and body["services"] == ["one"]


async def test_a_backend_of_several_is_known_by_its_id_on_its_services_host(autojump_clock):
    big, small, other = named("models@big"), named("models@small"), named("echo")
    routes = {"models": Route("models", [("big", big), ("small", small)]),
              "echo": Route("echo", [("echo", other)])}
    http = app_for({"models@big": big, "models@small": small, "echo": other},
                   routes).test_client()
    response = await http.post("/__hestia/retry/models@big",
                               headers={"Host": "models.localhost"})
    assert response.status_code == 202
    response = await http.post("/__hestia/retry/echo", headers={"Host": "models.localhost"})
    assert response.status_code == 404
    response = await http.post("/__hestia/retry/models", headers={"Host": "models.localhost"})
    assert response.status_code == 404


@pytest.mark.parametrize(("name", "content_type"), [
    ("pages.css", "text/css; charset=utf-8"), ("waiting.js", "text/javascript; charset=utf-8")])
async def test_static_files_are_served_with_their_type_and_revalidated(name, content_type):
    http = create_app({}).test_client()
    response = await http.get(f"/__hestia/static/{name}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    again = await http.get(f"/__hestia/static/{name}",
                           headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("path", [
    "/__hestia/static/..%2Fwaiting.py", "/__hestia/static/../waiting.py",
    "/__hestia/static/.hidden", "/__hestia/static/missing.css", "/__hestia/static/",
    "/__hestia/static/%2E%2E"])
async def test_nothing_but_the_static_files_is_served(path):
    response = await create_app({}).test_client().get(path)
    assert response.status_code == 404
