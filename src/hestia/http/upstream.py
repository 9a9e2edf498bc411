"""The proxy leg: HTTP/1.1 to upstreams on plain trio streams, and a keep-alive pool.

Chosen by measurement (docs/performance.md). An httpx client shared by many trio tasks slows
sharply with concurrency on this kind of machine; h11 on trio streams keeps pace, but its
per-event validation and state machine were a sixth of the gateway's CPU per proxied request.
What the proxy leg needs is narrow — write a request whose headers the server side already
validated, then frame one response — so this module does exactly that:

- the request head is written as bytes; a body is passed through as is (Content-Length) or
  chunk-encoded (when the client sent it chunked);
- the response head is parsed strictly (status line, `name: value` lines, at most
  `MAX_HEAD` bytes), 1xx answers are skipped, and the body is framed by the rules of RFC 9112
  §6.3: none for HEAD, 1xx, 204 and 304; chunked; Content-Length; else until the connection
  closes (then it is not reused).

The pool keeps idle connections per upstream; a connection is reused only after a complete
exchange on a keep-alive response, and checked for a pending EOF before reuse so that one the
upstream closed while idle is not handed out.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..errors import UpstreamReset, UpstreamTimeout, UpstreamUnreachable

__all__ = [
    "LAST_CHUNK",
    "BodyReader",
    "Connection",
    "ResponseHead",
    "UpstreamPool",
    "encode_chunk",
    "fetch_status",
    "request_head",
]

READ_SIZE = 65536
BODY_READ_SIZE = 1024 * 1024  # a body read straight from the socket (see BodyReader.read)
MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
LAST_CHUNK = b"0\r\n\r\n"
CHECK_IDLE_AFTER = 0.5


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values as sent, order kept
    keep_alive: bool
    chunked: bool
    length: int | None                  # Content-Length; None: chunked, or until close
    bodyless: bool                      # HEAD, 1xx, 204, 304


class Connection:
    """One HTTP/1.1 connection to an upstream: one exchange at a time."""

    __slots__ = ("stream", "buffer", "reused", "reusable", "eof", "idle_since", "received")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.reused = False
        self.reusable = False  # set once a keep-alive response has been read to its end
        self.eof = False
        self.idle_since = 0.0
        self.received = 0  # bytes received in the current exchange

    async def send(self, data: bytes) -> None:
        """Write bytes; raises `trio.BrokenResourceError` or `OSError` when the peer is gone."""
        await self.stream.send_all(data)

    async def receive(self) -> None:
        """Read what the upstream sent next into the buffer; at EOF, set `eof`."""
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamReset(f"connection to upstream broken: {exc}") from None
        if data:
            self.buffer += data
            self.received += len(data)
        else:
            self.eof = True

    async def read_head(self, method: bytes) -> ResponseHead:
        """The final (non-1xx) response head. Raises `UpstreamReset`. Safe to cancel and call
        again: what was read stays in the buffer."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise UpstreamReset(f"response head larger than {MAX_HEAD} bytes")
                if self.eof:
                    raise UpstreamReset("the upstream closed the connection without answering")
                await self.receive()
                continue
            raw = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            head = _parse_head(raw, method)
            if head is not None:
                return head  # else a 1xx (100 Continue, 103): read on

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


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Serialize a request head. Names and values must already be valid (no CR or LF): they
    come from the server side's parser or from Hestia itself."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked request body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _parse_head(raw: bytes, method: bytes) -> ResponseHead | None:
    lines = raw.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise UpstreamReset(f"invalid status line from upstream: {lines[0][:100]!r}")
    version, code = status_line[0], status_line[1]
    if len(code) != 3 or not code.isdigit():
        raise UpstreamReset(f"invalid status code from upstream: {code[:10]!r}")
    status = int(code)
    if 100 <= status < 200 and status != 101:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = encoded = False
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise UpstreamReset(f"invalid header line from upstream: {line[:100]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        headers.append((name, value))
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise UpstreamReset(f"invalid Content-Length from upstream: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            # Chunked when it is the final coding; any other coding runs until the close.
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            encoded = True
        elif name == b"connection":
            connection += b"," + value.lower()
    bodyless = method == b"HEAD" or status in (204, 304) or status < 200
    if encoded:
        length = None
    tokens = {t.strip() for t in connection.split(b",")}
    keep_alive = (b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
                  and (bodyless or chunked or length is not None))
    return ResponseHead(status, headers, keep_alive, chunked, length, bodyless)


class BodyReader:
    """A response body, read as it arrives. `read()` returns everything available (waiting only
    when nothing is), and sets `done` in the same call that returns the last bytes, so the caller
    can send them together with the end of the message."""

    __slots__ = ("conn", "head", "done", "_remaining", "_chunk_left", "_state")

    def __init__(self, conn: Connection, head: ResponseHead) -> None:
        self.conn = conn
        self.head = head
        self.done = False
        self._remaining = head.length
        self._chunk_left = 0
        self._state = "size"  # chunked: size → data → crlf → size …; trailers at the end
        if head.bodyless or head.length == 0:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.conn.reusable = self.head.keep_alive and not self.conn.buffer

    async def read(self) -> bytes:
        """The next bytes of the body (b"" only once `done`). Raises `UpstreamReset` when the
        upstream ends the connection before the body's end. Safe to cancel and call again."""
        while not self.done:
            data = self.take()
            if data or self.done:
                return data
            if not self.head.chunked and not self.conn.eof:
                # Nothing buffered of a body that needs no framing: read it straight from the
                # socket, in pieces large enough for a download to go at memory speed, without
                # the copy into and out of the buffer.
                return await self._read_through()
            if self.conn.eof:
                if self.head.length is None and not self.head.chunked:
                    self._finish()  # delimited by the close: a complete body
                    self.conn.reusable = False
                    return b""
                raise UpstreamReset("the upstream closed the connection mid-body")
            await self.conn.receive()
        return b""

    async def _read_through(self) -> bytes:
        conn = self.conn
        size = BODY_READ_SIZE if self._remaining is None else min(self._remaining,
                                                                   BODY_READ_SIZE)
        try:
            data = await conn.stream.receive_some(size)
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamReset(f"connection to upstream broken: {exc}") from None
        if not data:
            conn.eof = True
            return b""  # `read` decides whether that was the end or a cut
        conn.received += len(data)
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
        return data

    def take(self) -> bytes:
        """What of the body is already buffered, without waiting (sets `done` at the end)."""
        buffer = self.conn.buffer
        if self.done:
            return b""
        if not self.head.chunked:
            if self._remaining is None:  # until close
                data = bytes(buffer)
                buffer.clear()
                return data
            data = bytes(buffer[:self._remaining])
            del buffer[:len(data)]
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
            return data
        return self._take_chunked(buffer)

    def _take_chunked(self, buffer: bytearray) -> bytes:
        out: list[bytes] = []
        while True:
            if self._state == "data":
                if not buffer:
                    break
                piece = bytes(buffer[:self._chunk_left])
                del buffer[:len(piece)]
                out.append(piece)
                self._chunk_left -= len(piece)
                if self._chunk_left:
                    break
                self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise UpstreamReset("invalid chunked body from upstream (missing CRLF)")
                del buffer[:2]
                self._state = "size"
            else:  # "size" or "trailers": one line at a time
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_CHUNK_LINE:
                        raise UpstreamReset("chunk size line too long")
                    break
                line = bytes(buffer[:end])
                del buffer[:end + 2]
                if self._state == "trailers":
                    if not line:
                        self._finish()
                        break
                    continue  # trailers are dropped (not forwarded over HTTP/1.1)
                size = line.split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise UpstreamReset(
                        f"invalid chunk size from upstream: {size[:20]!r}") from None
                self._state = "data" if self._chunk_left else "trailers"
        return b"".join(out)


class UpstreamPool:
    """Keep-alive connections to one upstream `host:port`."""

    def __init__(self, host: str, port: int, *, tls: bool = False, max_idle: int = 64) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._ssl_context = ssl.create_default_context() if tls else None
        # How a connection is opened; unit tests put in-memory streams here.
        self.open_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] = \
            trio.open_tcp_stream

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.host}:{self.port} idle={len(self._idle)}>"

    async def connect(self, timeout: float) -> Connection:
        """A new connection. Raises `UpstreamUnreachable` or `UpstreamTimeout`."""
        try:
            with trio.fail_after(timeout) if timeout > 0 else trio.CancelScope():
                stream: trio.abc.Stream = await self.open_stream(self.host, self.port)
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

    async def acquire(self, connect_timeout: float, *, check: bool = False) -> Connection:
        """An idle connection or a new one. An idle one is checked for a close by the upstream
        when `check` is true or it has been idle a while: the check is a syscall, worth it where
        a request cannot simply be sent again on a fresh connection (a POST)."""
        while self._idle:
            conn = self._idle.pop()
            fresh = not check and trio.current_time() - conn.idle_since < CHECK_IDLE_AFTER
            if fresh or conn.looks_alive():
                conn.reused = True
                return conn
            await conn.aclose()
        return await self.connect(connect_timeout)

    async def release(self, conn: Connection) -> None:
        """Return a connection after its exchange; keeps it only when it can serve another."""
        if conn.reusable and len(self._idle) < self.max_idle:
            conn.reusable = False
            conn.received = 0
            conn.idle_since = trio.current_time()
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
    with trio.move_on_after(timeout):
        conn = await pool.connect(timeout)
        try:
            await conn.send(request_head(b"GET", path.encode(), [
                (b"host", f"{host}:{port}".encode()), (b"user-agent", b"hestia-probe"),
                (b"connection", b"close")]))
            return (await conn.read_head(b"GET")).status
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamReset(f"cannot send to {host}:{port}: {exc}") from None
        finally:
            await conn.aclose()
    raise UpstreamTimeout(f"no answer from {host}:{port}{path} within {timeout}s")
