"""API request bodies of any size: every `/v1` route answers a body over `API_MAX_BODY` with
413 only after reading it, so that the kept-alive connection serves the next request.

One raw TCP connection per test (h11 frames it on the client side), so that "the same
connection" is what is tested: an HTTP client library would reconnect behind our back.
"""

from __future__ import annotations

import json

import h11
import pytest
import trio

from hestia.http.body import API_MAX_BODY
from tests.integration.conftest import upstream_service

BIG = 17 * 1000 * 1000  # over Quart's own default limit of 16 MiB
POST_ROUTES = ["/v1/requests", "/v1/semaphore/start", "/v1/semaphore/stop",
               "/v1/services/up/start", "/v1/services/up/stop",
               "/v1/machines/local/disable", "/v1/machines/local/enable"]


class Connection:
    """One kept-alive HTTP/1.1 connection to the gateway."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"", *,
                      chunked: bool = False, request_id: str = "test") -> tuple[int, bytes]:
        """Send the request (its body while reading the answer, as a client does) and
        return the status and body of the answer."""
        framing = [(b"transfer-encoding", b"chunked")] if chunked else \
            [(b"content-length", str(len(body)).encode())]
        await self._send(h11.Request(method=method, target=target,
                                     headers=[(b"host", b"localhost"), *framing,
                                              (b"x-request-id", request_id.encode())]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_body, body)
            status, answer = await self._read_response()
        assert (self.h11.our_state, self.h11.their_state) == (h11.DONE, h11.DONE)
        self.h11.start_next_cycle()
        return status, answer

    async def _send(self, event: h11.Event) -> None:
        await self.stream.send_all(self.h11.send(event))

    async def _send_body(self, body: bytes) -> None:
        step = 1024 * 1024
        for offset in range(0, len(body), step):
            await self._send(h11.Data(data=body[offset:offset + step]))
        await self._send(h11.EndOfMessage())

    async def _read_response(self) -> tuple[int, bytes]:
        status = 0
        chunks: list[bytes] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the gateway closed the connection")


async def connect(gateway) -> Connection:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return Connection(await trio.open_tcp_stream(host, int(port)))


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_a_17_mb_body_is_413_and_the_connection_serves_on(start_gateway, route):
    with trio.fail_after(20):
        gateway = await start_gateway(services={"up": upstream_service()})
        connection = await connect(gateway)
        status, body = await connection.request("POST", route, b" " * BIG, request_id="big")
        assert status == 413
        assert (json.loads(body)["error"], json.loads(body)["request_id"]) == (
            "request_entity_too_large", "big")
        status, body = await connection.request("GET", "/__health")
        assert (status, json.loads(body)) == (200, {"status": "ok", "services": 1})
        assert gateway.supervisors["up"].state.name == "COLD"  # the 413 did nothing


async def test_a_chunked_17_mb_body_is_413_and_the_connection_serves_on(start_gateway):
    with trio.fail_after(20):
        gateway = await start_gateway(services={"up": upstream_service()})
        connection = await connect(gateway)
        status, _ = await connection.request("POST", "/v1/requests", b" " * BIG,
                                             chunked=True)
        assert status == 413
        status, _ = await connection.request("GET", "/__health")
        assert status == 200


async def test_a_body_on_a_route_that_takes_none_is_read_and_the_connection_serves_on(
        start_gateway):
    with trio.fail_after(20):
        gateway = await start_gateway(services={"up": upstream_service()})
        connection = await connect(gateway)
        status, body = await connection.request("POST", "/v1/machines/local/disable",
                                                b" " * API_MAX_BODY)
        assert (status, json.loads(body)["changed"]) == (200, True)
        status, body = await connection.request("GET", "/v1/machines", b"x" * API_MAX_BODY)
        assert (status, json.loads(body)["machines"][0]["enabled"]) == (200, False)
        status, body = await connection.request("GET", "/v1/machines", b"x" * (
            API_MAX_BODY + 1))
        assert status == 413
        status, _ = await connection.request("GET", "/__health")
        assert status == 200


@pytest.mark.parametrize("target", ["/v1/requests", "/services/up/upload"])
async def test_a_body_refused_for_its_missing_key_is_read_and_the_connection_serves_on(
        start_gateway, target):
    with trio.fail_after(20):
        gateway = await start_gateway(services={"up": upstream_service()},
                                      auth={"enabled": True})
        connection = await connect(gateway)
        status, body = await connection.request("POST", target, b" " * (2 * API_MAX_BODY))
        assert (status, json.loads(body)["error"]) == (401, "unauthorized")
        status, _ = await connection.request("GET", "/__health")
        assert status == 200
        assert gateway.supervisors["up"].state.name == "COLD"
