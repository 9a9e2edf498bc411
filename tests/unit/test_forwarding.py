"""What goes upstream: the framing rule, the headers, and when a connection may serve again.

The end-to-end view (real sockets, an upstream recording bytes) is in
tests/integration/test_framing.py; here each rule is checked on its own, and the pool's rule in
virtual time with in-memory streams."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from hestia.errors import BadFraming, BodyTooLarge
from hestia.http.context import facts
from hestia.http.forwarding import forwarded_headers, request_framing
from hestia.http.proxy import ProxyHandler
from tests.fakes import FakeLauncher, MemoryUpstream, supervisor


def scope(headers: list[tuple[bytes, bytes]], *, method: str = "POST", version: str = "1.1",
          **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "headers": headers, "http_version": version,
            "client": ("10.0.0.1", 5000), **extra}


@pytest.mark.parametrize(("headers", "version", "method", "expected"), [
    ([(b"content-length", b"5")], "1.1", "POST", (5, (b"content-length", b"5"))),
    ([(b"content-length", b"5, 5")], "1.1", "POST", (5, (b"content-length", b"5"))),
    ([(b"content-length", b"005")], "1.1", "PUT", (5, (b"content-length", b"5"))),
    ([(b"content-length", b"0")], "1.1", "POST", (0, (b"content-length", b"0"))),
    ([(b"transfer-encoding", b"chunked")], "1.1", "POST",
     (None, (b"transfer-encoding", b"chunked"))),
    ([(b"transfer-encoding", b" Chunked\t")], "1.1", "POST",
     (None, (b"transfer-encoding", b"chunked"))),
    ([], "1.1", "POST", (0, None)),
    ([], "1.0", "POST", (0, None)),
    ([], "2", "POST", (None, (b"transfer-encoding", b"chunked"))),
    ([], "2", "GET", (0, None)),
])
def test_one_framing_rule(headers, version, method, expected):
    assert tuple(request_framing(scope(headers, version=version, method=method))) == expected


@pytest.mark.parametrize(("headers", "version"), [
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"1")], "1.1"),
    ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], "1.1"),
    ([(b"content-length", b"0"), (b"transfer-encoding", b"chunked")], "2"),
    ([(b"transfer-encoding", b"chunked")], "1.0"),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], "1.0"),
    ([(b"transfer-encoding", b"gzip, chunked")], "1.1"),
    ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], "1.1"),
    ([(b"content-length", b"1, 2")], "1.1"),
    ([(b"content-length", b"1"), (b"content-length", b"2")], "1.1"),
    ([(b"content-length", b"005"), (b"content-length", b"5")], "1.1"),  # not identical
    ([(b"content-length", b"+1")], "1.1"),
    ([(b"content-length", b"-1")], "1.1"),
    ([(b"content-length", b"0x1")], "1.1"),
    ([(b"content-length", "١".encode())], "1.1"),  # a digit, but not an ASCII one
    ([(b"content-length", b"")], "1.1"),
])
def test_ambiguous_or_invalid_framing_is_refused(headers, version):
    with pytest.raises(BadFraming) as caught:
        request_framing(scope(headers, version=version))
    assert (caught.value.status, caught.value.code) == (400, "bad_framing")
    assert caught.value.close_connection


def test_a_content_length_over_the_limit_is_refused_before_anything_is_read():
    with pytest.raises(BodyTooLarge):
        request_framing(scope([(b"content-length", b"11")]), max_body=10)
    assert request_framing(scope([(b"content-length", b"10")]), max_body=10).length == 10


KEY = b"hestia_" + b"k" * 43


def test_headers_holding_a_key_never_go_upstream_unless_forwarding_was_granted():
    headers = [(b"host", b"localhost"), (b"x-api-key", KEY), (b"authorization", b"Bearer " + KEY),
               (b"authorization", b"Bearer sk-upstream"), (b"x-api-key", b"upstream-own"),
               (b"cookie", b"a=b")]
    out = forwarded_headers(scope(headers), "rid", drop=frozenset(), proto=b"http")
    assert [h for h in out if b"hestia_" in h[1]] == []
    assert (b"authorization", b"Bearer sk-upstream") in out
    assert (b"x-api-key", b"upstream-own") in out
    marked = scope(headers)
    facts(marked).forward_key = True
    granted = forwarded_headers(marked, "rid", drop=frozenset(), proto=b"http")
    assert [h for h in granted if b"hestia_" in h[1]] == [
        (b"x-api-key", KEY), (b"authorization", b"Bearer " + KEY)]


def test_forwarding_headers_are_hestias_own_and_underscored_lookalikes_are_dropped():
    headers = [(b"host", b"localhost:8080"), (b"x-forwarded-for", b"1.2.3.4"),
               (b"x-forwarded-host", b"evil"), (b"x_forwarded_host", b"evil"),
               (b"x-request-id", b"spoof"), (b"transfer_encoding", b"chunked"),
               (b"content_length", b"1"), (b"connection", b"close, x-secret"),
               (b"x-secret", b"s"), (b"x_secret", b"s"), (b"my_header", b"kept")]
    out = forwarded_headers(scope(headers), "rid", drop=frozenset(), proto=b"http")
    assert out == [(b"my_header", b"kept"), (b"x-forwarded-for", b"1.2.3.4, 10.0.0.1"),
                   (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"localhost:8080"),
                   (b"x-request-id", b"rid")]


class EarlyAnswerUpstream(MemoryUpstream):
    """Answers as soon as it has a request's head, complete and kept alive, and then reads no
    more of that connection: the rest of the request body cannot be sent."""

    def __init__(self) -> None:
        self.answered = trio.Event()

    async def _serve(self, stream: trio.testing.StapledStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno")
        await stream.receive_stream.aclose()
        self.answered.set()


async def test_a_connection_whose_request_body_was_not_all_sent_is_never_reused(
        nursery, autojump_clock):
    upstream = EarlyAnswerUpstream()
    await nursery.start(upstream.run)
    sup = supervisor(FakeLauncher(start_s=0))
    pool = sup.placement.pool
    pool.open_stream = upstream.open
    await nursery.start(sup.run)
    proxy = ProxyHandler({"echo": sup})

    to_proxy, from_client = trio.open_memory_channel[dict[str, Any]](10)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def client_body() -> None:
        await to_proxy.send({"type": "http.request", "body": b"12345", "more_body": True})
        await upstream.answered.wait()
        await to_proxy.send({"type": "http.request", "body": b"67890", "more_body": False})

    request = {"type": "http", "method": "POST", "path": "/services/echo/up",
               "raw_path": b"/services/echo/up", "query_string": b"",
               "headers": [(b"host", b"localhost"), (b"content-length", b"10")], "scheme": "http",
               "client": ("127.0.0.1", 5000), "http_version": "1.1"}
    async with trio.open_nursery() as client:
        client.start_soon(client_body)
        client.start_soon(proxy, request, from_client.receive, send)
    assert sent[0]["status"] == 401
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"no"
    # The upstream still owes itself 5 bytes of that body: whatever it would read next on
    # this connection would be taken for the start of the next request.
    assert repr(pool).endswith("idle=0>")
