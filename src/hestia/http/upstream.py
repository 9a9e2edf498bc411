"""The proxy leg: HTTP/1.1 to upstreams with h11 on trio streams, and a keep-alive pool.

Chosen by measurement (see docs/performance.md): an httpx client shared by many trio tasks slows
sharply with concurrency on this kind of machine, while h11 on plain trio streams keeps pace with
the server side. The pool keeps idle connections per upstream; a connection is reused only after a
complete exchange, and checked for a pending EOF before reuse so that a connection the upstream
closed while idle is not handed out.
"""

from __future__ import annotations

import select
import ssl

import h11
import trio

from ..errors import UpstreamReset, UpstreamTimeout, UpstreamUnreachable

__all__ = ["Connection", "UpstreamPool"]

_READ_SIZE = 65536


class Connection:
    """One HTTP/1.1 connection to an upstream."""

    __slots__ = ("stream", "h11", "reused")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.reused = False

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    def next_event_nowait(self) -> h11.Event | type[h11.NEED_DATA]:
        """The next already-received event, or `h11.NEED_DATA`. Raises `UpstreamReset`."""
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamReset(f"invalid response from upstream: {exc}") from None

    async def receive(self) -> None:
        """Read what the upstream sent next into the parser (an EOF included)."""
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamReset(f"connection to upstream broken: {exc}") from None
        self.h11.receive_data(data)

    async def next_event(self) -> h11.Event:
        """The next h11 event from the upstream; raises `UpstreamReset` on a broken connection."""
        while (event := self.next_event_nowait()) is h11.NEED_DATA:
            await self.receive()
        return event  # type: ignore[return-value]

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def looks_alive(self) -> bool:
        """False when the upstream closed this idle connection (EOF or stray bytes pending)."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class UpstreamPool:
    """Keep-alive connections to one upstream `host:port`."""

    def __init__(self, host: str, port: int, *, tls: bool = False, max_idle: int = 64) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._ssl_context = ssl.create_default_context() if tls else None

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.host}:{self.port} idle={len(self._idle)}>"

    async def connect(self, timeout: float) -> Connection:
        """A new connection. Raises `UpstreamUnreachable` or `UpstreamTimeout`."""
        try:
            with trio.fail_after(timeout) if timeout > 0 else trio.CancelScope():
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                if self._ssl_context is not None:
                    ssl_stream = trio.SSLStream(stream, self._ssl_context,
                                                server_hostname=self.host)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
        except trio.TooSlowError:
            raise UpstreamTimeout(
                f"connecting to {self.host}:{self.port} took longer than {timeout}s",
                phase="connect") from None
        except (OSError, trio.BrokenResourceError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UpstreamUnreachable(
                f"cannot connect to {self.host}:{self.port}: {reason}") from None
        return Connection(stream)

    async def acquire(self, connect_timeout: float) -> Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.looks_alive():
                conn.reused = True
                return conn
            await conn.aclose()
        return await self.connect(connect_timeout)

    async def release(self, conn: Connection) -> None:
        """Return a connection after its exchange; keeps it only when it can serve another."""
        if conn.reusable and len(self._idle) < self.max_idle:
            conn.h11.start_next_cycle()
            self._idle.append(conn)
        else:
            await conn.aclose()

    async def clear(self) -> None:
        """Close every idle connection (the backend stopped or crashed)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


async def fetch_status(host: str, port: int, path: str, *, timeout: float,
                       tls: bool = False) -> int:
    """One GET on a fresh connection; the response status. Used by readiness probes.

    Raises `UpstreamUnreachable`, `UpstreamReset` or `UpstreamTimeout`.
    """
    pool = UpstreamPool(host, port, tls=tls)
    with trio.move_on_after(timeout) as scope:
        conn = await pool.connect(timeout)
        try:
            await conn.send(h11.Request(method="GET", target=path, headers=[
                ("host", f"{host}:{port}"), ("user-agent", "hestia-probe"),
                ("connection", "close")]))
            await conn.send(h11.EndOfMessage())
            while True:
                event = await conn.next_event()
                if type(event) is h11.Response:
                    return event.status_code
                if type(event) is h11.ConnectionClosed:
                    raise UpstreamReset("upstream closed the connection before answering")
        finally:
            await conn.aclose()
    assert scope.cancelled_caught
    raise UpstreamTimeout(f"no answer from {host}:{port}{path} within {timeout}s")
