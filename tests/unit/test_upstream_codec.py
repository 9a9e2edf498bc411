"""The proxy leg's HTTP/1.1 codec: response framing, fed in awkward pieces."""

from __future__ import annotations

import pytest
import trio

from hestia.errors import UpstreamReset
from hestia.upstream import BodyReader, Connection, encode_chunk, request_head


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


# --- RFC 9112's grammar, not Python's int() ---------------------------------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(("size", "data"), [
    (b"0x5", b"hello"), (b"+5", b"hello"), (b"5_0", b"x" * 0x50), (b"-5", b"hello"),
    (b" 5", b"hello"), (b"5 5", b"hello"), (b"", b""), (b"g", b"hello"),
    (b"0" * 20 + b"5", b"hello"), ("\N{ARABIC-INDIC DIGIT FIVE}".encode(), b"hello")])
async def test_a_chunk_size_is_hex_digits_only(size, data):
    # int(size, 16) takes most of these (and mis-frames "-5"); chunk-size is 1*HEXDIG, and
    # like h11 Hestia takes at most 20 of them.
    raw = CHUNKED_HEAD + size + b"\r\n" + data + b"\r\n0\r\n\r\n"
    with pytest.raises(UpstreamReset):
        await exchange(raw)


@pytest.mark.parametrize("size", [b"5", b"05", b"0" * 19 + b"5", b"5 ", b"5\t"])
async def test_a_chunk_size_may_have_leading_zeros_and_trailing_whitespace(size):
    raw = CHUNKED_HEAD + size + b"\r\nhello\r\n0\r\n\r\n"
    assert (await exchange(raw))[2] == b"hello"


@pytest.mark.parametrize("ext", [b";a", b";a=b", b';a="x; y"', b";a;b=c", b" ; a = b",
                                 b';q="\\"quoted\\""', b";a=b ", b";!#$%&'*+-.^_`|~=1"])
async def test_chunk_extensions_by_the_grammar_are_skipped(ext):
    raw = CHUNKED_HEAD + b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n"
    assert (await exchange(raw))[2:] == (b"hello", True)


@pytest.mark.parametrize("ext", [b";", b";a=", b";=b", b";a=b c", b';a="x', b";a\x00",
                                 b";a\rb", b";a=\x7f", b";a b", b";a=b;", b"x"])
async def test_chunk_extensions_outside_the_grammar_are_refused(ext):
    with pytest.raises(UpstreamReset):
        await exchange(CHUNKED_HEAD + b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")


async def test_trailer_fields_are_checked_then_dropped():
    raw = CHUNKED_HEAD + b"2\r\nhi\r\n0\r\nX-T: 1\r\nX-U:\tv w \r\n\r\n"
    assert (await exchange(raw))[1:] == ([(b"transfer-encoding", b"chunked")], b"hi", True)


@pytest.mark.parametrize("trailer", [b"Bad Trailer\r\n", b"X-T : 1\r\n", b"X-T: 1\r\n folded\r\n",
                                     b"X-T: a\x00b\r\n", b": v\r\n"])
async def test_invalid_trailer_fields_are_refused(trailer):
    with pytest.raises(UpstreamReset):
        await exchange(CHUNKED_HEAD + b"2\r\nhi\r\n0\r\n" + trailer + b"\r\n")


# --- line ends: bare LF where h11 takes it (RFC 9112 §2.2), CRLF where the framing needs it --

async def test_bare_lf_ends_the_lines_of_a_head():
    for raw in (b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX-A: 1\r\n\nok",
                b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\r\nok"):
        for pieces in ([raw], bytewise(raw)):
            assert await exchange(*pieces) == (
                200, [(b"content-length", b"2"), (b"x-a", b"1")], b"ok", True)


async def test_bare_lf_ends_interim_heads_and_trailers():
    raw = (b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n"
           b"2\r\nhi\r\n0\r\nX-T: 1\n\n")
    assert (await exchange(*bytewise(raw)))[2:] == (b"hi", True)


@pytest.mark.parametrize("raw", [
    CHUNKED_HEAD + b"2\nhi\r\n0\r\n\r\n",            # a chunk line needs CRLF
    CHUNKED_HEAD + b"2\r\nhi\n0\r\n\r\n",            # so does the end of chunk data
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\r\nContent-Length: 0\r\n\r\n",  # a CR before CRLF
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",           # a blank line first
])
async def test_bare_cr_and_lf_elsewhere_are_refused(raw):
    with pytest.raises(UpstreamReset):
        await exchange(raw)


# --- status line and header fields --------------------------------------------------------------

@pytest.mark.parametrize(("line", "status"), [
    (b"HTTP/1.1 200", 200), (b"HTTP/1.1 200 ", 200), (b"HTTP/1.1 299 A\tB \x80", 299),
    (b"HTTP/1.2 200 OK", 200), (b"HTTP/1.1 999 Internal", 999)])
async def test_status_lines_by_the_grammar(line, status):
    assert (await exchange(line + b"\r\nContent-Length: 0\r\n\r\n"))[0] == status


@pytest.mark.parametrize("line", [
    b"HTTP/2.0 200 OK", b"HTTP/0.9 200 OK", b"http/1.1 200 OK", b"HTTP/1.1  200 OK",
    b"HTTP/1.1 200OK", b"HTTP/1.1 099 Low", b"HTTP/1.1 2x0 OK", b"HTTP/1.1 200 O\x00K",
    b"HTTP/1.10 200 OK", b" HTTP/1.1 200 OK",
    b"HTTP/1.1 101 Switching Protocols",  # no upgrade was asked for: the connection is lost
])
async def test_other_status_lines_are_refused(line):
    with pytest.raises(UpstreamReset):
        await exchange(line + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("field", [
    b"Bad Name: x", b"X-A : x", b"X-A\t: x", b": x", b"X-\xffA: x", b"X(A): x", b"X-A: a\x00b",
    b"X-A: a\x0bb", b"X-A: a\x0cb", b"X-A: a\rb", b"NoColon"])
async def test_header_fields_outside_the_grammar_are_refused(field):
    with pytest.raises(UpstreamReset):
        await exchange(b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 0\r\n\r\n")


async def test_obsolete_line_folding_is_refused():
    # RFC 9112 §5.2: a gateway either refuses obs-fold or unfolds it; Hestia refuses.
    for fold in (b" folded", b"\tfolded"):
        with pytest.raises(UpstreamReset, match="obsolete line folding"):
            await exchange(b"HTTP/1.1 200 OK\r\nX-A: a\r\n" + fold +
                           b"\r\nContent-Length: 0\r\n\r\n")


async def test_field_values_lose_their_surrounding_whitespace_only():
    raw = (b"HTTP/1.1 200 OK\r\nX-A:  a \t b\t \r\nX-B:\r\nX-C: \x01\x7f\x80\r\n"
           b"Content-Length: 0\r\n\r\n")
    assert (await exchange(raw))[1] == [(b"x-a", b"a \t b"), (b"x-b", b""),
                                        (b"x-c", b"\x01\x7f\x80"), (b"content-length", b"0")]


# --- Content-Length and Transfer-Encoding (RFC 9112 §6.1, §6.3; RFC 9110 §8.6) ------------------

@pytest.mark.parametrize("fields", [
    [b"Content-Length: 5, 5"], [b"Content-Length: 5,5"],
    [b"Content-Length: 5", b"Content-Length: 5"],
    [b"Content-Length: 5", b"Content-Length: 5 , 5"]])
async def test_repeated_equal_content_lengths_are_one(fields):
    raw = b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields) + b"\r\n\r\nhello"
    assert await exchange(raw) == (200, [(b"content-length", b"5")], b"hello", True)


@pytest.mark.parametrize("fields", [
    [b"Content-Length: 5, 6"], [b"Content-Length: 5", b"Content-Length: 6"],
    [b"Content-Length: 5", b"Content-Length: 05"], [b"Content-Length: 5,"],
    [b"Content-Length: +5"], [b"Content-Length: -5"], [b"Content-Length: 0x5"],
    [b"Content-Length: 5_0"], [b"Content-Length:"], [b"Content-Length: 5 5"],
    [b"Content-Length: " + b"1" * 21]])
async def test_other_content_lengths_are_refused(fields):
    with pytest.raises(UpstreamReset):
        await exchange(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields) + b"\r\n\r\nhello")


@pytest.mark.parametrize("order", ["te-first", "cl-first"])
async def test_transfer_encoding_overrides_content_length_and_ends_the_connection(order):
    # RFC 9112 §6.3: the chunked framing wins, the Content-Length goes (it would frame the
    # decoded body wrongly downstream), and a message framed both ways is not trusted further.
    fields = [b"Transfer-Encoding: chunked", b"Content-Length: 1"]
    if order == "cl-first":
        fields.reverse()
    raw = b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields) + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert await exchange(raw) == (200, [(b"transfer-encoding", b"chunked")], b"hello", False)


async def test_transfer_encoding_in_http_1_0_is_decoded_then_the_connection_ends():
    raw = (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"2\r\nhi\r\n0\r\n\r\n")
    assert (await exchange(raw))[2:] == (b"hi", False)


async def test_transfer_encoding_is_case_insensitive():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    assert await exchange(raw) == (200, [(b"transfer-encoding", b"chunked")], b"hi", True)


@pytest.mark.parametrize("fields", [
    # Codings Hestia cannot decode: relayed as they are, the client would get coded bytes
    # labelled as plain ones, since hypercorn re-frames the answer chunked or by length.
    [b"Transfer-Encoding: gzip"], [b"Transfer-Encoding: gzip, chunked"],
    [b"Transfer-Encoding: chunked, gzip"], [b"Transfer-Encoding: identity"],
    # chunked twice, or framing spread over several fields
    [b"Transfer-Encoding: chunked, chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: ,chunked"], [b"Transfer-Encoding:"]])
async def test_other_transfer_encodings_are_refused(fields):
    with pytest.raises(UpstreamReset, match="Transfer-Encoding"):
        await exchange(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields) +
                       b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n")


async def test_interim_heads_are_checked_like_final_ones():
    with pytest.raises(UpstreamReset):
        await exchange(b"HTTP/1.1 100 Continue\r\nContent-Length: x\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def test_http_1_0_connections_are_not_reused():
    # h11 does not honour HTTP/1.0 keep-alive either (RFC 9112 §9.3 leaves it optional).
    raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    assert (await exchange(raw))[2:] == (b"ok", False)


async def test_a_tunnel_is_refused():
    with pytest.raises(UpstreamReset, match="CONNECT"):
        await exchange(b"HTTP/1.1 200 OK\r\n\r\n", method=b"CONNECT")
