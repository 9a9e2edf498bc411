"""The proxy leg's HTTP/1.1 codec: response framing, fed in awkward pieces."""

from __future__ import annotations

import pytest
import trio

from hestia.errors import UpstreamReset
from hestia.http.upstream import BodyReader, Connection, encode_chunk, request_head


class PiecesStream(trio.abc.Stream):
    """Hands out the given pieces one `receive_some` at a time, then EOF."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.sent = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.pieces.pop(0) if self.pieces else b""

    async def send_all(self, data: bytes) -> None:
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def exchange(*pieces: bytes, method: bytes = b"GET") -> tuple[int, list, bytes, bool]:
    conn = Connection(PiecesStream(*pieces))
    head = await conn.read_head(method)
    reader = BodyReader(conn, head)
    body = b""
    while not reader.done:
        body += await reader.read()
    return head.status, head.headers, body, conn.reusable


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


async def test_content_length_body_split_anywhere():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n" \
          b"\r\nhello"
    for pieces in ([raw], bytewise(raw)):
        status, headers, body, reusable = await exchange(*pieces)
        assert (status, body, reusable) == (200, b"hello", True)
        assert headers == [(b"content-length", b"5"), (b"x-a", b"1"), (b"set-cookie", b"a"),
                           (b"set-cookie", b"b")]


async def test_chunked_body_with_extensions_and_trailers_split_anywhere():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    for pieces in ([raw], bytewise(raw)):
        status, _, body, reusable = await exchange(*pieces)
        assert (status, body, reusable) == (200, b"hello world", True)


async def test_read_returns_the_last_bytes_together_with_done():
    conn = Connection(PiecesStream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"a",
                                   b"bc"))
    reader = BodyReader(conn, await conn.read_head(b"GET"))
    assert (await reader.read(), reader.done) == (b"a", False)
    assert (await reader.read(), reader.done) == (b"bc", True)


async def test_a_body_delimited_by_the_close_is_complete_but_not_reusable():
    status, _, body, reusable = await exchange(b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it")
    assert (status, body, reusable) == (200, b"all of it", False)


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
async def test_bodyless_answers_have_no_body(method, status):
    raw = f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode()
    assert await exchange(raw, method=method) == (
        status, [(b"content-length", b"10")], b"", True)


async def test_interim_answers_are_skipped():
    status, _, body, _ = await exchange(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert (status, body) == (201, b"ok")


async def test_connection_close_and_leftover_bytes_prevent_reuse():
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    assert (await exchange(closing))[3] is False
    assert (await exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxGARBAGE"))[3] is False


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-",
    b"",
])
async def test_broken_answers_are_upstream_resets(raw):
    with pytest.raises(UpstreamReset):
        await exchange(raw)


def test_request_serialization():
    assert request_head(b"POST", b"/a?b=1", [(b"host", b"h:1"), (b"x", b"y")]) == \
        b"POST /a?b=1 HTTP/1.1\r\nhost: h:1\r\nx: y\r\n\r\n"
    assert encode_chunk(b"hello world") == b"b\r\nhello world\r\n"
