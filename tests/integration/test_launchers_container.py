"""The `container` launcher against a fake `podman`/`docker` (tests/fake_container_cli.py).

No container engine runs where Hestia is developed, so an executable named `podman` (and
`docker`) that follows the CLI's contract goes first on PATH; the "container" it runs is
tests/upstream_app.py, probed like any upstream. Real processes, real clock inside
`trio.fail_after`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from hestia.config import ContainerLauncherConfig
from hestia.errors import StartFailed
from hestia.launchers.base import LaunchContext
from hestia.launchers.container import ContainerLauncher
from hestia.launchers.registry import read_record
from hestia.lifecycle.readiness import HttpProbe
from tests.fake_container_cli import create_container, process_gone

from .conftest import UPSTREAM_APP, client, free_port

FAKE_CLI = Path(__file__).parents[1] / "fake_container_cli.py"
APP = [sys.executable, UPSTREAM_APP]


@dataclass
class FakeCli:
    bin_dir: Path
    log: Path
    env_log: Path
    state: Path

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def environments(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.env_log.read_text().splitlines()]

    def container(self, name: str) -> dict[str, Any] | None:
        path = self.state / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCli]:
    cli = FakeCli(tmp_path / "bin", tmp_path / "cli.jsonl", tmp_path / "cli-env.jsonl",
                  tmp_path / "containers")
    cli.bin_dir.mkdir()
    cli.log.touch()
    cli.env_log.touch()
    for prog in ("podman", "docker"):
        wrapper = cli.bin_dir / prog
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                           f"{shlex.quote(str(FAKE_CLI))} {prog} \"$@\"\n")
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{cli.bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLI_LOG", str(cli.log))
    monkeypatch.setenv("FAKE_CLI_ENV_LOG", str(cli.env_log))
    monkeypatch.setenv("FAKE_CLI_STATE", str(cli.state))
    yield cli
    # Containers run in sessions of their own, as under a real engine: a failed test must not
    # leave one behind.
    for path in cli.state.glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def context(port: int) -> LaunchContext:
    return LaunchContext(service="svc", backend="default", upstream=f"http://127.0.0.1:{port}",
                         port=port, machine="local")


def launcher(tmp_path: Path, **fields: Any) -> ContainerLauncher:
    return ContainerLauncher(ContainerLauncherConfig(**fields), tmp_path / "logs" / "svc.log")


async def ready(port: int) -> None:
    await HttpProbe("127.0.0.1", port, "/health", cap=0.05).wait_ready()


async def refused(port: int) -> bool:
    return not await HttpProbe("127.0.0.1", port, "/health", cap=0.05).check()


async def test_run_removes_a_leftover_then_keeps_the_image_in_the_foreground(tmp_path, fake_cli):
    port = free_port()
    # A leftover of the same name (Hestia was killed, say): `run` alone would refuse the name.
    create_container(fake_cli.state, "ollama", APP)
    run_args = ["-p", f"127.0.0.1:{port}:{port}", "-e", "HESTIA_PORT"]
    ollama = launcher(tmp_path, name="ollama", image="docker.io/ollama/ollama",
                      run_args=run_args, args=APP, stop_timeout="2s")
    with trio.fail_after(20):
        running = await ollama.start(context(port))
        await ready(port)
        container = fake_cli.container("ollama")
        assert container is not None and container["running"]
        assert running.pid == container["run_pid"]
        await running.stop()
        assert await refused(port)
    assert fake_cli.calls() == [
        ["podman", "rm", "-f", "ollama"],
        ["podman", "run", "--rm", "--name", "ollama", *run_args, "docker.io/ollama/ollama",
         *APP],
        ["podman", "stop", "-t", "2", "ollama"],
    ]
    assert process_gone(container["pid"]) and process_gone(container["run_pid"])
    assert fake_cli.container("ollama") is None  # --rm


async def test_only_the_foreground_run_is_recorded_for_recovery_until_it_is_stopped(
        tmp_path, fake_cli):
    port, record = free_port(), tmp_path / "run" / "svc.json"
    web = ContainerLauncher(ContainerLauncherConfig(name="web", image="web",
                                                    args=[*APP, "--port", str(port)]),
                            tmp_path / "logs" / "svc.log", record)
    with trio.fail_after(20):
        running = await web.start(context(port))
        await ready(port)
        recorded = read_record(record)
        assert recorded is not None
        assert (recorded.pid, recorded.launcher) == (running.pid, "container")
        assert recorded.command[1:4] == ["run", "--rm", "--name"]  # not the `rm -f` before it
        await running.stop()
    assert not record.exists()


async def test_a_container_that_exits_while_ready_ends_the_backend_with_its_status(
        tmp_path, fake_cli):
    port = free_port()
    web = launcher(tmp_path, name="web", image="web:latest", args=[*APP, "--port", str(port)])
    with trio.fail_after(20):
        running = await web.start(context(port))
        await ready(port)
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(f"http://127.0.0.1:{port}/crash")
        status = await running.wait()
    assert status == 17
    assert running.describe_exit(status) == "exited with status 17"
    assert any(line.startswith("listening ") for line in running.log_tail())


async def test_a_container_that_fails_at_once_reports_its_status_and_output(tmp_path, fake_cli):
    web = launcher(tmp_path, runtime="docker", name="web", image="web:latest",
                   args=[*APP, "--fail-start", "3"])
    with trio.fail_after(20):
        running = await web.start(context(free_port()))
        assert await running.wait() == 3
        await running.stop()  # the container went with its `run`: no CLI stop is needed
    assert running.log_tail() == ["fatal: simulated start failure"]
    assert [call[:2] for call in fake_cli.calls()] == [["docker", "rm"], ["docker", "run"]]


async def test_an_existing_container_is_started_detached_and_wait_never_returns(
        tmp_path, fake_cli):
    port = free_port()
    create_container(fake_cli.state, "web", [*APP, "--port", str(port)])
    web = launcher(tmp_path, name="web")
    with trio.fail_after(20):
        running = await web.start(context(port))
        await ready(port)
        with trio.move_on_after(0.3) as waited:
            await running.wait()
        assert waited.cancelled_caught
        pid = fake_cli.container("web")["pid"]
        await running.stop()
        assert await refused(port)
    assert running.pid is None
    assert fake_cli.calls() == [["podman", "start", "web"], ["podman", "stop", "-t", "10", "web"]]
    assert process_gone(pid)
    assert fake_cli.container("web")["running"] is False  # stopped, not removed


async def test_no_container_is_run_where_another_program_already_listens(tmp_path, fake_cli):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        web = launcher(tmp_path, name="web", image="web:latest", args=[*APP, "--port", str(port)])
        with trio.fail_after(20), pytest.raises(StartFailed) as caught:
            await web.start(context(port))
    assert caught.value.extra == {"reason": "port_in_use", "port": port, "pid": os.getpid()}
    assert fake_cli.calls() == [["podman", "rm", "-f", "web"]]


async def test_a_leftover_of_the_same_name_on_the_port_is_replaced_not_refused(
        tmp_path, fake_cli):
    port = free_port()
    create_container(fake_cli.state, "web", [*APP, "--port", str(port)])
    web = launcher(tmp_path, name="web", image="web:latest", args=[*APP, "--port", str(port)],
                   stop_timeout="2s")
    with trio.fail_after(20):
        await trio.run_process(["podman", "start", "web"], capture_stdout=True)
        await ready(port)  # the leftover holds the port until `rm -f` removes it
        running = await web.start(context(port))
        await ready(port)
        await running.stop()
    assert [call[1] for call in fake_cli.calls()] == ["start", "rm", "run", "stop"]


async def test_starting_a_missing_container_fails_with_the_cli_status_and_output(
        tmp_path, fake_cli):
    with trio.fail_after(20), pytest.raises(StartFailed) as caught:
        await launcher(tmp_path, name="web").start(context(free_port()))
    error = caught.value
    assert error.detail == "podman start web exited with status 125"
    assert error.extra["exit_status"] == 125
    assert error.extra["log_tail"] == [
        'Error: no container with name or ID "web" found: no such container']


async def test_a_runtime_missing_from_path_fails_the_start(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StartFailed) as caught:
        await launcher(tmp_path, name="web", image="web").start(context(free_port()))
    assert caught.value.detail == "podman not found on PATH"


async def test_the_cli_gets_every_hestia_variable_with_the_action(tmp_path, fake_cli):
    port = free_port()
    web = launcher(tmp_path, name="web", image="web", args=[*APP, "--port", str(port)])
    with trio.fail_after(20):
        running = await web.start(context(port))
        await ready(port)
        await running.stop()
    base = {"HESTIA_BACKEND": "default", "HESTIA_MACHINE": "local", "HESTIA_PORT": str(port),
            "HESTIA_SERVICE": "svc", "HESTIA_UPSTREAM": f"http://127.0.0.1:{port}"}
    assert fake_cli.environments() == [{**base, "HESTIA_ACTION": action}
                                       for action in ("start", "start", "stop")]


async def test_a_failing_cli_stop_is_logged_and_the_run_process_group_still_ends(
        tmp_path, fake_cli):
    port = free_port()
    web = launcher(tmp_path, name="web", image="web", args=[*APP, "--port", str(port)],
                   stop_timeout=1)
    with trio.fail_after(20), capture_logs() as logs:
        running = await web.start(context(port))
        await ready(port)
        # The engine lost track of it: `stop` answers "no such container".
        (fake_cli.state / "web.json").unlink()
        await running.stop()
        assert await refused(port)  # SIGTERM to `run`, proxied to the container
    failures = [e for e in logs if e["event"] == "container_stop_failed"]
    assert [e["exit_status"] for e in failures] == [125]
    assert process_gone(running.pid)


def test_the_fake_cli_refuses_a_name_in_use_as_podman_does(fake_cli):
    create_container(fake_cli.state, "web", APP)
    result = subprocess.run(["podman", "run", "--rm", "--name", "web", "img"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 125
    assert 'the container name "web" is already in use' in result.stderr


async def test_a_container_backend_is_started_and_proxied_by_the_gateway(start_gateway,
                                                                         fake_cli):
    port = free_port()
    service = {"upstream": f"http://127.0.0.1:{port}",
               "launcher": {"container": {"name": "web", "image": "web:latest",
                                          "args": [*APP, "--port", str(port)],
                                          "stop_timeout": "2s"}},
               "readiness": {"http": "/health", "timeout": "20s"}}
    with trio.fail_after(30):
        gateway = await start_gateway(services={"web": service})
        async with client(gateway) as http:
            echo = (await http.get("/services/web/echo")).json()
            assert echo["pid"] == fake_cli.container("web")["pid"]
            assert (await http.post("/v1/services/web/stop")).status_code == 202
            while gateway.supervisors["web"].state.name != "COLD":
                await trio.sleep(0.01)
    assert fake_cli.calls()[-1] == ["podman", "stop", "-t", "2", "web"]
    assert fake_cli.container("web") is None
