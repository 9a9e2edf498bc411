"""The real gateway on 127.0.0.1 port 0 in front of real child processes (tests/upstream_app.py).

These tests use the real clock; each is bounded by an outer `trio.fail_after`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hestia import Gateway, parse_config, run

UPSTREAM_APP = str(Path(__file__).parents[1] / "upstream_app.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upstream_service(*flags: str, port: int | None = None, **fields: Any) -> dict[str, Any]:
    """A service backed by tests/upstream_app.py with `flags`."""
    port = port or free_port()
    return {
        "upstream": f"http://127.0.0.1:{port}",
        "launcher": {"process": {"command": [sys.executable, UPSTREAM_APP, *flags],
                                 "stop_timeout": "2s"}},
        "readiness": {"http": "/health", "timeout": "20s"},
        **fields,
    }


GatewayFactory = Callable[..., Any]


@pytest.fixture
def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> GatewayFactory:
    """`await start_gateway(services={...}, **top_level)` → a running `Gateway`."""

    async def start(**top: Any) -> Gateway:
        raw = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
               "grace_period": "2s", **top}
        config = parse_config(raw, env={})
        return await nursery.start(partial(run, config, handle_signals=False))

    return start


@asynccontextmanager
async def client(gateway: Gateway, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits,
                                 **kwargs) as http:
        yield http


async def wait_for_state(gateway: Gateway, service: str, state: str,
                         timeout: float = 10) -> None:
    supervisor = gateway.supervisors[service]
    with trio.fail_after(timeout):
        while supervisor.state.name != state:
            await trio.sleep(0.01)


def assert_error_body(response: httpx.Response, status: int, error: str, service: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["service"] == service
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"]
    return body
