"""`max_connections` against real upstreams: a cold start releasing 100 held requests to a
server with a listen backlog of 5 (uncapped, 64 at once already fail: docs/configuration.md), and
WebSockets that leave their slot once open. The order and timing of the release, in virtual
time: tests/unit/test_max_connections.py."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from tests.integration.conftest import client, free_port
from tests.integration.test_websocket import ws_service, ws_url

BACKLOG_UPSTREAM = str(Path(__file__).parents[1] / "backlog_upstream.py")


async def test_a_cold_start_releases_100_held_requests_to_a_small_server_four_at_a_time(
        start_gateway):
    port = free_port()
    with trio.fail_after(60):
        gateway = await start_gateway(services={"small": {
            "upstream": f"http://127.0.0.1:{port}",
            "launcher": {"process": {"command": [sys.executable, BACKLOG_UPSTREAM],
                                     "stop_timeout": "2s"}},
            "readiness": {"http": "/health", "timeout": "20s"},
            "max_connections": 4, "queue": {"max": 100, "timeout": "50s"}}})
        statuses: list[int] = []
        async with client(gateway) as http:
            async def one() -> None:
                statuses.append((await http.get("/services/small/work?ms=20")).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(one)
        assert statuses == [200] * 100
        async with httpx.AsyncClient() as direct:
            stats = (await direct.get(f"http://127.0.0.1:{port}/stats")).json()
        assert stats["served"] == 100
        assert stats["max_in_flight"] <= 4
        assert gateway.supervisors["small"].starts == 1


async def test_an_open_websocket_leaves_its_slot_to_the_next_one(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ws": ws_service(
            max_connections=1, queue={"timeout": "3s"})})
        async with open_websocket_url(ws_url(gateway, "/services/ws/first")) as first:
            async with open_websocket_url(ws_url(gateway, "/services/ws/second")) as second:
                await second.send_message("two")
                assert await second.get_message() == "two"
                await first.send_message("one")
                assert await first.get_message() == "one"
                status = gateway.supervisors["ws"]
                assert (status.in_flight, status.connections_in_use) == (2, 0)
