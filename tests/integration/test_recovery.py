"""Recovery after a crash, for real: launchers record their backends, a restarted gateway stops
(or adopts) what a killed one left behind.

Real processes, real clock, each test bounded by `trio.fail_after`. A backend of a gateway that
was SIGKILLed is an orphan nobody else would stop: every test kills what it started in a
`finally` (only while its start time still names it, so never a stranger).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from hestia import parse_config
from hestia.config import CommandLauncherConfig, Config, ProcessLauncherConfig
from hestia.gateway import build_supervisors
from hestia.launchers.base import LaunchContext
from hestia.launchers.command import CommandLauncher
from hestia.launchers.process import ProcessLauncher
from hestia.launchers.registry import (
    RecordSlot,
    fingerprint,
    is_alive,
    proc_stat,
    read_record,
    record_path,
    record_spawned,
)
from hestia.lifecycle import recovery
from hestia.lifecycle.recovery import AdoptedRunning, recover

from .conftest import (
    UPSTREAM_APP,
    alive,
    free_port,
    serve_file,
    upstream_service,
    wait_http,
)


def kill_group(pid: int, start_time: int | None) -> None:
    """SIGKILL the group `pid` leads, if `pid` still names that process."""
    if start_time is not None and is_alive(pid, start_time):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def leftovers() -> Iterator[list[subprocess.Popen]]:
    """Processes standing for what a killed Hestia left: started by the test in sessions of
    their own; their groups are SIGKILLed and reaped after it."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # our child: its pid is not reused yet
        except ProcessLookupError:
            pass
        process.wait()


def start_leftover(leftovers: list[subprocess.Popen], *argv: str,
                   stdout: Any = subprocess.DEVNULL) -> subprocess.Popen:
    process = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                               stdout=stdout)
    leftovers.append(process)
    return process


def one_service(tmp_path: Path, service: dict[str, Any]) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data"), "grace_period": "1s",
                         "services": {"up": service}}, env={})


def record_leftover(config: Config, process: subprocess.Popen, *,
                    launcher_config: Any = None, placement: Any = None,
                    stop_timeout: float = 2.0) -> Path:
    """Record `process` for service `up` as the previous, now dead, Hestia would have, as
    `placement` (default: the primary) with the configuration given (default: the placement's
    own, so that it can be adopted)."""
    placement = placement or config.services["up"]
    launcher_config = launcher_config or placement.launcher.process
    slot = RecordSlot(record_path(config.data_dir, "up"), placement.upstream, placement.machine,
                      "process", fingerprint(launcher_config))
    record = record_spawned(slot, service="up", pid=process.pid, command=[str(process.args)],
                            stop_signal="SIGTERM", stop_timeout=stop_timeout,
                            log_path=config.data_dir / "logs" / "up.log", log_offset=0)
    assert record is not None
    # Written by this test process, which runs: make it a record of a Hestia that is gone.
    slot.path.write_text(record.model_copy(update={"owner_pid": 1 << 22}).model_dump_json())
    return slot.path


async def exit_status(process: subprocess.Popen, timeout: float = 10) -> int:
    """`process.wait()`, bounded: a test that fails must not hang instead."""
    with trio.fail_after(timeout):
        while process.poll() is None:
            await trio.sleep(0.02)
    return process.returncode


async def wait_until(predicate: Any, poll: float = 0.02) -> None:
    while not predicate():
        await trio.sleep(poll)


def context(port: int) -> LaunchContext:
    return LaunchContext("up", "default", f"http://127.0.0.1:{port}", port)


# --- the recording hook ---------------------------------------------------------------------


async def test_a_process_backend_is_recorded_while_it_runs_and_forgotten_once_stopped(tmp_path):
    port, path = free_port(), tmp_path / "run" / "up.json"
    config = ProcessLauncherConfig(command=[sys.executable, UPSTREAM_APP], stop_timeout=2)
    launcher = ProcessLauncher(config, tmp_path / "up.log", path)
    with trio.fail_after(30):
        running = await launcher.start(context(port))
        try:
            record = read_record(path)
            assert record is not None
            assert (record.pid, record.pgid) == (running.pid, running.pid)
            assert record.start_time == proc_stat(running.pid).start_time
            assert (record.launcher, record.upstream, record.config) == (
                "process", f"http://127.0.0.1:{port}", fingerprint(config))
        finally:
            await running.stop()
    assert not path.exists()


async def test_a_backend_that_exits_by_itself_is_forgotten(tmp_path):
    path = tmp_path / "run" / "up.json"
    launcher = ProcessLauncher(ProcessLauncherConfig(command=["sh", "-c", "sleep 0.2"]),
                               tmp_path / "up.log", path)
    with trio.fail_after(30):
        running = await launcher.start(context(9))
        assert path.exists()
        assert await running.wait() == 0
    assert not path.exists()


async def test_a_command_start_is_recorded_but_not_the_stop_command(tmp_path):
    path = tmp_path / "run" / "up.json"
    launcher = CommandLauncher(CommandLauncherConfig(start="sleep 60", stop="sleep 0.3"),
                               tmp_path / "up.log", path)
    with trio.fail_after(30):
        running = await launcher.start(context(9))
        try:
            assert read_record(path).pid == running.pid
            assert read_record(path).launcher == "command"
        finally:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(running.stop)
                await trio.sleep(0.15)  # the start command is gone, the stop command runs
                assert not path.exists()


# --- what recovery does with a leftover -----------------------------------------------------


async def test_a_leftover_ignoring_sigterm_is_killed_with_its_whole_group(tmp_path, leftovers):
    config = one_service(tmp_path, upstream_service())
    out = tmp_path / "leftover.out"
    with out.open("w") as stdout:
        leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--ignore-sigterm",
                                  "--spawn-child", stdout=stdout)
    with trio.fail_after(30):
        await wait_until(lambda: "listening" in out.read_text())
        child = int(out.read_text().split("child-pid ")[1].split()[0])
        path = record_leftover(config, leftover, stop_timeout=0.5)
        with capture_logs() as logs:
            await recover(config, build_supervisors(config))
    assert await exit_status(leftover) == -signal.SIGKILL
    assert not alive(child)
    assert not path.exists()
    assert [e["event"] for e in logs] == ["process_kill", "orphan_stopped"]


async def test_a_leftover_is_stopped_when_the_service_says_on_restart_stop(tmp_path, leftovers):
    config = one_service(tmp_path, upstream_service())  # on_restart: stop, the default
    port = config.services["up"].upstream_port
    leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--port", str(port))
    with trio.fail_after(30):
        await wait_http(f"http://127.0.0.1:{port}/health")  # healthy, and still stopped
        path = record_leftover(config, leftover)
        supervisors = build_supervisors(config)
        await recover(config, supervisors)
    assert await exit_status(leftover) == -signal.SIGTERM
    assert not path.exists()
    assert supervisors["up"].state.name == "COLD"


async def test_a_healthy_leftover_is_adopted_and_stopped_like_any_backend(tmp_path, leftovers,
                                                                         nursery):
    config = one_service(tmp_path, upstream_service(on_restart="adopt"))
    port = config.services["up"].upstream_port
    leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--port", str(port))
    with trio.fail_after(30):
        await wait_http(f"http://127.0.0.1:{port}/health")
        path = record_leftover(config, leftover)
        supervisors = build_supervisors(config)
        with capture_logs() as logs:
            await recover(config, supervisors)
        sup = supervisors["up"]
        assert (sup.state.name, sup.pid, sup.starts) == ("READY", leftover.pid, 0)
        assert isinstance(sup._running, AdoptedRunning)
        assert "backend_adopted_after_restart" in [e["event"] for e in logs]
        await nursery.start(sup.run)
        assert sup.request_stop()
        await wait_until(lambda: sup.state.name == "COLD")
    assert await exit_status(leftover) == -signal.SIGTERM
    assert not path.exists()


async def test_an_adopted_backend_that_ends_by_itself_is_a_crash_and_is_forgotten(
        tmp_path, leftovers, nursery):
    config = one_service(tmp_path, upstream_service(on_restart="adopt"))
    port = config.services["up"].upstream_port
    leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--port", str(port))
    with trio.fail_after(30):
        await wait_http(f"http://127.0.0.1:{port}/health")
        path = record_leftover(config, leftover)
        supervisors = build_supervisors(config)
        await recover(config, supervisors)
        sup = supervisors["up"]
        await nursery.start(sup.run)
        leftover.kill()
        # Seen at the next look at /proc: to the instant in tests/unit/test_recovery.py.
        await wait_until(lambda: sup.state.name == "COLD")
    assert sup.last_error["error"] == "backend_crashed"
    assert not path.exists()


async def test_a_leftover_that_is_not_ready_in_time_is_stopped_instead_of_adopted(
        tmp_path, leftovers, monkeypatch):
    monkeypatch.setattr(recovery, "ADOPT_PROBE_WINDOW", 0.5)
    config = one_service(tmp_path, upstream_service(on_restart="adopt"))  # nothing listens
    leftover = start_leftover(leftovers, "sleep", "60")
    path = record_leftover(config, leftover)
    supervisors = build_supervisors(config)
    with trio.fail_after(30), capture_logs() as logs:
        await recover(config, supervisors)
    assert await exit_status(leftover) == -signal.SIGTERM
    assert not path.exists()
    assert supervisors["up"].state.name == "COLD"
    assert [(e["event"], e.get("reason")) for e in logs] == [
        ("recovery_not_adopted", "not_ready"), ("orphan_stopped", None)]


async def test_a_leftover_started_by_another_configuration_is_stopped_instead_of_adopted(
        tmp_path, leftovers):
    config = one_service(tmp_path, upstream_service(on_restart="adopt"))
    port = config.services["up"].upstream_port
    leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--port", str(port))
    before = ProcessLauncherConfig(command=[sys.executable, UPSTREAM_APP, "--old-flag"])
    with trio.fail_after(30):
        await wait_http(f"http://127.0.0.1:{port}/health")
        path = record_leftover(config, leftover, launcher_config=before)
        supervisors = build_supervisors(config)
        with capture_logs() as logs:
            await recover(config, supervisors)
    assert await exit_status(leftover) == -signal.SIGTERM
    assert not path.exists()
    assert [(e["event"], e.get("reason")) for e in logs] == [
        ("recovery_not_adopted", "configuration_changed"), ("orphan_stopped", None)]


# --- a real gateway, killed and restarted ---------------------------------------------------


async def _backend_of(served: Any, http: httpx.AsyncClient) -> tuple[int, int | None]:
    pid = (await http.get(f"{served.url}/services/up/echo")).json()["pid"]
    stat = proc_stat(pid)
    return pid, stat.start_time if stat is not None else None


async def test_a_gateway_killed_with_sigkill_then_restarted_stops_its_orphan(tmp_path):
    service = upstream_service(idle_timeout="1h")
    orphan, start_time = 0, None
    try:
        async with serve_file(tmp_path, service) as first:
            with trio.fail_after(60):
                async with httpx.AsyncClient(timeout=30) as http:
                    orphan, start_time = await _backend_of(first, http)
                assert read_record(record_path(tmp_path / "data", "up")).pid == orphan
                first.process.send_signal(signal.SIGKILL)
                await first.wait_exit()
        assert alive(orphan)  # nobody stops a killed gateway's backend…
        async with serve_file(tmp_path, service) as second:
            # … until the next gateway starts: before it listens, the orphan is gone.
            assert not alive(orphan)
            assert not record_path(tmp_path / "data", "up").exists()
            with trio.fail_after(60):
                async with httpx.AsyncClient(timeout=30) as http:
                    fresh, _ = await _backend_of(second, http)
                    status = (await http.get(f"{second.url}/v1/services/up/status")).json()
            assert fresh != orphan
            assert (status["state"], status["pid"]) == ("READY", fresh)
    finally:
        kill_group(orphan, start_time)
    assert '"event": "orphan_stopped"' in second.stderr
    assert f'"pid": {orphan}' in second.stderr


async def test_a_gateway_restarted_with_on_restart_adopt_serves_on_with_the_same_backend(
        tmp_path):
    service = upstream_service(idle_timeout="1h", on_restart="adopt")
    orphan, start_time = 0, None
    try:
        async with serve_file(tmp_path, service) as first:
            with trio.fail_after(60):
                async with httpx.AsyncClient(timeout=30) as http:
                    orphan, start_time = await _backend_of(first, http)
                first.process.send_signal(signal.SIGKILL)
                await first.wait_exit()
        async with serve_file(tmp_path, service) as second:
            with trio.fail_after(60):
                async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
                    status = (await http.get("/v1/services/up/status")).json()
                    assert (status["state"], status["pid"]) == ("READY", orphan)
                    # Adopted, not started again: serving does not add a start.
                    assert (await _backend_of(second, http))[0] == orphan
                    after = (await http.get("/v1/services/up/status")).json()
                    assert after["starts"] == status["starts"]
                    assert (await http.post("/v1/services/up/stop")).status_code == 202
                    while (await http.get("/v1/services/up/status")).json()["state"] != "COLD":
                        await trio.sleep(0.05)
            assert not alive(orphan)
            assert not record_path(tmp_path / "data", "up").exists()
    finally:
        kill_group(orphan, start_time)
    assert '"event": "backend_adopted_after_restart"' in second.stderr


async def test_a_healthy_leftover_of_a_fallback_is_adopted_as_that_placement(
        tmp_path, leftovers):
    backup = upstream_service()
    service = upstream_service(on_restart="adopt", fallbacks=[
        {"machine": "backup", "upstream": backup["upstream"], "launcher": backup["launcher"]}])
    config = parse_config({"data_dir": str(tmp_path / "data"), "machines": {"backup": {}},
                           "services": {"up": service}}, env={})
    fallback = config.services["up"].fallbacks[0]
    port = fallback.upstream_port
    leftover = start_leftover(leftovers, sys.executable, UPSTREAM_APP, "--port", str(port))
    with trio.fail_after(30):
        await wait_http(f"http://127.0.0.1:{port}/health")
        record_leftover(config, leftover, placement=fallback)
        supervisors = build_supervisors(config)
        await recover(config, supervisors)
        sup = supervisors["up"]
        assert (sup.state.name, sup.pid) == ("READY", leftover.pid)
        assert sup.placement.machine == "backup"
        assert sup.placement.upstream == fallback.upstream
