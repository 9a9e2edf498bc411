"""`hestia serve` under systemd's protocols, without systemd: a real gateway subprocess talks to
a datagram socket this test binds (NOTIFY_SOCKET), and serves on a listening socket this test
opens and passes as fd 3 (socket activation)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
import yaml

from tests.integration.conftest import free_port, stop_process, upstream_service, wait_http

UPSTREAM_APP = str(Path(__file__).parents[1] / "upstream_app.py")


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: trio.socket.SocketType, name: str) -> None:
        self.sock = sock
        self.name = name  # as NOTIFY_SOCKET names it

    async def receive(self) -> str:
        return (await self.sock.recv(4096)).decode()

    async def until(self, wanted: str) -> list[str]:
        """Messages up to and including the first that has the line `wanted`."""
        seen = []
        while True:
            seen.append(await self.receive())
            if wanted in seen[-1].splitlines():
                return seen


@asynccontextmanager
async def notify_socket(abstract: bool) -> AsyncIterator[NotifySocket]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock, tempfile.TemporaryDirectory(prefix="hestia-") as directory:
        # A path of its own under /tmp: a unix socket's path must stay under 108 bytes.
        if abstract:
            name = f"@hestia-test-{os.getpid()}-{os.urandom(4).hex()}"
            await sock.bind("\0" + name[1:])
        else:
            name = os.path.join(directory, "notify")
            await sock.bind(name)
        yield NotifySocket(sock, name)


def write_config(tmp_path: Path, port: int, **services: dict) -> Path:
    path = tmp_path / "hestia.yml"
    path.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}",
                                    "data_dir": str(tmp_path / "data"), "grace_period": "2s",
                                    "services": services}))
    return path


def serve(config: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hestia", "serve", "-c", str(config),
                             "--log-format", "json"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_ready_status_and_stopping_reach_the_notify_socket(tmp_path):
    port = free_port()
    env_file = tmp_path / "backend.env"
    # The backend writes the environment it got: none of systemd's variables may be in it.
    backend = upstream_service("--start-delay", "3")
    backend["launcher"]["process"]["command"] = [
        "sh", "-c", f'env > {env_file}; exec "$@"', "sh",
        *backend["launcher"]["process"]["command"]]
    config = write_config(tmp_path, port, up=backend)
    async with notify_socket(abstract=True) as notify:
        gateway = serve(config, {"NOTIFY_SOCKET": notify.name})
        try:
            with trio.fail_after(60):
                ready = (await notify.until("READY=1"))[-1]
                # Sent once the port accepts connections, not before.
                assert accepts(port)
                assert ready == ("READY=1\n"
                                 "STATUS=1 service: 0 ready, 0 starting, 1 cold; 0 requests held")
                answers = []

                async def held_request() -> None:
                    async with httpx.AsyncClient(timeout=30) as http:
                        url = f"http://127.0.0.1:{port}/services/up/echo"
                        answers.append((await http.get(url)).status_code)

                async with trio.open_nursery() as nursery:
                    # A request held while the backend starts (3 s) shows in the counts.
                    nursery.start_soon(held_request)
                    await notify.until(
                        "STATUS=1 service: 0 ready, 1 starting, 0 cold; 1 request held")
                    await notify.until(
                        "STATUS=1 service: 1 ready, 0 starting, 0 cold; 0 requests held")
                assert answers == [200]
                gateway.send_signal(signal.SIGTERM)
                stopping = (await notify.until("STOPPING=1"))[-1]
                # The counts after "stopping;" are the moment's: the backend may be stopping.
                assert stopping.startswith("STOPPING=1\nSTATUS=stopping; 1 service: ")
                await trio.to_thread.run_sync(gateway.wait)
        finally:
            _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr
    assert "NOTIFY_SOCKET" not in env_file.read_text()


async def test_a_sighup_reload_is_framed_by_reloading_and_ready(tmp_path):
    # What `Type=notify-reload` expects: RELOADING=1 with the monotonic time, then READY=1.
    port = free_port()
    config = write_config(tmp_path, port, up=upstream_service())
    async with notify_socket(abstract=False) as notify:
        gateway = serve(config, {"NOTIFY_SOCKET": notify.name})
        try:
            with trio.fail_after(60):
                await notify.until("READY=1")
                raw = yaml.safe_load(config.read_text())
                raw["services"]["added"] = upstream_service()
                config.write_text(yaml.safe_dump(raw))
                before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                gateway.send_signal(signal.SIGHUP)
                reloading = (await notify.until("RELOADING=1"))[-1].splitlines()
                usec = int(next(line for line in reloading
                                if line.startswith("MONOTONIC_USEC="))[15:])
                assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                ready = (await notify.until("READY=1"))[-1]
                assert ready == ("READY=1\n"
                                 "STATUS=2 services: 0 ready, 0 starting, 2 cold; "
                                 "0 requests held")
                async with httpx.AsyncClient() as http:  # the reload was applied
                    added = await http.get(f"http://127.0.0.1:{port}/services/added/echo")
                assert added.status_code == 200
        finally:
            _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr


def watched(config: Path, notify: str, usec: int) -> subprocess.Popen:
    """`hestia serve` with a watchdog of `usec` meant for it: WATCHDOG_PID is set by a wrapper
    to its own pid, which the gateway keeps across exec."""
    return subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys; os.environ['WATCHDOG_PID'] = str(os.getpid()); "
         "os.execv(sys.executable, sys.argv[1:])",
         sys.executable, "-m", "hestia", "serve", "-c", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": notify, "WATCHDOG_USEC": str(usec)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_the_watchdog_is_fed_when_watchdog_usec_is_set(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    async with notify_socket(abstract=False) as notify:
        gateway = watched(config, notify.name, usec=200_000)
        try:
            with trio.fail_after(60):
                await notify.until("READY=1")
                for _ in range(3):
                    await notify.until("WATCHDOG=1")
        finally:
            _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr


async def test_a_broken_notify_socket_never_stops_the_gateway(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    gateway = serve(config, {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    try:
        with trio.fail_after(60):
            await wait_http(f"http://127.0.0.1:{port}/__health")
    finally:
        _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr
    failures = [line for line in stderr.splitlines() if "systemd_notify_failed" in line]
    assert len(failures) == 1  # logged once, though READY, STATUS and STOPPING all failed


# --- socket activation ----------------------------------------------------------------------

# Runs as systemd would start Hestia: the socket at fd 3, LISTEN_PID this very process (kept by
# exec), LISTEN_FDS=1.
ACTIVATE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), "
            "LISTEN_FDNAMES='hestia.socket'); os.execv(sys.executable, sys.argv[2:])")


def activated(fd: int, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(fd), sys.executable, "-m", "hestia", "serve",
         "-c", str(config), "--log-format", "json"],
        pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_an_inherited_socket_is_served_instead_of_listen(tmp_path):
    env_file = tmp_path / "backend.env"
    backend = upstream_service()
    backend["launcher"]["process"]["command"] = [
        "sh", "-c", f'env > {env_file}; exec "$@"', "sh",
        *backend["launcher"]["process"]["command"]]
    configured = free_port()
    config = write_config(tmp_path, configured, up=backend)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        gateway = activated(listener.fileno(), config)
        try:
            with trio.fail_after(60):
                await wait_http(f"http://127.0.0.1:{port}/__health")
                async with httpx.AsyncClient() as http:
                    echo = await http.get(f"http://127.0.0.1:{port}/services/up/echo")
                assert echo.status_code == 200
                assert not accepts(configured)  # `listen` was not bound
        finally:
            _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr
    logged = [line for line in stderr.splitlines() if "socket_activated" in line]
    assert len(logged) == 1 and f'"sockets": ["127.0.0.1:{port}"]' in logged[0]
    assert '"fds": [3]' in logged[0]
    backend_env = env_file.read_text()
    assert "LISTEN_FDS" not in backend_env and "LISTEN_PID" not in backend_env


def test_an_inherited_fd_that_is_no_listening_socket_stops_the_start_saying_why(tmp_path):
    config = write_config(tmp_path, free_port())
    with open(tmp_path / "not-a-socket", "w") as file:
        gateway = activated(file.fileno(), config)
        _, stderr = gateway.communicate(timeout=60)
    assert gateway.returncode == 1
    assert stderr.splitlines()[-1] == ("hestia: invalid configuration socket activation "
                                       "(LISTEN_FDS): fd 3: fd 3 is not a socket")
