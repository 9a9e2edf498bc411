"""The registry of launched process groups and the rules that tell a leftover from a stale record.

Real (tiny) processes, since what is tested is how `/proc` identifies them; the real clock, each
async test bounded by `trio.fail_after`. Every process a test starts is killed after it, even
when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from hestia.config import Config, parse_config
from hestia.launchers.registry import (
    RecordSlot,
    boot_id,
    forget,
    proc_stat,
    read_record,
    record_path,
    record_spawned,
)
from hestia.lifecycle.recovery import recover

Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `argv` in a session of its own, as Hestia does; its group is SIGKILLed and reaped
    after the test. (Our own children: their pids cannot be reused before we reap them.)"""
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        process = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def running(process: subprocess.Popen) -> bool:
    """Not ended (recovery's own view: a zombie has ended)."""
    stat = proc_stat(process.pid)
    return stat is not None and not stat.ended


def config(tmp_path: Path, **services: dict) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data"), "services": services}, env={})


def slot(tmp_path: Path, service: str = "svc") -> RecordSlot:
    return RecordSlot(record_path(tmp_path / "data", service), "http://127.0.0.1:9", "local",
                      "process", "0123456789abcdef")


def record_of(tmp_path: Path, process: subprocess.Popen, service: str = "svc", **changes
              ) -> Path:
    """Record `process` as a previous, now dead, Hestia would have: returns the record's path."""
    target = slot(tmp_path, service)
    record = record_spawned(target, service=service, pid=process.pid, command=["sleep", "60"],
                            stop_signal="SIGTERM", stop_timeout=1.0,
                            log_path=tmp_path / "svc.log", log_offset=0)
    assert record is not None
    # The Hestia that wrote it is gone (the test process itself would count as running).
    changes = {"owner_pid": 1 << 22, "owner_start_time": 1, **changes}
    target.path.write_text(record.model_copy(update=changes).model_dump_json())
    return target.path


def test_a_record_names_the_process_by_pid_group_start_time_and_boot(tmp_path, spawn):
    sleeper = spawn("sleep", "60")
    record = record_spawned(slot(tmp_path), service="svc", pid=sleeper.pid,
                            command=["sleep", "60"], stop_signal="SIGINT", stop_timeout=3.0,
                            log_path=tmp_path / "svc.log", log_offset=42)
    assert record is not None
    stat_fields = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()
    on_disk = json.loads((tmp_path / "data" / "run" / "svc.json").read_text())
    assert on_disk["pid"] == on_disk["pgid"] == sleeper.pid
    assert on_disk["start_time"] == int(stat_fields[19])  # field 22 of /proc/<pid>/stat
    assert on_disk["boot_id"] == boot_id() == Path(
        "/proc/sys/kernel/random/boot_id").read_text().strip()
    assert on_disk["owner_pid"] == os.getpid()
    assert {k: on_disk[k] for k in ("service", "command", "upstream", "launcher",
                                    "stop_signal", "stop_timeout", "log_offset")} == {
        "service": "svc", "command": ["sleep", "60"], "upstream": "http://127.0.0.1:9",
        "launcher": "process", "stop_signal": "SIGINT", "stop_timeout": 3.0, "log_offset": 42}
    assert on_disk["recorded_at"].endswith("Z")
    assert read_record(tmp_path / "data" / "run" / "svc.json") == record


def test_a_record_is_replaced_whole_and_leaves_no_temporary_file(tmp_path, spawn):
    first, second = spawn("sleep", "60"), spawn("sleep", "60")
    for process in (first, second):
        record_spawned(slot(tmp_path), service="svc", pid=process.pid, command=["sleep"],
                       stop_signal="SIGTERM", stop_timeout=1.0, log_path=tmp_path / "svc.log",
                       log_offset=0)
    assert [p.name for p in (tmp_path / "data" / "run").iterdir()] == ["svc.json"]
    assert read_record(tmp_path / "data" / "run" / "svc.json").pid == second.pid


def test_a_record_is_forgotten_only_by_the_process_it_names(tmp_path, spawn):
    sleeper = spawn("sleep", "60")
    record = record_spawned(slot(tmp_path), service="svc", pid=sleeper.pid, command=["sleep"],
                            stop_signal="SIGTERM", stop_timeout=1.0,
                            log_path=tmp_path / "svc.log", log_offset=0)
    path = tmp_path / "data" / "run" / "svc.json"
    forget(path, sleeper.pid + 1, record.start_time)     # an older start's handle, say
    forget(path, sleeper.pid, record.start_time + 1)
    assert path.exists()
    forget(path, sleeper.pid, record.start_time)
    assert not path.exists()
    forget(path, sleeper.pid, record.start_time)         # twice is fine


def test_a_record_that_cannot_be_written_is_logged_and_does_not_fail_the_start(tmp_path, spawn):
    sleeper = spawn("sleep", "60")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "run").write_text("a file where the directory should be")
    with capture_logs() as logs:
        record = record_spawned(slot(tmp_path), service="svc", pid=sleeper.pid,
                                command=["sleep"], stop_signal="SIGTERM", stop_timeout=1.0,
                                log_path=tmp_path / "svc.log", log_offset=0)
    assert record is None
    assert [e["event"] for e in logs] == ["recovery_record_failed"]


async def test_a_record_whose_pid_now_names_another_process_is_deleted_and_never_signalled(
        tmp_path, spawn):
    stranger = spawn("sleep", "60")
    real_start = proc_stat(stranger.pid).start_time
    path = record_of(tmp_path, stranger, start_time=real_start - 1)
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    await trio.sleep(0.2)  # a signal, had one been sent, would have landed by now
    assert running(stranger)
    assert stranger.poll() is None
    assert not path.exists()
    assert [(e["event"], e["reason"]) for e in logs] == [("recovery_record_stale", "pid_reused")]


async def test_a_record_from_another_boot_is_deleted_and_never_signalled(tmp_path, spawn):
    sleeper = spawn("sleep", "60")
    path = record_of(tmp_path, sleeper, boot_id="00000000-0000-0000-0000-000000000000")
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    await trio.sleep(0.2)
    assert running(sleeper)
    assert not path.exists()
    assert [(e["event"], e["reason"]) for e in logs] == [("recovery_record_stale", "other_boot")]


async def test_a_record_of_a_process_that_ended_is_deleted(tmp_path, spawn):
    ended = spawn("true")
    path = record_of(tmp_path, ended)  # recorded while a zombie: the start time is still there
    ended.wait(timeout=10)
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    assert not path.exists()
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("recovery_record_stale", "process_gone")]


async def test_an_unreadable_record_is_deleted(tmp_path):
    path = record_path(tmp_path / "data", "svc")
    path.parent.mkdir(parents=True)
    path.write_text('{"service": "svc", "pid": ')
    (path.parent / "svc.json.tmp").write_text("cut short by the crash")
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    assert list(path.parent.iterdir()) == []
    assert [(e["event"], e["reason"]) for e in logs] == [("recovery_record_stale", "unreadable")]


async def test_a_record_of_a_hestia_that_still_runs_is_left_alone(tmp_path, spawn):
    # Two gateways on one data_dir: the second must not stop the first one's backends.
    sleeper = spawn("sleep", "60")
    me = proc_stat(os.getpid())
    path = record_of(tmp_path, sleeper, owner_pid=os.getpid(), owner_start_time=me.start_time)
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    await trio.sleep(0.2)
    assert running(sleeper)
    assert path.exists()
    assert [e["event"] for e in logs] == ["recovery_record_in_use"]


async def test_a_leftover_of_a_service_no_longer_configured_is_stopped(tmp_path, spawn):
    sleeper = spawn("sleep", "60")
    path = record_of(tmp_path, sleeper, service="gone")
    with trio.fail_after(10), capture_logs() as logs:
        await recover(config(tmp_path), {})
    assert not running(sleeper)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert not path.exists()
    assert [(e["event"], e["service"], e["pid"], e["configured"]) for e in logs] == [
        ("orphan_stopped", "gone", sleeper.pid, False)]

