"""The upstream pool's check of an idle connection, on real sockets (real clock)."""

from __future__ import annotations

import fcntl
import resource
import socket
from functools import partial

import trio

from hestia.upstream import BodyReader, Connection, UpstreamPool, request_head


class KeepAliveUpstream:
    """Answers every request with a 2-byte 200, on any number of kept-alive connections, until
    told to hang up a given connection."""

    def __init__(self) -> None:
        self.hang_ups: list[trio.Event] = []  # one per accepted connection, in order

    async def handle(self, stream: trio.SocketStream) -> None:
        hang_up = trio.Event()
        self.hang_ups.append(hang_up)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._serve, stream)
            await hang_up.wait()
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _serve(stream: trio.SocketStream) -> None:
        pending = b""
        while data := await stream.receive_some():
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def open_on_a_high_descriptor(host: str, port: int) -> trio.SocketStream:
    """A TCP stream whose descriptor is 1024 or more: past what select() can watch."""
    stream = await trio.open_tcp_stream(host, port)
    high = fcntl.fcntl(stream.socket.fileno(), fcntl.F_DUPFD_CLOEXEC, 1024)
    stream.socket.close()
    return trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=high)))


async def post(pool: UpstreamPool) -> Connection:
    """One POST (not retryable, so the pool checks a kept-alive connection before use)."""
    conn = await pool.acquire(5, check=True)
    await conn.send(request_head(b"POST", b"/", [(b"host", b"up"), (b"content-length", b"0")]))
    reader = BodyReader(conn, await conn.read_head(b"POST"))
    body = reader.take()
    while not reader.done:
        body += await reader.read()
    assert body == b"ok"
    await pool.release(conn)
    return conn


async def test_idle_connections_past_descriptor_1024_are_checked_and_reused(nursery):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))
    upstream = KeepAliveUpstream()
    listeners = await nursery.start(partial(trio.serve_tcp, upstream.handle, 0,
                                            host="127.0.0.1"))
    pool = UpstreamPool("127.0.0.1", listeners[0].socket.getsockname()[1])
    pool.open_stream = open_on_a_high_descriptor
    with trio.fail_after(10):
        first = await post(pool)
        assert first.stream.socket.fileno() >= 1024
        # select() raised for this descriptor, so the check failed and every POST opened a
        # new connection.
        second = await post(pool)
        assert (second is first, second.reused, len(upstream.hang_ups)) == (True, True, 1)

        upstream.hang_ups[0].set()
        await trio.lowlevel.wait_readable(first.stream.socket)  # the FIN has arrived
        third = await post(pool)
        assert (third is first, third.reused, len(upstream.hang_ups)) == (False, False, 2)
        assert third.stream.socket.fileno() >= 1024
    await pool.clear()
