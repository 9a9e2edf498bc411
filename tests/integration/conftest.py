"""The real gateway on 127.0.0.1 port 0 in front of real child processes (tests/upstream_app.py).

These tests use the real clock; each is bounded by an outer `trio.fail_after`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from hestia import Gateway, load_config, run

UPSTREAM_APP = str(Path(__file__).parents[1] / "upstream_app.py")


def _port_block() -> Iterator[int]:
    """This process's ports for `free_port`: below Linux's ephemeral range (32768 and up,
    where every `bind(0)` of the suite and its children lands), a block of its own per xdist
    worker, from a random start (ports of an earlier run may still be in TIME_WAIT)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    first, size = 12000 + index * 4000, 4000
    start = random.randrange(size)
    for step in itertools.count():
        yield first + (start + step) % size


_PORTS = _port_block()


def free_port() -> int:
    """A port nothing listens on, that no other test (in any worker) is given: a backend is
    configured on it before it starts, so a `bind(0)` elsewhere must not take it meanwhile."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable")


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
    """`await start_gateway(services={...}, **top_level)` → a running `Gateway`, started from
    a file of its own (`gateway.config_file`, which `gateway.reload()` reads again)."""
    made = itertools.count(1)

    async def start(**top: Any) -> Gateway:
        raw = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
               "grace_period": "2s", **top}
        path = tmp_path / f"hestia-{next(made)}.yml"
        # Through JSON: the YAML a person would write (tuples as lists, paths as strings).
        path.write_text(yaml.safe_dump(json.loads(json.dumps(raw, default=str)), sort_keys=False))
        config = load_config(path, env={})
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


# --- `hestia serve` as a real subprocess ------------------------------------------------


def hestia_process(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hestia", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def stop_process(gateway: subprocess.Popen) -> tuple[str, str]:
    """After a test, failed or not: SIGTERM first, so that the gateway stops its backends;
    SIGKILL only if it does not exit (which would orphan them)."""
    if gateway.poll() is None:
        gateway.terminate()
        try:
            return gateway.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
    return gateway.communicate()


async def wait_http(url: str) -> None:
    """Until `url` answers 200 (the caller bounds the wait)."""
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class Served:
    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url
        self.stderr = ""

    async def wait_exit(self) -> None:
        while self.process.poll() is None:
            await trio.sleep(0.05)


@asynccontextmanager
async def serve_file(tmp_path: Path, service: dict, **top: object) -> AsyncIterator[Served]:
    """`hestia serve -c FILE` in a subprocess, with one service `up`; stopped on the way out
    (its stderr then in `.stderr`)."""
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "data_dir": str(tmp_path / "data"),
              "services": {"up": service}, **top}
    path = tmp_path / "hestia.yml"
    path.write_text(yaml.safe_dump(config))
    served = Served(hestia_process("serve", "-c", str(path), "--log-format", "json"),
                    f"http://127.0.0.1:{port}")
    try:
        with trio.fail_after(60):
            await wait_http(f"{served.url}/__health")
        yield served
    finally:
        _, served.stderr = stop_process(served.process)
