"""Logging in from a browser, through the real gateway: the login page, the session cookie and
where it is valid, CSRF, the backoff of failed logins, stale cookies, logout, and the cookie never
reaching an upstream (HTTP or WebSocket) nor the logs.

Requests are written as a browser sends them (`Sec-Fetch-Mode: navigate` for a page, `Origin` on
a form post), with the cookie set by hand so that each test says exactly what is sent. The real
clock, bounded by `trio.fail_after`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import ConnectionRejected, open_websocket_url

import hestia.http.auth
import hestia.sessions
from hestia.http.auth import hash_key, new_key
from hestia.store import Store
from tests.integration.conftest import client, upstream_service
from tests.integration.test_websocket import ws_service, ws_url

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none",
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def make_key(tmp_path: Path, name: str, scope: str) -> str:
    """A key made as `hestia keys create` makes it: in the database, next to the gateway."""
    key = new_key()
    store = Store(tmp_path / "data" / "hestia.db")
    try:
        store.add_key(name, scope, hash_key(key), key[:12])
    finally:
        store.close()
    return key


def revoke(tmp_path: Path, name: str) -> None:
    store = Store(tmp_path / "data" / "hestia.db")
    try:
        assert store.revoke_key(name)
    finally:
        store.close()


@pytest.fixture
async def gated(start_gateway, tmp_path: Path):
    """`await gated(**top)` → (gateway, admin key): auth on, services `up` (needs a key) and
    `open` (`auth: none`)."""
    async def start(**top) -> tuple:
        top.setdefault("services", {"up": upstream_service(),
                                    "open": upstream_service(auth="none")})
        auth = {"enabled": True, **top.pop("auth", {})}
        gateway = await start_gateway(auth=auth, **top)
        return gateway, (tmp_path / "data" / "cli.key").read_text().strip()

    return start


def origin(gateway) -> str:
    return gateway.url


async def log_in(http: httpx.AsyncClient, key: str, next_: str = "/", *,
                 host: str | None = None, **headers: str) -> httpx.Response:
    base = f"http://{host}" if host else str(http.base_url).rstrip("/")
    extra = {"Host": host} if host else {}
    response = await http.post("/__hestia/login", data={"key": key, "next": next_},
                               headers={"Origin": base, **extra, **headers})
    http.cookies.clear()  # each request says which cookie it sends
    return response


def cookie_of(response: httpx.Response) -> str:
    """The session token the response sets."""
    [value] = [v for v in response.headers.get_list("set-cookie")
               if v.startswith("hestia_session=")]
    return value.split(";")[0].partition("=")[2]


def attributes(response: httpx.Response) -> set[str]:
    [value] = response.headers.get_list("set-cookie")
    return {part.strip() for part in value.split(";")[1:]}


def with_cookie(token: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"hestia_session={token}", **headers}


async def test_a_navigation_without_credentials_gets_the_login_page(gated):
    with trio.fail_after(30):
        gateway, _ = await gated()
        async with client(gateway) as http:
            for path in ("/", "/v1/services", "/services/up/echo?x=1"):
                page = await http.get(path, headers=NAVIGATE)
                assert page.status_code == 401, path
                assert page.headers["content-type"] == "text/html; charset=utf-8"
                assert page.headers["cache-control"] == "no-store"
                assert 'action="/__hestia/login"' in page.text
                assert f'name="next" value="{path.replace("&", "&amp;")}"' in page.text
            # Everything that is not a navigation keeps today's JSON.
            api = await http.get("/v1/services", headers={"Accept": "application/json"})
            assert api.status_code == 401
            assert api.json() == {"error": "unauthorized", "detail": "no API key",
                                  "service": None, "request_id": api.headers["x-request-id"]}
            # The page itself, its stylesheet, and an auth: none service need nothing.
            assert (await http.get("/__hestia/login")).status_code == 200
            assert (await http.get("/__hestia/static/pages.css")).status_code == 200
            assert (await http.get("/services/open/health")).status_code == 200


async def test_a_login_sets_the_cookie_and_goes_back_where_it_came_from(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            response = await log_in(http, key, "/services/up/echo?a=1")
            assert response.status_code == 303
            assert response.headers["location"] == "/services/up/echo?a=1"
            assert response.headers["cache-control"] == "no-store"
            assert attributes(response) == {"Path=/", "Max-Age=604800", "HttpOnly",
                                            "SameSite=Lax"}
            token = cookie_of(response)
            # Valid for the dashboard, /v1 and the services.
            assert (await http.get("/", headers=with_cookie(token))).status_code == 200
            assert (await http.get("/v1/services", headers=with_cookie(token))).status_code \
                == 200
            echo = await http.get("/services/up/echo?a=1", headers=with_cookie(
                token, Cookie=f"theme=dark; hestia_session={token}; lang=en"))
            assert echo.status_code == 200
            cookies = [v for k, v in echo.json()["headers"] if k.lower() == "cookie"]
            assert cookies == ["theme=dark; lang=en"]
            # An app's own token beside the cookie (Open WebUI's, say) is the app's: the
            # cookie lets the request in, and the token goes on to the app.
            echo = await http.get("/services/up/echo", headers=with_cookie(
                token, Authorization="Bearer app-token"))
            assert echo.status_code == 200
            assert ["authorization", "Bearer app-token"] in echo.json()["headers"]


async def test_over_https_the_cookie_is_secure(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            host = gateway.url.removeprefix("http://")
            response = await http.post("/__hestia/login", data={"key": key}, headers={
                "Origin": f"https://{host}", "X-Forwarded-Proto": "https"})
            assert response.status_code == 303
            assert "Secure" in attributes(response)


@pytest.mark.parametrize("next_", ["https://evil.example/", "//evil.example/x",
                                   "/\\evil.example", "javascript:alert(1)"])
async def test_the_login_never_redirects_elsewhere(gated, next_):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            response = await log_in(http, key, next_)
            assert (response.status_code, response.headers["location"]) == (303, "/")


async def test_a_login_form_posted_from_another_site_is_refused(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            for headers in ({"Origin": "http://evil.example"},
                            {"Sec-Fetch-Site": "cross-site"}):
                response = await http.post("/__hestia/login", data={"key": key},
                                           headers=headers)
                assert response.status_code == 403
                assert "set-cookie" not in response.headers


async def test_failed_logins_back_off_per_address(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            for _ in range(5):
                wrong = await log_in(http, "hestia_" + "x" * 43)
                assert wrong.status_code == 401
                assert "not a valid API key" in wrong.text
            throttled = await log_in(http, "hestia_" + "x" * 43)
            assert throttled.status_code == 429
            assert throttled.headers["retry-after"] == "1"
            # Even the right key waits: the backoff is not an oracle.
            assert (await log_in(http, key)).status_code == 429
            with trio.fail_after(3):
                while (response := await log_in(http, "nope")).status_code == 429:
                    await trio.sleep(0.1)
            assert response.status_code == 401
            throttled = await log_in(http, key)
            assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "2")


async def test_cookie_requests_that_change_something_must_come_from_the_same_origin(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, key))
            for headers in ({}, {"Origin": "http://evil.example"},
                            {"Origin": "http://localhost:1"}, {"Origin": "null"},
                            {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"}):
                refused = await http.post("/v1/services/up/stop",
                                          headers=with_cookie(token, **headers))
                assert refused.status_code == 403, headers
                assert refused.json()["error"] == "csrf"
                assert refused.json()["request_id"] == refused.headers["x-request-id"]
            for headers in ({"Origin": origin(gateway)}, {"Sec-Fetch-Site": "same-origin"}):
                allowed = await http.post("/v1/services/up/stop",
                                          headers=with_cookie(token, **headers))
                assert allowed.status_code == 409, allowed.text  # let in: `up` is COLD
            # A key header is no ambient credential: no Origin needed.
            assert (await http.post("/v1/services/up/stop",
                                    headers={"X-API-Key": key})).status_code == 409
            # GET stays open to links from elsewhere (SameSite=Lax lets the browser send it).
            assert (await http.get("/v1/services", headers=with_cookie(
                token, **{"Sec-Fetch-Site": "cross-site"}))).status_code == 200


async def test_a_tampered_cookie_gets_the_login_page_or_a_401(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, key))
            tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
            page = await http.get("/", headers=with_cookie(tampered, **NAVIGATE))
            assert page.status_code == 401
            assert "Your session has ended" in page.text
            assert any(v.startswith("hestia_session=;") and "Max-Age=0" in v
                       for v in page.headers.get_list("set-cookie"))
            api = await http.get("/v1/services", headers=with_cookie(tampered))
            assert api.status_code == 401
            assert set(api.json()) == {"error", "detail", "service", "request_id"}
            assert api.json()["error"] == "unauthorized"


async def test_a_session_expires(gated):
    with trio.fail_after(30):
        gateway, key = await gated(auth={"session_ttl": "1s"})
        async with client(gateway) as http:
            response = await log_in(http, key)
            assert "Max-Age=1" in attributes(response)
            token = cookie_of(response)
            assert (await http.get("/v1/services", headers=with_cookie(token))).status_code \
                == 200
            with trio.fail_after(5):
                while (await http.get("/v1/services",
                                      headers=with_cookie(token))).status_code == 200:
                    await trio.sleep(0.1)
            page = await http.get("/", headers=with_cookie(token, **NAVIGATE))
            assert page.status_code == 401 and "Your session has ended" in page.text


async def test_revoking_the_key_ends_its_sessions(gated, tmp_path, monkeypatch):
    # The cache's lifetime itself is tested in virtual time (tests/unit/test_sessions.py);
    # here it is short, so that the revocation is seen soon through the real gateway.
    monkeypatch.setattr(hestia.sessions, "CACHE_S", 0.2)
    monkeypatch.setattr(hestia.http.auth, "CACHE_S", 0.2)
    with trio.fail_after(30):
        gateway, _ = await gated()
        key = make_key(tmp_path, "phone", "admin")
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, key))
            assert (await http.get("/v1/services", headers=with_cookie(token))).status_code \
                == 200
            revoke(tmp_path, "phone")
            with trio.fail_after(10):  # the gateway caches a lookup for CACHE_S
                while (await http.get("/v1/services",
                                      headers=with_cookie(token))).status_code == 200:
                    await trio.sleep(0.2)


async def test_a_session_has_its_keys_scope(gated, tmp_path):
    with trio.fail_after(30):
        gateway, _ = await gated()
        read = make_key(tmp_path, "reader", "read")
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, read))
            assert (await http.get("/v1/services", headers=with_cookie(token))).status_code \
                == 200
            api = await http.get("/services/up/echo", headers=with_cookie(token))
            assert (api.status_code, api.json()["error"]) == (403, "forbidden")
            page = await http.get("/services/up/echo", headers=with_cookie(token, **NAVIGATE))
            assert page.status_code == 403
            assert "cannot open this page" in page.text and "reader" in page.text


async def test_logout_ends_the_session_and_clears_the_cookie(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, key))
            form = await http.get("/__hestia/logout", headers=with_cookie(token))
            assert form.status_code == 200 and 'action="/__hestia/logout"' in form.text
            out = await http.post("/__hestia/logout",
                                  headers=with_cookie(token, Origin=origin(gateway)))
            assert out.status_code == 303
            assert out.headers["location"] == "/__hestia/login?out"
            [cleared] = out.headers.get_list("set-cookie")
            assert cleared.startswith("hestia_session=;") and "Max-Age=0" in cleared
            assert (await http.get("/v1/services", headers=with_cookie(token))).status_code \
                == 401
            page = await http.get("/__hestia/login?out")
            assert "You are logged out." in page.text


async def test_host_names_need_their_services_scope_and_log_in_on_their_own(gated, tmp_path):
    with trio.fail_after(30):
        gateway, key = await gated(service_domain="localhost")
        port = gateway.url.rsplit(":", 1)[1]
        up, open_ = f"up.localhost:{port}", f"open.localhost:{port}"
        reader = make_key(tmp_path, "reader", "read")
        async with client(gateway) as http:
            page = await http.get("/lab", headers={"Host": up, **NAVIGATE})
            assert page.status_code == 401 and 'value="/lab"' in page.text
            assert (await http.get("/health", headers={"Host": open_})).status_code == 200
            # A single label: browsers refuse Domain=localhost, so the cookie is host-only.
            response = await log_in(http, key, "/lab", host=up)
            assert (response.status_code, response.headers["location"]) == (303, "/lab")
            assert not any(a.startswith("Domain=") for a in attributes(response))
            token = cookie_of(response)
            echo = await http.get("/echo", headers=with_cookie(token, Host=up))
            assert echo.status_code == 200
            assert not [v for _, v in echo.json()["headers"] if "hestia_" in v]
            # The gateway's own routes are not on a service's host name: this is the app's.
            routed = await http.get("/v1/services", headers=with_cookie(token, Host=up))
            assert routed.json()["error"] == "not found"
            # A read key cannot open a service by its host name either.
            read_token = cookie_of(await log_in(http, reader, host=up))
            refused = await http.get("/echo", headers=with_cookie(read_token, Host=up))
            assert refused.status_code == 403
            # An unknown name under the domain: any credential.
            unknown = {"Host": f"nope.localhost:{port}"}
            assert (await http.get("/", headers=unknown)).status_code == 401
            assert (await http.get("/", headers=with_cookie(read_token, **unknown))
                    ).status_code == 404


async def test_with_a_dotted_domain_one_login_serves_every_host_name(gated):
    with trio.fail_after(30):
        gateway, key = await gated(service_domain="hestia.test")
        port = gateway.url.rsplit(":", 1)[1]
        async with client(gateway) as http:
            for host in (f"up.hestia.test:{port}", f"hestia.test:{port}"):
                response = await log_in(http, key, host=host)
                assert "Domain=hestia.test" in attributes(response), host
            elsewhere = await log_in(http, key)  # 127.0.0.1: not under the domain
            assert not any(a.startswith("Domain=") for a in attributes(elsewhere))


async def test_the_waiting_pages_endpoints_need_what_their_service_needs(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            assert (await http.post("/__hestia/retry/up")).status_code == 401
            assert (await http.post("/__hestia/retry/up", headers={"X-API-Key": key})
                    ).status_code != 401
            async with http.stream("GET", "/__hestia/events/open") as events:
                assert events.status_code == 200


async def test_the_cookie_never_reaches_a_websocket_upstream_and_csrf_holds(gated):
    with trio.fail_after(30):
        gateway, key = await gated(services={"ws": ws_service()})
        async with client(gateway) as http:
            token = cookie_of(await log_in(http, key))
        cookie = ("Cookie", f"a=b; hestia_session={token}")
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(ws_url(gateway, "/services/ws/headers"),
                                          extra_headers=[cookie,
                                                         ("Origin", "http://evil.example")]):
                pass
        assert refused.value.status_code == 403
        async with open_websocket_url(ws_url(gateway, "/services/ws/headers"),
                                      extra_headers=[cookie, ("Origin", origin(gateway))]) as ws:
            headers = json.loads(await ws.get_message())
        assert [v for k, v in headers if k.lower() == "cookie"] == ["a=b"]
        assert not [v for _, v in headers if "hestia_" in v]


async def test_neither_the_key_nor_the_cookie_is_logged(gated):
    with trio.fail_after(30):
        gateway, key = await gated()
        async with client(gateway) as http:
            with capture_logs() as logs:
                token = cookie_of(await log_in(http, key, "/services/up/echo"))
                await http.get("/services/up/echo", headers=with_cookie(token))
                await http.post("/v1/services/up/stop", headers=with_cookie(token))  # csrf
                await log_in(http, key + "x")
                await http.post("/__hestia/logout",
                                headers=with_cookie(token, Origin=origin(gateway)))
        text = repr(logs)
        assert {"login", "request", "auth_denied", "login_failed", "logout"} <= {
            entry["event"] for entry in logs}
        assert re.search(r"hestia_\w{20}", text) is None
        assert token not in text and key not in text
