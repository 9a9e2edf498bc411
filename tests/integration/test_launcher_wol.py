"""The `wol` launcher against the real network stack: magic packets arrive on a loopback UDP
socket, and the stop command runs as a real shell in a process group of its own.

Real clock, each test bounded by `trio.fail_after`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import trio
from structlog.testing import capture_logs

from hestia.config import WolLauncherConfig
from hestia.launchers.base import LaunchContext
from hestia.launchers.wol import WolLauncher, build_magic_packet

MAC = "52:54:00:12:34:56"
CONTEXT = LaunchContext(service="gpu", backend="gpu-box", upstream="http://127.0.0.1:1",
                        port=1, machine="gpu-box")


def launcher(tmp_path: Path, **fields: Any) -> WolLauncher:
    config = WolLauncherConfig(mac=MAC, broadcast="127.0.0.1", port=9, **fields)
    return WolLauncher(config, tmp_path / "logs" / "gpu.log")


def sh(path: Path) -> str:
    return shlex.quote(str(path))


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie awaiting its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel, which cannot tell a zombie apart
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def test_three_magic_packets_arrive_at_the_broadcast_address(tmp_path: Path):
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as receiver:
        await receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        wol = WolLauncher(WolLauncherConfig(mac=MAC, broadcast="127.0.0.1", port=port),
                          tmp_path / "logs" / "gpu.log")
        with trio.fail_after(5):  # fire and forget: nothing answers, nothing is waited for
            started = trio.current_time()
            running = await wol.start(CONTEXT)
            elapsed = trio.current_time() - started
            packets = [await receiver.recv(1024) for _ in range(3)]
        with trio.move_on_after(0.3):  # and no fourth
            packets.append(await receiver.recv(1024))
    assert packets == [build_magic_packet(MAC)] * 3
    assert len(packets[0]) == 102
    assert elapsed >= 0.2  # 100 ms apart: `start` returns after the third
    assert running.pid is None


async def test_wait_never_returns(tmp_path: Path):
    running = await launcher(tmp_path).start(CONTEXT)
    with trio.move_on_after(0.3) as scope:
        await running.wait()
    assert scope.cancelled_caught


async def test_the_stop_command_runs_with_the_hestia_environment(tmp_path: Path):
    out = tmp_path / "stopped"
    stop = f'echo "$HESTIA_ACTION $HESTIA_SERVICE $HESTIA_MACHINE" >> {sh(out)}; echo powering off'
    running = await launcher(tmp_path, stop=stop).start(CONTEXT)
    with trio.fail_after(10), capture_logs() as logs:
        await running.stop()
        await running.stop()  # a second stop does not power off twice
    assert out.read_text() == "stop gpu gpu-box\n"
    tail = running.log_tail()
    assert tail[0].startswith("--- hestia: stopping gpu at ")
    assert tail[1:] == ["powering off"]
    assert [e["event"] for e in logs] == ["wol_stopped"]


async def test_the_log_tail_holds_only_this_start(tmp_path: Path):
    first = await launcher(tmp_path, stop="echo first run").start(CONTEXT)
    with trio.fail_after(10):
        await first.stop()
        second = await launcher(tmp_path, stop="echo second run").start(CONTEXT)
        assert second.log_tail() == []
        await second.stop()
    assert second.log_tail()[1:] == ["second run"]
    assert "first run" in (tmp_path / "logs" / "gpu.log").read_text()


async def test_a_failing_stop_command_is_logged_not_raised(tmp_path: Path):
    running = await launcher(tmp_path, stop="echo no route to host >&2; exit 3").start(CONTEXT)
    with trio.fail_after(10), capture_logs() as logs:
        await running.stop()
    assert [(e["event"], e["log_level"], e["exit_status"]) for e in logs] == [
        ("wol_stop_failed", "warning", 3)]
    assert running.log_tail()[-1] == "no route to host"


async def test_a_hung_stop_command_is_killed_with_its_group(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    running = await launcher(tmp_path, stop=f"sleep 60 & echo $! > {sh(pid_file)}; wait",
                             stop_timeout="300ms").start(CONTEXT)
    # Bounded far below the command's 60 s: its SIGKILL came at stop_timeout, and its child's.
    with trio.fail_after(10), capture_logs() as logs:
        started = trio.current_time()
        await running.stop()
        elapsed = trio.current_time() - started
        child = int(pid_file.read_text())
        while _alive(child):
            await trio.sleep(0.01)
    assert elapsed >= 0.3  # the command had its stop_timeout
    assert len(logs) == 1
    assert logs[0]["event"] == "wol_stop_failed"
    assert logs[0]["reason"] == "timeout"


async def test_without_a_stop_command_stopping_does_nothing(tmp_path: Path):
    running = await launcher(tmp_path).start(CONTEXT)
    with trio.fail_after(5), capture_logs() as logs:
        await running.stop()
    assert [(e["event"], e["log_level"]) for e in logs] == [("wol_no_stop", "info")]


async def test_a_stop_program_that_cannot_run_is_logged_not_raised(tmp_path: Path):
    running = await launcher(tmp_path, stop="/nonexistent/poweroff").start(CONTEXT)
    with trio.fail_after(10), capture_logs() as logs:
        await running.stop()
    assert [(e["event"], e["exit_status"]) for e in logs] == [("wol_stop_failed", 127)]


async def test_the_stop_command_runs_even_if_the_log_directory_was_removed(tmp_path: Path):
    out = tmp_path / "stopped"
    running = await launcher(tmp_path, stop=f"echo $HESTIA_ACTION > {sh(out)}").start(CONTEXT)
    (tmp_path / "logs" / "gpu.log").unlink()
    (tmp_path / "logs").rmdir()
    with trio.fail_after(10):
        await running.stop()
    assert out.read_text() == "stop\n"


async def test_a_stop_that_cannot_even_start_is_logged_not_raised(tmp_path: Path):
    running = await launcher(tmp_path, stop="true").start(CONTEXT)
    (tmp_path / "logs" / "gpu.log").unlink()
    (tmp_path / "logs").rmdir()
    (tmp_path / "logs").write_text("a file where the log directory was")
    with trio.fail_after(10), capture_logs() as logs:
        await running.stop()
    assert [e["event"] for e in logs] == ["wol_stop_failed"]
    assert logs[0]["error"]


async def test_a_stop_during_a_stop_waits_for_it_and_runs_nothing_more(tmp_path: Path):
    out = tmp_path / "stopped"
    running = await launcher(tmp_path, stop=f"sleep 0.3; echo $HESTIA_ACTION >> {sh(out)}"
                             ).start(CONTEXT)
    returned: list[bool] = []

    async def stop() -> None:
        await running.stop()
        returned.append(out.exists())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop)
            nursery.start_soon(stop)
    assert returned == [True, True]  # neither returned before the machine was told to stop
    assert out.read_text() == "stop\n"
