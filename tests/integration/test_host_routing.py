"""Services by host name (`service_domain`, `hosts`) and path routes done right
(`X-Forwarded-Prefix`, `Location` rewriting, `preserve_host`, `rewrite_cookie_path`), through
the real gateway in front of real child processes."""

from __future__ import annotations

import json

import httpx
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.integration.conftest import assert_error_body, client, upstream_service
from tests.integration.test_websocket import ws_service


def on(host: str) -> dict[str, str]:
    return {"Host": host}


async def echo(http: httpx.AsyncClient, path: str, host: str) -> dict:
    response = await http.get(path, headers=on(host))
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_service_by_its_host_name_sees_its_path_unchanged(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            service_domain="localhost",
            services={"app": upstream_service(hosts=["app.example.net"]),
                      "other": upstream_service()})
        port = gateway.url.rsplit(":", 1)[1]
        async with client(gateway) as http:
            seen = await echo(http, "/echo/x?y=1", f"app.localhost:{port}")
            assert seen["path"] == "/echo/x?y=1"
            headers = dict((k.lower(), v) for k, v in seen["headers"])
            assert "x-forwarded-prefix" not in headers  # a host route has no prefix
            assert headers["x-forwarded-host"] == f"app.localhost:{port}"
            assert headers["host"] == gateway.supervisors["app"].config.upstream.split("//")[1]
            # Case and port do not matter; an exact name from `hosts` works too.
            assert (await echo(http, "/echo", "APP.LocalHost"))["path"] == "/echo"
            assert (await echo(http, "/echo/z", "app.example.net:443"))["path"] == "/echo/z"
            # Everything on a service's host is the service's: the gateway's API is not there.
            seen = await echo(http, "/echo/v1/services", "app.localhost")
            response = await http.get("/v1/services", headers=on("app.localhost"))
            assert response.status_code == 404 and response.json()["path"] == "/v1/services"
            response = await http.get("/services/other/echo", headers=on("app.localhost"))
            assert response.json() == {"error": "not found", "path": "/services/other/echo"}
            # The gateway's own host keeps its routes and path routes.
            assert (await http.get("/v1/services")).status_code == 200
            assert (await echo(http, "/services/other/echo", "localhost"))["path"] == "/echo"
        assert gateway.supervisors["other"].state.name == "READY"


async def test_an_unknown_host_name_under_the_domain_is_a_404_listing_the_services(
        start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(service_domain="localhost",
                                      services={"app": upstream_service()})
        async with client(gateway) as http:
            response = await http.get("/echo", headers=on("nope.localhost"))
            body = assert_error_body(response, 404, "unknown_service", None)
            assert "'nope.localhost'" in body["detail"]
            assert body["services"] == ["app"]
            # A browser gets a page that lists them.
            page = await http.get("/", headers={**on("nope.localhost"),
                                                "Sec-Fetch-Mode": "navigate"})
            assert page.status_code == 404
            assert page.headers["content-type"].startswith("text/html")
            assert 'href="//app.localhost/"' in page.text  # its host route, this port
        assert gateway.supervisors["app"].state.name == "COLD"


async def test_streaming_and_hold_queue_work_the_same_on_host_routes(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            service_domain="localhost",
            services={"app": upstream_service("--start-delay", "0.3")})
        async with client(gateway) as http:
            # Cold: held while it starts (not a browser), then streamed line by line.
            lines = []
            async with http.stream("GET", "/stream?n=3&gap_ms=50",
                                   headers=on("app.localhost")) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
            assert lines == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_path_routes_send_the_prefix_and_rewrite_redirects(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"app": upstream_service()})
        upstream = gateway.supervisors["app"].config.upstream
        async with client(gateway) as http:
            seen = await echo(http, "/services/app/echo", "localhost")
            headers = dict((k.lower(), v) for k, v in seen["headers"])
            assert headers["x-forwarded-prefix"] == "/services/app"
            # A client's own X-Forwarded-Prefix never passes.
            seen = (await http.get("/services/app/echo",
                                   headers={"X-Forwarded-Prefix": "/evil"})).json()
            assert [v for k, v in seen["headers"] if k.lower() == "x-forwarded-prefix"] == \
                ["/services/app"]

            async def location(to: str, header: str = "Location") -> str:
                response = await http.get("/services/app/redirect",
                                          params={"to": to, "header": header})
                assert response.status_code == 302
                return response.headers[header]

            # An absolute URL on the upstream's origin (built from the Host it was sent).
            assert await location("{self}/lab?x=1") == "/services/app/lab?x=1"
            assert await location(upstream + "/tree") == "/services/app/tree"
            # A root-relative path gets the prefix, once.
            assert await location("/lab") == "/services/app/lab"
            assert await location("/services/app/lab") == "/services/app/lab"
            assert await location("/x", "Content-Location") == "/services/app/x"
            # Elsewhere stays elsewhere.
            assert await location("https://example.com/login") == "https://example.com/login"
            assert await location("relative/path") == "relative/path"
            # The browser follows it back through the gateway.
            followed = await http.get("/services/app/redirect", params={"to": "{self}/echo/z"},
                                      follow_redirects=True)
            assert followed.json()["path"] == "/echo/z"
            # Cookies' paths are the app's unless the service asks.
            response = await http.get("/services/app/set-cookie", params={"path": "/lab"})
            assert response.headers["set-cookie"] == "s=1; Path=/lab; HttpOnly"


async def test_host_route_redirects_stay_on_the_host_and_cookie_paths_on_request(
        start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            service_domain="localhost",
            services={"app": upstream_service(rewrite_cookie_path=True)})
        async with client(gateway) as http:
            response = await http.get("/redirect", params={"to": "{self}/lab"},
                                      headers=on("app.localhost"))
            assert response.headers["location"] == "/lab"
            response = await http.get("/set-cookie", params={"path": "/lab"},
                                      headers=on("app.localhost"))
            assert response.headers["set-cookie"] == "s=1; Path=/lab; HttpOnly"
            response = await http.get("/services/app/set-cookie", params={"path": "/"})
            assert response.headers["set-cookie"] == "s=1; Path=/services/app/; HttpOnly"


async def test_preserve_host_sends_the_clients_host(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            service_domain="localhost",
            services={"app": upstream_service(preserve_host=True)})
        async with client(gateway) as http:
            seen = await echo(http, "/echo", "app.localhost:8080")
            assert dict((k.lower(), v) for k, v in seen["headers"])["host"] == \
                "app.localhost:8080"
            # An app that builds absolute redirects from that Host gets them right as they are.
            response = await http.get("/redirect", params={"to": "{self}/lab"},
                                      headers=on("app.localhost:8080"))
            assert response.headers["location"] == "http://app.localhost:8080/lab"


async def websocket_on(gateway, host: str, path: str) -> tuple[dict, str]:
    """A WebSocket through the gateway with the `Host` of our choosing (no resolver knows
    `*.localhost` here, so the handshake is spoken on a plain socket with wsproto): the
    upstream's `/headers` message, then an echo."""
    port = int(gateway.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target=path)))
    messages: list[str] = []
    accepted = False
    async with stream:
        while len(messages) < 2:
            data = await stream.receive_some(65536)
            assert data, "the gateway closed the connection"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                    await stream.send_all(ws.send(TextMessage(data="hello")))
                elif isinstance(event, TextMessage):
                    messages.append(event.data)
                elif isinstance(event, CloseConnection):
                    raise AssertionError(f"closed: {event.code}")
        assert accepted
        await stream.send_all(ws.send(CloseConnection(code=1000)))
    return dict(json.loads(messages[0])), messages[1]


async def test_websockets_on_host_routes_with_and_without_preserve_host(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            service_domain="localhost",
            services={"ws": ws_service(), "kept": ws_service(preserve_host=True)})
        headers, echoed = await websocket_on(gateway, "ws.localhost:1234", "/headers?x=1")
        assert echoed == "hello"
        assert headers["host"] == gateway.supervisors["ws"].config.upstream.split("//")[1]
        assert headers["x-forwarded-host"] == "ws.localhost:1234"
        assert "x-forwarded-prefix" not in headers
        headers, _ = await websocket_on(gateway, "kept.localhost:1234", "/headers")
        assert headers["host"] == "kept.localhost:1234"
        # On a path route, the prefix goes along.
        headers, _ = await websocket_on(gateway, "localhost", "/services/ws/headers")
        assert headers["x-forwarded-prefix"] == "/services/ws"


async def test_a_host_name_that_is_not_the_gateways_is_refused(start_gateway):
    # A page of another site that pointed its name at 127.0.0.1 (DNS rebinding) sends its own
    # name as Host: it reaches nothing, though the gateway would rewrite Host for the upstream.
    with trio.fail_after(30):
        gateway = await start_gateway(allowed_hosts=["gpu-box.lan"],
                                      services={"app": upstream_service()})
        async with client(gateway) as http:
            for path in ("/services/app/echo", "/v1/services", "/", "/__hestia/login"):
                response = await http.get(path, headers=on("rebind.evil.example:8080"))
                body = assert_error_body(response, 403, "host_not_allowed", None)
                assert "allowed_hosts" in body["detail"]
            # The gateway's own names pass: addresses, localhost, allowed_hosts.
            for host in ("127.0.0.1:1", "localhost", "x.localhost", "GPU-BOX.lan:8080"):
                assert (await echo(http, "/services/app/echo", host))["path"] == "/echo"
        assert gateway.supervisors["app"].state.name == "READY"
        gateway.supervisors["app"].request_stop("test")
        # A WebSocket by another name is refused before anything starts.
        ws = await trio.open_tcp_stream("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
        async with ws:
            conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await ws.send_all(conn.send(Request(host="rebind.evil.example",
                                                target="/services/app/")))
            answer = b""
            while b"}" not in answer:  # the head, then the JSON body
                data = await ws.receive_some(65536)
                assert data, answer
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), head
        assert json.loads(body)["error"] == "host_not_allowed"
