"""Request framing, end to end: what a client sends on a raw socket, what the upstream receives.

Hestia forwards a request body under exactly one framing rule, and the bytes it sends match it
(docs/configuration.md, "Request framing"): a request with both `Transfer-Encoding` and
`Content-Length`, or an HTTP/1.0 request with `Transfer-Encoding`, is refused with 400 and the
connection closed; a chunked body goes upstream chunked with no `Content-Length`; a
`Content-Length` body goes with exactly one `Content-Length` and that many bytes.

The upstream here (tests/recording_upstream.py) records every byte and parses it as a strict
HTTP/1.1 server would, so a smuggled request shows as a request nobody sent.
"""

from __future__ import annotations

import json
from functools import partial

import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hestia.upstream import LAST_CHUNK, encode_chunk
from tests.recording_upstream import RecordingUpstream

SMUGGLED = b"GET /other HTTP/1.1\r\nX-Ignore: "
VICTIM = (b"GET /services/rec/victim HTTP/1.1\r\nHost: localhost\r\n"
          b"Cookie: session=victim-secret\r\n\r\n")


@pytest.fixture
async def gateway(nursery, start_gateway):
    """The real gateway with one service, `rec`, in front of a `RecordingUpstream` (as
    `.upstream`)."""
    upstream: RecordingUpstream = await nursery.start(RecordingUpstream().run)
    gw = await start_gateway(services={"rec": {
        "upstream": f"http://127.0.0.1:{upstream.port}", "launcher": {"external": {}},
        "readiness": {"tcp": True}, "idle_timeout": 0}})
    gw.upstream = upstream
    return gw


class Answer:
    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.closed = False


async def exchange(gateway, data: bytes, *, expect: int = 1, timeout: float = 5,
                   see_close: bool = False) -> Answer:
    """Send `data` on a fresh connection; read up to `expect` responses (for at most `timeout`
    seconds), and, with `see_close`, wait (as long again at most) for the gateway to close the
    connection after them. Without it, `closed` says only whether the close came with them: a
    kept-alive connection would be waited on for nothing."""
    stream = await trio.open_tcp_stream("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
    answer = Answer()
    conn = h11.Connection(h11.CLIENT)
    # h11 as a client must have sent a request to read a response: feed it one it never sends.
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    status, headers, body = 0, {}, b""
    try:
        await stream.send_all(data)
        with trio.move_on_after(timeout):
            while len(answer.responses) < expect:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(chunk)
                    if not chunk:
                        answer.closed = True
                        break
                elif isinstance(event, h11.Response):
                    status, headers, body = event.status_code, dict(event.headers), b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    answer.responses.append((status, headers, body))
                    if conn.their_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                    conn.send(h11.EndOfMessage())
                elif isinstance(event, h11.ConnectionClosed):
                    answer.closed = True
                    break
        if see_close and not answer.closed and answer.responses:
            with trio.move_on_after(timeout):
                answer.closed = await stream.receive_some(1) == b""
    finally:
        await stream.aclose()
    return answer


def request(method: bytes, headers: list[bytes], body: bytes, version: bytes = b"1.1") -> bytes:
    # `X-Test` stands between `Host` and the headers under test, so that a folded line joins
    # it, not `Host` (a Host with spaces in it is no name of the gateway's: 403).
    return (method + b" /services/rec/upload HTTP/" + version + b"\r\nHost: localhost\r\n"
            + b"X-Test: 1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


def head_and_body(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


async def assert_victim_is_served_alone(gateway) -> None:
    """After whatever came before, a plain request gets its own answer, and the upstream
    receives it as a request of its own: nothing of an earlier request is glued to it."""
    upstream: RecordingUpstream = gateway.upstream
    before = len(upstream.requests)
    answer = await exchange(gateway, VICTIM)
    [(status, _, body)] = answer.responses
    assert status == 200
    assert json.loads(body)["target"] == "/victim"
    [victim] = upstream.requests[before:]
    assert (victim.method, victim.target) == (b"GET", b"/victim")
    assert victim.header(b"cookie") == [b"session=victim-secret"]
    assert not any(r.target == b"/other" for r in upstream.requests)
    assert upstream.errors == []


async def test_the_reported_smuggle_is_refused_and_the_next_client_is_unharmed(gateway):
    with trio.fail_after(30):
        await assert_victim_is_served_alone(gateway)  # a kept-alive upstream connection
        gateway.upstream.reset()
        chunk = b"x" + SMUGGLED
        attack = request(b"POST", [b"Transfer-Encoding: chunked", b"Content-Length: 1"],
                         encode_chunk(chunk) + LAST_CHUNK)
        answer = await exchange(gateway, attack, see_close=True)
        [(status, headers, body)] = answer.responses
        assert status == 400
        assert json.loads(body)["error"] == "bad_framing"
        assert headers[b"connection"] == b"close"
        assert answer.closed
        assert gateway.upstream.requests == []
        await assert_victim_is_served_alone(gateway)


@pytest.mark.parametrize("headers", [
    [b"Transfer-Encoding: chunked", b"Content-Length: 1"],
    [b"Content-Length: 1", b"Transfer-Encoding: chunked"],
    [b"Content-Length: 1", b"Transfer-Encoding: CHUNKED"],
    [b"Content-Length: 1", b"Transfer-Encoding: \t chunked  "],
    [b"Content-Length: 1", b"transfer-encoding: Chunked"],
    [b"Content-Length: 0", b"Transfer-Encoding: chunked"],
], ids=["te-cl", "cl-te", "upper", "whitespace", "mixed-case", "cl-zero"])
async def test_a_request_with_both_framings_is_refused_and_nothing_goes_upstream(
        gateway, headers):
    with trio.fail_after(30):
        body = encode_chunk(b"x" + SMUGGLED) + LAST_CHUNK
        answer = await exchange(gateway, request(b"POST", headers, body), see_close=True)
        [(status, _, payload)] = answer.responses
        assert (status, json.loads(payload)["error"]) == (400, "bad_framing")
        assert answer.closed
        assert gateway.upstream.data_connections == []
        await assert_victim_is_served_alone(gateway)


@pytest.mark.parametrize("headers", [
    [b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
], ids=["te", "te-cl"])
async def test_http_1_0_with_transfer_encoding_is_refused_and_closed(gateway, headers):
    with trio.fail_after(30):
        body = encode_chunk(b"hello") + LAST_CHUNK
        answer = await exchange(gateway, request(b"POST", headers, body, version=b"1.0"),
                                see_close=True)
        [(status, _, payload)] = answer.responses
        assert (status, json.loads(payload)["error"]) == (400, "bad_framing")
        assert answer.closed
        assert gateway.upstream.data_connections == []
        await assert_victim_is_served_alone(gateway)


@pytest.mark.parametrize(("headers", "status"), [
    ([b"Content-Length: 1", b"Content-Length: 2"], 400),
    ([b"Content-Length: 1, 2"], 400),
    ([b"Content-Length: +1"], 400),
    ([b"Content-Length: 0x1"], 400),
    ([b"Content-Length: -1"], 400),
    ([b"Transfer-Encoding: gzip, chunked"], 501),
    ([b"Transfer-Encoding: chunked, chunked"], 501),
    ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], 501),
    ([b"Transfer-Encoding: identity"], 501),
    ([b"Transfer-Encoding : chunked"], 400),
], ids=["two-cls", "cl-list", "cl-plus", "cl-hex", "cl-negative", "te-list", "te-twice",
        "te-headers-twice", "te-identity", "space-before-colon"])
async def test_ambiguous_framing_never_reaches_the_upstream(gateway, headers, status):
    """The server side (hypercorn's parser, h11) refuses these itself, 501 for a transfer
    coding it does not implement; the upstream receives nothing, the connection closes."""
    with trio.fail_after(30):
        body = encode_chunk(b"x" + SMUGGLED) + LAST_CHUNK
        answer = await exchange(gateway, request(b"POST", headers, body), see_close=True)
        assert [r[0] for r in answer.responses] == [status]
        assert answer.closed
        assert gateway.upstream.data_connections == []
        await assert_victim_is_served_alone(gateway)


async def test_a_folded_transfer_encoding_is_no_framing_and_the_rest_is_another_request(
        gateway):
    """h11 joins an obs-fold line to the header above it (RFC 9112 §5.2 allows that): the
    request has no body, and the bytes after its head are the client's next request on its own
    connection, which the gateway parses (and here refuses) itself."""
    with trio.fail_after(30):
        body = encode_chunk(b"x" + SMUGGLED) + LAST_CHUNK
        answer = await exchange(gateway, request(b"POST", [b" Transfer-Encoding: chunked"],
                                                 body), expect=2)
        assert [r[0] for r in answer.responses] == [200, 400]
        [received] = gateway.upstream.requests
        assert (received.body, received.header(b"transfer-encoding")) == (b"", [])
        assert received.header(b"content-length") == []
        await assert_victim_is_served_alone(gateway)


async def test_a_chunked_body_goes_upstream_chunked_with_no_content_length(gateway):
    with trio.fail_after(30):
        answer = await exchange(gateway, request(
            b"POST", [b"Transfer-Encoding: chunked"], encode_chunk(b"hello") + LAST_CHUNK))
        [(status, _, payload)] = answer.responses
        assert (status, json.loads(payload)["body_length"]) == (200, 5)
        [raw] = gateway.upstream.data_connections
        lines, body = head_and_body(raw)
        assert lines[0] == b"POST /upload HTTP/1.1"
        framing = [line.lower() for line in lines[1:]
                   if line.lower().startswith((b"content-length", b"transfer-encoding"))]
        assert framing == [b"transfer-encoding: chunked"]
        assert body == encode_chunk(b"hello") + LAST_CHUNK
        # An upstream that ignores Transfer-Encoding would read the chunks as requests of their
        # own: the connection is told to close, and is not used again.
        assert b"connection: close" in [line.lower() for line in lines]
        await assert_victim_is_served_alone(gateway)
        [chunked, victim] = gateway.upstream.data_connections
        assert chunked == raw and victim.startswith(b"GET /victim ")


@pytest.mark.parametrize("headers", [
    [b"Content-Length: 5"],
    [b"Content-Length: 5", b"Content-Length: 5"],
    [b"Content-Length: 5, 5"],
    [b"Content-Length: 005"],
], ids=["one", "two-equal", "equal-list", "leading-zeros"])
async def test_a_content_length_body_goes_with_one_content_length_and_that_many_bytes(
        gateway, headers):
    with trio.fail_after(30):
        answer = await exchange(gateway, request(b"PUT", headers, b"hello"))
        [(status, _, _)] = answer.responses
        assert status == 200
        [raw] = gateway.upstream.data_connections
        lines, body = head_and_body(raw)
        framing = [line.lower() for line in lines[1:]
                   if line.lower().startswith((b"content-length", b"transfer-encoding"))]
        assert framing == [b"content-length: 5"]
        assert body == b"hello"
        await assert_victim_is_served_alone(gateway)


@pytest.mark.parametrize("name", [b"Transfer_Encoding", b"Content_Length", b"Proxy_Connection",
                                  b"X_Forwarded_For", b"X_Request_ID", b"X_Forwarded_Host"])
async def test_headers_that_servers_may_read_as_framing_or_forwarding_are_dropped(
        gateway, name):
    """WSGI and CGI servers read `Transfer_Encoding` as `Transfer-Encoding`, which would let a
    header Hestia does not treat as framing frame the body upstream."""
    with trio.fail_after(30):
        value = b"1" if b"length" in name.lower() else b"chunked"
        answer = await exchange(gateway, request(b"PUT", [b"Content-Length: 5",
                                                          name + b": " + value], b"hello"))
        [(status, _, _)] = answer.responses
        assert status == 200
        [received] = gateway.upstream.requests
        names = [k for k, _ in received.headers]
        assert name.lower() not in names
        assert (received.body, received.header(b"content-length")) == (b"hello", [b"5"])


async def test_a_request_without_a_body_goes_with_no_framing_headers(gateway):
    with trio.fail_after(30):
        answer = await exchange(
            gateway, b"GET /services/rec/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.responses[0][0] == 200
        [raw] = gateway.upstream.data_connections
        lines, body = head_and_body(raw)
        assert not any(line.lower().startswith((b"content-length", b"transfer-encoding"))
                       for line in lines)
        assert body == b""


# --- property: whatever the client's framing, at most one request reaches the upstream -----

# Repeated values are drawn more often: the reported smuggle's shape, and its variants around it.
_TE_VALUES = [b"chunked", b"chunked", b"chunked", b"Chunked", b" chunked", b"chunked ",
              b"gzip, chunked", b"identity", b"chunked, identity", b"\tchunked", b"xchunked",
              b"chunked;q=1"]
_CL_VALUES = [b"1", b"1", b"1", b"0", b"1", b"5", b"10", b"5, 5", b"1, 2", b"+1", b"-1",
              b"0x5", b" 3 ", b"", b"99999"]
_NAMES = {b"te": [b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING",
                  b"Transfer_Encoding"],
          b"cl": [b"Content-Length", b"content-length", b"Content_Length"]}

te_header = st.tuples(st.sampled_from(_NAMES[b"te"]), st.sampled_from(_TE_VALUES))
cl_header = st.tuples(st.sampled_from(_NAMES[b"cl"]), st.sampled_from(_CL_VALUES))


@st.composite
def client_messages(draw) -> bytes:
    """One request under a random framing, its body holding the start of a second request: the
    shape of the reported smuggle, most of the time, and its variants around it."""
    # Mostly one of each, the shape of the reported smuggle; sometimes none or two.
    counts = st.sampled_from([0, 1, 1, 1, 2])
    pairs = [draw(te_header) for _ in range(draw(counts))]
    pairs += [draw(cl_header) for _ in range(draw(counts))]
    pairs = draw(st.permutations(pairs))
    headers = [name + b": " + value for name, value in pairs]
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    payload = draw(st.sampled_from([b"", b"x", b"hello"])) + SMUGGLED
    chunked = draw(st.sampled_from([True, True, True, False]))
    body = encode_chunk(payload) + LAST_CHUNK if chunked else payload
    return request(draw(st.sampled_from([b"POST", b"PUT", b"GET"])), headers, body, version)


async def test_random_client_framings_never_put_two_requests_upstream(gateway):
    seen: list[bytes] = []

    # Hypothesis runs each example synchronously; each one gets a trio run of its own against
    # the gateway and upstream of this test, reached through their sockets.
    token = trio.lowlevel.current_trio_token()

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(client_messages())
    def check(message: bytes) -> None:
        seen.append(message)
        trio.from_thread.run(partial(_one_example, gateway, message), trio_token=token)

    with trio.fail_after(240):
        await trio.to_thread.run_sync(check)
    assert len(seen) == 150


async def _one_example(gateway, message: bytes) -> None:
    upstream: RecordingUpstream = gateway.upstream
    upstream.reset()
    # A response may never come (a body shorter than its Content-Length is waited for): what
    # matters is what reached the upstream meanwhile.
    await exchange(gateway, message, timeout=0.3)
    # At most one request upstream, and never the smuggled one.
    assert len(upstream.requests) <= 1, upstream.requests
    assert upstream.errors == []
    await assert_victim_is_served_alone(gateway)
