"""The proxy's streaming path in virtual time: in-memory streams stand in for the upstream's
socket, and ASGI messages for the client, so every instant asserted below is exact."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from hestia.http.proxy import ProxyHandler
from tests.fakes import FakeLauncher, MemoryUpstream, supervisor


class SlowStreamUpstream(MemoryUpstream):
    """Answers any request with a chunked body, one chunk a second, until closed."""

    def __init__(self) -> None:
        self.closed_at: float | None = None
        self.chunks_sent = 0

    async def _serve(self, stream: trio.abc.Stream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_close, stream, nursery.cancel_scope)
            while True:
                await trio.sleep(1)
                line = b'{"token": %d}\n' % self.chunks_sent
                await stream.send_all(b"%x\r\n%s\r\n" % (len(line), line))
                self.chunks_sent += 1

    async def _watch_close(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        while await stream.receive_some():
            pass
        self.closed_at = trio.current_time()
        scope.cancel()


def scope(path: bytes) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path.decode(), "raw_path": path,
            "query_string": b"", "headers": [(b"host", b"localhost")], "scheme": "http",
            "client": ("127.0.0.1", 50000), "http_version": "1.1"}


async def test_a_client_leaving_mid_stream_closes_the_upstream_and_releases_the_lease(
        nursery, autojump_clock):
    upstream = SlowStreamUpstream()
    await nursery.start(upstream.run)
    sup = supervisor(FakeLauncher(start_s=2), idle_timeout=30)
    sup.placement.pool.open_stream = upstream.open
    await nursery.start(sup.run)
    proxy = ProxyHandler({"echo": sup})

    to_proxy, from_client = trio.open_memory_channel[dict[str, Any]](10)
    to_proxy.send_nowait({"type": "http.request", "body": b"", "more_body": False})
    sent: list[tuple[float, dict[str, Any]]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append((trio.current_time(), message))

    async def leave_at(t: float) -> None:
        await trio.sleep_until(t)
        await to_proxy.send({"type": "http.disconnect"})

    async with trio.open_nursery() as client:
        client.start_soon(proxy, scope(b"/services/echo/api/chat"), from_client.receive, send)
        client.start_soon(leave_at, 5.5)
        await trio.sleep(3.5)
        assert sup.in_flight == 1  # streaming: the lease is held
    # The backend was ready at 2; a chunk a second from then on; the client left at 5.5.
    assert trio.current_time() == 5.5
    assert upstream.closed_at == 5.5
    assert sup.in_flight == 0
    assert sent[0][1]["type"] == "http.response.start" and sent[0][1]["status"] == 200
    bodies = [(t, m["body"]) for t, m in sent[1:]]
    assert bodies == [(3.0, b'{"token": 0}\n'), (4.0, b'{"token": 1}\n'),
                      (5.0, b'{"token": 2}\n')]
    assert all(m.get("more_body") for _, m in sent[1:])  # never ended as if complete
    # The idle timer counts from the moment the lease was released.
    await trio.sleep(29.9)
    assert sup.state.name == "READY"
    await trio.sleep(0.2)
    assert sup.state.name == "COLD"


class ScriptedUpstream(MemoryUpstream):
    """Answers every request on every connection with the same raw response."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.connections = 0

    async def _serve(self, stream: trio.abc.Stream) -> None:
        pending = b""
        while data := await stream.receive_some():
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                await stream.send_all(self.response)


async def get(proxy: ProxyHandler, path: bytes) -> tuple[int, list[bytes], bytes]:
    """Status, header names and body the client is sent."""
    to_proxy, from_client = trio.open_memory_channel[dict[str, Any]](10)
    to_proxy.send_nowait({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await proxy(scope(path), from_client.receive, send)
    return (sent[0]["status"], [name for name, _ in sent[0]["headers"]],
            b"".join(m["body"] for m in sent[1:]))


async def test_an_answer_framed_both_ways_reaches_the_client_decoded_and_ends_its_connection(
        nursery, autojump_clock):
    # RFC 9112 §6.3: chunked wins over Content-Length, which must not travel on (it would
    # frame the decoded body downstream), and the connection is not trusted with another
    # exchange.
    upstream = ScriptedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    await nursery.start(upstream.run)
    sup = supervisor(FakeLauncher(start_s=1))
    sup.placement.pool.open_stream = upstream.open
    await nursery.start(sup.run)
    proxy = ProxyHandler({"echo": sup})
    for _ in range(2):
        assert await get(proxy, b"/services/echo/") == (200, [b"x-request-id"], b"hello")
    assert upstream.connections == 2
