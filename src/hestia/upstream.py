"""HTTP/1.1 to upstreams on plain trio streams, and a keep-alive pool: the proxy's leg, probes.

Chosen by measurement (docs/performance.md, "Upstream codec vs h11"): h11 on this leg cost
about 60 µs more CPU per proxied request (over half of Hestia's own work), 12% fewer requests/s
at c=32 by median, single runs overlapping. The proxy leg needs little — write a request whose
headers the server side already validated, then frame one response — and this does just that:

- the request head is written as bytes; a body is passed through as is (Content-Length) or
  chunk-encoded (when the client sent it chunked);
- the response is parsed by RFC 9112's grammar, and accepts what h11 accepts (a differential
  fuzz test holds the two together, tests/unit/test_upstream_differential.py), except where
  a gateway has to be stricter: obsolete line folding (§5.2), chunk extensions outside the
  grammar (§7.1.1), a major version other than 1, and a message framed by both
  Transfer-Encoding and Content-Length (§6.3: chunked wins, the Content-Length is dropped
  and the connection is not reused). A bare LF ends a line of the head or the trailer
  section (§2.2), never a chunk line; a chunk size is 1 to 20 hex digits; the only transfer
  coding is chunked, once, since any other could reach the client neither decoded nor
  labelled (hypercorn re-frames every answer);
- 1xx answers are skipped (a 101 nobody asked for is refused), and the body is framed by
  §6.3: none for HEAD, 204 and 304; chunked; Content-Length; else until the connection
  closes (then it is not reused).

The pool keeps idle connections per upstream; a connection is reused only after a complete
exchange on a keep-alive HTTP/1.1 response, and checked for a pending EOF before reuse so that
one the upstream closed while idle is not handed out.
"""

from __future__ import annotations

import re
import select
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .errors import UpstreamReset, UpstreamTimeout, UpstreamUnreachable

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
MAX_HEAD = 64 * 1024          # a response head, and a trailer section
MAX_CHUNK_LINE = 4096
LAST_CHUNK = b"0\r\n\r\n"
CHECK_IDLE_AFTER = 0.5

# RFC 9112 / RFC 9110 grammar. A line of a head has lost its LF (and the CR before it).
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: .*)?", re.DOTALL)
# Bytes no line of a head may hold once its line ends are gone: NUL, CR, VT, FF (h11's set).
# Other CTLs are kept in field values and the reason phrase, as RFC 9110 §5.5 allows and as h11
# (hypercorn's server side, which writes them on) does.
_BAD_BYTES = b"\x00\r\x0b\x0c"
_BAD_BYTE = re.compile(b"[" + _BAD_BYTES + b"]")
# chunk-size [chunk-ext] with BWS, and trailing OWS as h11 allows ("some servers in the wild").
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,20})(?:[ \t]*;[ \t]*" + _TOKEN +
    rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*[ \t]*")
# The end of a head or trailer section: an empty line, after CRLF or a bare LF (§2.2).
_BLANK_LINE = re.compile(rb"\n\r?\n")


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values as sent, order kept
    keep_alive: bool
    chunked: bool
    length: int | None                  # Content-Length; None: chunked, or until close
    bodyless: bool                      # HEAD, 204, 304


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
        buffer = self.buffer
        searched = 0
        while True:
            # The head ends at its first empty line, after CRLF or a bare LF (§2.2); two
            # finds cost less than a regular expression on this, the hot path.
            end = buffer.find(b"\n\r\n", searched)
            bare = buffer.find(b"\n\n", searched, len(buffer) if end < 0 else end + 1)
            if bare >= 0:
                end, skip = bare, 2
            else:
                skip = 3
            if end < 0:
                # What cannot become a status line is refused at once, not after MAX_HEAD
                # bytes or a timeout (an SSH banner, a blank line).
                if buffer[:5] != b"HTTP/"[:len(buffer)]:
                    line = bytes(buffer[:100]).split(b"\n", 1)[0]
                    raise UpstreamReset(f"invalid status line from upstream: {line!r}")
                if len(buffer) > MAX_HEAD:
                    raise UpstreamReset(f"response head larger than {MAX_HEAD} bytes")
                if self.eof:
                    raise UpstreamReset("the upstream closed the connection without answering")
                searched = max(0, len(buffer) - 2)
                await self.receive()
                continue
            if end > MAX_HEAD:
                raise UpstreamReset(f"response head larger than {MAX_HEAD} bytes")
            raw = bytes(buffer[:end + 1])
            del buffer[:end + skip]
            searched = 0
            head = _parse_head(raw, method)
            if head is not None:
                return head  # else a 1xx (100 Continue, 103): read on

    def looks_alive(self) -> bool:
        """False when the upstream closed this idle connection (EOF, reset or stray bytes
        pending). poll() rather than select(): select's descriptor set stops at 1,024, and a
        busy gateway (2,048 listen backlog) has more; trio's own readiness waits can only
        wait, not ask. One syscall, with no byte read."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return True
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

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


def _lines(raw: bytes) -> list[bytes]:
    """The lines of a head or trailer section; `raw` ends with the LF before its empty line.
    Raises `UpstreamReset`."""
    # RFC 9112 §2.2: a bare LF may end a line and a CR before it is ignored, as h11 does; any
    # other CR is refused.
    text = raw.replace(b"\r\n", b"\n")
    if len(text.translate(None, _BAD_BYTES)) != len(text):  # the fast test of the two
        bad = _BAD_BYTE.search(text)
        assert bad is not None
        start = text.rfind(b"\n", 0, bad.start()) + 1
        raise UpstreamReset(f"invalid byte {bad[0]!r} from upstream in "
                            f"{text[start:bad.start() + 20]!r}")
    lines = text.split(b"\n")
    lines.pop()
    return lines


def _field(line: bytes) -> tuple[bytes, bytes]:
    """One field line (RFC 9112 §5): its name lower-cased and its value without the OWS
    around it. Raises `UpstreamReset`."""
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR):
        if line[:1] in (b" ", b"\t"):
            # §5.2: a gateway refuses obs-fold or unfolds it; refusing keeps one reading.
            raise UpstreamReset(f"obsolete line folding from upstream: {line[:100]!r}")
        raise UpstreamReset(f"invalid header line from upstream: {line[:100]!r}")
    return name.lower(), value.strip(b" \t")


def _parse_head(raw: bytes, method: bytes) -> ResponseHead | None:
    """The head up to its empty line; None for an interim (1xx) answer."""
    lines = _lines(raw)
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise UpstreamReset(f"invalid status line from upstream: {lines[0][:100]!r}")
    status = int(match[2])
    if status < 100:
        raise UpstreamReset(f"invalid status code from upstream: {status}")
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    chunked = close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR):
            _field(line)  # raises, saying why
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            # RFC 9110 §8.6: a list of one value repeated is that value; anything else is
            # refused. Compared as text, like h11: "5" and "05" disagree.
            values = {v.strip(b" \t") for v in value.split(b",")}
            value = values.pop()
            if values or not value.isdigit() or len(value) > 20:
                raise UpstreamReset(f"invalid Content-Length from upstream: {line[:60]!r}")
            if length is not None:
                if value != length:
                    raise UpstreamReset("conflicting Content-Length fields from upstream")
                continue  # a duplicate: forwarded once
            length = value
        elif name == b"transfer-encoding":
            value = value.lower()
            if chunked or value != b"chunked":
                raise UpstreamReset(
                    f"unsupported Transfer-Encoding from upstream: {line[:60]!r} (only one "
                    "field, chunked, can be decoded and forwarded)")
            chunked = True
        elif name == b"connection":
            close = close or b"close" in {t.strip(b" \t") for t in value.lower().split(b",")}
        headers.append((name, value))
    if status < 200:
        if status == 101:
            raise UpstreamReset("the upstream switched protocols, though no upgrade was asked")
        return None
    if method == b"CONNECT" and status < 300:
        raise UpstreamReset("the upstream opened a tunnel (2xx to CONNECT); not proxied")
    bodyless = method == b"HEAD" or status in (204, 304)
    http_11 = match[1] != b"0"
    if chunked and length is not None:
        # RFC 9112 §6.3: chunked wins and an intermediary drops the Content-Length, which
        # would misframe the decoded body downstream; a message framed two ways is not
        # trusted with the next exchange.
        headers = [field for field in headers if field[0] != b"content-length"]
        close = True
    keep_alive = (http_11 and not close and (bodyless or chunked or length is not None))
    return ResponseHead(status, headers, keep_alive, chunked,
                        None if chunked or length is None else int(length), bodyless)


class BodyReader:
    """A response body, read as it arrives. `read()` returns everything available (waiting only
    when nothing is), and sets `done` in the same call that returns the last bytes, so the caller
    can send them together with the end of the message."""

    __slots__ = ("conn", "head", "done", "_remaining", "_chunk_left", "_state", "_searched")

    def __init__(self, conn: Connection, head: ResponseHead) -> None:
        self.conn = conn
        self.head = head
        self.done = False
        self._remaining = head.length
        self._chunk_left = 0
        self._state = "size"  # chunked: size → data → crlf → size …; trailers at the end
        self._searched = 0    # how far the trailer section was searched for its end
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
                if buffer[:2] != b"\r\n"[:len(buffer)]:
                    raise UpstreamReset("invalid chunked body from upstream (missing CRLF)")
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._state = "size"
            elif self._state == "size":
                # A chunk line ends with CRLF only: unlike the head's lines, RFC 9112 §2.2
                # does not let a bare LF end it (nor does h11).
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_CHUNK_LINE:
                        raise UpstreamReset("chunk size line too long")
                    break
                match = _CHUNK_LINE.fullmatch(buffer, 0, end)
                if match is None:
                    raise UpstreamReset(
                        f"invalid chunk line from upstream: {bytes(buffer[:min(end, 40)])!r}")
                self._chunk_left = int(match[1], 16)
                del buffer[:end + 2]
                self._state = "data" if self._chunk_left else "trailers"
            elif not self._take_trailers(buffer):
                break
            else:
                self._finish()
                break
        return b"".join(out)

    def _take_trailers(self, buffer: bytearray) -> bool:
        """Consume the trailer section once it is all there; its fields are checked and
        dropped (HTTP/1.1 downstream has no place for them)."""
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            del buffer[:1 if buffer[:1] == b"\n" else 2]
            return True
        end = _BLANK_LINE.search(buffer, self._searched)
        if end is None:
            if len(buffer) > MAX_HEAD:
                raise UpstreamReset(f"trailer section larger than {MAX_HEAD} bytes")
            self._searched = max(0, len(buffer) - 2)
            return False
        for line in _lines(bytes(buffer[:end.start() + 1])):
            _field(line)
        del buffer[:end.end()]
        return True


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
