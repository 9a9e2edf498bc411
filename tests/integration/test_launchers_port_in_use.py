"""A program already listening on a local upstream's port is not served as the service.

Real sockets on 127.0.0.1 port 0, real child processes, real clock inside `trio.fail_after`.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from hestia.errors import StartFailed
from hestia.launchers import ports
from hestia.launchers.ports import SETTLE_S, check_port, port_holder

from .conftest import assert_error_body, client

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
OUR_NAME = Path("/proc/self/comm").read_text().strip()


async def _impostor(stream: trio.SocketStream) -> None:
    """Another program on the port, answering every request as an HTTP server would."""
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n"
                              b"\r\nimpostor")
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def test_a_process_is_not_started_where_another_program_already_listens(
        start_gateway, nursery, tmp_path, monkeypatch):
    # A taken port is watched for SETTLE_S before the start fails (how it settles, in virtual
    # time: below); 100ms here, for each of the two attempts.
    monkeypatch.setattr(ports, "SETTLE_S", 0.1)
    with trio.fail_after(30):
        listeners = await nursery.start(partial(trio.serve_tcp, _impostor, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        marker = tmp_path / "launched"
        gateway = await start_gateway(services={"web": {
            "upstream": f"http://127.0.0.1:{port}",
            "launcher": {"process": {"command": [
                sys.executable, "-c", f"open({str(marker)!r}, 'w'); import time; "
                                      "time.sleep(60)"]}},
            "readiness": {"http": "/health", "timeout": "10s"},
            "startup": {"attempts": 2, "delay": "10ms", "cooldown": 0}}})
        async with client(gateway) as http:
            response = await http.get("/services/web/anything")
            status = (await http.get("/v1/services/web/status")).json()
    detail = (f"port {port} is already in use on 127.0.0.1 by pid {os.getpid()} ({OUR_NAME}): "
              "it would answer in place of 'web', so 'web' was not started")
    body = assert_error_body(response, 503, "start_failed", "web")
    assert body["detail"] == f"'web' failed to start (2 attempts): {detail}"
    assert body["reason"] == "port_in_use"
    assert [(a["attempt"], a["reason"], a["port"], a["pid"], a["detail"])
            for a in body["attempts"]] == [(n, "port_in_use", port, os.getpid(), detail)
                                           for n in (1, 2)]
    assert (status["state"], status["lastError"]["reason"]) == ("COLD", "port_in_use")
    assert status["lastError"]["detail"] == body["detail"]
    assert not marker.exists()  # the program was never run
    assert not (tmp_path / "data" / "logs" / "web.log").exists()


@pytest.mark.parametrize(("listen_on", "upstream_host"), [
    ("0.0.0.0", "127.0.0.1"),   # a wildcard listener takes the loopback address too
    ("127.0.0.1", "localhost"),  # a name is resolved to this machine's addresses
    ("::1", "::1"),
])
async def test_a_taken_port_is_found_by_address_or_name(listen_on, upstream_host, monkeypatch):
    monkeypatch.setattr(ports, "SETTLE_S", 0.1)  # the port is watched this long, then refused
    family = socket.AF_INET6 if ":" in listen_on else socket.AF_INET
    with socket.socket(family) as holder, trio.fail_after(10):
        holder.bind((listen_on, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StartFailed) as caught:
            await check_port("svc", upstream_host, port)
    assert caught.value.extra == {"reason": "port_in_use", "port": port, "pid": os.getpid()}


async def test_a_port_whose_holder_lets_go_within_the_settle_time_is_free(autojump_clock):
    # A group member that outlived its stopped leader by a moment must not fail a restart.
    # Virtual time is safe here: the checks are synchronous binds, nothing waits on a socket.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]

    async def let_go() -> None:
        await trio.sleep(0.22)
        holder.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(let_go)
        began = trio.current_time()
        await check_port("svc", "127.0.0.1", port)
    assert SETTLE_S == 0.5
    # Checked every 50ms: the first check after the holder let go passes.
    assert trio.current_time() - began == pytest.approx(0.25, abs=1e-9)


async def test_a_free_port_and_an_address_of_another_machine_pass():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as holder, trio.fail_after(10):
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        await check_port("svc", "127.0.0.1", port)
        # 192.0.2.0/24 is for documentation: never an address of this machine.
        await check_port("svc", "192.0.2.1", taken)
        await check_port("svc", "no-such-host.invalid", taken)


def test_the_holder_is_the_process_with_the_listening_socket():
    with socket.socket() as holder, socket.socket() as bound_only:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bound_only.bind(("127.0.0.1", 0))
        assert port_holder(holder.getsockname()[1]) == (os.getpid(), OUR_NAME)
        assert port_holder(bound_only.getsockname()[1]) is None
