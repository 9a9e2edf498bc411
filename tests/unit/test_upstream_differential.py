"""Hestia's upstream codec against h11, on random responses split at random points.

h11 is the reference: what it frames, Hestia frames the same (status, headers, body bytes,
whether the connection may serve another exchange), and what it refuses, Hestia refuses. Where
Hestia is deliberately stricter (upstream.py's docstring says why), h11 is made equally strict
for the comparison by the patches in `strict_h11`, one per difference, and the one difference
in what is forwarded (a Content-Length next to Transfer-Encoding) is applied to h11's answer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import h11
import h11._readers
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hestia.errors import UpstreamReset
from hestia.upstream import BodyReader, UpstreamPool

Outcome = tuple[str, int, list[tuple[bytes, bytes]], bytes, bool] | tuple[str]

# --- the two parsers ------------------------------------------------------------------------


async def _hestia(pieces: list[bytes], method: bytes) -> Outcome:
    ours, theirs = trio.testing.lockstep_stream_pair()
    pool = UpstreamPool("upstream", 80)

    async def open_stream(host: str, port: int) -> trio.abc.Stream:
        return ours

    pool.open_stream = open_stream
    delivered = 0

    async def feed() -> None:
        nonlocal delivered
        for piece in pieces:
            await theirs.send_all(piece)  # lockstep: returns once Hestia has read it all
            delivered += 1
        await theirs.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        conn = await pool.connect(1)
        try:
            head = await conn.read_head(method)
            reader = BodyReader(conn, head)
            body = reader.take()
            while not reader.done:
                body += await reader.read()
        except UpstreamReset:
            outcome: Outcome = ("refused",)
        else:
            await trio.testing.wait_all_tasks_blocked()
            # Reusable only if nothing followed the response: h11 sees such bytes as the
            # start of a next answer nobody asked for.
            reusable = conn.reusable and delivered == len(pieces)
            outcome = ("ok", head.status, head.headers, body, reusable)
        nursery.cancel_scope.cancel()
    return outcome


def _h11(pieces: list[bytes], method: bytes) -> Outcome:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    fed = iter([*pieces, b""])  # b"": the upstream closes the connection
    total = sum(map(len, pieces))
    received = 0
    status, headers, body = 0, [], b""
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                piece = next(fed)
                received += len(piece)
                conn.receive_data(piece)
            elif isinstance(ev, h11.Response):
                status, headers = ev.status_code, list(ev.headers)
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                leftover, closed = conn.trailing_data
                reusable = (conn.their_state is h11.DONE and not closed
                            and received - len(leftover) == total)
                break
    except h11.RemoteProtocolError:
        return ("refused",)
    if any(name == b"transfer-encoding" for name, _ in headers) and \
            any(name == b"content-length" for name, _ in headers):
        headers = [field for field in headers if field[0] != b"content-length"]
        reusable = False
    return ("ok", status, headers, body, reusable)


_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'


def _refusing_fold(lines):  # h11 unfolds obs-fold; Hestia refuses it (RFC 9112 §5.2)
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise h11.LocalProtocolError("obs-fold")
        yield line


@contextlib.contextmanager
def strict_h11() -> Iterator[None]:
    saved = (h11._readers._obsolete_line_fold, h11._readers.chunk_header_re,
             h11._readers.status_line_re)
    h11._readers._obsolete_line_fold = _refusing_fold
    # h11 takes any bytes after ";"; Hestia takes chunk-ext by RFC 9112 §7.1.1, with BWS.
    h11._readers.chunk_header_re = re.compile(
        rb"(?P<chunk_size>[0-9A-Fa-f]{1,20})(?:[ \t]*;[ \t]*" + _TOKEN +
        rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*[ \t]*\r\n")
    # h11 takes HTTP/2.0 and HTTP/0.9 status lines; Hestia only HTTP/1.x.
    h11._readers.status_line_re = re.compile(
        h11._readers.status_line_re.pattern.replace(rb"[0-9]\.[0-9]", rb"1\.[0-9]"))
    try:
        yield
    finally:
        (h11._readers._obsolete_line_fold, h11._readers.chunk_header_re,
         h11._readers.status_line_re) = saved


# --- random responses -------------------------------------------------------------------------
# Half the examples draw only from the valid choices (`clean`), so that whole, valid responses
# of every framing are common; the other half mix in the invalid ones.


def pick(draw: st.DrawFn, clean: bool, valid: list[bytes], invalid: list[bytes]) -> bytes:
    return draw(st.sampled_from(valid if clean else valid * 3 + invalid))


def eol(draw: st.DrawFn, clean: bool) -> bytes:
    return pick(draw, clean, [b"\r\n"] * 6 + [b"\n"], [b"\r\r\n", b"\r"])


NAMES = [b"Content-Type", b"X-A", b"Set-Cookie", b"Connection", b"Keep-Alive", b"x-b"]
BAD_NAMES = [b"Content-Length", b"Transfer-Encoding", b"TRANSFER-ENCODING", b"Bad Name", b"",
             b"X-B ", b"X\xffY", b"X(Y)"]
VALUES = [b"text/plain", b"a b", b"x\ty", b"v\x01\x7f", b"", b"close", b"keep-alive",
          b"upgrade, Close", b"\x80\xff"]
BAD_VALUES = [b"a\x00b", b"a\rb", b"a\x0bb", b"5, 6", b"-5", b"+5", b"0x5", b"gzip", b",chunked",
              b"chunked, chunked", b"gzip, chunked", b"chunked", b"Chunked", b"5", b"05", b"1" * 21]


@st.composite
def field_lines(draw: st.DrawFn, clean: bool, framing: tuple[bytes, ...] = ()) -> bytes:
    lines = list(framing)
    for _ in range(draw(st.integers(0, 5))):
        name = pick(draw, clean, NAMES, BAD_NAMES)
        value = pick(draw, clean, VALUES, BAD_VALUES)
        if draw(st.integers(0, 3)) == 0:
            value = draw(st.binary(max_size=8)).translate(None, b"\n")
        sep = draw(st.sampled_from([b": "] * 4 + [b":", b":\t", b":  "]))
        ows = draw(st.sampled_from([b""] * 4 + [b" ", b"\t"]))
        lines.insert(draw(st.integers(0, len(lines))), name + sep + value + ows)
    if not clean and draw(st.integers(0, 3)) == 0:  # obsolete line folding
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([b" f", b"\tf"])))
    return b"".join(line + eol(draw, clean) for line in lines) + eol(draw, clean)


def status_line(draw: st.DrawFn, clean: bool, codes: list[bytes]) -> bytes:
    version = pick(draw, clean, [b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/1.2"],
                   [b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10"])
    code = pick(draw, clean, codes, [b"101", b"099", b"20", b"2000", b"2x0"])
    reason = pick(draw, clean, [b" OK"] * 3 + [b"", b" ", b" A\tB", b" \x01", b" \x80"],
                  [b" \x00", b" a\rb", b"OK"])
    return version + b" " + code + reason + eol(draw, clean)


SIZES = [b"%x"] * 6 + [b"%X", b"0%x", b"%x ", b"%x\t", b"000000000000000000%x"]
BAD_SIZES = [b"0x%x", b"+%x", b"-%x", b" %x", b"%x_0", b"00000000000000000000%x", b"%x;"]
EXTENSIONS = [b""] * 6 + [b";a", b";a=b", b';a="x y"', b" ; a = b", b";a;b=c", b';q="\\""']
BAD_EXTENSIONS = [b";", b";a=", b";a=b c", b';a="x', b";a\x00", b";a\r", b";a\n"]


@st.composite
def chunked_body(draw: st.DrawFn, clean: bool) -> bytes:
    out = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
        size = len(data) + (0 if clean else draw(st.sampled_from([0] * 6 + [-1, 1])))
        line = pick(draw, clean, SIZES, BAD_SIZES) % size + pick(draw, clean, EXTENSIONS,
                                                                  BAD_EXTENSIONS)
        out.append(line + pick(draw, clean, [b"\r\n"], [b"\n"]) + data +
                   pick(draw, clean, [b"\r\n"], [b"\n", b"", b"XX"]))
    last = b"0" + pick(draw, clean, EXTENSIONS, BAD_EXTENSIONS) + b"\r\n"
    # Trailers: h11 applies its framing rules to trailer fields too, Hestia drops them; so no
    # Content-Length or Transfer-Encoding here.
    trailers = draw(field_lines(clean)).replace(b"Content-Length", b"X-L").replace(
        b"Transfer-Encoding", b"X-E").replace(b"TRANSFER-ENCODING", b"X-E")
    return b"".join(out) + last + trailers


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """(method, the pieces a response arrives in)."""
    clean = draw(st.booleans())
    method = draw(st.sampled_from([b"GET"] * 4 + [b"HEAD", b"POST"]))
    framing = draw(st.sampled_from(["length", "chunked", "close", "both"]))
    event(f"{framing}, {'clean' if clean else 'mixed'}")
    event("clean" if clean else "mixed")
    parts = [status_line(draw, clean, [b"100", b"102", b"103", b"199"]) +
             draw(field_lines(clean)) for _ in range(draw(st.integers(0, 2)))]
    codes = [b"200"] * 4 + [b"201", b"204", b"304", b"404", b"500", b"600", b"999"]
    data = draw(st.binary(max_size=40))
    if framing == "length":
        fields = [b"Content-Length: %d" % len(data)]
        if draw(st.booleans()):
            fields.append(draw(st.sampled_from([b"Content-Length: %d", b"Content-Length: %d,%d",
                                                b"content-length: %d , %d"])).replace(
                b"%d", b"%d" % len(data)))
        body = data
    elif framing == "close":
        fields, body = [], data
    else:
        fields = [draw(st.sampled_from([b"Transfer-Encoding: chunked", b"transfer-encoding: "
                                        b"Chunked", b"Transfer-Encoding:chunked\t"]))]
        if framing == "both":
            fields.insert(draw(st.integers(0, 1)), b"Content-Length: %d" % len(data))
        body = draw(chunked_body(clean))
    raw = b"".join(parts) + status_line(draw, clean, codes) + draw(
        field_lines(clean, tuple(fields))) + body
    if draw(st.integers(0, 5)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]  # cut short by a close
    raw += pick(draw, True, [b""] * 6 + [b"x", b"HTTP/1.1 200 OK\r\n\r\n"], [])
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=8)))
    return method, [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)
                    if a < b]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_hestia_frames_every_response_as_h11_does(response):
    method, pieces = response
    with strict_h11():
        expected = _h11(pieces, method)
    event(expected[0])  # `pytest --hypothesis-show-statistics` shows the mix of outcomes
    assert trio.run(_hestia, pieces, method) == expected
