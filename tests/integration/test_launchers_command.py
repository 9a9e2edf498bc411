"""The `command` launcher with real shells and real processes, directly and through the gateway.

Real clock, each test bounded by `trio.fail_after`.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from hestia.config import CommandLauncherConfig
from hestia.errors import StartFailed
from hestia.launchers.base import LaunchContext
from hestia.launchers.command import CommandLauncher
from tests.fake_container_cli import process_gone

from .conftest import UPSTREAM_APP, assert_error_body, client, free_port, wait_for_state

PYTHON = shlex.quote(sys.executable)
APP = shlex.quote(UPSTREAM_APP)


def context(port: int = 9) -> LaunchContext:
    return LaunchContext(service="svc", backend="default", upstream=f"http://127.0.0.1:{port}",
                         port=port, machine="local")


def launcher(tmp_path: Path, **fields: Any) -> CommandLauncher:
    return CommandLauncher(CommandLauncherConfig(**fields), tmp_path / "logs" / "svc.log")


def command_service(port: int, **command: Any) -> dict[str, Any]:
    return {"upstream": f"http://127.0.0.1:{port}",
            "launcher": {"command": {"stop_timeout": "2s", **command}},
            "readiness": {"http": "/health", "timeout": "20s"}}


async def wait_for_file(path: Path) -> str:
    """The file's content, once a process has written some."""
    file = trio.Path(path)
    while not await file.exists() or not (text := (await file.read_text()).strip()):
        await trio.sleep(0.01)
    return text


async def wait_gone(pid: int) -> None:
    while not process_gone(pid):
        await trio.sleep(0.01)


@pytest.fixture
def pid_files(tmp_path: Path) -> Iterator[Path]:
    """A directory for pid files; whatever they name is killed after the test, so that a
    failing test leaves no detached upstream behind."""
    directory = tmp_path / "pids"
    directory.mkdir()
    yield directory
    for path in directory.iterdir():
        try:
            os.kill(int(path.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


async def test_a_start_command_that_exits_zero_is_probed_proxied_and_stopped_by_its_stop_command(
        start_gateway, pid_files):
    port, pid_file = free_port(), pid_files / "app.pid"
    service = command_service(port, start=f"{PYTHON} {APP} --pid-file {pid_file} &",
                              stop=f'kill "$(cat {pid_file})"')
    with trio.fail_after(30):
        gateway = await start_gateway(services={"cmd": service})
        async with client(gateway) as http:
            echo = (await http.get("/services/cmd/echo")).json()
            pid = int(await wait_for_file(pid_file))
            assert echo["pid"] == pid
            # The shell exited 0 long ago: that was the start, not a crash.
            await trio.sleep(0.3)
            supervisor = gateway.supervisors["cmd"]
            assert (supervisor.state.name, supervisor.starts) == ("READY", 1)
            assert (await http.post("/v1/services/cmd/stop")).status_code == 202
            await wait_for_state(gateway, "cmd", "COLD")
            await wait_gone(pid)


async def test_what_a_start_command_that_exited_zero_left_running_is_not_killed(
        tmp_path, pid_files):
    pid_file = pid_files / "sleep.pid"
    running = await launcher(tmp_path, start=f"sleep 30 & echo $! > {pid_file}").start(context())
    with trio.fail_after(10):
        pid = int(await wait_for_file(pid_file))
    with trio.move_on_after(0.5) as waited:
        await running.wait()
    assert waited.cancelled_caught  # wait() never returns after a 0 exit
    with trio.fail_after(10):
        await running.stop()  # no stop command: the background job is its owner's business
    assert not process_gone(pid)


async def test_a_start_command_that_exits_non_zero_fails_the_start(start_gateway, tmp_path):
    start = 'echo "no GPU today" >&2; exit 3'
    running = await launcher(tmp_path, start=start).start(context())
    with trio.fail_after(10):
        status = await running.wait()
    assert status == 3
    assert running.describe_exit(status) == "exited with status 3"
    assert running.log_tail() == ["no GPU today"]

    with trio.fail_after(30):
        gateway = await start_gateway(services={"cmd": command_service(free_port(), start=start)})
        async with client(gateway) as http:
            response = await http.get("/services/cmd/echo")
            body = assert_error_body(response, 503, "start_failed", "cmd")
            assert body["exit_status"] == 3
            assert "exited with status 3 while starting" in body["detail"]
            assert "no GPU today" in body["log_tail"]


async def test_a_start_command_that_cannot_be_spawned_raises_start_failed(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(StartFailed) as caught:
        await launcher(tmp_path, start="true", cwd=missing).start(context())
    assert caught.value.extra["reason"] == "spawn_failed"
    assert str(missing) in caught.value.detail


async def test_a_long_running_start_command_is_supervised_like_a_process(start_gateway):
    port = free_port()
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "cmd": command_service(port, start=f"exec {PYTHON} {APP}")})
        async with client(gateway) as http:
            assert (await http.get("/services/cmd/die-later?ms=50")).text == "bye"
            await wait_for_state(gateway, "cmd", "COLD")
            status = (await http.get("/v1/services/cmd/status")).json()
            assert status["lastError"]["error"] == "backend_crashed"
            assert status["lastError"]["exit_status"] == 19


async def test_stop_ends_a_running_start_command_before_the_stop_command_runs(
        tmp_path, pid_files):
    port, pid_file, out = free_port(), pid_files / "app.pid", tmp_path / "out"
    stop = f'if kill -0 "$(cat {pid_file})" 2>/dev/null; then echo alive; else echo gone; fi'
    running = await launcher(
        tmp_path, start=f"exec {PYTHON} {APP} --ignore-sigterm --pid-file {pid_file}",
        stop=f"{{ {stop}; }} > {out}", stop_timeout=0.5).start(context(port))
    with trio.fail_after(10):
        await wait_for_file(pid_file)
        began = trio.current_time()
        await running.stop()
    assert trio.current_time() - began >= 0.5  # SIGTERM was ignored; SIGKILL came on time
    assert out.read_text() == "gone\n"


async def test_the_stop_command_runs_once_with_hestia_action_stop_and_its_failure_does_not_raise(
        tmp_path):
    running = await launcher(
        tmp_path, start="true",
        stop='echo "stopping $HESTIA_SERVICE: $HESTIA_ACTION"; exit 4').start(context())
    with trio.fail_after(10), capture_logs() as logs:
        await running.stop()
        await running.stop()
    failures = [e for e in logs if e["event"] == "command_stop_failed"]
    assert len(failures) == 1
    assert failures[0]["exit_status"] == 4
    assert failures[0]["log_tail"][-1] == "stopping svc: stop"
    assert running.log_tail()[-1] == "stopping svc: stop"


async def test_a_stop_command_that_overruns_stop_timeout_is_killed_with_its_group(
        tmp_path, pid_files):
    pid_file = pid_files / "sleep.pid"
    running = await launcher(tmp_path, start="true", stop=f"sleep 30 & echo $! > {pid_file}; wait",
                             stop_timeout=0.5).start(context())
    with trio.fail_after(5), capture_logs() as logs:
        await running.stop()
        await wait_gone(int(pid_file.read_text()))
    assert [(e["event"], e.get("reason")) for e in logs] == [("command_stop_failed", "timeout")]


async def test_every_hestia_variable_env_and_cwd_reach_the_start_and_stop_commands(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    dump = "{ pwd; env | grep -E '^(HESTIA_|EXTRA=)' | sort; }"
    # Written whole (mv), so that the test never reads half of it.
    start = f"{dump} > start.tmp && mv start.tmp start.env"
    running = await launcher(tmp_path, start=start, stop=f"{dump} > stop.env", cwd=work,
                             env={"EXTRA": "yes"}).start(context(port=8123))
    with trio.fail_after(10):
        await wait_for_file(work / "start.env")
        await running.stop()
    expected = [str(work), "EXTRA=yes", "HESTIA_ACTION=start", "HESTIA_BACKEND=default",
                "HESTIA_MACHINE=local", "HESTIA_PORT=8123", "HESTIA_SERVICE=svc",
                "HESTIA_UPSTREAM=http://127.0.0.1:8123"]
    assert (work / "start.env").read_text().splitlines() == expected
    expected[2] = "HESTIA_ACTION=stop"
    assert (work / "stop.env").read_text().splitlines() == expected
