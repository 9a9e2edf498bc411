"""WebSockets through the real gateway to a real WebSocket upstream (tests/ws_upstream.py)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    connect_websocket_url,
    open_websocket_url,
)

from tests.integration.conftest import free_port, wait_for_state

WS_UPSTREAM = str(Path(__file__).parents[1] / "ws_upstream.py")


def ws_service(events: Path | None = None, **fields: Any) -> dict[str, Any]:
    command = [sys.executable, WS_UPSTREAM, *(["--events", str(events)] if events else [])]
    return {"upstream": f"http://127.0.0.1:{free_port()}",
            "launcher": {"process": {"command": command, "stop_timeout": "2s"}},
            "readiness": {"timeout": "20s"}, **fields}


def ws_url(gateway: Any, path: str) -> str:
    return gateway.url.replace("http://", "ws://") + path


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_echo_through_a_cold_start_with_subprotocol_and_a_1_mb_message(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service()})
        assert gateway.supervisors["ws"].state.name == "COLD"
        async with open_websocket_url(ws_url(gateway, "/services/ws/chat"),
                                      subprotocols=["chat.v1", "chat.v2"],
                                      max_message_size=4 * 1024 * 1024) as ws:
            assert ws.subprotocol == "chat.v2"
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            payload = bytes(range(256)) * 4096  # 1 MiB
            await ws.send_message(payload)
            assert await ws.get_message() == payload
            await ws.ping(b"are you there")  # answered by the gateway's side of the socket
        assert gateway.supervisors["ws"].state.name == "READY"


async def test_end_to_end_headers_are_forwarded_to_the_upstream_handshake(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service()})
        async with open_websocket_url(
                ws_url(gateway, "/services/ws/headers?x=1"),
                extra_headers=[(b"cookie", b"session=abc"), (b"x-request-id", b"req-42")]) as ws:
            headers = dict(json.loads(await ws.get_message()))
        assert headers["cookie"] == "session=abc"
        assert headers["x-request-id"] == "req-42"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "ws"
        assert headers["x-forwarded-host"] == gateway.url.removeprefix("http://")


async def test_a_close_code_from_the_upstream_reaches_the_client(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service()})
        async with open_websocket_url(ws_url(gateway, "/services/ws/close?code=4001&reason=bye")
                                      ) as ws:
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
        assert (caught.value.reason.code, caught.value.reason.reason) == (4001, "bye")


async def test_a_close_code_from_the_client_reaches_the_upstream(start_gateway, tmp_path,
                                                                  nursery):
    with trio.fail_after(30):
        log = tmp_path / "events.jsonl"
        gateway = await start_gateway(services={"ws": ws_service(log)})
        ws_ = await connect_websocket_url(nursery, ws_url(gateway, "/services/ws/echo"))
        await ws_.send_message("one")
        assert await ws_.get_message() == "one"
        await ws_.aclose(4002, "done here")
        while not events(log):
            await trio.sleep(0.02)
        (event,) = events(log)
        assert (event["closed_by"], event["code"], event["reason"]) == ("client", 4002,
                                                                        "done here")
        assert event["messages"] == 1


async def test_an_open_socket_keeps_the_backend_past_its_idle_timeout(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service(idle_timeout="300ms")})
        supervisor = gateway.supervisors["ws"]
        async with open_websocket_url(ws_url(gateway, "/services/ws/echo")) as ws:
            await trio.sleep(0.9)  # three idle timeouts with the socket open
            assert supervisor.state.name == "READY"
            await ws.send_message("still here")
            assert await ws.get_message() == "still here"
        await wait_for_state(gateway, "ws", "COLD")


async def test_with_websockets_ignored_the_backend_stops_and_the_socket_gets_1001(
        start_gateway):
    with trio.fail_after(30):
        # The idle stop drains the ignored socket for grace_period before it closes it.
        gateway = await start_gateway(
            services={"ws": ws_service(idle_timeout="500ms",
                                       activity={"websockets": "ignore"})},
            grace_period="300ms")
        async with open_websocket_url(ws_url(gateway, "/services/ws/echo")) as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "hi"
            await wait_for_state(gateway, "ws", "COLD")
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
        assert caught.value.reason.code == 1001


async def test_a_backend_crash_closes_the_client_socket_with_1011(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service()})
        async with open_websocket_url(ws_url(gateway, "/services/ws/echo")) as ws:
            await ws.send_message("crash")
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
        assert caught.value.reason.code == 1011
        await wait_for_state(gateway, "ws", "COLD")


async def test_a_failed_start_and_an_unknown_service_refuse_the_handshake_with_json(
        start_gateway):
    with trio.fail_after(30):
        broken = ws_service(startup={"cooldown": 0})
        broken["launcher"]["process"]["command"] = [sys.executable, "-c", "raise SystemExit(5)"]
        gateway = await start_gateway(services={"broken": broken})
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(ws_url(gateway, "/services/broken/x")):
                pass
        assert caught.value.status_code == 503
        body = json.loads(caught.value.body)
        assert (body["error"], body["service"]) == ("start_failed", "broken")
        assert body["exit_status"] == 5
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(ws_url(gateway, "/services/nope/x")):
                pass
        assert caught.value.status_code == 404
        assert json.loads(caught.value.body)["error"] == "unknown_service"


async def test_a_graceful_shutdown_closes_open_sockets_with_1001(start_gateway):
    gateway = await start_gateway(services={"ws": ws_service()}, grace_period="20s")
    with trio.fail_after(10):  # well under the grace period
        async with open_websocket_url(ws_url(gateway, "/services/ws/echo")) as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "hi"
            gateway.shutdown()
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
        assert caught.value.reason.code == 1001


@pytest.mark.parametrize(("query", "body"), [("status=403&body=cross-origin", b"cross-origin"),
                                             ("status=401", b"")])
async def test_an_upstream_refusal_is_relayed_and_logged_without_a_traceback(
        start_gateway, caplog, query, body):
    caplog.set_level(logging.INFO)
    with trio.fail_after(30), capture_logs() as logs:
        gateway = await start_gateway(services={"ws": ws_service()})
        for _ in range(2):  # the gateway and the upstream serve on after a refusal
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket_url(ws_url(gateway, f"/services/ws/reject?{query}"),
                                              extra_headers=[(b"x-request-id", b"ws-1")]):
                    pass
            refused = caught.value
            assert (refused.status_code, refused.body) == (int(query[7:10]), body)
            assert sorted(refused.headers) == [
                (b"content-length", str(len(body)).encode()), (b"x-request-id", b"ws-1"),
                (b"x-why", b"refused")]
        async with open_websocket_url(ws_url(gateway, "/services/ws/echo")) as ws:
            await ws.send_message("still serving")
            assert await ws.get_message() == "still serving"
    refusals = [e for e in logs if e["event"] == "websocket" and e["error"]]
    assert [(e["request_id"], e["service"], e["path"], e["status"], e["error"], e["code"])
            for e in refusals] == [
        ("ws-1", "ws", "/services/ws/reject", int(query[7:10]),
         "websocket_rejected", None)] * 2
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info] == []
