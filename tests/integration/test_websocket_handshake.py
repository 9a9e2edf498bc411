"""An upstream WebSocket handshake that goes wrong in every other way than a clean refusal:
each is answered to the client with Hestia's JSON error and its status, logged as the
`websocket` event, and leaves no traceback.

The upstream is a raw TCP server in the test (an `external` backend), so that it can answer
what no WebSocket library would: nothing, garbage, a bad `101`, a refusal cut off by a close.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.integration.conftest import free_port

# What the raw upstream answers to a handshake, by path, and whether it then closes the
# connection itself (else it waits for the gateway to close it).
ANSWERS: dict[str, tuple[bytes, bool]] = {
    "/close": (b"", True),
    "/garbage": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False),
    "/bad-accept": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n", False),
    "/informational": (b"HTTP/1.1 103 Early Hints\r\n\r\n", False),
    "/refused-until-close": (b"HTTP/1.1 403 Forbidden\r\n\r\nno sockets here", True),
    "/silent": (b"", False),
    "/refused": (b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                 b"X-Why: origin\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\nno\r\n0\r\n\r\n", False),
}


class RawUpstream:
    """Answers each handshake as `ANSWERS` says; `closed[path]` is set once the gateway closed
    a connection that the upstream left open."""

    def __init__(self) -> None:
        self.closed = {path: trio.Event() for path in ANSWERS}

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    return  # a readiness probe
                head += data
            path = head.split(b" ", 2)[1].decode()
            answer, close = ANSWERS[path]
            await stream.send_all(answer)
            if close:
                return
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
            self.closed[path].set()


async def gateway_with_raw_upstream(start_gateway, nursery, **fields: Any):
    upstream = RawUpstream()
    (listener,) = await nursery.start(partial(trio.serve_tcp, upstream.serve, 0,
                                              host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    gateway = await start_gateway(services={"raw": {
        "upstream": f"http://127.0.0.1:{port}", "launcher": {"external": {}}, **fields}})
    return gateway, upstream


async def refusal(gateway, path: str) -> tuple[int, dict[str, Any]]:
    url = gateway.url.replace("http://", "ws://") + "/services/raw" + path
    with pytest.raises(ConnectionRejected) as caught:
        async with open_websocket_url(url, extra_headers=[(b"x-request-id", b"hs-1")]):
            pass
    return caught.value.status_code, json.loads(caught.value.body)


def assert_clean(caplog, logs: list[dict[str, Any]], status: int, error: str) -> None:
    (event,) = [e for e in logs if e["event"] == "websocket"]
    assert (event["request_id"], event["service"], event["status"], event["error"]) == (
        "hs-1", "raw", status, error)
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info] == []


@pytest.mark.parametrize("path", sorted(set(ANSWERS) - {"/silent", "/refused"}))
async def test_a_handshake_the_upstream_does_not_complete_is_502(start_gateway, nursery,
                                                                  caplog, path):
    caplog.set_level(logging.INFO)
    with trio.fail_after(10), capture_logs() as logs:
        # No deadline on the handshake: the answer must come from the upstream's own end.
        gateway, upstream = await gateway_with_raw_upstream(start_gateway, nursery,
                                                            timeouts={"connect": 0})
        status, body = await refusal(gateway, path)
        if not ANSWERS[path][1]:
            await upstream.closed[path].wait()  # the gateway let go of the connection
    assert (status, body["error"], body["service"], body["request_id"]) == (
        502, "upstream_reset", "raw", "hs-1")
    assert_clean(caplog, logs, 502, "upstream_reset")


async def test_an_upstream_that_never_answers_the_handshake_is_504(start_gateway, nursery,
                                                                   caplog):
    caplog.set_level(logging.INFO)
    with trio.fail_after(10), capture_logs() as logs:
        gateway, upstream = await gateway_with_raw_upstream(start_gateway, nursery,
                                                            timeouts={"connect": "200ms"})
        status, body = await refusal(gateway, "/silent")
        await upstream.closed["/silent"].wait()
    assert (status, body["error"], body["phase"]) == (504, "upstream_timeout", "connect")
    assert_clean(caplog, logs, 504, "upstream_timeout")


async def test_an_upstream_that_refuses_the_connection_is_502(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens there
    with trio.fail_after(10), capture_logs() as logs:
        # `delay` readiness: READY without a probe, so that the handshake meets the refusal.
        gateway = await start_gateway(services={"raw": {
            "upstream": f"http://127.0.0.1:{port}",
            "launcher": {"process": {"command": ["sleep", "60"], "stop_timeout": "1s"}},
            "readiness": {"delay": "10ms"}}})
        status, body = await refusal(gateway, "/x")
    assert (status, body["error"], body["service"]) == (502, "upstream_unreachable", "raw")
    assert_clean(caplog, logs, 502, "upstream_unreachable")


async def test_a_refusal_is_relayed_reframed_without_hop_by_hop_headers(start_gateway, nursery,
                                                                        caplog):
    caplog.set_level(logging.INFO)
    with trio.fail_after(10), capture_logs() as logs:
        gateway, upstream = await gateway_with_raw_upstream(start_gateway, nursery)
        url = gateway.url.replace("http://", "ws://") + "/services/raw/refused"
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(url, extra_headers=[(b"x-request-id", b"hs-1")]):
                pass
        await upstream.closed["/refused"].wait()
    assert (caught.value.status_code, caught.value.body) == (403, b"no")
    assert sorted(caught.value.headers) == [(b"content-length", b"2"),
                                            (b"x-request-id", b"hs-1"), (b"x-why", b"origin")]
    assert_clean(caplog, logs, 403, "websocket_rejected")
