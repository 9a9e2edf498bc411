"""The proxy's clocks in virtual time: the connect, first-byte and total deadlines, the fast
path's cut-over to streaming after `QUICK`, and a client going away at each stage.

In-memory streams stand in for the upstream's socket (`UpstreamPool.open_stream`) and ASGI
messages for the client, so every instant asserted is exact. That a real client on a real
socket gets the 504 is checked once in tests/integration/test_proxy.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from hestia.http.proxy import QUICK, ProxyHandler
from hestia.lifecycle.leases import State
from hestia.lifecycle.supervisor import Supervisor
from tests.fakes import FakeLauncher, MemoryUpstream, supervisor

T0 = 10.0  # when each request below is sent: the backend is READY by then


class TimedUpstream(MemoryUpstream):
    """Answers a request with `steps`, each (seconds after the request came, bytes to send),
    and then holds the connection open. Records when requests came and when the proxy closed
    a connection."""

    def __init__(self, *steps: tuple[float, bytes]) -> None:
        self.steps = steps
        self.connections = 0
        self.requests: list[float] = []
        self.closed: list[float] = []

    async def _serve(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            data = b""
            while True:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
                while b"\r\n\r\n" in data:  # requests without a body, in these tests
                    _, data = data.split(b"\r\n\r\n", 1)
                    self.requests.append(trio.current_time())
                    nursery.start_soon(self._answer, stream, trio.current_time())
            self.closed.append(trio.current_time())
            nursery.cancel_scope.cancel()

    async def _answer(self, stream: trio.abc.Stream, came: float) -> None:
        for after, data in self.steps:
            await trio.sleep_until(came + after)
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError:
                return


class HangingUpstream(MemoryUpstream):
    """An upstream whose connection is never established."""

    async def open(self, host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"


def whole(body: bytes) -> bytes:
    return HEAD + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED = HEAD + b"transfer-encoding: chunked\r\n\r\n"
LAST = b"0\r\n\r\n"


class Client:
    """One `GET` through the proxy as ASGI messages: what the client was sent, and when."""

    def __init__(self) -> None:
        self._to_proxy, self._receive = trio.open_memory_channel[dict[str, Any]](10)
        self._to_proxy.send_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.done_at: float | None = None

    async def get(self, proxy: ProxyHandler, path: bytes = b"/services/echo/generate") -> None:
        scope = {"type": "http", "method": "GET", "path": path.decode(), "raw_path": path,
                 "query_string": b"", "headers": [(b"host", b"localhost")], "scheme": "http",
                 "client": ("127.0.0.1", 50000), "http_version": "1.1"}
        await proxy(scope, self._receive.receive, self._send)
        self.done_at = trio.current_time()

    async def leave_at(self, t: float) -> None:
        await trio.sleep_until(t)
        await self._to_proxy.send({"type": "http.disconnect"})

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append((trio.current_time(), message))

    @property
    def status(self) -> tuple[float, int]:
        """When the response started, and its status."""
        at, start = self.sent[0]
        assert start["type"] == "http.response.start"
        return at, start["status"]

    def bodies(self) -> list[tuple[float, bytes, bool]]:
        return [(at, m["body"], m.get("more_body", False)) for at, m in self.sent[1:]]

    def error(self) -> dict[str, Any]:
        return json.loads(b"".join(body for _, body, _ in self.bodies()))


async def ready(nursery: trio.Nursery, upstream: MemoryUpstream,
                **fields: Any) -> tuple[ProxyHandler, Supervisor]:
    """A proxy in front of backend `echo` on `upstream`, READY, at `T0`."""
    await nursery.start(upstream.run)
    sup = supervisor(FakeLauncher(start_s=1), idle_timeout="1h", **fields)
    sup.placement.pool.open_stream = upstream.open
    await nursery.start(sup.run)
    sup.request_start()
    await sup.wait_until(State.READY)
    await trio.sleep_until(T0)
    return ProxyHandler({"echo": sup}), sup


# --- deadlines ------------------------------------------------------------------------------------

async def test_no_head_within_first_byte_is_504_at_that_instant(nursery, autojump_clock):
    upstream = TimedUpstream()  # never answers
    proxy, sup = await ready(nursery, upstream, timeouts={"first_byte": "2s"})
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + 2, 504)
    assert (client.error()["error"], client.error()["phase"]) == ("upstream_timeout",
                                                                   "first_byte")
    assert upstream.requests == [T0]
    assert upstream.closed == [T0 + 2]  # the connection is not kept: its answer may yet come
    assert sup.in_flight == 0


async def test_a_first_byte_deadline_shorter_than_quick_ends_the_fast_path_at_it(
        nursery, autojump_clock):
    upstream = TimedUpstream((0.03, whole(b"late")))
    proxy, sup = await ready(nursery, upstream, timeouts={"first_byte": "20ms"})
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + 0.02, 504)
    assert client.error()["phase"] == "first_byte"
    assert upstream.closed == [T0 + 0.02]
    assert sup.in_flight == 0


async def test_no_head_within_total_is_504_with_phase_total(nursery, autojump_clock):
    upstream = TimedUpstream((5, whole(b"late")))
    proxy, sup = await ready(nursery, upstream, timeouts={"total": "3s"})
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + 3, 504)
    assert client.error()["phase"] == "total"
    assert upstream.closed == [T0 + 3]
    assert sup.in_flight == 0


async def test_a_stream_outlasting_total_is_cut_off_at_it_never_ended_as_complete(
        nursery, autojump_clock):
    steps = [(0, CHUNKED)] + [(0.5 + i, chunk(b"token %d\n" % i)) for i in range(10)]
    upstream = TimedUpstream(*steps)
    proxy, sup = await ready(nursery, upstream, timeouts={"total": "3s"})
    client = Client()
    await client.get(proxy)
    assert client.status == (T0, 200)  # the head went on at once: the deadline came later
    assert client.bodies() == [(T0 + 0.5, b"token 0\n", True), (T0 + 1.5, b"token 1\n", True),
                               (T0 + 2.5, b"token 2\n", True)]
    assert client.done_at == upstream.closed[0] == T0 + 3
    assert sup.in_flight == 0


async def test_a_connection_not_made_within_connect_is_504_with_phase_connect(
        nursery, autojump_clock):
    proxy, sup = await ready(nursery, HangingUpstream(), timeouts={"connect": "1500ms"})
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + 1.5, 504)
    assert client.error()["phase"] == "connect"
    assert sup.in_flight == 0


# --- the fast path and its cut-over to streaming --------------------------------------------------

@pytest.mark.parametrize("after", [0, QUICK - 0.001])
async def test_an_answer_complete_within_quick_goes_out_whole_the_moment_it_is_there(
        nursery, autojump_clock, after):
    upstream = TimedUpstream((after, whole(b"hello")))
    proxy, sup = await ready(nursery, upstream)
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + after, 200)
    assert client.bodies() == [(T0 + after, b"hello", False)]  # one message, the last
    assert sup.in_flight == 0
    await Client().get(proxy)
    assert upstream.connections == 1 and upstream.closed == []  # kept alive, and used again


async def test_an_answer_just_past_quick_loses_no_time_to_the_cut_over(nursery, autojump_clock):
    upstream = TimedUpstream((QUICK + 0.001, whole(b"hello")))
    proxy, _ = await ready(nursery, upstream)
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + QUICK + 0.001, 200)
    assert client.bodies() == [(T0 + QUICK + 0.001, b"hello", False)]
    assert upstream.closed == []


async def test_a_head_within_quick_goes_on_at_once_and_the_body_as_it_comes(
        nursery, autojump_clock):
    upstream = TimedUpstream((0.01, CHUNKED + chunk(b"a")), (2, chunk(b"b")), (3, LAST))
    proxy, sup = await ready(nursery, upstream)
    client = Client()
    await client.get(proxy)
    assert client.status == (T0 + 0.01, 200)
    assert client.bodies() == [(T0 + 0.01, b"a", True), (T0 + 2, b"b", True),
                               (T0 + 3, b"", False)]
    assert sup.in_flight == 0


# --- a client going away --------------------------------------------------------------------------

async def test_a_client_leaving_during_the_fast_path_is_seen_when_it_ends(nursery,
                                                                         autojump_clock):
    upstream = TimedUpstream((60, whole(b"late")))
    proxy, sup = await ready(nursery, upstream)
    client = Client()
    async with trio.open_nursery() as inner:
        inner.start_soon(client.get, proxy)
        inner.start_soon(client.leave_at, T0 + 0.01)
    # The fast path watches nothing; the streaming path that follows it sees the disconnect.
    assert client.done_at == upstream.closed[0] == T0 + QUICK
    assert client.sent == []
    assert sup.in_flight == 0


async def test_a_client_leaving_while_the_upstream_thinks_closes_it_at_once(nursery,
                                                                           autojump_clock):
    upstream = TimedUpstream((60, whole(b"late")))
    proxy, sup = await ready(nursery, upstream)
    client = Client()
    async with trio.open_nursery() as inner:
        inner.start_soon(client.get, proxy)
        inner.start_soon(client.leave_at, T0 + 7)
    assert client.done_at == upstream.closed[0] == T0 + 7
    assert client.sent == []
    assert sup.in_flight == 0


async def test_a_client_leaving_the_hold_queue_leaves_it_at_once_and_the_start_goes_on(
        nursery, autojump_clock):
    upstream = TimedUpstream((0, whole(b"hello")))
    await nursery.start(upstream.run)
    sup = supervisor(FakeLauncher(start_s=5), idle_timeout="1h")
    sup.placement.pool.open_stream = upstream.open
    await nursery.start(sup.run)
    proxy = ProxyHandler({"echo": sup})
    client = Client()
    async with trio.open_nursery() as inner:
        inner.start_soon(client.get, proxy)  # at 0: starts the backend, waits for it
        inner.start_soon(client.leave_at, 2)
        await trio.sleep(1)
        assert sup.queue_pending == 1
    assert client.done_at == 2
    assert sup.queue_pending == 0 and sup.in_flight == 0
    assert client.sent == []
    await sup.wait_until(State.READY)
    assert trio.current_time() == 5  # the start was not the client's to cancel
    assert upstream.connections == 0
